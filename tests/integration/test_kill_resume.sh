#!/usr/bin/env bash
# test_kill_resume: faults and preemption on a 2-rank mpirun run; every path must end in the
# same run as an uninterrupted one (bit-identical losses and adapter_final.safetensors).
#
#  1. kill -9 trials (VERA_KILL_TRIALS, default 12, bounded by VERA_KILL_BUDGET seconds,
#     default 90): start 30 steps with ckpt_every 3 and a test-only ckpt_delay_ms (0, 3, 8 or
#     15 ms per dataset: a checkpoint write then takes up to ~1 s and most kills land inside
#     one; with 0 they land in computation), wait
#     until a random number of steps is done plus a random extra delay, then kill -9 either one
#     rank (rank 0, the writer, or rank 1; found as children of mpirun by OMPI_COMM_WORLD_RANK)
#     or the whole job (mpirun and both ranks at once). Checked every time:
#       - mpirun ends by itself after a rank is killed, and no rank is left behind;
#       - a temporary checkpoint (step_*.h5.tmp.*) may be left, never a bad file under a
#         final name: `--resume auto` never reports "skipping invalid checkpoint";
#       - `--resume auto` continues from the newest checkpoint on disk (or, with none,
#         refuses with a one-line error naming --overwrite, or starts fresh) and runs to the end;
#       - the 30 metrics rows (loss) and adapter_final.safetensors equal the reference bit for bit.
#     The summary reports how many kills landed while a checkpoint was being written
#     (a step_*.h5.tmp.* file existed at the moment of the kill).
#  2. corrupt checkpoints (a finished run keeps step 24, 27, 30): flip bytes in the superblock,
#     in b's data, in an AdamW moment, in /projection/A; truncate to half; truncate to 0 bytes.
#     `--resume auto` must report the newest as invalid, skip it, continue from step 27 and end
#     identical to the reference; `--resume PATH` on the corrupt file must fail with exactly one
#     "vera-dist: error" line naming the file, a non-zero exit code that is not a crash, and no
#     HDF5 error stack. Random single-byte flips (VERA_FLIP_TRIALS, default 4) must be either
#     refused or harmless (the resumed run still identical).
#  3. SIGUSR1 to mpirun (which forwards it to the ranks) mid-run: exit 0, "stopped by signal",
#     status.json {"state": "preempted", "step": N}, step_N.h5 on disk, N metrics rows, no
#     adapter yet; `--resume auto` completes identically with status "finished".
#  4. SIGTERM to both ranks directly (what Slurm does when it ends a job): the same as 3.
#  5. a second SIGUSR1 while the first checkpoint-and-stop is writing: the ranks exit at once
#     (non-zero), nothing is corrupted, and `--resume auto` completes identically.
# VERA_KILL_SEED=<the seed printed at the start> repeats the random choices of a failing run
# (the exact kill moments also depend on timing).
# shellcheck disable=SC1091
source "$(dirname "$0")/common.sh"

STEPS=30
TRIALS="${VERA_KILL_TRIALS:-12}"
BUDGET="${VERA_KILL_BUDGET:-90}"
FLIPS="${VERA_FLIP_TRIALS:-4}"
SEED="${VERA_KILL_SEED:-$(( $(date +%s) % 100000 ))}"
RANDOM=$SEED
note "random seed $SEED (VERA_KILL_SEED=$SEED repeats the same choices of delay, kill point and target)"
command -v h5dump >/dev/null 2>&1 || fail "h5dump not found (install hdf5-tools)"

make_model "$TMP/model" 2 2 32 256 64
make_data "$TMP/data" 30000
COMMON=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --batch_size 2 --seq_len 32
        --max_steps "$STEPS" --warmup_steps 2 --lr 3e-2 --r 16 --target_modules all --threads 1
        --log_every 10 --ckpt_every 3 --keep_last 3)

# ---- the reference: 30 steps, never interrupted ----
vd_mpirun 2 "$TMP/ref.log" "${COMMON[@]}" --out_dir "$TMP/ref"
REF_LOSSES="$TMP/ref.losses"
metrics_field "$TMP/ref/metrics.jsonl" loss >"$REF_LOSSES"
[[ $(wc -l <"$REF_LOSSES") -eq $STEPS ]] || fail "reference: expected $STEPS metrics rows"
seq 1 $STEPS >"$TMP/steps.expected"

