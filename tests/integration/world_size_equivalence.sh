#!/usr/bin/env bash
# world_size_equivalence: the global batch does not depend on the world size.
#  * np=1 grad_accum=4, np=2 grad_accum=2, np=4 grad_accum=1 (same batch_size) give the same
#    loss (and val_loss) at every one of 20 steps within 1e-5 relative;
#  * each run ends with the trainable vectors identical on every rank (the final log line);
#  * np=2 run twice gives bit-identical losses and adapter files (determinism);
#  * with vera_dropout > 0 the trajectories of np=1 and np=2 still agree (the mask does not
#    depend on the world size), and differ from the dropout-free ones (dropout is active).
# VD_TEST_ARCH=llama runs the same checks on a Llama model (GQA: 4 heads, 2 key/value heads, all
# seven projection types adapted); VD_TEST_ADAPTER=lora with LoRA instead of VeRA (common.sh);
# ctest registers gpt2, llama and gpt2 + lora.
source "$(dirname "$0")/common.sh"

STEPS=20
if [[ "${VD_TEST_ARCH:-gpt2}" == llama ]]; then
  make_model "$TMP/model" 2 4 32 256 64 --arch llama --kv-heads 2 --ffn 48
else
  make_model "$TMP/model" 2 2 32 256 64
fi
make_data "$TMP/data" 30000
COMMON=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data "$TMP/data/val_*.bin"
        --batch_size 2 --seq_len 32 --max_steps "$STEPS" --warmup_steps 2 --lr 3e-2 "${ADAPTER_ARGS[@]}"
        --target_modules all --eval_every 5 --eval_seqs 8 --threads 1 --log_every 5)

# run NAME NP GRAD_ACCUM [extra args]
run() {
  local name="$1" np="$2" ga="$3"; shift 3
  vd_mpirun "$np" "$TMP/$name.log" "${COMMON[@]}" --grad_accum "$ga" --out_dir "$TMP/$name" "$@"
  [[ $(wc -l <"$TMP/$name/metrics.jsonl") -eq $STEPS ]] || fail "$name: expected $STEPS rows in metrics.jsonl"
  grep -q "identical on all $np ranks" "$TMP/$name.log" ||
    { cat "$TMP/$name.log" >&2; fail "$name: no 'identical on all $np ranks' final line"; }
}

run np1 1 4
run np2 2 2
run np4 4 1
compare_losses "$TMP/np1/metrics.jsonl" "$TMP/np2/metrics.jsonl" 1e-5 "np=1 ga=4 vs np=2 ga=2"
compare_losses "$TMP/np1/metrics.jsonl" "$TMP/np4/metrics.jsonl" 1e-5 "np=1 ga=4 vs np=4 ga=1"

# the loss must actually move, or equal trajectories prove nothing
first=$(metrics_field "$TMP/np1/metrics.jsonl" loss | head -n 1)
last=$(metrics_field "$TMP/np1/metrics.jsonl" loss | tail -n 1)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1e-3) }' || fail "loss did not move: first $first, last $last"

# determinism: the same run twice is bit-identical
run np2b 2 2
cmp -s <(metrics_field "$TMP/np2/metrics.jsonl" loss) <(metrics_field "$TMP/np2b/metrics.jsonl" loss) ||
  fail "np=2 run twice: losses differ"
cmp -s "$TMP/np2/adapter_final.safetensors" "$TMP/np2b/adapter_final.safetensors" ||
  fail "np=2 run twice: adapter_final.safetensors differ"
note "np=2 twice: bit-identical losses and adapters"

# dropout: the mask is a function of (seed, step, global position), not of the world size
run drop1 1 4 "$DROPOUT_KEY" 0.2
run drop2 2 2 "$DROPOUT_KEY" 0.2
compare_losses "$TMP/drop1/metrics.jsonl" "$TMP/drop2/metrics.jsonl" 1e-5 "dropout 0.2: np=1 ga=4 vs np=2 ga=2"
if cmp -s <(metrics_field "$TMP/np1/metrics.jsonl" loss) <(metrics_field "$TMP/drop1/metrics.jsonl" loss); then
  fail "$DROPOUT_KEY 0.2 gives the same losses as no dropout: dropout is not applied"
fi
note "PASS"
