#!/usr/bin/env bash
# Run the whole test suite headless: pytest-xvfb starts a virtual X server for
# napari's OpenGL canvas; napari's settings go to a throw-away folder.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=xcb QT_API=pyqt6
export NAPARI_CONFIG="$(mktemp -d)/napari-settings.yaml"
export MPLBACKEND=Agg OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "$VENV/bin/python" -m pytest tests "${@:2}"