# same_as_ref DIR WHAT: DIR's run equals the reference bit for bit
same_as_ref() {
  local d="$1" what="$2"
  [[ -f "$d/adapter_final.safetensors" ]] || fail "$what: no adapter_final.safetensors"
  cmp -s <(metrics_field "$d/metrics.jsonl" step) "$TMP/steps.expected" ||
    { cat "$d/metrics.jsonl" >&2; fail "$what: metrics.jsonl does not hold exactly steps 1..$STEPS once each"; }
  if ! cmp -s <(metrics_field "$d/metrics.jsonl" loss) "$REF_LOSSES"; then
    paste <(metrics_field "$d/metrics.jsonl" loss) "$REF_LOSSES" | awk '$1 != $2 { print "step " NR ": " $1 " vs reference " $2 }' | head >&2
    fail "$what: losses differ from the uninterrupted run"
  fi
  cmp -s "$d/adapter_final.safetensors" "$TMP/ref/adapter_final.safetensors" ||
    fail "$what: adapter_final.safetensors differs from the uninterrupted run"
  grep -q '"state": "finished"' "$d/status.json" 2>/dev/null || fail "$what: status.json is not \"finished\": $(cat "$d/status.json" 2>/dev/null)"
}

# newest_step DIR: the step of the newest step_*.h5 in DIR/checkpoints (0 if none)
newest_step() {
  local f
  f=$(find "$1/checkpoints" -maxdepth 1 -name 'step_*.h5' -printf '%f\n' 2>/dev/null | sort | tail -n 1)
  [[ -n "$f" ]] || { echo 0; return; }
  f=${f#step_}; f=${f%.h5}
  echo $((10#$f))
}

# rows DIR: metrics rows written so far
rows() { if [[ -f "$1/metrics.jsonl" ]]; then wc -l <"$1/metrics.jsonl"; else echo 0; fi; }

# start_bg DIR DELAY_MS LOG [args]: a 2-rank training in the background; sets MPID (mpirun's
# pid) and BGPID (a subshell around it that records the exit code in LOG.rc, so that bash
# prints no "Killed" job notice when a trial kills mpirun)
start_bg() {
  local d="$1" delay="$2" log="$3" i; shift 3
  rm -f "$log.rc"
  (
    rc=0
    "$MPIRUN" -np 2 "$VD" "${COMMON[@]}" --out_dir "$d" --ckpt_delay_ms "$delay" "$@" >"$log" 2>&1 || rc=$?
    echo "$rc" >"$log.rc"
  ) 2>/dev/null &
  BGPID=$!
  BGLOG="$log"
  MPID=""
  for ((i = 0; i < 500; i++)); do
    MPID=$(pgrep -P "$BGPID" | head -n 1 || true)
    [[ -n "$MPID" ]] && return 0
    sleep 0.01
  done
  fail "mpirun did not start"
}

# rank_pid MPID RANK: the pid of that rank (a child of mpirun); empty until it has started
rank_pid() {
  local p
  for p in $(pgrep -P "$1" 2>/dev/null || true); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then echo "$p"; return; fi
  done
}

# wait_ranks MPID: until both ranks exist (10 s)
wait_ranks() {
  local i
  for ((i = 0; i < 200; i++)); do
    [[ -n "$(rank_pid "$1" 0)" && -n "$(rank_pid "$1" 1)" ]] && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# finish_bg MPID SECONDS: waits for mpirun (started by start_bg); sets BG_RC (124 if it had
# to be killed)
finish_bg() {
  local pid="$1" limit="$2" t0=$SECONDS
  while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < limit)); do sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then
    # shellcheck disable=SC2046
    kill -9 $(pgrep -P "$pid" 2>/dev/null) "$pid" 2>/dev/null || true
    wait "$BGPID" 2>/dev/null || true
    BG_RC=124
    return
  fi
  wait "$BGPID" 2>/dev/null || true
  BG_RC=$(cat "$BGLOG.rc" 2>/dev/null || echo 255)
}

# no_leftovers DIR WHAT: no process still runs with DIR as its out_dir
no_leftovers() {
  local i left
  for ((i = 0; i < 100; i++)); do
    left=$(pgrep -f -- "--out_dir $1 " || true)
    [[ -z "$left" ]] && return 0
    sleep 0.05
  done
  ps -o pid,ppid,stat,args -p "$(tr '\n' , <<<"$left")0" >&2 || true
  # shellcheck disable=SC2086  # (several pids)
  kill -9 $left 2>/dev/null || true
  fail "$2: processes left behind after the job ended"
}

# resume_to_end DIR WHAT LOG: --resume auto to the end (no delay); checks what it resumed from
resume_to_end() {
  local d="$1" what="$2" log="$3" expect rc=0
  expect=$(newest_step "$d")
  run_logged "$log" "$MPIRUN" -np 2 "$VD" "${COMMON[@]}" --out_dir "$d" --resume auto || rc=$?
  if grep -q 'skipping invalid checkpoint' "$log"; then
    cat "$log" >&2; fail "$what: a checkpoint under its final name was invalid (writes are not atomic)"
  fi
  if ((expect == 0)); then
    if ((rc != 0)); then
      # nothing to continue from but metrics rows: the trainer refuses without --overwrite
      assert_error "$log" 'no valid checkpoint' 'overwrite'
      RESUMED_FROM="none: refused without --overwrite, reran with --overwrite 1"
      vd_mpirun 2 "$log.2" "${COMMON[@]}" --out_dir "$d" --resume auto --overwrite 1
      grep -q 'starting fresh' "$log.2" || { cat "$log.2" >&2; fail "$what: --overwrite 1 did not start fresh"; }
      return
    fi
    grep -q 'resume: starting fresh' "$log" || { cat "$log" >&2; fail "$what: no checkpoint, but it did not start fresh"; }
    RESUMED_FROM="none: started fresh"
    return
  fi
  if ((rc != 0)); then tail -n 30 "$log" >&2; fail "$what: --resume auto failed (exit $rc)"; fi
  grep -q "resume: continuing from .*step_$(printf '%08d' "$expect").h5 at step $expect" "$log" ||
    { grep resume "$log" >&2; fail "$what: did not continue from the newest checkpoint (step $expect)"; }
  RESUMED_FROM="step $expect"
}

# ================================ 1. kill -9 trials =======================================
t_begin=$SECONDS
n_trials=0 n_in_write=0 n_tmp_left=0 n_before_ckpt=0 n_done_before=0
declare -A MODES=()
for ((trial = 1; trial <= TRIALS; trial++)); do
  if ((trial > 4 && SECONDS - t_begin > BUDGET)); then
    note "time budget of ${BUDGET}s used after $((trial - 1)) trials"
    break
  fi
  d="$TMP/kill$trial"
  # 0 ms: kills land mostly in computation; 3..15 ms per dataset: mostly inside a write
  delays=(0 3 8 15)
  delay=${delays[$((RANDOM % 4))]}
  # wait for a random number of finished steps (0..27), then a random extra 0..800 ms
  at_rows=$((RANDOM % 28))
  extra_ms=$((RANDOM % 800))
  case $((RANDOM % 3)) in
    0) mode="rank0" ;;
    1) mode="rank1" ;;
    *) mode="job" ;;
  esac
  # without a delay the whole run takes ~0.1 s: kill as soon as the step count is reached
  ((delay == 0)) && extra_ms=0
  if ((trial == 1)); then
    # always one kill before the first checkpoint exists (inside its write)
    delay=15 at_rows=1 extra_ms=0
  fi
  start_bg "$d" "$delay" "$TMP/kill$trial.log"
  wait_ranks "$MPID" || { finish_bg "$MPID" 10; cat "$TMP/kill$trial.log" >&2; fail "trial $trial: the ranks did not start"; }
  t0=$SECONDS
  while (($(rows "$d") < at_rows)) && kill -0 "$MPID" 2>/dev/null && ((SECONDS - t0 < 60)); do sleep 0.01; done
  sleep "$(printf '0.%03d' "$extra_ms")"
  r0=$(rank_pid "$MPID" 0)
  r1=$(rank_pid "$MPID" 1)
  in_write=0
  compgen -G "$d/checkpoints/step_*.h5.tmp.*" >/dev/null && in_write=1
  if ! kill -0 "$MPID" 2>/dev/null; then
    mode="none (finished first)"
    n_done_before=$((n_done_before + 1))
  else
    case "$mode" in
      rank0) kill -9 "$r0" 2>/dev/null || true ;;
      rank1) kill -9 "$r1" 2>/dev/null || true ;;
      job)
        # shellcheck disable=SC2086  # (r0 / r1 may be empty if a rank has just exited)
        kill -9 "$MPID" $r0 $r1 2>/dev/null || true ;;
    esac
  fi
  killed_rows=$(rows "$d")
  finish_bg "$MPID" 30
  [[ $BG_RC -ne 124 ]] || { cat "$TMP/kill$trial.log" >&2; fail "trial $trial: mpirun did not end within 30 s after kill -9 of $mode"; }
  no_leftovers "$d" "trial $trial"
  tmp_left=0
  compgen -G "$d/checkpoints/step_*.h5.tmp.*" >/dev/null && tmp_left=1
  ckpt_at_kill=$(newest_step "$d")
  ((ckpt_at_kill == 0)) && n_before_ckpt=$((n_before_ckpt + 1))
  resume_to_end "$d" "trial $trial" "$TMP/kill$trial.resume.log"
  same_as_ref "$d" "trial $trial (kill -9 $mode after $killed_rows steps)"
  n_trials=$((n_trials + 1))
  n_in_write=$((n_in_write + in_write))
  n_tmp_left=$((n_tmp_left + tmp_left))
  MODES[$mode]=$((${MODES[$mode]:-0} + 1))
  note "trial $trial: delay ${delay}ms, kill -9 $mode after $killed_rows steps$( ((in_write)) && echo ' DURING a checkpoint write')$( ((tmp_left)) && echo ' (temporary file left)'); resumed from $RESUMED_FROM; identical"
  rm -rf "$d"
