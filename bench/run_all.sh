#!/usr/bin/env bash
# bench/run_all.sh: the runs behind docs/benchmarks.md, one after the other, each interleaved
# (A B C, C B A, ...). Results (JSON + the printed table) go to $RESULTS.
#
#   VENV=~/.cache/vera-dist/venv VD=build-bench/vera-dist RESULTS=/tmp/vera-bench-results bench/run_all.sh [small|gpt2|all]
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
