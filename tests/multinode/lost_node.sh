#!/usr/bin/env bash
# lost_node: a lost or frozen node never leaves a job hanging (docs/multinode.md, "Lost and
# frozen nodes"). Usage: bash tests/multinode/lost_node.sh CASE PATH/TO/vera-dist
#   kill        2 nodes x 2 ranks (tests/multinode/lib.sh); every process of node 1 (its orted
#               and both ranks) is killed with SIGKILL mid-run: a node that crashed
#   link        the same, node 1's link goes down (its bridge port: a pulled cable)
#   stop        the same, rank 2 (on node 1) is frozen with SIGSTOP
#   stop-local  4 ranks on this host, rank 2 frozen with SIGSTOP (no root, no namespaces)
#   stop-nccl   2 ranks on this host with the CUDA backend's NCCL all-reduce, rank 1 frozen:
#               PATH is vera-dist-emu (tests/gpu/emu; VERA_EMU_GPUS=2: one emulated GPU per
#               rank) or a CUDA build on a machine with 2 GPUs. Emulated steps take seconds,
#               so this case only checks the exit and the line (collective_timeout 8 s); the
#               resume is the same as in the other cases.
# Each case checks, from the moment of the fault:
#   - every process of the job (the session it was started in, and every process in the
#     nodes' namespaces) is gone within VERA_FAULT_LIMIT seconds (default 30), mpirun exits
#     non-zero;
#   - the output names the lost rank or host in one line: vera-dist's own report ("lost rank 2
#     (host H)": stop cases, exactly one vera-dist error line) or Open MPI's ("Remote daemon
#     ... on node H" / "process rank R ... on node H": kill and link, where Open MPI sees the
#     node go first);
#   - `--resume auto` afterwards (link up again) continues from the newest checkpoint and ends
#     bit-identical (every loss, adapter_final.safetensors) to an uninterrupted run.
# The time to exit is printed ("time to exit: ..."); docs/multinode.md records it.
# VERA_FAULT_TIMEOUT sets collective_timeout: default 15 s, so that the abort that follows still
# fits in the limit on a loaded machine (with the trainer's default of 20 s the stop cases took
# 24-25 s on an idle one: docs/multinode.md).
set -euo pipefail
CASE="${1:?usage: bash $0 kill|link|stop|stop-local|stop-nccl PATH/TO/vera-dist}"
shift
case "$CASE" in kill | link | stop | stop-local | stop-nccl) ;; *) echo "lost_node: unknown case '$CASE'" >&2; exit 2 ;; esac
# shellcheck source=tests/integration/common.sh
source "$(dirname "$0")/../integration/common.sh"
TEST_NAME="lost_node-$CASE"
LIMIT="${VERA_FAULT_LIMIT:-30}"
MN_LIB="$REPO_ROOT/tests/multinode/lib.sh"

STEPS=120
COMMON=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --batch_size 2 --seq_len 32
        --max_steps "$STEPS" --warmup_steps 2 --lr 3e-2 --r 16 --target_modules all --threads 1
        --log_every 20 --ckpt_every 10 --keep_last 3)
CHECK_RESUME=1
AT=$((30 + RANDOM % 40)) # fault after this many steps (checkpoints every 10)
if [[ $CASE == stop-nccl ]]; then
  STEPS=12 AT=$((2 + RANDOM % 2)) CHECK_RESUME=0
  COMMON+=(--max_steps "$STEPS" --ckpt_every 2 --device cuda --collective_timeout "${VERA_FAULT_TIMEOUT:-8}")
  export VERA_EMU_GPUS="${VERA_EMU_GPUS:-2}"
else
  COMMON+=(--collective_timeout "${VERA_FAULT_TIMEOUT:-15}")
fi

if [[ $CASE == stop-nccl ]]; then
  LOST_RANK=1
  LAUNCH=("$MPIRUN" -np 2 "$VD")
  job_pids() { :; }
elif [[ $CASE == stop-local ]]; then
  LOST_RANK=2
  LAUNCH=("$MPIRUN" -np 4 "$VD") # the job: 4 ranks on this host
  job_pids() { :; } # no namespaces: the session holds everything
