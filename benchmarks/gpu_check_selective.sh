#!/usr/bin/env bash
# Device check of selective relevance (torch operations) on a machine with a GPU:
#   0. environment (python, CPU model and flags, cores, GPU)
#   1. tests/test_selective.py with the gpu marker (CUDA == CPU == the scipy reference)
#   2. bench_selective.py on the CPU with 1, 2 and all cores, then on CUDA
# Writes $OUT (default benchmarks/results/gpu/selective) and $OUT/check.log; each step under its own timeout.
#
#   OUT=/some/dir bash benchmarks/gpu_check_selective.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu/selective}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export MR_BENCH_RESULTS_DIR="$OUT" WANDB_MODE=offline PYTHONUNBUFFERED=1
# packages this repository needs that a bare GPU image may lack can be carried in .gpu_site/
export PYTHONPATH="$PWD/.gpu_site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
exec > >(tee -a "$OUT/check.log") 2>&1

echo "== 0. environment"
"$PY" -V
nproc
lscpu | grep -E "Model name|^Flags" | cut -c1-400
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cpu capability', torch.backends.cpu.get_cpu_capability(), 'threads', torch.get_num_threads())"

echo "== 1. tests (the CUDA path against the CPU and the scipy reference)"
if "$PY" -c "import pytest, scipy" 2>/dev/null; then
  timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m "" tests/test_selective.py 2>&1 | tail -5  # -m "": gpu test too
else
  echo "no pytest/scipy on this machine: skipped (the benchmark below still checks the masks)"
fi

echo "== 2. benchmarks"
timeout 150 "$PY" benchmarks/bench_selective.py --threads "1,2,$(nproc)" --repeats 40 --authors-repeats 5 2>&1 | tail -40
cp "$OUT/bench_selective.md" "$OUT/bench_selective_cpu.md" 2>/dev/null
cp "$OUT/bench_selective.json" "$OUT/bench_selective_cpu.json" 2>/dev/null
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  timeout 90 "$PY" benchmarks/bench_selective.py --device cuda --repeats 100 --authors-repeats 20 2>&1 | tail -12
fi
echo "== done"