done
modes=""
for m in "${!MODES[@]}"; do modes+="$m: ${MODES[$m]}, "; done
note "kill -9: $n_trials trials in $((SECONDS - t_begin)) s (${modes%, }); $n_in_write during a checkpoint write, $n_tmp_left left a temporary file, $n_before_ckpt before the first checkpoint, $n_done_before finished before the kill; all identical to the reference"
((n_trials >= 4)) || fail "only $n_trials kill trials ran"

# ================================ 2. corrupt checkpoints ==================================
FULL="$TMP/full"
cp -r "$TMP/ref" "$FULL"
[[ -f "$FULL/checkpoints/step_00000030.h5" && -f "$FULL/checkpoints/step_00000027.h5" ]] ||
  { ls -la "$FULL/checkpoints" >&2; fail "expected checkpoints at steps 27 and 30 (keep_last 3)"; }
# a run that resumes from step 27 writes 28..30 again: drop the last rows so the file shows it
NEWEST="checkpoints/step_00000030.h5"

flip_byte() { # FILE OFFSET
  local f="$1" off="$2" b
  b=$(od -An -tu1 -j "$off" -N1 "$f" | tr -d ' ')
  [[ -n "$b" ]] || fail "flip_byte: offset $off is beyond the end of $f"
  # shellcheck disable=SC2059
  printf "\\$(printf '%03o' $((b ^ 0xff)))" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}
