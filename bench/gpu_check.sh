#!/usr/bin/env bash
# One prepared run on a machine with an NVIDIA GPU (< 8 min): the CUDA parity checks on the real device
# (no simulator), `pyrt bench run --device cuda` on Gemma 3 270M Q4_K_M (tok/s), and where a decode
# step's time goes (bench/gpu_profile.py: launches vs kernels, share of the memory bandwidth).
# Needs: the `cuda` and `model` extras and the built Cython extension (pip install -e ".[cuda,model,test]").
# Usage: bench/gpu_check.sh [OUTDIR]   (results: OUTDIR/gpu-parity.txt, OUTDIR/bench-gemma3-270m-cuda.md,
#        OUTDIR/gpu-profile-gemma3-270m.json)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset NUMBA_ENABLE_CUDASIM
start=$(date +%s)
rc=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python - <<'PY' || { echo "gpu_check: the CUDA backend cannot start (see above)"; exit 1; }
from pyrt.backends import get_backend
print("gpu_check:", get_backend("cuda").describe())
PY

echo "--- parity: CUDA kernels vs the CPU ops on the device ---"
timeout 240 python -m pytest -q -p no:cacheprovider tests/cuda/parity_checks.py 2>&1 | tee "$out/gpu-parity.txt" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1

echo "--- pyrt bench run --device cuda (Gemma 3 270M Q4_K_M) ---"
timeout 150 python -m pyrt.cli bench run --device cuda -p 512 -n 128 -r 2 -o md 2>&1 \
    | tee "$out/bench-gemma3-270m-cuda.md"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1

echo "--- where a decode step's time goes ---"
timeout 90 python bench/gpu_profile.py -n 32 --json "$out/gpu-profile-gemma3-270m.json" || rc=1

echo "gpu_check: finished in $(( $(date +%s) - start )) s, rc=$rc"
exit $rc
