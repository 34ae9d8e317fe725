#!/usr/bin/env bash
# Set up .venv if needed, then train: ./scripts/train.sh [hydra overrides], e.g. optimizer=sgd.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
exec "$root/.venv/bin/trainlab" train "$@"
