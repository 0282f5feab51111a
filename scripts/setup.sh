#!/usr/bin/env bash
# Set up a headless environment for napari-resolve on a fresh Debian machine.
# - system libraries for Qt's xcb platform and a virtual X server (napari's
#   OpenGL canvas does not run on QT_QPA_PLATFORM=offscreen);
# - a virtual environment with torch pinned to 2.13.0 when that (CPU) wheel is
#   installable, so that no later requirement drags in the multi-GB CUDA build.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."

need_apt=0
for bin in Xvfb xauth; do command -v "$bin" >/dev/null 2>&1 || need_apt=1; done
for lib in libxcb-cursor.so.0 libxkbcommon-x11.so.0 libEGL.so.1 libxcb-icccm.so.4; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
      xvfb xauth libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 \
      libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 \
      libxcb-render-util0 libxcb-shape0 x11-utils >/dev/null
  else
    echo "setup: Xvfb/Qt system libraries missing and cannot apt-get install them (not root?)" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip

CONSTRAINT="$VENV/constraints.txt"
if pip download -q --no-deps -d "$(mktemp -d)" "torch==2.13.0" >/dev/null 2>&1; then
  echo "torch==2.13.0" > "$CONSTRAINT"
  pip install -q "torch==2.13.0"
else
  : > "$CONSTRAINT"   # no pinned wheel here: let pip choose within pyproject's range
fi
export PIP_CONSTRAINT="$CONSTRAINT"
# everything: the napari plugin, BioImage Model Zoo export and the test tools
# (a headless core-only install is `pip install -e .`; see scripts/headless_check.sh)
pip install -q -e ".[napari,bioimageio,test]"
python -c "import torch, napari_resolve; print('napari-resolve', napari_resolve.__version__, '| torch', torch.__version__)"
touch "$VENV/.installed"
