#!/usr/bin/env bash
# blas_kernel: vera-dist never runs on OpenBLAS's generic kernels silently (issue 8, item 1).
#  * on a CPU with AVX2 + FMA, with OPENBLAS_CORETYPE unset, the kernel vera-dist reports (--version
#    and the training summary) is one of the AVX2 / AVX-512 kernels, never a generic one (Prescott,
#    Core2, Nehalem, ...), whatever OpenBLAS itself would have picked; and 2 MPI ranks agree;
#  * a user's OPENBLAS_CORETYPE is kept, and the summary says the CPU could do better;
#  * VERA_BLAS_FIX=0 keeps OpenBLAS's own choice (no restart note).
# Skipped (77) on a CPU without AVX2 and FMA.
source "$(dirname "$0")/common.sh"

grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo ||
  { echo "SKIP [$TEST_NAME]: this CPU has no AVX2 + FMA"; exit 77; }
GOOD='Haswell|Zen|Skylake|SkylakeX|Cooperlake|SapphireRapids'

out=$(env -u OPENBLAS_CORETYPE -u VERA_BLAS_RESTARTED "$VD" --version)
note "$out"
kernel=$(sed -n 's/.*OpenBLAS kernel \([A-Za-z0-9]*\).*/\1/p' <<<"$out")
[[ "$kernel" =~ ^($GOOD)$ ]] || fail "--version reports OpenBLAS kernel '$kernel' on a CPU with AVX2 (expected one of $GOOD)"

out=$(env -u VERA_BLAS_RESTARTED OPENBLAS_CORETYPE=Prescott "$VD" --version)
[[ "$out" == *"kernel Prescott (OPENBLAS_CORETYPE=Prescott is set: kept, though this CPU can run "* ]] ||
  fail "a user's OPENBLAS_CORETYPE=Prescott: '$out'"

out=$(env -u OPENBLAS_CORETYPE -u VERA_BLAS_RESTARTED VERA_BLAS_FIX=0 "$VD" --version)
[[ "$out" != *restarted* ]] || fail "VERA_BLAS_FIX=0 still restarted: '$out'"

# the training summary on 2 ranks (each rank restarts itself before MPI_Init)
make_model "$TMP/model" 1 2 32 256 32
make_data "$TMP/data" 4000
env -u OPENBLAS_CORETYPE -u VERA_BLAS_RESTARTED "$MPIRUN" -np 2 "$VD" --model "$TMP/model" --train_data "$TMP/data/train_*.bin" \
  --out_dir "$TMP/run" --seq_len 16 --batch_size 2 --max_steps 2 --r 8 --threads 1 --resume none >"$TMP/run.log" 2>&1 ||
  { tail -n 30 "$TMP/run.log" >&2; fail "the 2-rank run failed"; }
line=$(grep -m1 '^vera-dist: .* rank(s)' "$TMP/run.log")
note "$line"
kernel=$(sed -n 's/.*OpenBLAS kernel \([A-Za-z0-9]*\).*/\1/p' <<<"$line")
[[ "$kernel" =~ ^($GOOD)$ ]] || fail "the training summary reports kernel '$kernel'"
note "PASS"
