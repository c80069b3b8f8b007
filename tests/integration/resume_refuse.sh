#!/usr/bin/env bash
# resume_refuse: --resume auto never starts over silently, and resume names the model it
# compares by its weights, not its path (issue 12, defects 1, 4 and 5). On 2 ranks:
#  a. every checkpoint of a preempted run truncated: `--resume auto` is refused with one line
#     naming each file and why, and what to do; exit non-zero; every file in out_dir untouched
#     (sha256 of each before and after, and no file added);
#  b. the same directory with `--resume none --overwrite 1`: starts over, ends identical to an
#     uninterrupted run, and the refused files are in checkpoints/refused/ byte-identical;
#     only the newest truncated (some checkpoint valid): auto skips it, reports it, moves it to
#     checkpoints/refused/ (not overwritten by the resumed run) and ends identical;
#  c. no checkpoint file at all (a run stopped before its first checkpoint, a temporary file
#     left): `--resume auto` starts over and ends identical;
#  d. the model directory copied elsewhere: resumes with a one-line note and ends identical;
#     a model of another shape is refused naming the differing dimension; a model of the same
#     shape with other weights is refused.
# shellcheck disable=SC1091
source "$(dirname "$0")/common.sh"

make_model "$TMP/model" 2 2 32 256 64
make_model "$TMP/model-wide" 2 2 48 256 64
make_model "$TMP/model-other" 2 2 32 256 64 --seed 8
make_data "$TMP/data" 30000
COMMON=(--train_data "$TMP/data/train_*.bin" --batch_size 2 --seq_len 32 --max_steps 12
        --warmup_steps 2 --lr 3e-2 --r 8 --target_modules all --threads 1 --log_every 4
        --ckpt_every 4 --keep_last 3)

# the reference: 12 steps, never interrupted (checkpoints at 4, 8, 12)
vd_mpirun 2 "$TMP/ref.log" --model "$TMP/model" "${COMMON[@]}" --out_dir "$TMP/ref"
for s in 4 8 12; do
  [[ -f "$TMP/ref/checkpoints/step_$(printf '%08d' $s).h5" ]] || fail "reference: no checkpoint at step $s"
done

# same_as_ref DIR WHAT: 12 metrics rows with the reference's losses, the same final adapter
same_as_ref() {
  [[ $(wc -l <"$1/metrics.jsonl") -eq 12 ]] || fail "$2: $(wc -l <"$1/metrics.jsonl") metrics rows, expected 12"
  cmp -s <(metrics_field "$1/metrics.jsonl" loss) <(metrics_field "$TMP/ref/metrics.jsonl" loss) ||
    fail "$2: losses differ from the uninterrupted run"
  cmp -s "$1/adapter_final.safetensors" "$TMP/ref/adapter_final.safetensors" ||
    fail "$2: adapter_final.safetensors differs from the uninterrupted run"
}
# preempted DIR: a copy of the reference as a preempted run left it (no final adapter)
preempted() {
  rm -rf "$1"
  cp -r "$TMP/ref" "$1"
  rm -f "$1/adapter_final.safetensors"
  printf '{"state": "preempted", "step": 12, "max_steps": 12}\n' >"$1/status.json"
}
# hashes DIR: every file under DIR with its sha256, sorted by path
hashes() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
# one_error LOG WHAT: exactly one error line
one_error() {
  local n
  n=$(grep -c -E "$ERR_RE" "$1" || true)
  [[ $n -eq 1 ]] || { cat "$1" >&2; fail "$2: expected exactly one error line, got $n"; }
}
# refused_run NP LOG ARGS...: a run that must fail (non-zero, not a timeout, no crash)
refused_run() {
  local np="$1" log="$2" rc=0; shift 2
  run_logged "$log" "$MPIRUN" -np "$np" "$VD" "$@" || rc=$?
  ((rc != 0)) || { cat "$log" >&2; fail "accepted: vera-dist $*"; }
  ((rc != 124)) || fail "timed out: vera-dist $*"
  if grep -q -E 'Segmentation|core dumped|HDF5-DIAG' "$log"; then cat "$log" >&2; fail "crashed: vera-dist $*"; fi
}

