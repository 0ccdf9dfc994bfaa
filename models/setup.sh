#!/usr/bin/env bash
# Create models/.venv and install models/requirements.txt (idempotent).
# Usage (from anywhere): bash models/setup.sh
# Then: models/.venv/bin/python models/make_fixtures.py
# With the argument 5x: models/.venv5 from models/requirements-5x.txt (transformers 5.x),
#   bash models/setup.sh 5x
# used by models/make_variant_fixtures.py (see its docstring).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in
    "") VENV="$HERE/.venv"; REQ="$HERE/requirements.txt" ;;
    5x) VENV="$HERE/.venv5"; REQ="$HERE/requirements-5x.txt" ;;
    *) echo "usage: bash models/setup.sh [5x]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# Skip pip entirely when everything pinned is already installed at that version.
if "$VENV/bin/python" - "$REQ" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        ok = False
        print(f"setup.sh: {name}: have {have}, want {want}")
sys.exit(0 if ok else 1)
PYEOF
then
    echo "setup.sh: $VENV is up to date"
else
    "$VENV/bin/python" -m pip install --upgrade --quiet pip
    "$VENV/bin/python" -m pip install --quiet -r "$REQ"
fi
