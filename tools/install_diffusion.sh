#!/usr/bin/env bash
# Install the optional diffusers stack of InvSeg (the `diffusion` extra) into a venv, with the exact CI pins.
#   bash tools/install_diffusion.sh .venv/bin/python      (what `make install-diffusion` runs; safe to re-run)
# diffusers 0.42 / transformers 5.x need Python >= 3.11: on an older interpreter this says so and fails.
set -euo pipefail

PY="${1:-.venv/bin/python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSTRAINTS="$ROOT/requirements/constraints-ci.txt"

if [ ! -x "$PY" ]; then
    echo "install_diffusion.sh: '$PY' is not an executable Python; run 'make install' first or pass the venv python." >&2
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "install_diffusion.sh: the diffusion extra needs Python >= 3.11 (diffusers 0.42, transformers 5.x);" \
         "'$PY' is $("$PY" -c 'import sys; print(sys.version.split()[0])'). Recreate the venv with Python 3.11+." >&2
    exit 1
fi
if "$PY" - "$CONSTRAINTS" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

pins = {}
for line in open(sys.argv[1]):
    name, sep, pinned = line.strip().partition("==")
    if sep:
        pins[name.lower().replace("_", "-")] = pinned
try:
    ok = all(version(n) == pins[n] for n in ("diffusers", "transformers", "accelerate", "safetensors", "tokenizers"))
except (PackageNotFoundError, KeyError):
    ok = False
sys.exit(0 if ok else 1)
PYEOF
then
    echo "install_diffusion.sh: the pinned diffusion stack is already installed in $PY."
    exit 0
fi
"$PY" -m pip install -q -c "$CONSTRAINTS" -e "$ROOT[diffusion]"
"$PY" -c 'import diffusers, transformers; print(f"diffusers {diffusers.__version__}, transformers {transformers.__version__}")'