# ---- a. every checkpoint truncated: refused, nothing touched ----
A="$TMP/a"
preempted "$A"
for f in "$A"/checkpoints/step_*.h5; do truncate -s $(($(stat -c %s "$f") / 2)) "$f"; done
hashes "$A" >"$TMP/a.before"
refused_run 2 "$TMP/a.log" --model "$TMP/model" "${COMMON[@]}" --out_dir "$A" --resume auto
one_error "$TMP/a.log" "a (all truncated)"
assert_error "$TMP/a.log" "none is valid" "step_00000012\\.h5 \\(" "step_00000008\\.h5 \\(" "step_00000004\\.h5 \\(" \
  "--resume FILE" "--resume none --overwrite 1"
grep -q 'starting over\|starting fresh' "$TMP/a.log" && { cat "$TMP/a.log" >&2; fail "a: the refused run says it starts over"; }
hashes "$A" >"$TMP/a.after"
diff "$TMP/a.before" "$TMP/a.after" >&2 || fail "a: the refused run changed, added or removed files in out_dir"
no_procs() { ! pgrep -f -- "--out_dir $1 " >/dev/null; }
sleep 0.2; no_procs "$A" || fail "a: a rank outlived the refusal"
note "a. all checkpoints truncated: --resume auto refused, out_dir untouched: $(grep -E "$ERR_RE" "$TMP/a.log" | cut -c1-240)..."
# a finished run whose checkpoints are all truncated is refused the same way
cp "$TMP/ref/adapter_final.safetensors" "$TMP/adapter.copy"
cp -r "$A" "$TMP/a-finished"; cp "$TMP/adapter.copy" "$TMP/a-finished/adapter_final.safetensors"
hashes "$TMP/a-finished" >"$TMP/af.before"
refused_run 2 "$TMP/af.log" --model "$TMP/model" "${COMMON[@]}" --out_dir "$TMP/a-finished"
assert_error "$TMP/af.log" "none is valid" "step_00000012\\.h5"
hashes "$TMP/a-finished" | diff "$TMP/af.before" - >&2 || fail "a: the refused finished run changed out_dir"

# ---- b. --resume none --overwrite 1: starts over, refused files kept aside ----
vd_mpirun 2 "$TMP/b.log" --model "$TMP/model" "${COMMON[@]}" --out_dir "$A" --resume none --overwrite 1
grep -q 'resume: starting fresh' "$TMP/b.log" || { cat "$TMP/b.log" >&2; fail "b: --overwrite 1 did not start fresh"; }
same_as_ref "$A" "b (--resume none --overwrite 1)"
for s in 4 8 12; do
  name="step_$(printf '%08d' $s).h5"
  want=$(awk -v n="./checkpoints/$name" '$2 == n { print $1 }' "$TMP/a.before")
  [[ -f "$A/checkpoints/refused/$name" ]] || { ls -R "$A" >&2; fail "b: $name is not in checkpoints/refused/"; }
  [[ "$(sha256sum <"$A/checkpoints/refused/$name" | cut -d' ' -f1)" == "$want" ]] || fail "b: refused/$name is not byte-identical"
  grep -q "$name failed verification: moved to .*refused/$name" "$TMP/b.log" || fail "b: the move of $name is not reported"
