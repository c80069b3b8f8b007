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
NEW_RUN=(--resume none)
BASE0=("${NEW_RUN[@]}" --model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data "$TMP/data/val_*.bin"
       --out_dir "$OUT" --batch_size 2 --seq_len 32 --max_steps 2 --warmup_steps 0 --r 8 --threads 1)
BASE=("${BASE0[@]}" --overwrite 1)

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

# ---------------------------------------------------------------- issue 14, item 8
# 1. a default never conflicts with a value the user set: --max_steps 1 alone lowers the
#    default warmup_steps (10) with one line; two values the user set that conflict are refused
GW=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data "" --out_dir "$TMP/out_gw"
    --batch_size 2 --seq_len 32 --max_steps 1 --r 8 --threads 1)
vd_run "$TMP/gw.log" "${GW[@]}"
grep -q '^config: max_steps = 1, below the default warmup_steps = 10: using warmup_steps = 1$' "$TMP/gw.log" ||
  { cat "$TMP/gw.log" >&2; case_fail defaults_give_way "no line saying warmup_steps was lowered"; }
[[ -s "$TMP/out_gw/adapter_final.safetensors" ]] || case_fail defaults_give_way "the run wrote no adapter"
NCASES=$((NCASES + 1))
# a model with a shorter context than the default seq_len (64): the default gives way too
make_model "$TMP/model16" 1 2 32 256 16
vd_run "$TMP/gw16b.log" --model "$TMP/model16" --train_data "$TMP/data/train_*.bin" --val_data "" \
  --out_dir "$TMP/out_gw16b" --batch_size 2 --max_steps 1 --warmup_steps 0 --r 8 --threads 1
grep -q "^config: the model's context (max positions) is 16, below the default seq_len = 64: using seq_len = 16$" \
  "$TMP/gw16b.log" || { cat "$TMP/gw16b.log" >&2; case_fail defaults_give_way_seq_len "no line saying seq_len was lowered"; }
NCASES=$((NCASES + 1))
expect_error warmup_and_max_steps_both_set 0 "warmup_steps \(3\) must be <= max_steps \(2\)" "${BASE[@]}" --warmup_steps 3
expect_error seq_len_set_beyond_ctx 0 "seq_len: 32 is larger than the model's context \(max positions 16" \
  "${BASE[@]}" --model "$TMP/model16"

# 2. one rank: our line and nothing after it (no MPI_Abort banner, no ORTE_ERROR_LOG) as a
#    singleton and under mpirun -np 1; on 2 ranks every rank still ends (the cases above)
NCASES=$((NCASES + 1)); rc=0
timeout -k 5 "$MPI_TIMEOUT" "$VD" "${BASE[@]}" --lr -1 >"$TMP/one.out" 2>"$TMP/one.err" || rc=$?
if [[ $rc -eq 0 || $(wc -l <"$TMP/one.err") -ne 1 ]] || ! grep -q -E "^$ERR_RE --lr: expected a number" "$TMP/one.err"; then
  cat "$TMP/one.err" >&2; case_fail singleton_one_line "rc=$rc; stderr is not exactly our one error line"
else note "singleton_one_line: rc=$rc, stderr: $(cat "$TMP/one.err")"; fi
NCASES=$((NCASES + 1)); rc=0
run_logged "$TMP/np1.log" "$MPIRUN" -np 1 "$VD" "${BASE[@]}" --lr -1 || rc=$?
if [[ $rc -eq 0 ]] || ! grep -q -E "^$ERR_RE --lr" "$TMP/np1.log" || grep -q -E 'MPI_ABORT|ORTE_ERROR_LOG' "$TMP/np1.log"; then
  cat "$TMP/np1.log" >&2; case_fail np1_no_abort "rc=$rc; expected our line and no MPI_ABORT / ORTE_ERROR_LOG"
else note "np1_no_abort: rc=$rc, no MPI_ABORT banner"; fi

