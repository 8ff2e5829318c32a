#!/usr/bin/env bash
# One prepared check for a lent GPU (issue 9, item 7): the benchmarks issue's items 1, 2 and 5 for full C3D on
# CUDA, so the paper's GTX 1080 Ti figures can be set beside ours; plus peak memory (item 6) if time is left.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        # run from anywhere; works in the repository root
#
# Steps (each under its own `timeout`, all within a ~5.5 minute deadline; expected ~2-3 minutes on an H200):
#   0. environment: python with torch + captum (tries `pip install -e .` when missing; no internet is fine
#      when the packages are already there), CUDA visible, nvidia-smi -> $OUT/nvidia-smi.txt
#   1. bench_table4.py --device cuda: DTD / Grad-CAM / GBP / Guided Grad-CAM, 50 clips b1 + 5 batches of 8
#   2. bench_selective.py --device cuda: ours vs the authors' conv3d formulation vs the floor
#   3. bench_training.py --device cuda --only full: full C3D training clips/s and data-wait share,
#      2 workers vs 0 (motion_shapes 128x171 when OpenCV/decord/Lightning are installed, else random tensors)
#   4. bench_memory.py --device cuda (optional, if time remains)
#   5. run_all.py --collect-only: $OUT/gpu-<name>.{json,md} summary + $OUT/README.md index
# Everything is written under $OUT (default benchmarks/results/gpu); the log is $OUT/gpu_check.log.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export OUT MR_BENCH_RESULTS_DIR="$OUT" WANDB_MODE=offline PYTHONUNBUFFERED=1 BENCH_QUICK=0
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_BUDGET_S:-330} ))
FAILED=()

# step NAME CAP_S CMD...: run CMD under `timeout min(CAP_S, time left)`; record failures, never abort.
step() {
  local name=$1 cap=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  if (( left < 15 )); then echo "== $name: SKIPPED (deadline reached)"; FAILED+=("$name (skipped)"); return 1; fi
  local t=$(( cap < left ? cap : left ))
  echo "== $name (timeout ${t}s): $*"
  local s=$(date +%s)
  timeout --kill-after=10 "$t" "$@"
  local rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - s ))s"
  (( rc == 0 )) || FAILED+=("$name (exit $rc)")
  return $rc
}

# ---- 0. environment ------------------------------------------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in .venv/bin/python python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null
    then PY=$cand; break; fi
  done
fi
if [ -z "$PY" ]; then  # no CUDA torch anywhere: take the system python and let pip try below
  PY=$(command -v python3 || command -v python || true)
  if [ -z "$PY" ]; then echo "gpu_check: no python found; nothing was measured."; exit 2; fi
fi
echo "python: $PY"
if ! command -v nvidia-smi >/dev/null 2>&1 && ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null
then
  echo "gpu_check: no NVIDIA GPU here (no nvidia-smi, no CUDA torch); nothing was measured, nothing installed."
  exit 2
fi
if ! "$PY" -c "import torch, captum" 2>/dev/null; then
  echo "torch/captum missing: trying 'pip install -e .' with whatever index is reachable"
  timeout 120 "$PY" -m pip install --retries 0 --timeout 10 -q -e . \
    || timeout 60 "$PY" -m pip install --no-index -q -e . || true
fi
if ! "$PY" -c "import torch, captum" 2>/dev/null; then
  echo "gpu_check: 'import torch, captum' still fails with $PY and pip could not install them (no internet?)."
  echo "           Install captum (pip install captum) into that python, then rerun; nothing was measured."
  exit 2
fi
if ! "$PY" -c "import motion_relevance" 2>/dev/null; then
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # the package from the working tree, not installed
fi
"$PY" - <<'EOF' || { echo "gpu_check: CUDA not usable from torch ($PY); set PYTHON=...; nothing was measured."; exit 2; }
import captum, torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), captum {captum.__version__}, "
      f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
if "$PY" -c "import cv2, decord, pytorch_lightning" 2>/dev/null; then TRAIN_DATA=auto; else TRAIN_DATA=tensor; fi
echo "training data for the full C3D: $TRAIN_DATA (auto = real videos if \$MR_SHARED_DATA or ../shared/data exists, else motion_shapes)"

# ---- 1-4. measurements ---------------------------------------------------------------------------------------
step table4 150 "$PY" benchmarks/bench_table4.py --device cuda --clips 50 --warmup 5 --b8-batches 5 --b8-warmup 1
step selective 60 "$PY" benchmarks/bench_selective.py --device cuda --repeats 200 --authors-repeats 50 --threads 4
step training 150 "$PY" benchmarks/bench_training.py --device cuda --only full --full-data "$TRAIN_DATA" \
  --full-steps 30 --full-batch 16 --warmup 3 --threads 4
if [ "$TRAIN_DATA" = auto ] && [ ! -s "$OUT/bench_training.json" ]; then
  step training_tensor 90 "$PY" benchmarks/bench_training.py --device cuda --only full --full-data tensor \
    --full-steps 30 --full-batch 16 --warmup 3 --threads 4
fi
step memory 90 "$PY" benchmarks/bench_memory.py --device cuda --threads 4

# ---- 5. summary ------------------------------------------------------------------------------------------------
DEADLINE=$(( DEADLINE + 30 ))
step summary 30 "$PY" benchmarks/run_all.py --collect-only --device cuda --out "$OUT"
echo "outputs in $OUT:"; ls -l "$OUT"
if (( ${#FAILED[@]} )); then echo "gpu_check: FAILED steps: ${FAILED[*]}"; exit 1; fi
echo "gpu_check: all steps passed"
