#!/usr/bin/env bash
# inspect_counts: `vera-dist inspect` from config.json alone (no weights in the directory).
#  * Llama-2-7B / 13B shapes with r 1024 on all-linear: the VeRA paper's trainable counts,
#    1,589,248 and 2,416,640 (Table 1 of arXiv:2310.11454);
#  * a GQA shape: sum over adapted layers of out + r, computed here by hand for q_proj,v_proj;
#  * the count a training run prints equals inspect's for the same model and targets;
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

# a training run prints the same count
make_model "$TMP/tiny" 2 4 32 256 64 --arch llama --kv-heads 2 --ffn 48
make_data "$TMP/data" 20000
n_inspect=$(count --model "$TMP/tiny" --r 8 --target_modules all)
vd_mpirun 1 "$TMP/train.log" --model "$TMP/tiny" --train_data "$TMP/data/train_*.bin" --val_data "" \
  --batch_size 2 --seq_len 16 --max_steps 1 --warmup_steps 0 --r 8 --target_modules all --out_dir "$TMP/out" --threads 1
n_train=$(log_trainable "$TMP/train.log")
[[ -n "$n_inspect" && "$n_inspect" == "$n_train" ]] || fail "inspect says '$n_inspect', the training run '$n_train'"
note "tiny Llama: inspect and train agree on $n_train trainable parameters"

# errors
rc=0; "$VD" inspect --model "$TMP/gqa" --target_modules attn.c_attn >"$TMP/e1.log" 2>&1 || rc=$?
[[ $rc -ne 0 ]] && grep -q "target_modules: 'attn.c_attn' selects no llama linear layer" "$TMP/e1.log" ||
  { cat "$TMP/e1.log" >&2; fail "a GPT-2 name on a Llama model was not refused by name"; }
llama_config "$TMP/falcon" 2 64 128 4 4 FalconForCausalLM
rc=0; "$VD" inspect --model "$TMP/falcon" >"$TMP/e2.log" 2>&1 || rc=$?
[[ $rc -ne 0 ]] && grep -q "falcon/config.json: architecture FalconForCausalLM is not supported" "$TMP/e2.log" ||
  { cat "$TMP/e2.log" >&2; fail "an unsupported architecture was not refused by name"; }
note "PASS"
