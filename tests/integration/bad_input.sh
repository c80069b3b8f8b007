#!/usr/bin/env bash
# bad_input: every bad input ends the run with
#  * a non-zero exit code (of mpirun: all ranks end; a hang past 60 s is a failure),
#  * a one-line "vera-dist: error:" message (with "[rank k]" on several ranks) naming the
#    file or key and what was expected,
#  * nothing written over the existing output: out_dir/metrics.jsonl and the adapter of an
#    earlier run keep their checksums, and no new file appears in out_dir.
# The runs pass --overwrite 1 (except the out_dir case), so only the early failure protects
# the old output. Data and model cases run on 2 ranks.
source "$(dirname "$0")/common.sh"
MPI_TIMEOUT=60

make_model "$TMP/model" 2 2 32 256 64
make_data "$TMP/data" 20000
OUT="$TMP/out"
# Builds with checkpoints resume from out_dir by default; a new run over old output is
# --resume none --overwrite 1.
NEW_RUN=()
if "$VD" --help 2>/dev/null | grep -q -- '--resume'; then NEW_RUN=(--resume none); fi
BASE=("${NEW_RUN[@]}" --model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data "$TMP/data/val_*.bin"
      --out_dir "$OUT" --overwrite 1 --batch_size 2 --seq_len 32 --max_steps 2 --warmup_steps 0 --r 8 --threads 1)

# A good run first: the baseline must work, and its output is what the bad runs must not touch.
vd_mpirun 2 "$TMP/good.log" "${BASE[@]}"
[[ -s "$OUT/metrics.jsonl" && -s "$OUT/adapter_final.safetensors" ]] || fail "the good run wrote no output"

# every file under out_dir (checkpoints included) with its checksum
snapshot() { (cd "$OUT" && find . -type f -exec sha256sum {} + | sort -k 2); }
BEFORE="$(snapshot)"
cp -a "$OUT" "$TMP/out.orig"

# Every case runs; failures are collected and reported together at the end.
NCASES=0
FAILED=()
case_fail() {
  echo "FAIL [$TEST_NAME] $1: $2" >&2
  FAILED+=("$1")
}
# check_case NAME LOG RC 'REGEX1;REGEX2': the checks above on one finished run
check_case() {
  local name="$1" log="$2" rc="$3" pats="$4"
  NCASES=$((NCASES + 1))
  if [[ "$(snapshot)" != "$BEFORE" ]]; then
    case_fail "$name" "the existing output in out_dir changed: $(diff <(echo "$BEFORE") <(snapshot) | grep '^[<>]' | tr '\n' ';')"
    rm -rf "$OUT" && cp -a "$TMP/out.orig" "$OUT"
  fi
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    tail -n 20 "$log" >&2; case_fail "$name" "timed out after ${MPI_TIMEOUT}s (hang)"; return
  fi
  if [[ $rc -eq 0 ]]; then
    tail -n 20 "$log" >&2; case_fail "$name" "exit code 0, expected a failure"; return
  fi
  local -a pat_list
  IFS=';' read -r -a pat_list <<<"$pats"
  # assert_error exits on failure: run it in a subshell to keep going
  if ! (assert_error "$log" "${pat_list[@]}") 2>"$log.why"; then
    tail -n 20 "$log.why" >&2; case_fail "$name" "error message check failed"; return
  fi
  note "$name: rc=$rc, ${CASE_TIME:-?}s: $(grep -E -m1 "$ERR_RE" "$log")"
}
# expect_error NAME NP 'REGEX1;REGEX2' ARGS... : NP=0 runs vera-dist without mpirun.
expect_error() {
  local name="$1" np="$2" pats="$3"; shift 3
  local log="$TMP/case.$name.log" rc=0 t0=$SECONDS
  if [[ "$np" == 0 ]]; then
    run_logged "$log" "$VD" "$@" || rc=$?
  else
    run_logged "$log" "$MPIRUN" -np "$np" "$VD" "$@" || rc=$?
  fi
  CASE_TIME=$((SECONDS - t0))
  check_case "$name" "$log" "$rc" "$pats"
}

# ---------------------------------------------------------------- data
expect_error missing_train_glob 2 "train_data;no files match;$TMP/nope/train_" \
  "${BASE[@]}" --train_data "$TMP/nope/train_*.bin"
expect_error missing_val_glob 2 "val_data;$TMP/nope/val_" \
  "${BASE[@]}" --val_data "$TMP/nope/val_*.bin"

mkdir -p "$TMP/trunc"
cp "$TMP/data/train_000000.bin" "$TMP/trunc/train_000000.bin"
truncate -s -100 "$TMP/trunc/train_000000.bin"
expect_error truncated_shard 2 "train_data;trunc/train_000000\.bin;truncated" \
  "${BASE[@]}" --train_data "$TMP/trunc/train_*.bin"
truncate -s 12 "$TMP/trunc/train_000000.bin"
expect_error shard_shorter_than_header 2 "train_data;trunc/train_000000\.bin;truncated|header" \
  "${BASE[@]}" --train_data "$TMP/trunc/train_*.bin"

mkdir -p "$TMP/magic"
cp "$TMP/data/train_000000.bin" "$TMP/magic/train_000000.bin"
printf '\x39\x30\x00\x00' | dd of="$TMP/magic/train_000000.bin" bs=1 seek=0 conv=notrunc status=none
expect_error wrong_magic 2 "train_data;magic/train_000000\.bin;magic;20240520" \
  "${BASE[@]}" --train_data "$TMP/magic/train_*.bin"

