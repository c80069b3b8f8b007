#!/usr/bin/env bash
# asan_smoke: short 1-rank and 2-rank training runs (5 steps, all four targets, dropout on,
# validation) meant for the sanitizer build: any AddressSanitizer / UndefinedBehaviorSanitizer
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
for run in np1 np2; do
  if grep -E -q 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$TMP/$run.log"; then
    cat "$TMP/$run.log" >&2; fail "$run: sanitizer report"
  fi
  [[ $(wc -l <"$TMP/$run/metrics.jsonl") -eq 5 ]] || fail "$run: expected 5 metrics rows"
  [[ -s "$TMP/$run/adapter_final.safetensors" ]] || fail "$run: no adapter_final.safetensors"
done
# also the helper sub-commands ran under the sanitizers above (init-model, prepare-data)
note "PASS"
