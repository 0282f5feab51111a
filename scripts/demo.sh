#!/usr/bin/env bash
# The main job on the bundled sample: super-resolve sample leukocytes with the
# bundled models and print PSNR/SSIM against their high-resolution originals.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg
exec "$VENV/bin/napari-resolve" demo -o demo_output "${@:2}"
