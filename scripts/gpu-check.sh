#!/usr/bin/env bash
# Wan-1.3B geometry, random weights, 480x832 bf16 on CUDA: bench P0/P4, eager and compiled, with the
# breakdown and peak memory. `scripts/gpu-check.sh --tiny` runs it on the tiny geometry (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec python -m vidcascade.eval.gpu_check "$@"
