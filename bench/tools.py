"""The external clients: skopeo (with an empty blob-info cache) and ApacheBench for HEAD.

skopeo as root keeps a blob-info cache in /var/lib/containers/cache that remembers where it has
seen each blob and then mounts instead of uploading; other engineers' runs share it. Every copy
here runs in a private mount namespace with a tmpfs over that directory: an empty-cache client,
like a fresh CI runner.

wrk cannot measure HEAD (its parser waits for the body the Content-Length announces), so HEAD
load comes from `ab -i` (Debian `apache2-utils`), also C and event-driven.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

SKOPEO = "/usr/bin/skopeo"
CACHE_DIR = "/var/lib/containers/cache"
AB = "/usr/bin/ab"


def skopeo_copy(src: str, dest: str, timeout: float = 600) -> None:
    script = f'mkdir -p {CACHE_DIR} && mount -t tmpfs bench-cache {CACHE_DIR} && exec "$@"'
    argv = [
        "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
        SKOPEO, "--insecure-policy", "copy", "--quiet",
        "--src-tls-verify=false", "--dest-tls-verify=false", src, dest,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo copy {src} {dest} failed: {proc.stderr[-2000:]}")


@dataclass(frozen=True)
class AbResult:
    requests: int
    seconds: float
    failed: int
    non_2xx: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def have_ab() -> bool:
    return shutil.which("ab", path="/usr/bin:/usr/local/bin") is not None


def run_ab_head(url: str, *, connections: int, seconds: float) -> AbResult:
    proc = subprocess.run(
        [AB, "-i", "-k", "-r", "-q", "-c", str(connections), "-t", str(max(1, round(seconds))),
         "-n", "100000000", "-s", "30", url],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    out = proc.stdout

    def grab(pattern: str, default: float | None = None) -> float:
        m = re.search(pattern, out, re.M)
        if not m:
            if default is not None:
                return default
            raise RuntimeError(f"ab output lacks {pattern!r}: {out}\n{proc.stderr}")
        return float(m.group(1))

    return AbResult(
        requests=int(grab(r"^Complete requests:\s+(\d+)")),
        seconds=grab(r"^Time taken for tests:\s+([\d.]+)"),
        failed=int(grab(r"^Failed requests:\s+(\d+)")),
        non_2xx=int(grab(r"^Non-2xx responses:\s+(\d+)", 0)),
        p50_ms=grab(r"^\s+50%\s+(\d+)"),
        p99_ms=grab(r"^\s+99%\s+(\d+)"),
    )