done
note "b. --resume none --overwrite 1: started over, identical to the uninterrupted run; the 3 refused files in checkpoints/refused/, byte-identical"
# only the newest truncated: auto continues from step 8, the bad one goes to refused/ (not overwritten)
B="$TMP/b2"
preempted "$B"
truncate -s 1000 "$B/checkpoints/step_00000012.h5"
bad=$(sha256sum <"$B/checkpoints/step_00000012.h5" | cut -d' ' -f1)
vd_mpirun 2 "$TMP/b2.log" --model "$TMP/model" "${COMMON[@]}" --out_dir "$B"
grep -q 'skipping invalid checkpoint.*step_00000012\.h5' "$TMP/b2.log" || { cat "$TMP/b2.log" >&2; fail "b: the skipped file is not reported"; }
grep -q 'resume: continuing from .*step_00000008\.h5 at step 8' "$TMP/b2.log" || fail "b: auto did not continue from step 8"
[[ "$(sha256sum <"$B/checkpoints/refused/step_00000012.h5" | cut -d' ' -f1)" == "$bad" ]] ||
  { ls -R "$B" >&2; fail "b: the skipped file was not kept in checkpoints/refused/"; }
same_as_ref "$B" "b (newest truncated, resumed from step 8)"
note "b. newest truncated: skipped, reported, kept in checkpoints/refused/; resumed from step 8, identical"

# ---- c. no checkpoint file at all: starts over ----
C="$TMP/c"
mkdir -p "$C/checkpoints"
head -n 3 "$TMP/ref/metrics.jsonl" >"$C/metrics.jsonl"
printf '{"state": "running", "step": 3, "max_steps": 12}\n' >"$C/status.json"
head -c 5000 "$TMP/ref/checkpoints/step_00000004.h5" >"$C/checkpoints/step_00000004.h5.tmp.12345"
vd_mpirun 2 "$TMP/c.log" --model "$TMP/model" "${COMMON[@]}" --out_dir "$C" --resume auto
grep -q 'no checkpoint in .*starting over' "$TMP/c.log" || { cat "$TMP/c.log" >&2; fail "c: no 'starting over' line"; }
grep -q 'resume: starting fresh' "$TMP/c.log" || fail "c: did not start fresh"
same_as_ref "$C" "c (stopped before the first checkpoint)"
note "c. no checkpoint file (killed before its first): --resume auto started over, identical"

# ---- d. the model moved: resumes; another model: refused naming the dimension ----
cp -r "$TMP/model" "$TMP/model-moved"
D="$TMP/d"
preempted "$D"
rm -f "$D/checkpoints/step_00000012.h5"
vd_mpirun 2 "$TMP/d.log" --model "$TMP/model-moved" "${COMMON[@]}" --out_dir "$D" --resume auto
grep -q 'resume: continuing from .*step_00000008\.h5 at step 8' "$TMP/d.log" || { cat "$TMP/d.log" >&2; fail "d: the moved model did not resume"; }
[[ $(grep -c 'note: the checkpoint was written with model .*/model;.*model-moved holds the same weights' "$TMP/d.log") -eq 1 ]] ||
  { cat "$TMP/d.log" >&2; fail "d: no single note line naming both model paths"; }
same_as_ref "$D" "d (model moved)"
note "d. model moved: $(grep 'note:' "$TMP/d.log" | cut -c1-200); identical"
preempted "$D"
rm -f "$D/checkpoints/step_00000012.h5"
hashes "$D" >"$TMP/d.before"
refused_run 2 "$TMP/d2.log" --model "$TMP/model-wide" "${COMMON[@]}" --out_dir "$D" --resume auto
one_error "$TMP/d2.log" "d (another shape)"
assert_error "$TMP/d2.log" "step_00000008\\.h5" "n_embd 32 in the checkpoint, 48 here"
note "d. another shape: $(grep -E "$ERR_RE" "$TMP/d2.log" | cut -c1-200)"
refused_run 2 "$TMP/d3.log" --model "$TMP/model-other" "${COMMON[@]}" --out_dir "$D" --resume auto
one_error "$TMP/d3.log" "d (other weights)"
assert_error "$TMP/d3.log" "step_00000008\\.h5" "other weights" "fingerprint"
hashes "$D" | diff "$TMP/d.before" - >&2 || fail "d: a refused resume changed out_dir"
note "d. same shape, other weights: refused naming the fingerprints"
note "PASS"
