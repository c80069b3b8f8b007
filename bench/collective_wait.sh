#!/usr/bin/env bash
# collective_wait.sh: step time of two vera-dist builds side by side, on a job whose step is
# dominated by the all-reduce (a tiny GPT-2, 4 ranks on this host). Made for the change of the
# step's collective from MPI_Allreduce to MPI_Iallreduce waited for with a deadline
# (collective_timeout; docs/multinode.md): A = a build before it, B = a build with it.
#
#   bench/collective_wait.sh A/vera-dist B/vera-dist [ROUNDS=3] [STEPS=300]
#
# Runs A, B, A, B, ... (ROUNDS each, alternating so that a change in the machine's load hits
# both), and prints for each the median over its runs of the median per-step time ("ms" in
# metrics.jsonl, steps 11..STEPS), and the ratio B / A. Results: docs/benchmarks.md,
# "Waiting in the collective".
set -euo pipefail
A="${1:?usage: $0 A/vera-dist B/vera-dist [ROUNDS] [STEPS]}"
B="${2:?usage: $0 A/vera-dist B/vera-dist [ROUNDS] [STEPS]}"
ROUNDS="${3:-3}"
STEPS="${4:-300}"
NP="${VERA_BENCH_NP:-4}"
MPIRUN="${VERA_MPIRUN:-mpirun}"
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
TMP="$(mktemp -d "${TMPDIR:-/tmp}/vera-collective-wait.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

"$B" init-model --out "$TMP/model" --layers 2 --heads 2 --dim 32 --vocab 256 --ctx 64 --seed 7 >/dev/null
awk 'BEGIN { s = 1; for (i = 0; i < 40000; i++) { s = (s * 1103515245 + 12345) % 2147483648;
             printf "%c", 97 + s % 26; if (i % 60 == 59) printf "\n" } }' >"$TMP/text.txt"
"$B" prepare-data --in "$TMP/text.txt" --out "$TMP/data" --val_fraction 0.1 >/dev/null

# median_ms DIR: the median per-step time of steps 11.. of that run
median_ms() {
  awk -F'"ms": ' 'NR > 10 { split($2, a, ","); print a[1] }' "$1/metrics.jsonl" | sort -g |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
median_of() { tr ' ' '\n' <<<"$*" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

runs_a="" runs_b=""
for ((i = 1; i <= ROUNDS; i++)); do
  for which in A B; do
    bin=$A; [[ $which == B ]] && bin=$B
    d="$TMP/$which$i"
    "$MPIRUN" -np "$NP" "$bin" --model "$TMP/model" --train_data "$TMP/data/train_*.bin" --batch_size 2 --seq_len 32 \
      --max_steps "$STEPS" --warmup_steps 2 --lr 3e-2 --r 16 --target_modules all --threads 1 --log_every 1000 \
      --ckpt_every 0 --out_dir "$d" >"$d.log" 2>&1 || { tail -n 20 "$d.log" >&2; echo "run $which$i failed" >&2; exit 1; }
    m=$(median_ms "$d")
    echo "round $i $which: median step $m ms"
    if [[ $which == A ]]; then runs_a+=" $m"; else runs_b+=" $m"; fi
  done
done
ma=$(median_of $runs_a)
mb=$(median_of $runs_b)
echo "A $A: median $ma ms per step (runs:$runs_a)"
echo "B $B: median $mb ms per step (runs:$runs_b)"
awk -v a="$ma" -v b="$mb" 'BEGIN { printf "B / A = %.3f\n", b / a }'
# (nproc would answer OMP_NUM_THREADS, set to 1 above)
echo "($NP ranks, $STEPS steps; CPU family $(awk -F': ' '/^cpu family/ { print $2; exit }' /proc/cpuinfo) model" \
     "$(awk -F': ' '/^model\t/ { print $2; exit }' /proc/cpuinfo), $(grep -c ^processor /proc/cpuinfo) cores;" \
     "load average $(cut -d' ' -f1-3 /proc/loadavg))"
