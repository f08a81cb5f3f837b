"""Process accounting from /proc: process trees, CPU seconds and resident memory.

Servers are measured as process trees (dockyard may fork workers); the load generator's CPU is
this process plus the children it has waited for, plus any long-lived client daemons (dockerd).
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from dataclasses import dataclass, field

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    # fields[0] is state (stat field 3): utime, stime are stat fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def self_cpu_seconds() -> float:
    """This process and its reaped children (skopeo, wrk, docker CLI …)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS:") * 1024


def hwm_bytes(pid: int) -> int:
    return _status_kib(pid, "VmHWM:") * 1024


def reset_hwm(pid: int) -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of one process (proc(5), clear_refs 5)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@dataclass
class RssSampler:
    """Poll the RSS of a process tree in a thread; keeps the peak of the sum and per process.

    The kernel's VmHWM (reset before, read after) is also taken, so short spikes between two
    polls are not missed for any process alive at the end.
    """

    root_pid: int
    interval: float = 0.02
    peak_tree: int = 0
    peak_process: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        for p in tree(self.root_pid):
            reset_hwm(p)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pids = tree(self.root_pid)
        last_scan = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_scan > 1.0:
                pids, last_scan = tree(self.root_pid), time.monotonic()
            sizes = [rss_bytes(p) for p in pids]
            self.peak_tree = max(self.peak_tree, sum(sizes))
            self.peak_process = max(self.peak_process, *sizes, 0)
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        hwms = [hwm_bytes(p) for p in tree(self.root_pid)]
        self.peak_process = max(self.peak_process, *hwms, 0)
