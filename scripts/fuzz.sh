#!/usr/bin/env bash
# The fuzzer of tests/test_fuzz.py with many more cases, drawn afresh each run (CI runs the same
# properties with a fixed, smaller set). Usage: scripts/fuzz.sh [CASES_PER_PROPERTY] [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-5000}
shift || true
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
FUZZ_EXAMPLES=$cases FUZZ_RANDOM=1 exec .venv/bin/pytest -s -q -p no:cacheprovider tests/test_fuzz.py "$@"
