#!/usr/bin/env bash
# demo_loss: a short run with demo-like settings (INI file + command-line overrides, 2 ranks):
#  * the loss falls: last step < 0.9 x first step;
#  * "trainable parameters: N" equals the formula sum over adapted layers of (out + r):
#    all four targets: L*(3C + C + 4C + C) + 4*L*r; attn.c_attn only: L*(3C + r);
#  * every metrics.jsonl row has step, loss, lr, grad_norm, tokens, ms, allreduce_bytes, with
#    steps 1..max_steps in order, allreduce_bytes = 4*(N + 2) (gradients, loss, stop flag) and
#    tokens = step * global batch;
#  * val_loss appears exactly on the steps that are multiples of eval_every (and the last);
#  * adapter_final.safetensors is written.
source "$(dirname "$0")/common.sh"

L=2 H=2 C=128 V=256 CTX=64 R=32
STEPS=40 EVAL=10 B=4 T=64 GA=2 NP=2
make_model "$TMP/model" $L $H $C $V $CTX
make_data "$TMP/data" 60000

cat >"$TMP/demo.ini" <<INI
; like configs/demo-tiny.ini, smaller
[model]
model = $TMP/model
[data]
train_data = $TMP/data/train_*.bin
val_data = $TMP/data/val_*.bin   ; inline comment
out_dir = $TMP/run
[vera]
r = $R
target_modules = all
[train]
batch_size = $B
seq_len = $T
grad_accum = $GA
lr = 3e-2
warmup_steps = 4
# a full-line comment
max_steps = 1000   ; overridden on the command line
[log]
eval_every = $EVAL
eval_seqs = 16
log_every = 10
INI

vd_mpirun $NP "$TMP/run.log" --config "$TMP/demo.ini" --max_steps $STEPS --threads 1
M="$TMP/run/metrics.jsonl"
[[ -f "$M" ]] || fail "no metrics.jsonl"
[[ -s "$TMP/run/adapter_final.safetensors" ]] || fail "no adapter_final.safetensors"
[[ $(wc -l <"$M") -eq $STEPS ]] || fail "expected $STEPS rows in metrics.jsonl, found $(wc -l <"$M")"

# ---- trainable parameter count and all-reduce size ----
N_ALL=$(( L * (3*C + C + 4*C + C) + 4 * L * R ))
got=$(log_trainable "$TMP/run.log")
[[ "$got" == "$N_ALL" ]] || fail "trainable parameters: log says '$got', formula L*(9C) + 4*L*r = $N_ALL"
note "trainable parameters (all): $got = formula"
# the one all-reduce carries the trainable gradients plus EXTRA floats: the loss sum and the
# stop-request flag (docs/architecture.md, "One optimizer step")
EXTRA=2
BYTES=$(( 4 * (N_ALL + EXTRA) ))
bad=$(metrics_field "$M" allreduce_bytes | grep -v -x -c "$BYTES" || true)
[[ "$bad" -eq 0 ]] || fail "$bad rows have allreduce_bytes != 4*(N+$EXTRA) = $BYTES"
grep -q "= $BYTES bytes" "$TMP/run.log" || fail "the start-up log does not report $BYTES all-reduce bytes"

# ---- row fields ----
for k in step loss lr grad_norm tokens ms allreduce_bytes; do
  n=$(metrics_field "$M" $k | grep -c -E '^-?[0-9.eE+-]+$' || true)
  [[ "$n" -eq $STEPS ]] || fail "field '$k' is a number in only $n of $STEPS rows"
done
seq 1 $STEPS | cmp -s - <(metrics_field "$M" step) || fail "steps are not 1..$STEPS in order"
GLOBAL=$(( B * T * GA * NP ))
paste -d' ' <(metrics_field "$M" step) <(metrics_field "$M" tokens) |
  awk -v g=$GLOBAL '$2 != $1 * g { bad = 1 } END { exit bad }' || fail "tokens != step * $GLOBAL in some row"

# ---- val_loss exactly at eval_every and at the end ----
want=$(seq $EVAL $EVAL $STEPS; echo $STEPS)
want=$(sort -n -u <<<"$want")
have=$(paste -d' ' <(metrics_field "$M" step) <(metrics_field "$M" val_loss) | awk 'NF == 2 { print $1 }')
[[ "$have" == "$want" ]] || fail "val_loss rows at steps [$(tr '\n' ' ' <<<"$have")], expected [$(tr '\n' ' ' <<<"$want")]"

# ---- the loss falls ----
first=$(metrics_field "$M" loss | head -n 1)
last=$(metrics_field "$M" loss | tail -n 1)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.9 * a) }' ||
  fail "loss did not fall enough: first $first, last $last (want last < 0.9 x first)"
note "loss $first -> $last over $STEPS steps"

# ---- a subset of targets: attn.c_attn only ----
vd_mpirun 1 "$TMP/sub.log" --config "$TMP/demo.ini" --max_steps 1 --warmup_steps 0 --threads 1 --target_modules attn.c_attn \
  --out_dir "$TMP/sub" --eval_every 0
N_QKV=$(( L * (3*C + R) ))
got=$(log_trainable "$TMP/sub.log")
[[ "$got" == "$N_QKV" ]] || fail "trainable parameters (attn.c_attn): log says '$got', formula L*(3C + r) = $N_QKV"
b=$(metrics_field "$TMP/sub/metrics.jsonl" allreduce_bytes)
[[ "$b" == $(( 4 * (N_QKV + EXTRA) )) ]] || fail "attn.c_attn: allreduce_bytes $b != 4*(N+$EXTRA) = $(( 4 * (N_QKV + EXTRA) ))"
# and a mixed pair: attn.c_proj (C -> C) + mlp.c_fc (C -> 4C)
vd_mpirun 1 "$TMP/sub2.log" --config "$TMP/demo.ini" --max_steps 1 --warmup_steps 0 --threads 1 \
  --target_modules attn.c_proj,mlp.c_fc --out_dir "$TMP/sub2" --eval_every 0
N_PAIR=$(( L * (C + R + 4*C + R) ))
got=$(log_trainable "$TMP/sub2.log")
[[ "$got" == "$N_PAIR" ]] || fail "trainable parameters (attn.c_proj,mlp.c_fc): log says '$got', formula $N_PAIR"
note "trainable parameters (attn.c_attn): $N_QKV, (attn.c_proj,mlp.c_fc): $N_PAIR = formula"
note "PASS"
