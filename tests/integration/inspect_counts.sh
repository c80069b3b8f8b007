#!/usr/bin/env bash
# inspect_counts: `vera-dist inspect` from config.json alone (no weights in the directory).
#  * Llama-2-7B / 13B shapes with r 1024 on all-linear: the VeRA paper's trainable counts,
#    1,589,248 and 2,416,640 (Table 1 of arXiv:2310.11454);
#  * a GQA shape: sum over adapted layers of out + r, computed here by hand for q_proj,v_proj;
#  * the count a training run prints equals inspect's for the same model and targets, for every
#    adapter_type: VeRA (out + r per layer), LoRA (r (in + out) per layer) and VB-LoRA (the bank
#    num_vectors x vector_length + per layer r num_vectors (in + out) / vector_length of logits),
#    each also against the formula of docs/adapters.md computed here from the layer shapes, against
#    the floats the checkpoint stores under /adapter, and the all-reduce inspect prints (4 (n + 2) bytes);
#  * a GPT-2 name on a Llama model and an unsupported architecture are one-line errors.
source "$(dirname "$0")/common.sh"

llama_config() { # DIR LAYERS HIDDEN INTER HEADS KV_HEADS [ARCH]
  mkdir -p "$1"
  cat >"$1/config.json" <<JSON
{"architectures": ["${7:-LlamaForCausalLM}"], "model_type": "llama", "num_hidden_layers": $2, "hidden_size": $3,
 "intermediate_size": $4, "num_attention_heads": $5, "num_key_value_heads": $6, "vocab_size": 32000,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": false, "rope_theta": 10000.0}
JSON
}
count() { "$VD" inspect "$@" | sed -n 's/^trainable parameters: \([0-9]*\)$/\1/p'; }

llama_config "$TMP/llama7b" 32 4096 11008 32 32
llama_config "$TMP/llama13b" 40 5120 13824 40 40
n7=$(count --model "$TMP/llama7b" --r 1024 --target_modules all-linear)
n13=$(count --model "$TMP/llama13b" --r 1024 --target_modules all-linear)
[[ "$n7" == 1589248 ]] || fail "Llama-2-7B, r 1024, all-linear: inspect says '$n7', the VeRA paper 1589248"
[[ "$n13" == 2416640 ]] || fail "Llama-2-13B, r 1024, all-linear: inspect says '$n13', the VeRA paper 2416640"
note "paper counts: 7B $n7, 13B $n13"

# GQA: 8 heads of 64, 2 key/value heads: q_proj out 512, v_proj out 128
llama_config "$TMP/gqa" 3 512 1024 8 2
n=$(count --model "$TMP/gqa" --r 16 --target_modules q_proj,v_proj)
[[ "$n" == $((3 * ((512 + 16) + (128 + 16)))) ]] || fail "GQA q_proj,v_proj: inspect says '$n'"

# a training run prints the same count, for every method
make_model "$TMP/tiny" 2 4 32 256 64 --arch llama --kv-heads 2 --ffn 48
make_data "$TMP/data" 20000
# the tiny Llama's adapted layers (in out): q, k, v, o (head_dim 8, 2 key/value heads), gate, up, down
shapes="32 32  32 16  32 16  32 32  32 48  32 48  48 32"
formula() { # METHOD: docs/adapters.md's count for r 8 (VeRA, LoRA) / r 4, 16 x 8 bank (VB-LoRA), 2 layers
  local n=0 in out
  set -- $shapes
  while (($# >= 2)); do
    in=$1 out=$2; shift 2
    case "$METHOD" in
      vera) n=$((n + 2 * (out + 8))) ;;
      lora) n=$((n + 2 * 8 * (in + out))) ;;
      vblora) n=$((n + 2 * 4 * 16 * (in / 8 + out / 8))) ;;
    esac
  done
  [[ "$METHOD" == vblora ]] && n=$((n + 16 * 8))
  echo "$n"
}
# floats the last checkpoint holds under /adapter (h5ls: "/adapter/... Dataset {d1, d2}")
ckpt_floats() {
  h5ls -r "$(ls "$1"/checkpoints/*.h5 | tail -n 1)" | awk '$1 ~ /^\/adapter\// && $2 == "Dataset" {
    s = $0; sub(/.*\{/, "", s); sub(/\}.*/, "", s); n = split(s, d, /, */); p = 1
    for (i = 1; i <= n; i++) p *= d[i]; t += p } END { print t + 0 }'
}
for METHOD in vera lora vblora; do
  case "$METHOD" in
    vera) opts=(--adapter_type vera --r 8) ;;
    lora) opts=(--adapter_type lora --r 8 --lora_alpha 16) ;;
    vblora) opts=(--adapter_type vblora --r 4 --num_vectors 16 --vector_length 8 --topk 2) ;;
  esac
  "$VD" inspect --model "$TMP/tiny" --target_modules all "${opts[@]}" >"$TMP/inspect.$METHOD.log" ||
    { cat "$TMP/inspect.$METHOD.log" >&2; fail "$METHOD: inspect failed"; }
  n_inspect=$(sed -n 's/^trainable parameters: \([0-9]*\)$/\1/p' "$TMP/inspect.$METHOD.log")
  n_formula=$(formula)
  [[ "$n_inspect" == "$n_formula" ]] || fail "$METHOD: inspect says '$n_inspect' trainable, the formula $n_formula"
  grep -q "^all-reduce per optimizer step: $((n_formula + 2)) floats = $((4 * (n_formula + 2))) bytes" \
    "$TMP/inspect.$METHOD.log" || fail "$METHOD: inspect's all-reduce is not 4 (n + 2) bytes for n = $n_formula"
  vd_mpirun 1 "$TMP/train.$METHOD.log" --model "$TMP/tiny" --train_data "$TMP/data/train_*.bin" --val_data "" \
    --batch_size 2 --seq_len 16 --max_steps 1 --warmup_steps 0 --target_modules all "${opts[@]}" \
    --out_dir "$TMP/out.$METHOD" --threads 1
  n_train=$(log_trainable "$TMP/train.$METHOD.log")
  [[ "$n_inspect" == "$n_train" ]] || fail "$METHOD: inspect says '$n_inspect', the training run '$n_train'"
  n_ckpt=$(ckpt_floats "$TMP/out.$METHOD")
  [[ "$n_ckpt" == "$n_train" ]] || fail "$METHOD: the checkpoint holds $n_ckpt floats under /adapter, the run $n_train"
  note "tiny Llama, $METHOD: inspect, formula, training run and checkpoint agree on $n_train trainable parameters"
done

# errors
rc=0; "$VD" inspect --model "$TMP/gqa" --target_modules attn.c_attn >"$TMP/e1.log" 2>&1 || rc=$?
[[ $rc -ne 0 ]] && grep -q "target_modules: 'attn.c_attn' selects no llama linear layer" "$TMP/e1.log" ||
  { cat "$TMP/e1.log" >&2; fail "a GPT-2 name on a Llama model was not refused by name"; }
llama_config "$TMP/falcon" 2 64 128 4 4 FalconForCausalLM
rc=0; "$VD" inspect --model "$TMP/falcon" >"$TMP/e2.log" 2>&1 || rc=$?
[[ $rc -ne 0 ]] && grep -q "falcon/config.json: architecture FalconForCausalLM is not supported" "$TMP/e2.log" ||
  { cat "$TMP/e2.log" >&2; fail "an unsupported architecture was not refused by name"; }
note "PASS"
