#!/usr/bin/env bash
# Install what the benchmarks drive, then run them: scripts/bench.sh [python -m bench args]
# As root on Debian: docker.io, skopeo, docker-registry, busybox-static, wrk and apache2-utils
# (ab: wrk cannot do HEAD). Results go to bench/results/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in dockerd:docker.io skopeo:skopeo docker-registry:docker-registry wrk:wrk ab:apache2-utils; do
  bin=${pair%%:*}; pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
exec .venv/bin/python -m bench "$@"
