# recompute_exact: recompute = block (activation recomputation per transformer block,
# docs/configuration.md) gives the same run as recompute = none, bit for bit on the CPU backend.
#  - GPT-2 tiny (VeRA, vera_dropout 0.1), Llama tiny (GQA, all-linear; VeRA, vera_dropout 0.1)
#    and GPT-2 tiny with LoRA (lora_dropout 0.1) and VB-LoRA (vblora_dropout 0.1): 6 steps,
#    grad_accum 2, every loss and the final adapter file identical with and without recomputation;
#  - recompute is free on resume: run none's step-3 checkpoint resumed with recompute = block ends
#    with the same adapter file; a bad value is refused naming the key;
#  - inspect's activation estimate is smaller with recompute = block.
source "$(dirname "$0")/common.sh"

make_data "$TMP/data" 30000
make_model "$TMP/gpt2" 3 2 32 256 64
make_model "$TMP/llama" 3 4 32 256 64 --arch llama --kv-heads 2 --ffn 48

# run_pair NAME MODEL ARGS...: trains twice (none, block) and compares losses and adapter files
run_pair() {
  local name="$1" model="$2"; shift 2
  for rc_mode in none block; do
    vd_mpirun 1 "$TMP/$name.$rc_mode.log" --model "$model" --train_data "$TMP/data/train_*.bin" --target_modules all \
      --seq_len 32 --batch_size 2 --grad_accum 2 --lr 1e-2 --warmup_steps 2 --max_steps 6 --threads 1 \
      --out_dir "$TMP/$name.$rc_mode" --recompute "$rc_mode" "$@"
  done
  local a="$TMP/$name.none" b="$TMP/$name.block"
  [[ $(wc -l < "$a/metrics.jsonl") -eq 6 ]] || fail "$name: expected 6 metrics rows"
  diff <(metrics_field "$a/metrics.jsonl" loss) <(metrics_field "$b/metrics.jsonl" loss) >/dev/null \
    || fail "$name: losses with recompute = block differ from recompute = none"
  cmp -s "$a/adapter_final.safetensors" "$b/adapter_final.safetensors" \
    || fail "$name: final adapter differs between recompute = none and block"
  # the run must have trained (otherwise equal files prove nothing)
  [[ "$(metrics_field "$a/metrics.jsonl" loss | head -n 1)" != "$(metrics_field "$a/metrics.jsonl" loss | tail -n 1)" ]] \
    || fail "$name: the loss did not change"
  note "$name: 6 losses and the final adapter bit-identical with and without recompute"
}

run_pair gpt2_vera "$TMP/gpt2" --adapter_type vera --r 16 --vera_dropout 0.1 --ckpt_every 3
vd_mpirun 1 "$TMP/resume.log" --model "$TMP/gpt2" --train_data "$TMP/data/train_*.bin" --target_modules all \
  --seq_len 32 --batch_size 2 --grad_accum 2 --lr 1e-2 --warmup_steps 2 --max_steps 6 --threads 1 \
  --out_dir "$TMP/resume" --recompute block --adapter_type vera --r 16 --vera_dropout 0.1 \
  --resume "$TMP/gpt2_vera.none/checkpoints/step_00000003.h5"
grep -q "continuing from .*step_00000003.h5 at step 3" "$TMP/resume.log" || fail "the resume did not start at step 3"
cmp -s "$TMP/gpt2_vera.none/adapter_final.safetensors" "$TMP/resume/adapter_final.safetensors" \
  || fail "resuming a recompute = none checkpoint with recompute = block changed the result"
note "recompute = none checkpoint resumed with recompute = block: same final adapter"
rc=0; run_logged "$TMP/bad.log" "$VD" --model "$TMP/gpt2" --recompute layer || rc=$?
[[ $rc -ne 0 ]] || fail "--recompute layer was accepted"
assert_error "$TMP/bad.log" "recompute" "none, block"
run_pair llama_vera "$TMP/llama" --adapter_type vera --r 16 --vera_dropout 0.1
run_pair gpt2_lora "$TMP/gpt2" --adapter_type lora --r 4 --lora_alpha 8 --lora_dropout 0.1
run_pair gpt2_vblora "$TMP/gpt2" --adapter_type vblora --r 4 --num_vectors 32 --vector_length 16 --topk 2 \
  --vblora_dropout 0.1

# inspect: the activation estimate follows the setting
act_gib() { sed -n 's/.*activations \([0-9.]*\) GiB.*/\1/p' "$1"; }
vd_run "$TMP/i_none.log" inspect --model "$TMP/gpt2" --batch_size 4 --seq_len 64 --recompute none
vd_run "$TMP/i_block.log" inspect --model "$TMP/gpt2" --batch_size 4 --seq_len 64 --recompute block
grep -q "recompute block" "$TMP/i_block.log" || fail "inspect does not name recompute block"
awk -v a="$(act_gib "$TMP/i_none.log")" -v b="$(act_gib "$TMP/i_block.log")" 'BEGIN { exit !(b < a) }' \
  || fail "inspect: activations with recompute = block are not below none"
note "inspect: activations $(act_gib "$TMP/i_none.log") GiB (none) vs $(act_gib "$TMP/i_block.log") GiB (block)"
