#!/usr/bin/env bash
# Device check for the CPU kernel of selective relevance (issue 3) on a second, larger machine, plus the CUDA path:
#   0. environment (python, CPU model and flags, cores, GPU)
#   1. build the kernels in place exactly as `pip install` does (setup.py build_ext --inplace) and load one
#   2. tests/test_selective_kernel.py (kernel == tensor ops, 1-8 threads; CUDA == CPU) and, with scipy,
#      tests/test_selective.py
#   3. bench_selective.py on the CPU with 1, 2 and all cores, then on CUDA
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

echo "== 1. build the kernels in place (what pip install -e . does)"
timeout 120 "$PY" setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED:"; tail -20 "$OUT/build.log"; }
ls src/motion_relevance/explain/*.so 2>/dev/null
"$PY" -c "from motion_relevance.explain import _selective_kernel as k; print('loaded kernel:', k.variant())"

echo "== 2. tests"
if "$PY" -c "import pytest" 2>/dev/null; then
  files="tests/test_selective_kernel.py"
  "$PY" -c "import scipy" 2>/dev/null && files="$files tests/test_selective.py"
  timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m "" $files 2>&1 | tail -5  # -m "": with the gpu test
else
  echo "no pytest on this machine: skipped (the benchmark below still checks the masks)"
fi

echo "== 3. benchmarks"
timeout 150 "$PY" benchmarks/bench_selective.py --threads "1,2,$(nproc)" --repeats 40 --authors-repeats 5 2>&1 | tail -40
cp "$OUT/bench_selective.md" "$OUT/bench_selective_cpu.md" 2>/dev/null
cp "$OUT/bench_selective.json" "$OUT/bench_selective_cpu.json" 2>/dev/null
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  timeout 90 "$PY" benchmarks/bench_selective.py --device cuda --repeats 100 --authors-repeats 20 2>&1 | tail -12
fi
echo "== done"
