#!/usr/bin/env bash
# Install detectron2 v0.6 (pure Python, CPU) and Mask2Former (maskformer2 0.1) into a virtual environment, from the
# package registry only. Idempotent: does nothing when both already import. Used by `make install-detectron2`
# (and therefore `make test`); see docs/maskclippp.md "Mask generators" for the upstream from-source install that
# GPU users should prefer (compiled detectron2 ops and the MultiScaleDeformableAttention CUDA kernel).
#
#   bash tools/install_detectron2.sh .venv/bin/python
#
# What it does, and why:
# * detectron2 is not on the registry under its own name; `pb1-detectron2==0.6` is the upstream v0.6 sdist without
#   `layers/csrc`. Its setup.py is patched in a temporary directory: no C++ extension (ext_modules=[]), the model-zoo
#   configs moved to the top-level `configs/` setup.py expects, no `[all]` extra (it holds a direct URL that pip
#   rejects) and no `black==21.4b2` pin (only used to pretty-print LazyConfig files). Built with `setuptools<81`
#   and `--no-build-isolation` (setup.py imports torch).
# * pip >= 26.3 refuses to even download an sdist whose metadata declares a direct URL; the script then runs the
#   download with the last pip release before that check, straight from its wheel (pip supports `python pip.whl/pip`).
# * maskformer2 is installed with `--no-deps` (its requirements are direct URLs and old pins); timm, scipy and
#   opencv-python-headless are added explicitly. Its deformable attention falls back to the pure-PyTorch path on CPU.
# * The run-time shims (stub `detectron2._C`, numpy aliases, `PIL.Image.LINEAR`, the SetCriterion adapter) live in
#   `ovs/generators/d2compat.py`, imported before detectron2 by the ovs adapter.
set -euo pipefail

PY="${1:?usage: bash tools/install_detectron2.sh PATH/TO/venv/bin/python}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSTRAINTS="$REPO/requirements/constraints-ci.txt"

check() {
    (cd "$REPO" && "$PY" -c "import ovs.generators.d2compat as c; c.import_detectron2(); c.import_mask2former()") \
        >/dev/null 2>&1
}

if check; then
    echo "detectron2 and Mask2Former already installed in $("$PY" -c 'import sys; print(sys.prefix)')."
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

pip_download() {
    if ! "$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: "$1" -d "$WORK" 2>"$WORK/err"; then
        if ! grep -q "direct URL" "$WORK/err"; then
            cat "$WORK/err" >&2
            return 1
        fi
        if [ ! -e "$WORK/oldpip" ]; then
            mkdir -p "$WORK/oldpip"
            "$PY" -m pip download -q --no-deps "pip<26.3" -d "$WORK/oldpip"
        fi
        local wheel
        wheel="$(ls "$WORK"/oldpip/pip-*.whl | head -n 1)"
        "$PY" "$wheel/pip" download -q --no-deps --no-build-isolation --no-binary :all: "$1" -d "$WORK"
    fi
}

"$PY" -m pip install -q "setuptools<81" wheel
pip_download "pb1-detectron2==0.6"
pip_download "maskformer2==0.1"
tar -xzf "$WORK"/pb1-detectron2-0.6.tar.gz -C "$WORK"
tar -xzf "$WORK"/maskformer2-0.1.tar.gz -C "$WORK"

D2="$WORK/pb1-detectron2-0.6"
"$PY" - "$D2" <<'EOF'
import re
import shutil
import sys
from pathlib import Path

root = Path(sys.argv[1])
setup = root / "setup.py"
text = setup.read_text()
text = text.replace("ext_modules=get_extensions(),", "ext_modules=[],")
text = text.replace('cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},', "")
text = re.sub(r'\s*"panopticapi @ [^"]*",', "", text)
text = re.sub(r'\s*"black==[^"]*",', "", text)
setup.write_text(text)
zoo = root / "detectron2" / "model_zoo" / "configs"
if zoo.is_dir() and not zoo.is_symlink() and not (root / "configs").exists():
    shutil.move(str(zoo), str(root / "configs"))
EOF

M2F="$WORK/maskformer2-0.1"
"$PY" - "$M2F" <<'EOF'
import sys
from pathlib import Path

setup = Path(sys.argv[1]) / "setup.py"
text = setup.read_text().replace("ext_modules=get_extensions(),", "ext_modules=[],")
setup.write_text(text.replace('cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},', ""))
EOF

# Keep every package already pinned for ovs at its pin (torch, numpy, ...); the rest resolve freely.
"$PY" -m pip install -q -c "$CONSTRAINTS" --no-build-isolation "$D2"
"$PY" -m pip install -q -c "$CONSTRAINTS" --no-build-isolation --no-deps "$M2F"
"$PY" -m pip install -q -c "$CONSTRAINTS" timm scipy opencv-python-headless

if ! check; then
    echo "detectron2 / Mask2Former were installed but do not import; run:" >&2
    echo "  $PY -c 'import ovs.generators.d2compat as c; c.import_detectron2(); c.import_mask2former()'" >&2
    exit 1
fi
echo "detectron2 0.6 (pure Python) and Mask2Former installed."
