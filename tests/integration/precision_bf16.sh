# precision_bf16: --precision bf16 on the CPU backend against fp32.
#  - GPT-2 tiny and Llama tiny (GQA, SwiGLU), all-linear adapters, 20 steps: every training loss
#    and the validation loss of the bf16 run within 1% (relative) of the fp32 run's;
#    the bf16 run is not the fp32 run in disguise (some loss differs);
#  - a bf16 rerun is bit-identical (losses and final vectors);
#  - the summary and the checkpoint record the precision; a bf16 checkpoint resumes under fp32
#    (allowed: the trainable state is fp32 in every precision) and the reverse;
#  - inspect counts the linear layers at 2 bytes; --precision tf32 is refused on the CPU in one line.
source "$(dirname "$0")/common.sh"

make_data "$TMP/data" 40000
make_model "$TMP/gpt2" 2 4 64 256 64
make_model "$TMP/llama" 2 4 64 256 64 --arch llama --kv-heads 2 --ffn 160

# loss_diff A B: 1 when some loss differs between the two metrics files
loss_diff() { ! diff -q <(metrics_field "$1" loss) <(metrics_field "$2" loss) >/dev/null; }

for arch in gpt2 llama; do
  COMMON=(--model "$TMP/$arch" --train_data "$TMP/data/train_*.bin" --val_data "$TMP/data/val_*.bin"
          --r 16 --target_modules all --seq_len 32 --batch_size 4 --lr 1e-2 --warmup_steps 2 --max_steps 20
          --eval_every 20 --eval_seqs 8 --threads 1 --ckpt_every 10)
  vd_run "$TMP/$arch-fp32.log" "${COMMON[@]}" --precision fp32 --out_dir "$TMP/$arch-fp32"
  vd_run "$TMP/$arch-bf16.log" "${COMMON[@]}" --precision bf16 --out_dir "$TMP/$arch-bf16"
  vd_run "$TMP/$arch-bf16b.log" "${COMMON[@]}" --precision bf16 --out_dir "$TMP/$arch-bf16b"
  grep -q "^precision: bf16: " "$TMP/$arch-bf16.log" || fail "$arch: the summary does not say bf16"
  # the fp32 run merges W0 + dW on some layers (this shape pays for it); bf16 must not
  grep -q "merged W0+dW on [1-9][0-9]* of" "$TMP/$arch-fp32.log" || fail "$arch: fp32 merged nothing: the check below is vacuous"
  grep -q "merged W0+dW on 0 of" "$TMP/$arch-bf16.log" || fail "$arch: bf16 merged dW into a bf16 weight"
  [[ $(wc -l < "$TMP/$arch-bf16/metrics.jsonl") -eq 20 ]] || fail "$arch: expected 20 metrics rows"
  compare_losses "$TMP/$arch-fp32/metrics.jsonl" "$TMP/$arch-bf16/metrics.jsonl" 0.01 "$arch bf16 vs fp32"
  loss_diff "$TMP/$arch-fp32/metrics.jsonl" "$TMP/$arch-bf16/metrics.jsonl" \
    || fail "$arch: bf16 losses are bit-identical to fp32: the bf16 path is not in use"
  diff <(metrics_field "$TMP/$arch-bf16/metrics.jsonl" loss) <(metrics_field "$TMP/$arch-bf16b/metrics.jsonl" loss) \
    >/dev/null || fail "$arch: bf16 rerun losses are not bit-identical"
  cmp -s "$TMP/$arch-bf16/adapter_final.safetensors" "$TMP/$arch-bf16b/adapter_final.safetensors" \
    || fail "$arch: bf16 rerun final vectors differ"
  note "$arch: bf16 within 1% of fp32 for 20 steps; rerun bit-identical"
done

