#!/usr/bin/env bash
# multinode_links.sh: VeRA's gradient all-reduce against LoRA's (r 16, same targets) and a full
# fine-tune's, over shaped links between network-namespace nodes (tests/multinode/lib.sh), plus
# vera-dist's own step time at each rate; then the ring-model fit, the tables and the plot
# (bench/multinode_links_report.py). docs/benchmarks.md, "Multi-node links", has the figures.
#
#   bench/multinode_links.sh BUILD_DIR [OUT_DIR]      (as root; about 15 minutes on 2 cores)
#
#   BUILD_DIR  holds vera-dist and allreduce_bench
#   OUT_DIR    results.jsonl, the logs, report.md and multinode_links.png (default
#              ./out/multinode_links; the PNG is copied to docs/ only by hand)
#   RATES      link rates, tc syntax, "none" = no shaper (default: none 10gbit 1gbit 100mbit 10mbit)
#   QUICK=1    a short run to check the script (small sizes, 2 steps; figures meaningless)
#   VERA_SMOLLM2_GGUF  the model (default: launch/fetch-smollm2.sh's download)
#
# What runs at every rate (tbf on both directions of every node's link), each all-reduce timed by
# allreduce_bench with one rank per node:
#   * 2 nodes, Open MPI's default algorithm (what vera-dist gets): 1, 1024, 16384 floats
#     (latency), VeRA's 209 282, LoRA's 4 884 480 and the full model's 134 515 008 floats (sizes
#     read from `vera-dist inspect`; the full one only where it takes <= ~5 s on the wire);
#   * 2 nodes, recursive doubling (one exchange of B each way: the ring model's p = 2 case, to
#     which the report fits the link's bandwidth and latency): the same without the full size;
#   * 4 nodes, ring algorithm forced: VeRA and LoRA, predicted by the model from the 2-node fit;
#   * vera-dist, SmolLM2 VeRA r 256 all-linear, 2 nodes x 1 rank x 1 thread, batch 1 x 64 per
#     rank, 6 steps: median step time of steps 3..6.
set -euo pipefail
BUILD="$(cd "${1:?usage: bench/multinode_links.sh BUILD_DIR [OUT_DIR]}" && pwd)"
OUT="${2:-out/multinode_links}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VD="$BUILD/vera-dist" BENCH="$BUILD/allreduce_bench"
[[ -x "$VD" && -x "$BENCH" ]] || { echo "multinode_links: $BUILD has no vera-dist or allreduce_bench" >&2; exit 1; }
RATES="${RATES:-none 10gbit 1gbit 100mbit 10mbit}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

# shellcheck source=tests/multinode/lib.sh
source "$REPO/tests/multinode/lib.sh"
mn_require
[[ $(id -u) -eq 0 ]] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MN_TIMEOUT=900

GGUF="${VERA_SMOLLM2_GGUF:-$(bash "$REPO/launch/fetch-smollm2.sh" | tail -n 1)}"
[[ -f "$GGUF" ]] || { echo "multinode_links: no model at '$GGUF'" >&2; exit 1; }

# ---- sizes from inspect ----
"$VD" inspect --model "$GGUF" --r 256 --target_modules all-linear >"$OUT/inspect.log"
VERA=$(sed -n 's/^all-reduce per optimizer step: \([0-9]*\) floats.*/\1/p' "$OUT/inspect.log")
FULL=$(sed -n 's/^frozen parameters: \([0-9]*\).*/\1/p' "$OUT/inspect.log")
# "  self_attn.q_proj   x 30  in 576, out 576: ..." -> sum of 16 x count x (in + out)
LORA=$(awk '/^  [a-z_.]+ +x [0-9]+ +in [0-9]+, out [0-9]+:/ {
         n = $3; i = $5; sub(",", "", i); o = $7; sub(":", "", o); s += 16 * n * (i + o) } END { print s }' "$OUT/inspect.log")
[[ "$VERA" =~ ^[0-9]+$ && "$FULL" =~ ^[0-9]+$ && "$LORA" =~ ^[0-9]+$ && $LORA -gt 0 ]] ||
  { cat "$OUT/inspect.log" >&2; echo "multinode_links: cannot read the sizes from inspect" >&2; exit 1; }
PROBES="1,1024,16384"
STEPS=6
if [[ "${QUICK:-0}" == 1 ]]; then FULL=$((LORA * 2)) STEPS=3; fi
echo "sizes (floats): VeRA $VERA, LoRA r16 $LORA, full $FULL" | tee "$OUT/sizes.txt"
{
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1) (family $(lscpu | sed -n 's/^CPU family: *//p'), model $(lscpu | sed -n 's/^Model: *//p')), $(getconf _NPROCESSORS_ONLN) cores"
  echo "kernel: $(uname -r); $(mpirun --version | head -n 1); commit $(git -C "$REPO" rev-parse --short HEAD)"
} | tee "$OUT/machine.txt"

mn_up 4

