#!/usr/bin/env bash
# Creates .venv in the repo root with trainlab installed editable (plus the dev, sweep, postgres and export extras), or
# refreshes it when pyproject.toml changed since the last set-up. Quiet when nothing to do.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.trainlab-pyproject.sha256"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "setup: trainlab needs Python >= 3.10; set PYTHON=/path/to/python3.x" >&2
    exit 2
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup: creating $venv (the first install of torch takes a minute or two)" >&2
    "$python" -m venv "$venv"
else
    echo "setup: pyproject.toml changed; updating $venv" >&2
fi
# -qq: pip's own notices about optional local indexes are noise here; errors still print.
"$venv/bin/python" -m pip install -qq -e "$root[dev,sweep,postgres,export]"
echo "$want" >"$stamp"
echo "setup: ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))" >&2
