#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite: ./scripts/test.sh [pytest args].
# The tests are spread over TRAINLAB_TEST_WORKERS processes (pytest-xdist; default 2, the
# cores of the machines it is timed on; 0 runs them in this one process, in order).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest -n "${TRAINLAB_TEST_WORKERS:-2}" "$@"