# bench RATE NODES ALGO FLOATS ITERS WARMUP MAXS: one allreduce_bench run, its lines into RESULTS
bench() {
  local rate="$1" nodes="$2" algo="$3" floats="$4" iters="$5" warm="$6" maxs="$7" args=""
  # Open MPI's tuned allreduce algorithms: 3 = recursive doubling, 4 = ring
  case "$algo" in
    rd) args="--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 3" ;;
    ring) args="--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4" ;;
  esac
  local log="$OUT/bench-$rate-p$nodes-$algo-${floats%%,*}.log"
  MN_USE_NODES="$nodes" MN_MPIRUN_ARGS="$args" mn_mpirun 1 -- "$BENCH" --floats "$floats" --iters "$iters" \
    --warmup "$warm" --max_seconds "$maxs" >"$log" 2>&1 || { cat "$log" >&2; echo "multinode_links: $log failed" >&2; exit 1; }
  grep '^{"floats"' "$log" | sed "s/^{/{\"rate\": \"$rate\", \"algo\": \"$algo\", \"kind\": \"allreduce\", /" | tee -a "$RESULTS"
}

# vdstep RATE: vera-dist's median step time on 2 nodes x 1 rank
vdstep() {
  local rate="$1"
  local dir="$OUT/train-$rate"
  rm -rf "$dir"
  MN_USE_NODES=2 MN_MPIRUN_ARGS="" mn_mpirun 1 -- "$VD" --model "$GGUF" \
    --train_data "$REPO/launch/data/smollm2-gpl3/train_*.bin" --r 256 --target_modules all-linear \
    --batch_size 1 --seq_len 64 --grad_accum 1 --max_steps "$STEPS" --warmup_steps 1 --lr 1e-2 --threads 1 \
    --log_every 1 --eval_every 0 --ckpt_every 0 --out_dir "$dir" >"$OUT/train-$rate.log" 2>&1 ||
    { tail -n 40 "$OUT/train-$rate.log" >&2; echo "multinode_links: vera-dist at $rate failed" >&2; exit 1; }
  awk -v rate="$rate" -v skip=$((STEPS > 4 ? 2 : 0)) '
    NR > skip { match($0, /"ms": [0-9.]+/); ms[++n] = substr($0, RSTART + 6, RLENGTH - 6) + 0;
                match($0, /"allreduce_bytes": [0-9]+/); b = substr($0, RSTART + 19, RLENGTH - 19) }
    END { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (ms[j] < ms[i]) { t = ms[i]; ms[i] = ms[j]; ms[j] = t }
          med = n % 2 ? ms[(n + 1) / 2] : (ms[n / 2] + ms[n / 2 + 1]) / 2;
          printf("{\"rate\": \"%s\", \"kind\": \"vera-dist step\", \"nodes\": 2, \"ranks\": 2, \"steps\": %d, \"bytes\": %s, \"median_s\": %.6g, \"min_s\": %.6g, \"max_s\": %.6g}\n",
                 rate, n, b, med / 1e3, ms[1] / 1e3, ms[n] / 1e3) }' "$dir/metrics.jsonl" | tee -a "$RESULTS"
}

for rate in $RATES; do
  echo "---- $rate"
  if [[ "$rate" == none ]]; then mn_unshape; else mn_shape "$rate"; fi
  if [[ "$rate" == none ]]; then bps=100000000000; else bps="$(mn__rate_bps "$rate")"; fi # none: as 100 Gbit/s
  slow=$((bps < 100000000)) # below 100 Mbit/s: one timed LoRA all-reduce, no warm-up
  # what vera-dist gets: Open MPI's default algorithm
  bench "$rate" 2 default "$PROBES" 20 2 10
  bench "$rate" 2 default "$VERA" 10 1 20
  if ((slow)); then bench "$rate" 2 default "$LORA" 1 0 1; else bench "$rate" 2 default "$LORA" 5 1 20; fi
  # full: only where one all-reduce takes at most ~5 s on the wire (B x 8 / rate)
  if ((FULL * 32 / bps <= 5)); then
    if ((FULL * 32 / bps <= 1)); then bench "$rate" 2 default "$FULL" 3 1 20; else bench "$rate" 2 default "$FULL" 2 0 1; fi
  else
    echo "(full fine-tune's all-reduce not measured at $rate: $((FULL * 32 / bps)) s on the wire each)"
  fi
  # the link itself: recursive doubling, one exchange of B each way (the model's p = 2 case)
  bench "$rate" 2 rd "$PROBES" 20 2 10
  bench "$rate" 2 rd "$VERA" 10 1 20
  if ((slow)); then bench "$rate" 2 rd "$LORA" 1 0 1; else bench "$rate" 2 rd "$LORA" 5 1 20; fi
  # the model's dependence on p: 4 nodes, ring
  bench "$rate" 4 ring "$VERA" 5 1 20
  if ((slow)); then bench "$rate" 4 ring "$LORA" 1 0 1; else bench "$rate" 4 ring "$LORA" 3 1 20; fi
  vdstep "$rate"
done
mn_unshape

python3 "$REPO/bench/multinode_links_report.py" "$RESULTS" "$OUT" | tee "$OUT/report.md"
