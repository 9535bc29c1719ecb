#!/usr/bin/env bash
# One-shot check of the CUDA path on a GPU machine; see docs/gpu.md.
#   OUT=/path/to/results bash tools/gpu_check.sh            # from the repository root; under 8 minutes
#   OUT=/tmp/dry bash tools/gpu_check.sh --dry-run          # CPU: checks the script itself on a tiny tree
# Results: $OUT/summary.json, one <stage>.json and <stage>.log per stage, bench/*.json, runs/*/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-${TMPDIR:-/tmp}/vfu_gpu_check_results}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
echo "[gpu_check] $("$PYTHON" --version 2>&1) at $PYTHON, results in $OUT"
exec "$PYTHON" tools/gpu_check.py --out "$OUT" "$@"