# token ids >= vocab: a vocab-128 model and byte-level data with bytes >= 128. The first
# 70 bytes are ASCII, so rank 0's first sequences are clean and only rank 1 hits a bad id:
# rank 1 must end rank 0 too (no hang in the all-reduce).
make_model "$TMP/model128" 2 2 32 128 64
{ head -c 70 /dev/zero | tr '\0' 'a'; for _ in $(seq 400); do printf 'h\xc3\xa9llo w\xc3\xb6rld '; done; } >"$TMP/high.txt"
vd_run "$TMP/prep-high.log" prepare-data --in "$TMP/high.txt" --out "$TMP/high" --val_fraction 0
expect_error token_id_ge_vocab 2 "train_data;high/train_000000\.bin;token id;128" \
  "${BASE[@]}" --model "$TMP/model128" --train_data "$TMP/high/train_*.bin" --val_data ""

# ---------------------------------------------------------------- model
expect_error model_dir_missing 2 "$TMP/nomodel" "${BASE[@]}" --model "$TMP/nomodel"

cp -r "$TMP/model" "$TMP/mtrunc"
truncate -s 2000 "$TMP/mtrunc/model.safetensors"
expect_error model_truncated 2 "mtrunc/model\.safetensors" "${BASE[@]}" --model "$TMP/mtrunc"

# a tensor missing: rename one in the safetensors header (same length keeps the offsets valid)
cp -r "$TMP/model" "$TMP/mmiss"
perl -0777 -pi -e 's/h\.1\.ln_2\.weight/h.1.ln_2.weighx/' "$TMP/mmiss/model.safetensors"
grep -q -a 'h.1.ln_2.weighx' "$TMP/mmiss/model.safetensors" || fail "could not craft the missing-tensor model"
expect_error model_missing_tensor 2 "mmiss/model\.safetensors;h\.1\.ln_2\.weight" \
  "${BASE[@]}" --model "$TMP/mmiss"

# wrong shapes: config.json says n_embd 48 but the tensors are 32 wide
cp -r "$TMP/model" "$TMP/mshape"
sed -i -E 's/("n_embd"[[:space:]]*:[[:space:]]*)32/\148/' "$TMP/mshape/config.json"
grep -q -E '"n_embd"[[:space:]]*:[[:space:]]*48' "$TMP/mshape/config.json" || fail "could not edit n_embd in config.json"
expect_error model_wrong_shape 2 "mshape/model\.safetensors|mshape/config\.json;shape|expected" \
  "${BASE[@]}" --model "$TMP/mshape"

expect_error seq_len_gt_ctx 2 "seq_len;64" "${BASE[@]}" --seq_len 128

# ---------------------------------------------------------------- configuration
printf '[train]\nlearning_rate = 0.1\n' >"$TMP/unknown.ini"
expect_error unknown_key_ini 0 "learning_rate;unknown\.ini" --config "$TMP/unknown.ini" "${BASE[@]}"
expect_error unknown_key_cli 0 "learning_rate" "${BASE[@]}" --learning_rate 0.1
expect_error bad_value_lr 0 "lr;\(0, 10\]" "${BASE[@]}" --lr -1
expect_error bad_value_batch_size 0 "batch_size" "${BASE[@]}" --batch_size 0
expect_error bad_value_not_a_number 0 "max_steps" "${BASE[@]}" --max_steps many
expect_error bad_value_targets 0 "target_modules;attn\.c_qkv" "${BASE[@]}" --target_modules attn.c_qkv
printf '; comment\n[vera]\nr = abc\n' >"$TMP/badval.ini"
expect_error bad_value_ini 0 "badval\.ini:3;r" --config "$TMP/badval.ini" "${BASE[@]}"
expect_error bad_value_on_2_ranks 2 "grad_accum" "${BASE[@]}" --grad_accum 0

# ranks started with different configurations (MPMD): the error names the key
log="$TMP/case.different_configs.log"; rc=0
run_logged "$log" "$MPIRUN" -np 1 "$VD" "${BASE[@]}" --lr 0.01 : -np 1 "$VD" "${BASE[@]}" --lr 0.02 || rc=$?
check_case different_configs "$log" "$rc" "different configuration;'lr'"

# existing output without --overwrite (the only case without --overwrite 1)
expect_error out_dir_exists 2 "out_dir;$OUT;overwrite" "${BASE[@]}" --overwrite 0

# ---------------------------------------------------------------- helper sub-commands
expect_error prepare_data_missing_in 0 "--in;$TMP/none\.txt" prepare-data --in "$TMP/none.txt" --out "$TMP/pd"
expect_error prepare_data_exists 0 "--out;overwrite" prepare-data --in "$TMP/text.data.txt" --out "$TMP/data"
expect_error init_model_bad_heads 0 "heads|dim" init-model --out "$TMP/m3" --layers 1 --heads 3 --dim 32 \
  --vocab 256 --ctx 64 --seed 1

if [[ ${#FAILED[@]} -gt 0 ]]; then
  fail "${#FAILED[@]} of $NCASES cases failed: ${FAILED[*]}"
fi
note "PASS ($NCASES cases)"
