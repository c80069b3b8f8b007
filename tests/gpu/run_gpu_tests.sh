#!/usr/bin/env bash
# tests/gpu/run_gpu_tests.sh: build vera-dist with the CUDA backend and run its GPU tests.
#
#   tests/gpu/run_gpu_tests.sh [BUILD_DIR]        (from anywhere; default BUILD_DIR build-gpu)
#
# Steps: configure (-DVERA_CUDA=ON, Release, warnings as errors) and build; list the GPUs; run
# ctest with the labels in VERA_GPU_LABELS (default "^(gpu|unit)$": the GPU tests, and the CPU unit
# tests in this CUDA build); write every log under BUILD_DIR/gpu-results/; print a summary.
#   test_gpu_kernels  every backend op against the CPU backend, forward and backward, with the
#                     error measured and its bound (the bounds are stated in the source); run
#                     twice: attention through cuBLAS (default) and VERA_CUDA_ATTENTION=kernel
#   gpu_train         20-step parity with the CPU (1e-4 relative, fp32), merged and factored
#                     input gradients, dropout; determinism (bit-identical reruns); 2 ranks
#                     (NCCL with 2+ GPUs; with one GPU the ranks share it and reduce over MPI,
#                     since NCCL refuses two ranks per GPU); checkpoints resumed across devices
# Exit status: 0 when everything passed, or when everything was skipped because there is no
# usable GPU (the summary then says "SKIPPED: no CUDA device (<reason>)"); 1 when a test failed,
# the build failed, or GPU tests were skipped although nvidia-smi lists a GPU (for example a
# build for another architecture: set CMAKE_CUDA_ARCHITECTURES).
# Environment: CMAKE_CUDA_ARCHITECTURES (default: CMake's default of this project, 90),
# VERA_GPU_WERROR (default ON; tests/gpu/device.sh sets OFF: an untried host compiler's new
# warning must not cost the one device call),
# VERA_GPU_LABELS, VERA_JOBS, CMAKE_ARGS (more configure arguments, e.g. CMAKE_PREFIX_PATH for
# MPI/HDF5 brought along, see docs/gpu.md).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
BUILD="${1:-build-gpu}"
JOBS="${VERA_JOBS:-$(nproc)}"
LABELS="${VERA_GPU_LABELS:-^(gpu|unit)$}"
RESULTS="$BUILD/gpu-results"
export OMPI_MCA_rmaps_base_oversubscribe=1
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

say() { printf '[run_gpu_tests] %s\n' "$*"; }

mkdir -p "$RESULTS" || exit 1
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
  echo "nvcc: $(command -v nvcc >/dev/null && nvcc --version | tail -n 1 || echo 'not found')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  else
    echo "gpu: nvidia-smi not found"
  fi
} | tee "$RESULTS/machine.txt"

ARCH_ARGS=()
[[ -n "${CMAKE_CUDA_ARCHITECTURES:-}" ]] && ARCH_ARGS=(-DCMAKE_CUDA_ARCHITECTURES="$CMAKE_CUDA_ARCHITECTURES")
# shellcheck disable=SC2086 # CMAKE_ARGS is a list of words on purpose
if ! cmake -S . -B "$BUILD" -DVERA_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DVERA_WERROR="${VERA_GPU_WERROR:-ON}" "${ARCH_ARGS[@]}" \
     ${CMAKE_ARGS:-} >"$RESULTS/configure.log" 2>&1; then
  tail -n 30 "$RESULTS/configure.log"
  say "FAILED: configure (log: $RESULTS/configure.log; missing MPI or HDF5 development files? see docs/gpu.md)"
  exit 1
fi
if ! cmake --build "$BUILD" -j "$JOBS" >"$RESULTS/build.log" 2>&1; then
  grep -E "error|Error" "$RESULTS/build.log" | head -n 30
  say "FAILED: build (log: $RESULTS/build.log)"
  exit 1
fi
say "built $BUILD (CUDA backend on); running ctest -L '$LABELS'"

rc=0
ctest --test-dir "$BUILD" -L "$LABELS" -V >"$RESULTS/ctest.log" 2>&1 || rc=$?
grep -E "^ *[0-9]+/[0-9]+ Test +#" "$RESULTS/ctest.log" | sed 's/^ */  /'
# the measured errors of every kernel check, for the record
grep -E "^[0-9]+:   .* err .* bound " "$RESULTS/ctest.log" | sed 's/^[0-9]*: //' >"$RESULTS/kernel-errors.txt" || true
grep -E "^[0-9]+: \[gpu_train\]|^[0-9]+:   cuda: rank" "$RESULTS/ctest.log" | sed 's/^[0-9]*: //' >"$RESULTS/train.txt" || true

gpu_re="Test +#[0-9]+: (test_gpu_kernels|gpu_train)[a-z0-9_]* "
gpu_tests=$(grep -c -E "$gpu_re" "$RESULTS/ctest.log" || true)
gpu_skipped=$(grep -E "$gpu_re" "$RESULTS/ctest.log" | grep -c "Skipped" || true)
reason="$(grep -m1 -o -E "SKIPPED: .*" "$RESULTS/ctest.log" || true)"

if [[ $rc -ne 0 ]]; then
  grep -E "FAIL" "$RESULTS/ctest.log" | head -n 40
  say "FAILED: see $RESULTS/ctest.log"
  exit 1
fi
if [[ $gpu_tests -eq 0 ]]; then
  say "FAILED: no GPU test ran (is VERA_CUDA on in $BUILD? labels '$LABELS')"
  exit 1
fi
if [[ $gpu_skipped -gt 0 ]] && command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q "^GPU "; then
  # a GPU is there: skipping is a failure (e.g. a build for another architecture)
  say "FAILED: nvidia-smi lists a GPU, yet $gpu_skipped of $gpu_tests GPU tests were skipped: $reason"
  exit 1
fi
if [[ $gpu_skipped -eq $gpu_tests ]]; then
  say "${reason:-SKIPPED: no CUDA device}"
  say "summary: the CUDA build compiled and the CPU tests passed; all $gpu_tests GPU tests SKIPPED (no usable GPU)"
  exit 0
fi
if [[ $gpu_skipped -gt 0 ]]; then
  say "FAILED: $gpu_skipped of $gpu_tests GPU tests skipped on a machine where others ran: $reason"
  exit 1
fi
say "summary: all $gpu_tests GPU tests passed; measured errors in $RESULTS/kernel-errors.txt, training checks in $RESULTS/train.txt"
exit 0