# 3. --overwrite is a flag in every sub-command: bare = 1, or 1|0|true|false; anything else refused
cp -a "$OUT" "$TMP/out_flag"
vd_run "$TMP/flag.log" "${BASE0[@]}" --out_dir "$TMP/out_flag" --overwrite
grep -q 'resume: starting fresh' "$TMP/flag.log" || { cat "$TMP/flag.log" >&2; case_fail overwrite_flag_train "bare --overwrite did not start over"; }
make_model "$TMP/m_flag" 1 2 32 256 64
make_model "$TMP/m_flag" 1 2 32 256 64 --overwrite
make_model "$TMP/m_flag" 1 2 32 256 64 --overwrite 1
make_model "$TMP/m_flag" 1 2 32 256 64 --overwrite=true
vd_run "$TMP/pd_flag.log" prepare-data --in "$TMP/text.data.txt" --out "$TMP/pd_flag" --overwrite 0
vd_run "$TMP/pd_flag2.log" prepare-data --in "$TMP/text.data.txt" --out "$TMP/pd_flag" --overwrite 1
vd_run "$TMP/pd_flag3.log" prepare-data --in "$TMP/text.data.txt" --out "$TMP/pd_flag" --overwrite
CKPT="$(ls "$OUT"/checkpoints/step_*.h5 | tail -n 1)"
vd_run "$TMP/exp1.log" export --checkpoint "$CKPT" --format peft --out "$TMP/exp"
vd_run "$TMP/exp2.log" export --checkpoint "$CKPT" --format peft --out "$TMP/exp" --overwrite
vd_run "$TMP/exp3.log" export --checkpoint "$CKPT" --format peft --out "$TMP/exp" --overwrite 1
NCASES=$((NCASES + 1))
expect_error overwrite_flag_export_refused 0 "export;exp/adapter_model\.safetensors already exists;--overwrite" \
  export --checkpoint "$CKPT" --format peft --out "$TMP/exp" --overwrite 0
expect_error overwrite_flag_init_model_refused 0 "init-model;already exists;--overwrite" \
  init-model --out "$TMP/m_flag" --overwrite false
for sub in train init-model prepare-data export; do
  expect_error "overwrite_bad_value_$sub" 0 "--overwrite: expected no value, or 1, 0, true or false, got 'yes'" \
    "$sub" --overwrite yes
done

# 4. a sub-command refuses the configuration keys it does not read, naming the key and what it takes
expect_error forward_unused_key 0 "forward: --init_adapter is not used by forward;--adapter;--model, --r" \
  forward --model "$TMP/model" --tokens "$TMP/data/val_*.bin" --out "$TMP/never.safetensors" --init_adapter "$TMP/exp"
[[ -e "$TMP/never.safetensors" ]] && case_fail forward_unused_key "forward wrote its output"
expect_error forward_unused_flag 0 "forward: --overwrite is not used by forward" \
  forward --model "$TMP/model" --tokens "$TMP/data/val_*.bin" --out "$TMP/never.safetensors" --overwrite
expect_error inspect_unused_key 0 "inspect: --max_steps is not used by inspect;--target_modules" \
  inspect --model "$TMP/model" --max_steps 5
expect_error export_unused_key 0 "export: unknown argument '--r';--checkpoint" \
  export --checkpoint "$CKPT" --format peft --out "$TMP/exp4" --r 8
# a training run's --config file is fine for inspect: the keys it does not read are ignored
printf '[train]\nmax_steps = 3\nlr = 0.1\n[vera]\nr = 8\n' >"$TMP/run.ini"
vd_run "$TMP/inspect_ini.log" inspect --config "$TMP/run.ini" --model "$TMP/model"
grep -q '(r 8)' "$TMP/inspect_ini.log" || { cat "$TMP/inspect_ini.log" >&2; case_fail inspect_config_file "r from the file not used"; }
NCASES=$((NCASES + 1))

if [[ ${#FAILED[@]} -gt 0 ]]; then
  fail "${#FAILED[@]} of $NCASES cases failed: ${FAILED[*]}"
fi
note "PASS ($NCASES cases)"