# the checkpoint records the precision; resuming with another one is allowed, either way
CK="$TMP/gpt2-bf16/checkpoints/step_00000010.h5"
[[ -f "$CK" ]] || fail "no step-10 checkpoint"
h5dump "$CK" >"$TMP/ck.txt" 2>&1 || fail "h5dump $CK failed"
grep -q "precision = bf16" "$TMP/ck.txt" || fail "the checkpoint's stored configuration does not say precision = bf16"
COMMON=(--model "$TMP/gpt2" --train_data "$TMP/data/train_*.bin" --val_data "$TMP/data/val_*.bin"
        --r 16 --target_modules all --seq_len 32 --batch_size 4 --lr 1e-2 --warmup_steps 2 --max_steps 20
        --eval_every 20 --eval_seqs 8 --threads 1 --ckpt_every 10)
vd_run "$TMP/r1.log" "${COMMON[@]}" --precision fp32 --out_dir "$TMP/r1" --resume "$CK"
grep -q "resume: continuing from .* at step 10" "$TMP/r1.log" || fail "bf16 checkpoint did not resume under fp32"
vd_run "$TMP/r2.log" "${COMMON[@]}" --precision bf16 --out_dir "$TMP/r2" \
  --resume "$TMP/gpt2-fp32/checkpoints/step_00000010.h5"
grep -q "resume: continuing from .* at step 10" "$TMP/r2.log" || fail "fp32 checkpoint did not resume under bf16"
# bf16 resumed from its own checkpoint is the uninterrupted bf16 run
vd_run "$TMP/r3.log" "${COMMON[@]}" --precision bf16 --out_dir "$TMP/r3" --resume "$CK"
diff <(tail -n 10 "$TMP/gpt2-bf16/metrics.jsonl" | metrics_field /dev/stdin loss) \
     <(metrics_field "$TMP/r3/metrics.jsonl" loss) >/dev/null || fail "bf16 resume differs from the uninterrupted run"
note "checkpoint records precision; resume across precisions allowed; bf16 resume exact"

# inspect (config.json is enough): GPT-2 124M's linear layers are 12 x 12 x 768^2 = 84934656 weights,
# 2 bytes fewer each under bf16: 0.1582 GiB less
mkdir -p "$TMP/gpt2-124m"
sed -e 's/"n_embd": 64/"n_embd": 768/; s/"n_head": 4/"n_head": 12/; s/"n_layer": 2/"n_layer": 12/' \
    -e 's/"n_positions": 64/"n_positions": 1024/; s/"vocab_size": 256/"vocab_size": 50257/' \
    "$TMP/gpt2/config.json" > "$TMP/gpt2-124m/config.json"
vd_run "$TMP/i32.log" inspect --model "$TMP/gpt2-124m" --batch_size 1 --seq_len 64
vd_run "$TMP/i16.log" inspect --model "$TMP/gpt2-124m" --batch_size 1 --seq_len 64 --precision bf16
grep -q "memory per rank (bf16" "$TMP/i16.log" || fail "inspect does not say bf16"
w32=$(sed -n 's/.*): weights \([0-9.]*\) GiB.*/\1/p' "$TMP/i32.log")
w16=$(sed -n 's/.*): weights \([0-9.]*\) GiB.*/\1/p' "$TMP/i16.log")
[[ -n "$w32" && -n "$w16" ]] || fail "inspect: no weights figure"
awk -v a="$w32" -v b="$w16" 'BEGIN { d = a - b - 84934656 * 2 / 2^30; exit !(d < 0.0015 && d > -0.0015) }' \
  || fail "inspect: weights $w32 GiB (fp32) vs $w16 GiB (bf16), expected 0.1582 GiB less"

# tf32 has no meaning on the CPU: one line, non-zero exit, nothing written
rc=0; run_logged "$TMP/tf32.log" "$VD" "${COMMON[@]}" --precision tf32 --out_dir "$TMP/tf32" || rc=$?
[[ $rc -ne 0 ]] || fail "--precision tf32 was accepted on the cpu backend"
assert_error "$TMP/tf32.log" "precision: tf32 needs the cuda backend"
[[ ! -e "$TMP/tf32/metrics.jsonl" ]] || fail "--precision tf32 wrote output"
note "inspect counts bf16 weights; tf32 refused on the cpu"