data_offset() { # FILE DATASET: the file offset of a contiguous dataset's data
  h5dump -p -H -d "$2" "$1" | awk '/OFFSET/ { print $2; exit }'
}

# corrupt_case NAME ACTION...: copy FULL, corrupt its newest checkpoint with ACTION, then check
# --resume PATH (refused, one line) and --resume auto (skips it, continues from 27, identical)
corrupt_case() {
  local name="$1"; shift
  local d="$TMP/corrupt-$name" rc=0 log
  rm -rf "$d"
  cp -r "$FULL" "$d"
  rm -f "$d/adapter_final.safetensors"
  "$@" "$d/$NEWEST"
  # --resume PATH: one clear line, a normal non-zero exit
  log="$TMP/corrupt-$name.path.log"
  run_logged "$log" "$MPIRUN" -np 2 "$VD" "${COMMON[@]}" --out_dir "$d" --resume "$d/$NEWEST" || rc=$?
  if ((rc == 0)); then cat "$log" >&2; fail "corrupt ($name): --resume PATH accepted the corrupt checkpoint"; fi
  if grep -q -E 'Segmentation|Aborted|core dumped|signal 1[1-5]|HDF5-DIAG|#00[0-9]:' "$log"; then
    cat "$log" >&2; fail "corrupt ($name): --resume PATH crashed or printed an HDF5 error stack"
  fi
  local n_err
  n_err=$(grep -c -E "$ERR_RE" "$log" || true)
  [[ $n_err -eq 1 ]] || { cat "$log" >&2; fail "corrupt ($name): expected exactly one error line, got $n_err"; }
  assert_error "$log" "step_00000030\\.h5"
  note "corrupt ($name): --resume PATH -> exit $rc: $(grep -E "$ERR_RE" "$log" | cut -c1-200)"
  # --resume auto: skip it, continue from 27
  log="$TMP/corrupt-$name.auto.log"
  rc=0
  run_logged "$log" "$MPIRUN" -np 2 "$VD" "${COMMON[@]}" --out_dir "$d" --resume auto || rc=$?
  ((rc == 0)) || { tail -n 30 "$log" >&2; fail "corrupt ($name): --resume auto failed (exit $rc)"; }
  grep -q 'skipping invalid checkpoint.*step_00000030\.h5' "$log" ||
    { cat "$log" >&2; fail "corrupt ($name): --resume auto did not report the corrupt newest checkpoint"; }
  grep -q 'resume: continuing from .*step_00000027\.h5 at step 27' "$log" ||
    { grep resume "$log" >&2; fail "corrupt ($name): --resume auto did not continue from step 27"; }
  same_as_ref "$d" "corrupt ($name)"
  rm -rf "$d"
}

