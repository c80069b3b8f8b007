#!/usr/bin/env bash
# gpu_memory: on the CUDA backend a run that cannot fit in the device's free memory is refused
# before it allocates, with one line giving the estimate and the device's free figure (issue
# 12, defect 3): --batch_size 65536 --seq_len 32 on this tiny model needs about 4.5 GiB of
# activations. Under the host emulation the device reports 4 GiB free; on a real GPU the test
# lowers the figure with VERA_MEMORY_LIMIT_BYTES=1 GiB (what it checks is the refusal path).
# Exit 77 ("SKIPPED: ...") when vera-dist cannot use a CUDA device here.
#   usage: bash tests/gpu/gpu_memory.sh PATH/TO/vera-dist
source "$(dirname "$0")/../integration/common.sh"

make_model "$TMP/model" 1 2 16 256 64
make_data "$TMP/data" 8000
COMMON=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data= --max_steps 2 --warmup_steps 1
        --r 4 --threads 1 --device cuda)
rc=0; run_logged "$TMP/probe.log" "$VD" "${COMMON[@]}" --batch_size 2 --seq_len 16 --out_dir "$TMP/probe" || rc=$?
if [[ $rc -ne 0 ]]; then
  echo "SKIPPED: no usable CUDA device: $(grep -m1 'vera-dist: error' "$TMP/probe.log" || tail -n 1 "$TMP/probe.log")"
  exit 77
fi
[[ "${VERA_EMU_GPUS:-}" != "" || -n "${VD_EMULATED:-}" ]] || export VERA_MEMORY_LIMIT_BYTES=$((1 << 30))
t0=$SECONDS
rc=0; run_logged "$TMP/big.log" "$VD" "${COMMON[@]}" --batch_size 65536 --seq_len 32 --out_dir "$TMP/big" || rc=$?
[[ $rc -ne 0 ]] || fail "a 5 GiB batch was not refused"
assert_error "$TMP/big.log" "memory: this rank needs about" "(free memory of the cuda device|VERA_MEMORY_LIMIT_BYTES)" "HINT"
[[ $((SECONDS - t0)) -lt 30 ]] || fail "the refusal took $((SECONDS - t0)) s: it should come before any allocation"
[[ ! -e "$TMP/big/metrics.jsonl" ]] || fail "the refused run wrote metrics.jsonl"
note "$(grep -m1 'vera-dist: error' "$TMP/big.log" | cut -c1-200)"
note "PASS"