else
  # shellcheck source=tests/multinode/lib.sh
  source "$MN_LIB"
  mn_require
  mn_up 2
  LOST_RANK=2 # ranks 2 and 3 run on node 1 (mn_mpirun maps by slot)
  # Open MPI's out-of-band keepalive: a node that stops answering is declared lost after
  # 4 + 3 x 2 = 10 s, before collective_timeout (20 s) would fire (docs/multinode.md)
  export MN_MPIRUN_ARGS="--mca oob_tcp_keepalive_time 4 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 3"
  LAUNCH=(bash "$MN_LIB" mpirun 2 -- "$VD")
  job_pids() {
    local p
    for p in $(ip netns pids "$(mn_ns 0)") $(ip netns pids "$(mn_ns 1)"); do
      [[ "$(ps -o stat= -p "$p" 2>/dev/null)" == Z* ]] || echo "$p"
    done
  }
fi

make_model "$TMP/model" 2 2 32 256 64
make_data "$TMP/data" 30000

# ---- the reference: never interrupted ----
if ((CHECK_RESUME)); then
  rc=0
  run_logged "$TMP/ref.log" "${LAUNCH[@]}" "${COMMON[@]}" --out_dir "$TMP/ref" || rc=$?
  ((rc == 0)) || { tail -n 40 "$TMP/ref.log" >&2; fail "reference run: exit code $rc"; }
  metrics_field "$TMP/ref/metrics.jsonl" loss >"$TMP/ref.losses"
  [[ $(wc -l <"$TMP/ref.losses") -eq $STEPS ]] || fail "reference: expected $STEPS metrics rows"
fi

# ---- the faulty run, in a session of its own so that its processes can be found ----
D="$TMP/run"
# describe PID...: "pid stat command; ..." of those still running
describe() {
  local p
  for p in "$@"; do ps -o pid=,stat=,args= -p "$p" 2>/dev/null | awk '$2 !~ /^Z/' | cut -c1-70 || true; done | tr '\n' ';'
}
rows() { if [[ -f "$D/metrics.jsonl" ]]; then wc -l <"$D/metrics.jsonl"; else echo 0; fi; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
setsid "${LAUNCH[@]}" "${COMMON[@]}" --out_dir "$D" >"$TMP/run.log" 2>&1 &
JOB=$!   # setsid did not fork (this shell's child is no group leader): JOB is the session id
# the job's processes that still run (zombies have ended: only their parent has not reaped them)
session_pids() { ps -e -o pid=,sid=,stat= | awk -v s="$JOB" '$2 == s && $3 !~ /^Z/ { print $1 }'; }
# rank R's pid: a process of the job whose environment says so
rank_pid() {
  local p
  for p in $(session_pids) $(job_pids); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then echo "$p"; return; fi
  done
}
t0=$SECONDS
while (($(rows) < AT)) && kill -0 "$JOB" 2>/dev/null && ((SECONDS - t0 < 60)); do sleep 0.02; done
kill -0 "$JOB" 2>/dev/null || { cat "$TMP/run.log" >&2; fail "the run ended before the fault"; }
victim=""
for _ in $(seq 50); do # a rank may be between ps and /proc reads: look again for up to 1 s
  victim="$(rank_pid "$LOST_RANK")"
  [[ -n "$victim" ]] && break
  sleep 0.02
done
[[ -n "$victim" ]] || { tail -n 40 "$TMP/run.log" >&2; describe $(session_pids) >&2; echo >&2; fail "rank $LOST_RANK not found"; }
t_fault=$(now)
case "$CASE" in
  kill) kill -9 $(ip netns pids "$(mn_ns 1)") ;;
  link) mn_link_down 1 ;;
  stop | stop-local | stop-nccl) kill -STOP "$victim" ;;
esac
at_rows=$(rows)
note "fault ($CASE) after $at_rows steps"

# ---- everything must end by itself ----
t_mpirun="" t_all="" after_mpirun=""
while :; do
  t=$(now)
  left="$(session_pids; job_pids)"
  if [[ -z "$t_mpirun" ]] && ! kill -0 "$JOB" 2>/dev/null; then
    t_mpirun=$t
    after_mpirun="$(describe $left)"
  fi
  if [[ -n "$t_mpirun" && -z "$left" ]]; then t_all=$t; break; fi
  (($(elapsed "$t_fault" "$t" | cut -d. -f1) >= LIMIT + 30)) && break
  sleep 0.05
done
rc=0
wait "$JOB" || rc=$?
if [[ -z "$t_all" ]]; then
  describe $left >&2
  # shellcheck disable=SC2086 # one pid per word
  kill -CONT $left 2>/dev/null; kill -9 $left 2>/dev/null || true
  cat "$TMP/run.log" >&2
  fail "processes still run $((LIMIT + 30)) s after the fault"
