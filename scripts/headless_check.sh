#!/usr/bin/env bash
# A real headless install (issue 16): a fresh virtual environment with the core only
# (no napari, no Qt binding, no display), then `napari-resolve predict` and `evaluate`
# on the bundled sample. Needs the package index (or a wheel cache) and a few minutes;
# the test suite checks the same code paths offline (tests/test_headless_install.py).
#   bash scripts/headless_check.sh [VENV]      (default: a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-$(mktemp -d)/headless-venv}
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# the CPU wheel of torch when the pinned one is installable (as scripts/setup.sh)
pip install -q "torch==2.13.0" 2>/dev/null || true
pip install -q .
unset DISPLAY WAYLAND_DISPLAY QT_QPA_PLATFORM
for mod in napari qtpy PyQt6 PyQt5 PySide6 magicgui; do
  if python -c "import $mod" 2>/dev/null; then echo "headless check: $mod is installed" >&2; exit 1; fi
done
work=$(mktemp -d)
python - "$work" <<'PY'
import sys
import imageio.v3 as iio
from napari_resolve.data import samples
from napari_resolve.data.degrade import imresize
cell = samples.wbc(2, ids=[1], root="sample_data")[0][0][:200, :200]
iio.imwrite(f"{sys.argv[1]}/hr.png", cell)
iio.imwrite(f"{sys.argv[1]}/lr.png", imresize(cell, 0.25, channel_axis=-1))
PY
napari-resolve predict "$work/lr.png" -o "$work/sr.tif" --model np-x4 --device cpu
napari-resolve evaluate --lr "$work/lr.png" --hr "$work/hr.png" --model np-x4 --scale 4
echo "headless check: passed ($VENV)"
