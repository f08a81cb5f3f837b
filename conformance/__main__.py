"""python -m conformance --registry URL --repo NAMESPACE/REPO […]"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from conformance import report
from conformance.client import TransportError
from conformance.runner import run, select
from conformance.suite import CATEGORIES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m conformance",
        description="OCI Distribution conformance checks against any registry.",
    )
    p.add_argument("--registry", help="base URL, e.g. http://127.0.0.1:5000")
    p.add_argument("--repo", help="repository to push to, e.g. acme/conformance")
    p.add_argument("--repo2", help="second repository for mounts (default: <repo>-mount)")
    p.add_argument("--username", help="for Basic auth or the token endpoint")
    p.add_argument("--password", default=os.environ.get("CONFORMANCE_PASSWORD"),
                   help="password (default: $CONFORMANCE_PASSWORD)")
    p.add_argument("--only", help=f"comma-separated categories: {','.join(CATEGORIES)}")
    p.add_argument("--junit", type=Path, help="write JUnit XML here")
    p.add_argument("--report", type=Path, help="write a markdown report here")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    args = p.parse_args(argv)
    if not args.list and not (args.registry and args.repo):
        p.error("--registry and --repo are required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    if args.list:
        try:
            checks = select(only)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for c in checks:
            print(f"{c.id} — {c.title} — {c.section}")
        return 0
    try:
        results = run(
            args.registry, args.repo, repo2=args.repo2, username=args.username,
            password=args.password, only=only, insecure=args.insecure,
            on_result=lambda r: print(r.line(), flush=True),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TransportError as exc:
        print(f"error: cannot reach the registry: {exc}", file=sys.stderr)
        return 2
    report.write(results, markdown_path=args.report, junit_path=args.junit)
    print(results.summary())
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
