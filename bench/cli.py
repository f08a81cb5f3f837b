"""`python -m bench`: run the scenarios against dockyard and the reference registry."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from . import report
from .core import Bench, Scenario, Skip
from .scenarios import NAMES, all_scenarios
from .servers import (
    DOCKYARD,
    DOCKYARD_QUIET,
    REFERENCE,
    ROOT,
    dockyard,
    make_workdir,
    reference,
)

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="one repetition, shorter load phases (under 3 minutes)")
    p.add_argument("--only", metavar="SCENARIO,…",
                   help=f"run only these scenarios: {', '.join(NAMES)}")
    p.add_argument("--skip", metavar="SCENARIO,…", help="leave these scenarios out")
    p.add_argument("--reps", type=int, help="repetitions per scenario (default 3; --quick 1)")
    p.add_argument("--load-seconds", type=float,
                   help="duration of each wrk/ab load phase (default 3; --quick 2)")
    p.add_argument("--json", metavar="FILE", help="also write the JSON results here")
    p.add_argument("--dockyard-args", default="", metavar="ARGS",
                   help="extra arguments for `dockyard serve`, e.g. '--workers 2'")
    p.add_argument("--profile", action="store_true",
                   help="attach py-spy to dockyard during every dockyard phase (numbers are "
                        "perturbed; profiles go to the results directory)")
    p.add_argument("--profile-native", action="store_true",
                   help="with --profile: also sample C frames (py-spy --native), e.g. sendfile, "
                        "hashing, sqlite")
    p.add_argument("--quiet-logs", action="store_true",
                   help="turn off per-request logging in both registries (default: each "
                        "as shipped, access log on)")
    p.add_argument("--pg", action="store_true",
                   help="customers: also run dockyard on PostgreSQL metadata ([metadata] url) "
                        "against a private cluster the bench starts")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    for opt in ("only", "skip"):
        names = [n for n in (getattr(args, opt) or "").split(",") if n]
        unknown = set(names) - set(NAMES)
        if unknown:
            p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(NAMES)}")
        setattr(args, opt, names)
    return args


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _outcome_types() -> tuple[type[BaseException], ...]:
    """pytest's skip/fail outcomes: the shared test helpers raise them when a part is missing."""
    try:
        from _pytest.outcomes import OutcomeException

        return (Skip, OutcomeException)
    except ImportError:
        return (Skip,)


def _git_rev() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    return ""


def log(t0: float, message: str) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)


def run_scenarios(
    bench: Bench, scenarios: list[Scenario], t0: float
) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
    """Each scenario: setup, repetitions, teardown; a failure or skip ends only that one."""
    skip_types = _outcome_types()
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    durations: dict[str, float] = {}
    for sc in scenarios:
        s0 = time.monotonic()
        reps = min(bench.reps, sc.max_reps or bench.reps)
        log(t0, f"{sc.name}: {sc.title}")
        try:
            sc.setup(bench)
            for rep in range(reps):
                sc.rep(bench, rep)
                log(t0, f"{sc.name}: repetition {rep + 1}/{reps} done")
        except skip_types as exc:
            skipped[sc.name] = str(exc)
            log(t0, f"{sc.name}: skipped: {exc}")
        except Exception:
            failed[sc.name] = traceback.format_exc()
            log(t0, f"{sc.name}: FAILED\n{failed[sc.name]}")
        finally:
            try:
                sc.teardown(bench)
            except Exception:
                log(t0, f"{sc.name}: teardown failed\n{traceback.format_exc()}")
            durations[sc.name] = time.monotonic() - s0
    return skipped, failed, durations


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    load_seconds = args.load_seconds or (2.0 if args.quick else 3.0)
    scenarios = [s for s in all_scenarios(args.quick, args.only, pg=args.pg)
                 if (not args.only or s.name in args.only) and s.name not in args.skip]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = RESULTS / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    # Interruptible even when started in the background (where SIGINT starts out ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    t0 = time.monotonic()
    work = make_workdir()
    try:
        with contextlib.ExitStack() as stack:
            # A callback runs after the context entered next to it has exited.
            log(t0, f"work dir {work}; starting dockyard and the reference registry")
            stack.callback(log, t0, "dockyard stopped")
            dockyard_config = DOCKYARD_QUIET if args.quiet_logs else ""
            dy = stack.enter_context(dockyard(
                work, shlex.split(args.dockyard_args), dockyard_config))
            stack.callback(log, t0, "reference stopped")
            ref = stack.enter_context(reference(args.quiet_logs))
            log(t0, f"dockyard {dy.url} (pid {dy.pid}), reference {ref.url} (pid {ref.pid})")
            profiler = None
            if args.profile:
                from .profile import Profiler

                profiler = Profiler(out_dir / "profiles", native=args.profile_native)
            bench = Bench(
                targets={DOCKYARD: dy, REFERENCE: ref}, work=work, results_dir=out_dir,
                reps=reps, quick=args.quick, load_seconds=load_seconds, profiler=profiler,
                dockyard_args=shlex.split(args.dockyard_args), dockyard_config=dockyard_config,
                quiet_logs=args.quiet_logs,
            )
            skipped, failed, durations = run_scenarios(bench, scenarios, t0)
            log(t0, "stopping servers")
        meta = {
            "started": stamp, "git": _git_rev(), "reps": reps, "quick": args.quick,
            "load_seconds": load_seconds, "dockyard_args": args.dockyard_args,
            "quiet_logs": args.quiet_logs, "profiled": args.profile, "pg": args.pg,
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(), "total_seconds": time.monotonic() - t0,
            "scenario_seconds": durations,
        }
        write_report(bench, scenarios, meta, skipped, failed, out_dir, args)
    finally:
        if args.keep:
            log(t0, f"kept {work}")
        else:
            # rm is much faster than shutil.rmtree on the reference's many small directories.
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
            log(t0, "work dir removed")
    print(f"\nresults: {out_dir}", file=sys.stderr)
    return 1 if failed else 0


def write_report(bench: Bench, scenarios: list[Scenario], meta: dict, skipped: dict[str, str],
                 failed: dict[str, str], out_dir: Path, args: argparse.Namespace) -> None:
    rows = report.results(bench, scenarios)
    doc = {"meta": meta, "rows": rows, "cpu": bench.cpu, "notes": bench.notes,
           "skipped": skipped, "failed": failed}
    extra = []
    if args.profile:
        extra.append("**Profiled run: py-spy was attached to dockyard; its numbers are "
                     f"perturbed.** Profiles: {out_dir / 'profiles'}")
    extra += [f"- skipped {k}: {v}" for k, v in skipped.items()]
    extra += [f"- FAILED {k}: {v.strip().splitlines()[-1]}" for k, v in failed.items()]
    extra += [f"- note: {n}" for n in bench.notes]
    logs = "quiet logs" if meta["quiet_logs"] else "access logs on in both"
    text = "\n\n".join([
        f"## dockyard vs reference registry ({meta['started']}, git {meta['git']}, "
        f"{meta['reps']} repetition(s), alternating order, {logs}; "
        f"{meta['total_seconds']:.0f} s)",
        report.markdown(rows), "### CPU used per phase (medians)", report.cpu_table(bench),
        "\n".join(extra),
    ])
    print(text)
    (out_dir / "table.md").write_text(text + "\n")
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