fi
dt_mpirun=$(elapsed "$t_fault" "$t_mpirun")
dt_all=$(elapsed "$t_fault" "$t_all")
note "time to exit: mpirun $dt_mpirun s, last process $dt_all s after the fault (limit $LIMIT s)"
[[ -n "$after_mpirun" ]] && note "still running when mpirun had exited: $after_mpirun"
awk -v d="$dt_all" -v l="$LIMIT" 'BEGIN { exit !(d <= l) }' ||
  { cat "$TMP/run.log" >&2; fail "the job took $dt_all s to end, more than $LIMIT s"; }
((rc != 0)) || { cat "$TMP/run.log" >&2; fail "mpirun exited 0 after the fault"; }

# ---- the one line naming the lost rank or host ----
n_err=$(grep -c -E "$ERR_RE" "$TMP/run.log" || true)
if [[ $CASE == stop* ]]; then
  host=$(hostname)
  [[ $CASE == stop ]] && host="$(mn_host 1)"
  ((n_err == 1)) || { cat "$TMP/run.log" >&2; fail "expected exactly one vera-dist error line, got $n_err"; }
  line=$(grep -E "$ERR_RE" "$TMP/run.log")
  [[ "$line" == *"lost rank $LOST_RANK (host $host)"* ]] ||
    { cat "$TMP/run.log" >&2; fail "the error line does not name rank $LOST_RANK (host $host): $line"; }
else
  ((n_err <= 1)) || { cat "$TMP/run.log" >&2; fail "expected at most one vera-dist error line, got $n_err"; }
  line=$(grep -E "Remote daemon.* on node $(mn_host 1)\$|process rank [23] .* on node $(mn_host 1) |lost ranks? .*\\(host $(mn_host 1)\\)" \
    "$TMP/run.log" | head -n 1 || true)
  [[ -n "$line" ]] || { cat "$TMP/run.log" >&2; fail "no line names the lost node $(mn_host 1)"; }
fi
note "the line: $(echo "$line" | sed 's/^ *//' | cut -c1-240)"

# ---- resume: continues bit-exactly from the newest checkpoint ----
((CHECK_RESUME)) || { note "PASS (resume not checked in this case)"; exit 0; }
[[ $CASE == link ]] && { mn_link_up 1; mn__wait_link 1; }
newest=$(find "$D/checkpoints" -maxdepth 1 -name 'step_*.h5' -printf '%f\n' | sort | tail -n 1)
[[ -n "$newest" ]] || fail "no checkpoint was written before the fault (after $at_rows steps)"
rc=0
# After a link flap, Open MPI's launch between the namespaces can hang before any rank starts
# (seen once in CI: empty log, no process past mpirun). That is the launcher, not the resume
# under test: such a launch gets 30 s, then one more try; a resume that prints anything is judged.
MPI_TIMEOUT=30 run_logged "$TMP/resume.log" "${LAUNCH[@]}" "${COMMON[@]}" --out_dir "$D" --resume auto || rc=$?
if ((rc == 124 || rc == 137)) && [[ $CASE == link && ! -s "$TMP/resume.log" ]]; then
  note "the resume's launch hung with no output: launching once more"
  rc=0
  run_logged "$TMP/resume.log" "${LAUNCH[@]}" "${COMMON[@]}" --out_dir "$D" --resume auto || rc=$?
fi
((rc == 0)) || { tail -n 40 "$TMP/resume.log" >&2; fail "--resume auto after the fault: exit code $rc"; }
grep -q "resume: continuing from .*$newest at step" "$TMP/resume.log" ||
  { grep resume "$TMP/resume.log" >&2; fail "--resume auto did not continue from the newest checkpoint $newest"; }
cmp -s <(metrics_field "$D/metrics.jsonl" loss) "$TMP/ref.losses" || {
  paste <(metrics_field "$D/metrics.jsonl" loss) "$TMP/ref.losses" | awk '$1 != $2 { print "step " NR ": " $1 " vs " $2 }' | head >&2
  fail "losses after the fault and --resume auto differ from the uninterrupted run"
}
cmp -s "$D/adapter_final.safetensors" "$TMP/ref/adapter_final.safetensors" ||
  fail "adapter_final.safetensors differs from the uninterrupted run"
note "resumed from $newest: $STEPS losses and the adapter bit-identical to the uninterrupted run"
note "PASS"
