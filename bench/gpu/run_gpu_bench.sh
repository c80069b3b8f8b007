#!/usr/bin/env bash
# bench/gpu/run_gpu_bench.sh: the GPU benchmark of the issue (part 4). NOT YET RUN: written on
# a machine without a GPU (docs/gpu.md lists what remains).
#
#   bench/gpu/run_gpu_bench.sh [BUILD_DIR]     (default build-gpu; built here if missing)
#
# For GPT-2-small (124M) and GPT-2-medium (350M) shapes at seq_len 1024, r = 256 on all four
# linear layers: tokens/s, MFU against this GPU's measured bf16 matmul throughput, and peak GPU
# memory of vera-dist (--device cuda; fp32, and bf16 once implemented) and of PEFT + PyTorch
# (eager and torch.compile, bf16 autocast) at the same batch, on the same GPU, one after the
# other. Tables and JSON go to bench/gpu/results/<gpu>-<date>.{md,json}; copy the table into
# docs/benchmarks.md with the command and the GPU.
# Environment: PYTHON (default python3: needs torch, transformers, peft, safetensors, numpy),
# SMALL_BATCH (default 8), MEDIUM_BATCH (default 4), STEPS (default 25), VERA_JOBS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD="${1:-build-gpu}"
PY="${PYTHON:-python3}"
if [[ ! -x "$BUILD/vera-dist" ]]; then
  cmake -S . -B "$BUILD" -DVERA_CUDA=ON -DCMAKE_BUILD_TYPE=Release
  cmake --build "$BUILD" -j "${VERA_JOBS:-$(nproc)}" --target vera-dist
fi
command -v nvidia-smi >/dev/null || { echo "SKIPPED: nvidia-smi not found (no GPU driver)"; exit 0; }
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr ' ' '-')"
stamp="$(date -u +%Y%m%d-%H%M%S)"
mkdir -p bench/gpu/results
md="bench/gpu/results/${gpu}-${stamp}.md"
{
  echo "# vera-dist GPU benchmark, $(date -u +%Y-%m-%d)"
  echo
  echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
  echo "- commit: $(git rev-parse HEAD)$(git status --porcelain | grep -q . && echo ' (with local changes)')"
  echo "- command: bench/gpu/run_gpu_bench.sh $BUILD"
  echo
} > "$md"
"$PY" bench/gpu/bench_gpu.py --vera-dist "$BUILD/vera-dist" --shape gpt2-small --batch "${SMALL_BATCH:-8}" \
  --steps "${STEPS:-25}" --peft-fp32 --markdown "$md" --json "bench/gpu/results/${gpu}-${stamp}-small.json"
"$PY" bench/gpu/bench_gpu.py --vera-dist "$BUILD/vera-dist" --shape gpt2-medium --batch "${MEDIUM_BATCH:-4}" \
  --steps "${STEPS:-25}" --markdown "$md" --json "bench/gpu/results/${gpu}-${stamp}-medium.json"
echo "wrote $md"
