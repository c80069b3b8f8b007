#!/usr/bin/env bash
# train_2x2 (ctest label multinode): vera-dist across 2 "nodes" (network namespaces on a bridge,
# tests/multinode/lib.sh) with 2 ranks each, against the same run on one host.
#  * the ranks are placed 2 per node (mpirun --display-map) and the 4-rank job really talks over
#    the nodes' links: the bytes through node 1's interface during the run are at least
#    steps x the all-reduce bytes per step (an all-reduce between two nodes must move every
#    node's contribution across), so shared memory between "nodes" would fail;
#  * the loss (and val_loss) trajectory equals the single-host 4-rank run within 1e-5, and, as the
#    same world size and configuration must be (README, determinism), bit-identically; the
#    trained vectors are identical on every rank (the trainer's all-gathered hash, final line)
#    and the adapter file is byte-identical to the single-host one;
#  * shaped links (tbf at 10 Mbit/s on both directions of every node's link): an all-reduce of
#    1.25 MB takes at least the time those bytes need at 10 Mbit/s (the shaping is real) and at
#    most 8x it (TCP copes with the shaper; Open MPI's default algorithm alone takes ~2x), and
#    training over the slow links is bit-identical.
# Exit 77 (skipped) only when not root or `ip netns` is impossible.
# usage: bash tests/multinode/train_2x2.sh PATH/TO/vera-dist PATH/TO/allreduce_bench
source "$(dirname "$0")/../integration/common.sh"
# shellcheck source=tests/multinode/lib.sh
source "$(dirname "$0")/lib.sh"
BENCH="${2:?usage: bash $0 PATH/TO/vera-dist PATH/TO/allreduce_bench}"
[[ -x "$BENCH" ]] || fail "allreduce_bench '$BENCH' is not executable"
mn_require

STEPS=20
make_model "$TMP/model" 2 2 32 256 64
make_data "$TMP/data" 30000
COMMON=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data "$TMP/data/val_*.bin"
        --batch_size 2 --seq_len 32 --max_steps "$STEPS" --warmup_steps 2 --lr 3e-2 --r 16
        --target_modules all --eval_every 5 --eval_seqs 8 --threads 1 --log_every 5 --grad_accum 1)

# the reference: 4 ranks on this host, shared memory
vd_mpirun 4 "$TMP/host.log" "${COMMON[@]}" --out_dir "$TMP/host"

mn_up 2
export MN_TIMEOUT="$MPI_TIMEOUT" # common.sh: VERA_TEST_TIMEOUT or 120 s
note "cluster $MN_PREFIX: nodes $(mn_host 0) ($(mn_addr 0)), $(mn_host 1) ($(mn_addr 1)) on $MN_SUBNET"

# mn_train NAME: the same training, 2 nodes x 2 ranks; checks the map and the final hash line
mn_train() {
  local name="$1" rc=0 k
  MN_MPIRUN_ARGS="--display-map" mn_mpirun 2 -- "$VD" "${COMMON[@]}" --out_dir "$TMP/$name" \
    >"$TMP/$name.log" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]]; then
    tail -n 60 "$TMP/$name.log" >&2
    [[ $rc -eq 124 ]] && fail "$name: timed out after ${MN_TIMEOUT}s"
    fail "$name: mn_mpirun exit code $rc"
  fi
  for ((k = 0; k < 2; k++)); do
    grep -E -q "Data for node: $(mn_host "$k")[[:space:]].*Num procs: 2" "$TMP/$name.log" ||
      { cat "$TMP/$name.log" >&2; fail "$name: mpirun did not map 2 ranks on node $(mn_host "$k")"; }
  done
  grep -q "identical on all 4 ranks" "$TMP/$name.log" ||
    { cat "$TMP/$name.log" >&2; fail "$name: no 'identical on all 4 ranks' final line"; }
  [[ $(wc -l <"$TMP/$name/metrics.jsonl") -eq $STEPS ]] || fail "$name: expected $STEPS rows in metrics.jsonl"
}

# same_as_host NAME: bit-identical to the single-host run
same_as_host() {
  local name="$1"
  compare_losses "$TMP/host/metrics.jsonl" "$TMP/$name/metrics.jsonl" 1e-5 "$name vs single host"
  cmp -s <(metrics_field "$TMP/host/metrics.jsonl" loss) <(metrics_field "$TMP/$name/metrics.jsonl" loss) ||
    fail "$name: losses differ from the single-host run in the last bits (same world size must be bit-identical)"
  cmp -s "$TMP/host/adapter_final.safetensors" "$TMP/$name/adapter_final.safetensors" ||
    fail "$name: adapter_final.safetensors differs from the single-host run"
  local h1 h2
  h1="$(grep -o 'vectors hash [0-9a-f]*' "$TMP/host.log")"
  h2="$(grep -o 'vectors hash [0-9a-f]*' "$TMP/$name.log")"
  [[ -n "$h1" && "$h1" == "$h2" ]] || fail "$name: $h2 on every rank, single host: $h1"
  note "$name: bit-identical to the single-host 4-rank run ($h2 on all 4 ranks)"
}

read -r rx0 tx0 <<<"$(mn_link_bytes 1)"
mn_train mn
read -r rx1 tx1 <<<"$(mn_link_bytes 1)"
same_as_host mn
per_step="$(metrics_field "$TMP/mn/metrics.jsonl" allreduce_bytes | head -n 1)"
[[ "$per_step" =~ ^[0-9]+$ && $per_step -gt 0 ]] || fail "no allreduce_bytes in metrics.jsonl"
need=$((STEPS * per_step))
sent=$((tx1 - tx0)) received=$((rx1 - rx0))
note "node 1's link: $sent bytes sent, $received received during the run; all-reduces need >= $need each way"
[[ $sent -ge $need && $received -ge $need ]] ||
  fail "node 1's link carried $sent / $received bytes, less than $STEPS steps x $per_step all-reduce bytes: the ranks did not talk over the network"

# shaped links: the shaper binds, TCP copes, results do not change
mn_shape 10mbit
floats=312500 # 1.25 MB: at least 1.0 s through a 10 Mbit/s link
MN_MPIRUN_ARGS="" mn_mpirun 2 -- "$BENCH" --floats "$floats" --warmup 0 --iters 2 >"$TMP/bench.log" 2>&1 ||
  { cat "$TMP/bench.log" >&2; fail "allreduce_bench over 10 Mbit/s links failed"; }
line="$(grep '^{"floats"' "$TMP/bench.log")" || { cat "$TMP/bench.log" >&2; fail "no result line from allreduce_bench"; }
t="$(sed -n 's/.*"median_s": \([^,]*\),.*/\1/p' <<<"$line")"
bound="$(awk -v b=$((4 * floats)) 'BEGIN { printf "%.4f", b * 8 / 10e6 }')"
note "10 Mbit/s links: all-reduce of $((4 * floats)) bytes on 2 x 2 ranks: ${t} s (bytes / rate = ${bound} s)"
awk -v t="$t" -v b="$bound" 'BEGIN { exit !(t >= 0.9 * b && t <= 8 * b) }' ||
  fail "all-reduce over 10 Mbit/s links took $t s, expected between 0.9x and 8x of $bound s"
mn_train mn_10mbit
same_as_host mn_10mbit
mn_unshape
note "PASS"
