#!/usr/bin/env bash
# The GPU check of issue 17 (docs/performance.md, "GPU"): install the carried wheels the image lacks, run the CUDA
# tests and the benchmarks, write gpu_check.json + gpu_check.md into the folder given as the first argument.
#   tools/gpu_check.sh outputs/gpu_check            # on the GPU machine (< 8 minutes on one H200)
#   tools/gpu_check.sh outputs/gpu_check --dry-run  # CPU smoke run of the same plan
# PYTHON selects the interpreter (default: python3, the image's own, which has torch).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" tools/gpu_check.py "$@"
