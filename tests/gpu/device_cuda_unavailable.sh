#!/usr/bin/env bash
# device_cuda_unavailable: on a machine where vera-dist cannot use a GPU (no CUDA backend in
# this build, no driver, no device):
#  * --device cuda fails with exactly one "vera-dist: error: device: cuda requested but ..." line
#    and a non-zero exit, before writing anything; with 2 ranks too (one line per rank at most);
#  * --device auto falls back to cpu, says so and why, and trains;
#  * --precision tf32 (a cuBLAS mode) is refused in one line on the cpu fallback; bf16 trains there.
# Exit 77 ("SKIPPED: ...") where a CUDA device is usable: this checks the machine without one.
#   usage: bash tests/gpu/device_cuda_unavailable.sh PATH/TO/vera-dist
source "$(dirname "$0")/../integration/common.sh"

make_model "$TMP/model" 1 2 16 256 32
make_data "$TMP/data" 8000
COMMON=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --batch_size 2 --seq_len 16 --max_steps 2
        --warmup_steps 1 --r 4 --threads 1)
CUDA_ERR='device: .?cuda.? requested but (no CUDA device is available|this build has no CUDA backend)'

rc=0; run_logged "$TMP/one.log" "$VD" "${COMMON[@]}" --device cuda --out_dir "$TMP/one" || rc=$?
if [[ $rc -eq 0 ]]; then
  echo "SKIPPED: a CUDA device is usable here ($(grep -m1 '^cuda: rank' "$TMP/one.log" || echo '?'))"
  exit 77
fi
assert_error "$TMP/one.log" "$CUDA_ERR"
n=$(grep -c -E "$ERR_RE" "$TMP/one.log" || true)
[[ $n -eq 1 ]] || { cat "$TMP/one.log" >&2; fail "expected one error line, got $n"; }
[[ ! -e "$TMP/one/metrics.jsonl" ]] || fail "--device cuda without a device wrote metrics.jsonl"
note "1 rank: $(grep -E "$ERR_RE" "$TMP/one.log")"

rc=0; run_logged "$TMP/two.log" "$MPIRUN" -np 2 "$VD" "${COMMON[@]}" --device cuda --out_dir "$TMP/two" || rc=$?
[[ $rc -ne 0 ]] || fail "2 ranks: --device cuda without a device exited 0"
assert_error "$TMP/two.log" "$CUDA_ERR"
n=$(grep -c -E "$ERR_RE" "$TMP/two.log" || true)
bad=$(grep -E "$ERR_RE" "$TMP/two.log" | grep -c -v -E "$CUDA_ERR" || true)
[[ $n -ge 1 && $n -le 2 && $bad -eq 0 ]] || { cat "$TMP/two.log" >&2; fail "2 ranks: expected 1 or 2 error lines, all the cuda one"; }
note "2 ranks: exit $rc, $n error line(s)"

vd_run "$TMP/auto.log" "${COMMON[@]}" --device auto --out_dir "$TMP/auto"
grep -q -E "^device: auto -> cpu \(.+\)" "$TMP/auto.log" || { cat "$TMP/auto.log" >&2; fail "auto: no 'device: auto -> cpu (why)' line"; }
grep -q "backend cpu" "$TMP/auto.log" || fail "auto: did not run on the cpu backend"
[[ $(wc -l < "$TMP/auto/metrics.jsonl") -eq 2 ]] || fail "auto: expected 2 metrics rows"
note "auto: $(grep -E '^device: auto' "$TMP/auto.log")"

for dev in cpu auto; do
  rc=0; run_logged "$TMP/tf32.log" "$VD" "${COMMON[@]}" --device "$dev" --precision tf32 --out_dir "$TMP/tf32" || rc=$?
  [[ $rc -ne 0 ]] || fail "--device $dev --precision tf32 was accepted"
  assert_error "$TMP/tf32.log" "precision: tf32 needs the cuda backend"
  n=$(grep -c -E "$ERR_RE" "$TMP/tf32.log" || true)
  [[ $n -eq 1 ]] || fail "--precision tf32: expected one error line, got $n"
  [[ ! -e "$TMP/tf32/metrics.jsonl" ]] || fail "--precision tf32 wrote metrics.jsonl"
done
note "tf32 refused: $(grep -E "$ERR_RE" "$TMP/tf32.log")"
vd_run "$TMP/bf16.log" "${COMMON[@]}" --device auto --precision bf16 --out_dir "$TMP/bf16"
grep -q "^precision: bf16" "$TMP/bf16.log" || fail "auto + bf16: no precision line"
note "PASS"