ck="$FULL/$NEWEST"
OFF_B=$(data_offset "$ck" /adapter/transformer.h.1.mlp.c_fc/lambda_b)
OFF_V=$(data_offset "$ck" /optimizer/exp_avg_sq/transformer.h.0.attn.c_attn/lambda_d)
OFF_A=$(data_offset "$ck" /projection/A)
[[ -n "$OFF_B" && -n "$OFF_V" && -n "$OFF_A" ]] || fail "could not find dataset offsets with h5dump -p"
SIZE=$(stat -c %s "$ck")
flip_superblock() { flip_byte "$1" 1; }
flip_b() { flip_byte "$1" $((OFF_B + 41)); }
flip_moment() { flip_byte "$1" $((OFF_V + 6)); }
flip_projection() { flip_byte "$1" $((OFF_A + 1003)); }
truncate_half() { truncate -s $((SIZE / 2)) "$1"; }
truncate_zero() { : >"$1"; }
corrupt_case superblock flip_superblock
corrupt_case lambda_b-data flip_b
corrupt_case adam-moment-data flip_moment
corrupt_case projection-data flip_projection
corrupt_case truncated-half truncate_half
corrupt_case truncated-empty truncate_zero

# random single-byte flips: refused, or harmless
n_ref=0 n_harmless=0
for ((i = 1; i <= FLIPS; i++)); do
  off=$((RANDOM * 32768 % SIZE + RANDOM % SIZE))
  off=$((off % SIZE))
  d="$TMP/flip$i"
  rm -rf "$d"; cp -r "$FULL" "$d"; rm -f "$d/adapter_final.safetensors"
  flip_byte "$d/$NEWEST" "$off"
  rc=0
  run_logged "$TMP/flip$i.log" "$MPIRUN" -np 2 "$VD" "${COMMON[@]}" --out_dir "$d" --resume auto || rc=$?
  ((rc == 0)) || { tail -n 30 "$TMP/flip$i.log" >&2; fail "random flip at offset $off: --resume auto failed (exit $rc)"; }
  if grep -q 'skipping invalid checkpoint' "$TMP/flip$i.log"; then n_ref=$((n_ref + 1)); what=refused
  else n_harmless=$((n_harmless + 1)); what="accepted (harmless byte)"; fi
  same_as_ref "$d" "random flip at offset $off"
  note "random flip at offset $off of $SIZE: $what; the run is identical"
  rm -rf "$d"
