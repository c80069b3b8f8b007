#!/usr/bin/env bash
# asan_smoke: short 1-rank and 2-rank training runs (5 steps, all four targets, dropout on,
# validation; then a 2-rank Llama run, its three exports and inspect) meant for the sanitizer build: any AddressSanitizer / UndefinedBehaviorSanitizer
# report makes vera-dist exit non-zero (UBSan is built with -fno-sanitize-recover). Leak checks
# are off (ASAN_OPTIONS=detect_leaks=0) because Open MPI itself leaks.
source "$(dirname "$0")/common.sh"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# shellcheck disable=SC2034 # read by vd_mpirun in common.sh
MPI_TIMEOUT=300

make_model "$TMP/model" 2 2 32 256 64
make_data "$TMP/data" 10000
ARGS=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data "$TMP/data/val_*.bin"
      --batch_size 2 --seq_len 32 --max_steps 5 --warmup_steps 1 --r 8 --target_modules all
      --vera_dropout 0.1 --eval_every 2 --eval_seqs 4 --threads 1)
vd_mpirun 1 "$TMP/np1.log" "${ARGS[@]}" --grad_accum 2 --out_dir "$TMP/np1"
vd_mpirun 2 "$TMP/np2.log" "${ARGS[@]}" --grad_accum 1 --out_dir "$TMP/np2"
# the Llama family: GQA, every projection type, then its export paths and inspect
make_model "$TMP/llama" 2 4 32 256 64 --arch llama --kv-heads 2 --ffn 48
LARGS=("${ARGS[@]}")
LARGS[1]="$TMP/llama"
vd_mpirun 2 "$TMP/llama.log" "${LARGS[@]}" --grad_accum 1 --out_dir "$TMP/llama-run"
ck="$(ls "$TMP"/llama-run/checkpoints/step_*.h5 | tail -n 1)"
for fmt in peft merged lora; do
  vd_run "$TMP/export-$fmt.log" export --checkpoint "$ck" --format "$fmt" --out "$TMP/llama-$fmt"
done
vd_run "$TMP/inspect.log" inspect --model "$TMP/llama" --r 8 --target_modules all
for run in np1 np2 llama; do
  if grep -E -q 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$TMP/$run.log"; then
    cat "$TMP/$run.log" >&2; fail "$run: sanitizer report"
  fi
  dir="$TMP/$run"; [[ $run == llama ]] && dir="$TMP/llama-run"
  [[ $(wc -l <"$dir/metrics.jsonl") -eq 5 ]] || fail "$run: expected 5 metrics rows"
  [[ -s "$dir/adapter_final.safetensors" ]] || fail "$run: no adapter_final.safetensors"
done
for log in "$TMP"/export-*.log "$TMP/inspect.log"; do
  if grep -E -q 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log"; then cat "$log" >&2; fail "$log: sanitizer report"; fi
done
# also the helper sub-commands ran under the sanitizers above (init-model, prepare-data)
note "PASS"
