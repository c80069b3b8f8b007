#!/usr/bin/env bash
# tests/gpu/device.sh: the one prepared device command (issue 9, part 7 item 4). Run on the lent GPU
# machine from the repository root, with the bundle of tests/gpu/bundle.sh carried in .bundle:
#
#   bash tests/gpu/device.sh                 (device tool: carry [".bundle"], timeout_s 540)
#   bash tests/gpu/device.sh --dry-run ...   (here, from tests/gpu/dry_run.sh: no GPU, no bench)
#   options: --build DIR (default build-gpu), --bundle DIR (default .bundle)
#
# Phases, each under its own timeout so that a hang still returns every log (< 8 minutes in all):
#   machine  (10 s)   nvidia-smi, nvcc, gcc, glibc, python3/torch, where NCCL is
#   tests    (330 s)  tests/gpu/run_gpu_tests.sh with the bundle's CMake arguments and warnings not
#                     errors: configure (CUDA on, NCCL as libnccl.so.2 from the nvidia-nccl wheel),
#                     build, ctest -L gpu|unit; every label-gpu test is registered (without mpirun
#                     they fail, never vanish), each at most VD_GPU_TEST_TIMEOUT (120 s)
#   bench    (100 s)  bench/gpu/bench_gpu.py trimmed: GPT-2 small, batch 4, 10 steps, vera-dist fp32
#                     and PEFT eager (PyTorch's python3 runs without the bundle's LD_LIBRARY_PATH;
#                     vera-dist gets it through a wrapper)
# In dry-run mode the tests phase uses the system's mpirun-free CPU and GPU-skip paths, then runs
# the host-emulation tests of the CUDA backend (label gpu-emu, the subset in VD_DRY_EMU_TESTS).
# Output in $OUT (at most 8 files come back): summary.txt (one line per phase and the verdict),
# machine.txt, tests.txt (the run_gpu_tests summary), kernel-errors.txt, train.txt, bench.md,
# bench.json, logs.tar.gz (configure, build, ctest and bench logs). Exit 0 when every phase passed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
DRY=0 BUILD=build-gpu BUNDLE=.bundle
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --build) BUILD="$2"; shift ;;
    --bundle) BUNDLE="$2"; shift ;;
    *) echo "device.sh: unknown option '$1' (expected --dry-run, --build DIR, --bundle DIR)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-$PWD/build-device-out}"
