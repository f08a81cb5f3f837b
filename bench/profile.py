"""py-spy attached to dockyard while it serves a phase (`--profile`).

Each phase gets a raw collapsed-stack file (flamegraph.pl / speedscope read it) and a text
summary of where the CPU went: by leaf frame, and by the deepest frame in dockyard's own code
(library time charged to the project line that called into the library).
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .servers import ROOT, Target

PROJECT_DIRS = ("registry", "auth", "dockyard", "launcher")
FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>.*?):(?P<line>\d+)\)$")
# Leaves of threads that wait, which py-spy's idle detection misses on this kind of VM: pool
# workers blocked on their queue, the SQLite writer thread, the event loop in epoll.
IDLE_LEAVES = (
    ("_worker", "concurrent/futures/thread.py"),
    ("select", "selectors.py"),
    ("_queue_SimpleQueue_get_impl", "_queuemodule.c"),
    ("select_epoll_poll_impl", "selectmodule.c"),
    ("wait", "threading.py"),
)


def is_idle(func: str, file: str) -> bool:
    return any((func == f or func.endswith("." + f)) and file.endswith(suffix)
               for f, suffix in IDLE_LEAVES)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _short(path: str) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        marker = "site-packages/"
        return path.split(marker, 1)[1] if marker in path else path


def _is_project(path: str) -> bool:
    return any(_short(path).startswith(d + "/") for d in PROJECT_DIRS)


def parse_frame(frame: str) -> tuple[str, str, int] | None:
    m = FRAME_RE.match(frame.strip())
    if not m:
        return None
    return m["func"], m["file"], int(m["line"])


def summarize(raw: Path, top: int = 20, rate: int = 100) -> str:
    leaf: collections.Counter[str] = collections.Counter()
    project_line: collections.Counter[str] = collections.Counter()
    project_func: collections.Counter[str] = collections.Counter()
    lib_file: collections.Counter[str] = collections.Counter()
    any_func: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in (parse_frame(x) for x in stack.split(";")) if f]
        if not frames:
            continue
        func, file, lineno = frames[-1]
        if is_idle(func, file):
            idle += count
            continue
        total += count
        leaf[f"{func} ({_short(file)}:{lineno})"] += count
        lib_file[_short(file)] += count
        deepest = next((f for f in reversed(frames) if _is_project(f[1])), None)
        if deepest:
            project_line[f"{deepest[0]} ({_short(deepest[1])}:{deepest[2]})"] += count
        seen = {f"{f[0]} ({_short(f[1])})" for f in frames if _is_project(f[1])}
        for key in seen:
            project_func[key] += count
        for key in {f"{f[0]} ({_short(f[1])})" for f in frames}:
            any_func[key] += count

    def block(title: str, counter: collections.Counter[str]) -> list[str]:
        out = [f"## {title}"]
        for key, n in counter.most_common(top):
            out.append(f"{100 * n / max(total, 1):5.1f}%  {n:6d}  {key}")
        return [*out, ""]

    lines = [f"# {raw.name}: {total} busy samples at {rate} Hz ({total / rate:.1f} CPU s); "
             f"{idle} samples of waiting threads left out", ""]
    lines += block("deepest dockyard frame (library time charged to the calling line)",
                   project_line)
    lines += block("dockyard functions, inclusive", project_func)
    lines += block("all functions, inclusive (what the event loop spends its time in)", any_func)
    lines += block("leaf frames (self time)", leaf)
    lines += block("self time by file", lib_file)
    return "\n".join(lines)


class Profiler:
    def __init__(self, out_dir: Path, rate: int = 100, native: bool = False) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy into the venv)")
        self.exe = exe
        self.out_dir = out_dir
        self.rate = rate
        self.native = native
        self.files: dict[str, Path] = {}
        out_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def attach(self, phase: str, target: Target) -> Iterator[None]:
        slug = re.sub(r"[^a-z0-9]+", "-", phase.lower()).strip("-")
        n = sum(1 for k in self.files if k.startswith(slug))
        raw = self.out_dir / f"{slug}-{n}.txt"
        proc = subprocess.Popen(
            [self.exe, "record", "--pid", str(target.pid), "--subprocesses", "--rate",
             str(self.rate), "--format", "raw", "--full-filenames", "-o", str(raw),
             *(["--native"] if self.native else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if raw.exists():
                self.files[f"{slug}-{n}"] = raw
                raw.with_suffix(".top.txt").write_text(summarize(raw, rate=self.rate))
            else:
                (self.out_dir / f"{slug}-{n}.err").write_bytes(err or b"")
