#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite: ./scripts/test.sh [pytest args].
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