mkdir -p "$OUT" || exit 1
LOGS="$OUT/.logs"   # packed into logs.tar.gz at the end
mkdir -p "$LOGS"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
T_TESTS="${VD_DEVICE_T_TESTS:-330}" T_BENCH="${VD_DEVICE_T_BENCH:-100}"
[[ $DRY -eq 1 ]] && T_TESTS="${VD_DEVICE_T_TESTS:-1500}"
status=0
say() { printf '[device] %s\n' "$*" | tee -a "$SUMMARY"; }
phase_rc() { # phase_rc NAME RC: record a phase's result (124: its timeout)
  local what=PASS
  [[ $2 -eq 124 || $2 -eq 137 ]] && what="TIMEOUT"
  [[ $2 -ne 0 && $what == PASS ]] && what="FAILED (exit $2)"
  say "phase $1: $what"
  [[ $2 -eq 0 ]] || status=1
}
finish() {
  cp "$BUILD"/gpu-results/*.log "$LOGS/" 2>/dev/null
  cp "$BUILD"/gpu-results/kernel-errors.txt "$BUILD"/gpu-results/train.txt "$OUT/" 2>/dev/null
  tar -C "$LOGS" -czf "$OUT/logs.tar.gz" . 2>/dev/null && rm -rf "$LOGS"
  say "verdict: $([[ $status -eq 0 ]] && echo PASS || echo FAILED) ($(date -u +%H:%M:%SZ))"
  exit $status
}

# ---- machine ----
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ) host: $(hostname) dry-run: $DRY"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo '?')"
  echo "os: $( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null) kernel $(uname -r)"
  echo "glibc: $(ldd --version 2>&1 | head -n 1)"
  echo "gcc: $(gcc --version 2>&1 | head -n 1)"
  echo "nvcc: $(nvcc --version 2>&1 | tail -n 1)"
  echo "cmake: $(cmake --version 2>&1 | head -n 1)"
  echo "gpu: $(timeout 10 nvidia-smi -L 2>&1 | head -n 4 | tr "\n" " ")"
  echo "python3: $(command -v python3) $(timeout 20 python3 -c 'import torch,sys; print(sys.version.split()[0], "torch", torch.__version__)' 2>&1 | tail -n 1)"
  echo "nccl wheel: $(timeout 20 python3 -c 'import nvidia.nccl as n, os; d=list(n.__path__)[0]; print(d, os.listdir(d + "/lib"))' 2>&1 | tail -n 1)"
  echo "libnccl elsewhere: $(find / -xdev -name 'libnccl.so*' 2>/dev/null | head -n 4 | tr '\n' ' ')"
  echo "xz: $(command -v xz || echo missing)  mpirun before the bundle: $(command -v mpirun || echo none)"
} >"$OUT/machine.txt" 2>&1
say "phase machine: $(grep -m1 '^gpu:' "$OUT/machine.txt")"

# ---- the bundle ----
ORIG_LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
ORIG_PATH="$PATH"
# shellcheck disable=SC1091
if ! source "$BUNDLE/env.sh" >"$LOGS/bundle.log" 2>&1; then
  say "phase bundle: FAILED: cannot source $BUNDLE/env.sh (carry it: tests/gpu/bundle.sh makes it)"
  status=1; finish
fi
say "phase bundle: unpacked in $VD_BUNDLE_ROOT; mpirun $(command -v mpirun)"
{ ompi_info --version 2>&1 | head -n 2; pkg-config --modversion hdf5-openmpi openblas libcjson inih 2>&1; } >>"$LOGS/bundle.log"

# ---- tests ----
export VERA_GPU_WERROR=OFF
export CMAKE_ARGS="$VD_BUNDLE_CMAKE_ARGS -DVD_GPU_TEST_TIMEOUT=${VD_GPU_TEST_TIMEOUT:-120}"
export VERA_JOBS="${VERA_JOBS:-$(nproc)}"
rc=0
timeout -k 10 "$T_TESTS" bash tests/gpu/run_gpu_tests.sh "$BUILD" >"$OUT/tests.txt" 2>&1 || rc=$?
phase_rc tests $rc
grep -E "summary|FAILED|SKIPPED" "$OUT/tests.txt" | tail -n 5 | sed 's/^/  /' | tee -a "$SUMMARY"

if [[ $DRY -eq 1 ]]; then
  # the host emulation of the CUDA backend, through the bundle's MPI, HDF5 and OpenBLAS
  emu="${VD_DRY_EMU_TESTS:-^(test_gpu_kernels_emu|device_cuda_unavailable|device_cuda_unavailable_emu)$}"
  rc=0
  timeout -k 10 1500 ctest --test-dir "$BUILD" -R "$emu" --output-on-failure >"$LOGS/emu-ctest.log" 2>&1 || rc=$?
  grep -E "Test +#|tests passed|tests failed" "$LOGS/emu-ctest.log" | sed 's/^ */  /' | tee -a "$SUMMARY"
  if [[ $rc -eq 0 ]] && ! grep -q -E "100% tests passed" "$LOGS/emu-ctest.log"; then rc=1; fi
  phase_rc emu $rc
  finish
fi

# ---- bench (trimmed) ----
if [[ ! -x "$BUILD/vera-dist" ]]; then
  say "phase bench: FAILED: no $BUILD/vera-dist"; status=1; finish
fi
wrap="$BUILD/vera-dist-bundled"
printf '#!/bin/sh\nexport LD_LIBRARY_PATH="%s" OPAL_PREFIX="%s" OPAL_LIBDIR="%s"\nexec "%s" "$@"\n' \
  "$LD_LIBRARY_PATH" "$OPAL_PREFIX" "$OPAL_LIBDIR" "$PWD/$BUILD/vera-dist" >"$wrap" && chmod +x "$wrap"
rc=0
PATH="$ORIG_PATH" LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" PYTHONUNBUFFERED=1 timeout -k 10 "$T_BENCH" \
  python3 bench/gpu/bench_gpu.py --vera-dist "$wrap" --shape gpt2-small --batch "${VD_BENCH_BATCH:-4}" \
  --steps "${VD_BENCH_STEPS:-10}" --warmup 3 --no-compile --timeout 80 --markdown "$OUT/bench.md" --json "$OUT/bench.json" >"$LOGS/bench.log" 2>&1 || rc=$?
phase_rc bench $rc
tail -n 12 "$OUT/bench.md" 2>/dev/null | sed 's/^/  /' | tee -a "$SUMMARY"
finish