done

# ================================ 3./4. preempt by signal ==================================
# preempt_case NAME HOW: HOW = usr1-mpirun | term-ranks
preempt_case() {
  local name="$1" how="$2" d="$TMP/$1" k st step
  start_bg "$d" 10 "$TMP/$name.log"
  wait_ranks "$MPID" || { finish_bg "$MPID" 10; cat "$TMP/$name.log" >&2; fail "$name: the ranks did not start"; }
  k=$((7 + RANDOM % 12))
  while (($(rows "$d") < k)) && kill -0 "$MPID" 2>/dev/null; do sleep 0.01; done
  kill -0 "$MPID" 2>/dev/null || fail "$name: the run ended before the signal"
  if [[ $how == usr1-mpirun ]]; then
    kill -USR1 "$MPID"
  else
    kill -TERM "$(rank_pid "$MPID" 0)" "$(rank_pid "$MPID" 1)"
  fi
  finish_bg "$MPID" 60
  ((BG_RC == 0)) || { cat "$TMP/$name.log" >&2; fail "$name: exit code $BG_RC after the signal, expected 0"; }
  grep -q 'vera-dist: stopped by signal' "$TMP/$name.log" || { cat "$TMP/$name.log" >&2; fail "$name: no 'stopped by signal' message"; }
  st=$(sed -n -E 's/.*"state": *"([a-z]+)".*/\1/p' "$d/status.json")
  step=$(sed -n -E 's/.*"step": *([0-9]+).*/\1/p' "$d/status.json")
  [[ "$st" == preempted ]] || fail "$name: status.json state '$st', expected preempted"
  ((step >= k && step < STEPS)) || fail "$name: stopped at step $step (signal after $k steps)"
  [[ -f "$d/checkpoints/step_$(printf '%08d' "$step").h5" ]] || { ls "$d/checkpoints" >&2; fail "$name: no checkpoint at the step it stopped at ($step)"; }
  (($(newest_step "$d") == step)) || fail "$name: the newest checkpoint is not the one of step $step"
  (($(rows "$d") == step)) || fail "$name: $(rows "$d") metrics rows, expected $step"
  [[ ! -e "$d/adapter_final.safetensors" ]] || fail "$name: adapter_final.safetensors written by a stopped run"
  resume_to_end "$d" "$name" "$TMP/$name.resume.log"
  same_as_ref "$d" "$name"
  note "$name: signal after $k steps -> exit 0 at step $step, status preempted, step_$(printf '%08d' "$step").h5; resumed to the end: identical"
  rm -rf "$d"
}
preempt_case usr1-to-mpirun usr1-mpirun
preempt_case term-to-ranks term-ranks

# ================================ 5. a second signal =======================================
d="$TMP/double"
start_bg "$d" 40 "$TMP/double.log"
wait_ranks "$MPID" || { finish_bg "$MPID" 10; cat "$TMP/double.log" >&2; fail "double: the ranks did not start"; }
while (($(rows "$d") < 4)) && kill -0 "$MPID" 2>/dev/null; do sleep 0.01; done
kill -USR1 "$MPID"
# the stop checkpoint is being written (40 ms per dataset) once its temporary file appears
for ((i = 0; i < 200; i++)); do
  compgen -G "$d/checkpoints/step_*.h5.tmp.*" >/dev/null && break
  sleep 0.01
done
sleep 0.2
kill -USR1 "$MPID"
finish_bg "$MPID" 30
((BG_RC != 0 && BG_RC != 124)) || { cat "$TMP/double.log" >&2; fail "double: expected a non-zero exit after the second signal, got $BG_RC"; }
grep -q 'second signal' "$TMP/double.log" || { cat "$TMP/double.log" >&2; fail "double: no 'second signal' message"; }
no_leftovers "$d" "double"
resume_to_end "$d" "double" "$TMP/double.resume.log"
same_as_ref "$d" "double signal"
note "double signal: exit $BG_RC at once; resumed from $RESUMED_FROM; identical"
note "PASS"
