#!/usr/bin/env bash
# gpu_generate: `vera-dist generate --device cuda` (KV-cache decode with the CUDA backend's
# attention_cached) against --device cpu, for GPT-2 and a Llama model with grouped-query
# attention, each with the VeRA vectors of a short CPU training run (--checkpoint, non-zero
# vectors): greedy ids identical, and a seeded sample identical (the sampler runs on the host on
# logits that agree to ~1e-6). Exit 77 ("SKIPPED: ...") where no CUDA device is usable.
#   usage: bash tests/gpu/gpu_generate.sh PATH/TO/vera-dist
source "$(dirname "$0")/../integration/common.sh"

make_data "$TMP/data" 8000
PROMPT=72,101,108,108,111,44,32,119,111,114,108,100
for arch in gpt2 llama; do
  args=()
  [[ $arch == llama ]] && args=(--arch llama --kv-heads 1)
  make_model "$TMP/$arch" 2 2 32 256 64 "${args[@]}"
  vd_run "$TMP/train.$arch.log" --model "$TMP/$arch" --train_data "$TMP/data/train_*.bin" --out_dir "$TMP/run.$arch" \
    --batch_size 2 --seq_len 32 --max_steps 4 --warmup_steps 1 --lr 5e-2 --r 8 --target_modules all \
    --ckpt_every 4 --threads 1 --log_every 10 --device cpu
  ck="$TMP/run.$arch/checkpoints/step_00000004.h5"
  [[ -f $ck ]] || fail "$arch: no checkpoint after training"
  for mode in greedy sampled; do
    gen=(generate --model "$TMP/$arch" --checkpoint "$ck" --prompt_ids "$PROMPT" --max_new_tokens 24 --ignore_eos 1
         --json --threads 1)
    [[ $mode == sampled ]] && gen+=(--temperature 0.8 --top_k 50 --top_p 0.95 --seed 3)
    vd_run "$TMP/cpu.$arch.$mode.log" "${gen[@]}" --device cpu
    rc=0; run_logged "$TMP/cuda.$arch.$mode.log" "$VD" "${gen[@]}" --device cuda || rc=$?
    if [[ $rc -ne 0 ]]; then
      reason="$(grep -E "$ERR_RE" "$TMP/cuda.$arch.$mode.log" | head -n 1)"
      if grep -q -E "no usable CUDA device|has no CUDA backend" <<<"$reason"; then
        echo "SKIPPED: $reason"
        exit 77
      fi
      cat "$TMP/cuda.$arch.$mode.log" >&2
      fail "$arch: generate --device cuda failed"
    fi
    want="$(grep '^{' "$TMP/cpu.$arch.$mode.log")" got="$(grep '^{' "$TMP/cuda.$arch.$mode.log")"
    [[ -n $want && $want == "$got" ]] || fail "$arch $mode: cuda gave $got, cpu $want"
    note "$arch $mode: cuda = cpu: $got"
  done
done
echo "PASS"
