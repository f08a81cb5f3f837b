"""Drive Debian's `wrk` (C, epoll) so the load generator is not the bottleneck.

A generated Lua script sets the method and headers and prints one JSON line with requests,
bytes, errors and latency percentiles when the run is done. With `paths`, each request takes
the next path of the list (round robin, each wrk thread starting elsewhere), so load
can be spread over many repositories.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

WRK = "/usr/bin/wrk"

SCRIPT = """
wrk.method = {method}
{headers}
{paths}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "bytes": %d, "status_errors": %d, '
    .. '"socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    status_errors: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mib_s(self) -> float:
        return self.bytes / self.seconds / (1024 * 1024)


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Round robin over `paths`; wrk.format(nil, path) keeps wrk.method and wrk.headers.
PATHS = """
paths = {{{items}}}
local i = 0
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("offset", threads * 7919)
end
init = function(args)
  i = (offset or 0) % #paths
end
request = function()
  i = i % #paths + 1
  return wrk.format(nil, paths[i])
end
"""


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    threads: int = 2,
    timeout_s: int = 30,
    paths: list[str] | None = None,
) -> WrkResult:
    """`paths` (absolute paths on the host of `url`): spread the requests over them; a one-item
    list costs the same Lua per request, for a like-for-like comparison with a spread list."""
    paths_lua = PATHS.format(items=", ".join(_lua(x) for x in paths)) if paths else ""
    header_lines = "\n".join(
        f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in (headers or {}).items()
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(SCRIPT.format(method=_lua(method), headers=header_lines, paths=paths_lua))
        script = f.name
    try:
        proc = subprocess.run(
            [WRK, f"-t{min(threads, connections)}", f"-c{connections}",
             f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s", "-s", script, url],
            capture_output=True, text=True, timeout=seconds + timeout_s + 30,
        )
    finally:
        Path(script).unlink(missing_ok=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    d = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        requests=d["requests"],
        seconds=d["duration_us"] / 1e6,
        bytes=d["bytes"],
        status_errors=d["status_errors"],
        socket_errors=d["socket_errors"],
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
    )
