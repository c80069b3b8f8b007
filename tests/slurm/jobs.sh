# shellcheck shell=bash
# jobs.sh: what the Slurm tests share (sourced after tests/integration/common.sh, not run).
#
#   slurm_cluster_up DIR       start a private cluster (tests/slurm/cluster.sh; VERA_SLURM_NODES
#                              etc. from the environment) into DIR, set CL and SLURM_CONF, and
#                              stop it (by PID, namespaces too) and print diagnostics on any exit
#   sl CMD...                  a Slurm command (sbatch, squeue, scontrol, scancel, sinfo) on the
#                              cluster's login node (cluster.sh exec: node 0 with namespaces)
#   slurm_make_run STEPS       model, data and $TMP/run.ini (CONFIG) of a STEPS-step run
#   job_field JOBID KEY        one field of `scontrol show job`
#   preempt_scenario LAUNCHER SCRIPT REF STEPS [sbatch options...]
#                              submits launch/slurm/SCRIPT unmodified with LAUNCHER, preempts it
#                              after its first checkpoint with `scancel --signal=USR1 --batch`,
#                              follows it through the requeue to COMPLETED and checks that it is
#                              the run of REF (metrics.jsonl + adapter_final.safetensors of the
#                              same config, uninterrupted); sets JOBID and RUN_OUT
#   smoke_job SCRIPT NAME REF [sbatch options...]
#                              SCRIPT runs to the end (no signal) and gives REF's adapter
# The job's settings come from the environment (sbatch passes it on): the caller sets CONFIG;
# VERA_BIN is $VD. JOB_OUTS collects the job output files printed on failure.
CLUSTER_SH="$REPO_ROOT/tests/slurm/cluster.sh"
CL=""
JOB_OUTS=()
JOBID=""
# shellcheck disable=SC2034  # (for the tests that source this file)
JOB_OUT=""

sl() { bash "$CLUSTER_SH" exec "$CL" "$@"; }

slurm_on_exit() {
  local rc=$?
  trap - EXIT
  # no errexit here: `(exit $rc)` below would end the handler before cleanup removes $TMP
  set +e
  if [[ $rc -ne 0 ]]; then
    echo "======== [$TEST_NAME] failed (exit $rc): diagnostics" >&2
    local f
    for f in "${JOB_OUTS[@]}"; do
      [[ -f "$f" ]] && { echo "---- job output $f" >&2; tail -n 80 "$f" >&2; }
    done
    if [[ -n "$CL" && -d "$CL" ]]; then
      sl scontrol show job 2>/dev/null | tail -n 60 >&2 || true
      for f in "$CL"/slurmctld.log "$CL"/slurmd.*.log; do
        [[ -f "$f" ]] && { echo "---- $f (last 60 lines)" >&2; tail -n 60 "$f" >&2; }
      done
    fi
  fi
  if [[ -n "$CL" ]]; then bash "$CLUSTER_SH" stop "$CL" >&2 || true; fi
  (exit $rc)
  cleanup
}

slurm_cluster_up() {
  trap slurm_on_exit EXIT
  local t0=$SECONDS
  # VERA_SLURM_OWNER: namespace nodes left by a test killed with SIGKILL are swept later
  CL=$(VERA_SLURM_OWNER=$$ VERA_SLURM_START_TIMEOUT="${VERA_SLURM_START_TIMEOUT:-60}" timeout -k 5 300 bash "$CLUSTER_SH" start "$1") ||
    fail "could not start the Slurm cluster"
  export SLURM_CONF="$CL/slurm.conf"
  note "cluster up in $((SECONDS - t0)) s ($SLURM_CONF): $(cut -d' ' -f1 "$CL/nodes" | paste -sd' ')"
}

# slurm_make_run STEPS: a tiny random GPT-2 ($TMP/model), byte-level shards ($TMP/data) and
# $TMP/run.ini (exported as CONFIG): STEPS steps with a checkpoint every 5, each made slow with
# the test-only ckpt_delay_ms so that a job is still running when it is signalled
slurm_make_run() {
  local steps="$1"
  make_model "$TMP/model" 2 2 32 256 64
  make_data "$TMP/data" 30000
  cat >"$TMP/run.ini" <<EOF
; $steps steps on a tiny model; each checkpoint is made slow (ckpt_delay_ms per dataset)
[model]
model = $TMP/model
[data]
train_data = $TMP/data/train_*.bin
[vera]
r = 16
target_modules = all
[train]
batch_size = 2
seq_len = 32
max_steps = $steps
warmup_steps = 2
lr = 3e-2
[log]
log_every = 5
[system]
threads = 1
[checkpoint]
ckpt_every = 5
keep_last = 3
ckpt_delay_ms = 20
EOF
  export CONFIG="$TMP/run.ini"
}

job_field() { # JOBID KEY: one field of scontrol show job
  sl scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

preempt_scenario() {
  local launcher="$1" script="$2" ref="$3" steps="$4"; shift 4
  local t0=$SECONDS
  local out="$TMP/run-$launcher" jobdir="$TMP/job-$launcher"
  mkdir -p "$jobdir"
  local jobout="$jobdir/vera-cpu.out"
  JOB_OUTS+=("$jobout")
  # shellcheck disable=SC2034
  JOB_OUT="$jobout"
  JOBID=$(LAUNCHER="$launcher" VERA_BIN="$VD" OUT_DIR="$out" EXTRA_ARGS="" \
          sl timeout 30 sbatch --parsable --chdir="$jobdir" --output="$jobout" "$@" "$REPO_ROOT/launch/slurm/$script") ||
    fail "$launcher: sbatch failed"
  JOBID=${JOBID%%;*}
  local jobid="$JOBID"
  note "$launcher: submitted job $jobid ($script $*)"

  # wait for the first checkpoint (the run is going and its signal handlers are installed)
  local st="" i
  for ((i = 0; i < 600; i++)); do
    compgen -G "$out/checkpoints/step_*.h5" >/dev/null && break
    st=$(job_field "$jobid" JobState)
    case "$st" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY)
      fail "$launcher: job $jobid ended ($st) before its first checkpoint" ;;
    esac
    sleep 0.1
  done
  compgen -G "$out/checkpoints/step_*.h5" >/dev/null || fail "$launcher: no checkpoint within 60 s (job state $st)"
  [[ "$(job_field "$jobid" JobState)" == RUNNING ]] || fail "$launcher: job $jobid is not running at the signal"
  sl scancel --signal=USR1 --batch "$jobid" || fail "$launcher: scancel --signal=USR1 --batch $jobid failed"
  note "$launcher: sent SIGUSR1 to the batch shell after the first checkpoint ($((SECONDS - t0)) s)"

  # follow the job: every distinct JobState, until COMPLETED after at least one restart
  local states="" last="" restarts=0 t1=$SECONDS
  while ((SECONDS - t1 < 150)); do
    st=$(job_field "$jobid" JobState)
    restarts=$(job_field "$jobid" Restarts)
    if [[ -n "$st" && "$st" != "$last" ]]; then states+="${states:+ -> }$st"; last="$st"; fi
    [[ "$st" == COMPLETED && ${restarts:-0} -ge 1 ]] && break
    case "$st" in FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
      fail "$launcher: job $jobid ended $st (states: $states)" ;;
    esac
    if [[ "$st" == COMPLETED ]]; then fail "$launcher: job $jobid completed without being requeued (states: $states)"; fi
    sleep 0.25
  done
  [[ "$st" == COMPLETED ]] || fail "$launcher: job $jobid not COMPLETED within 150 s after the signal (states: $states)"
  ((restarts >= 1)) || fail "$launcher: Restarts=$restarts"
  [[ "$states" == *PENDING* || "$states" == *REQUEUE* ]] || fail "$launcher: never saw the job requeued (states: $states)"
  note "$launcher: job $jobid: states $states; Restarts=$restarts; $((SECONDS - t0)) s in all"

  # what the job said
  local stopped resumed
  grep -q 'SIGUSR1 received: asking the training step' "$jobout" || fail "$launcher: the batch shell did not forward SIGUSR1"
  stopped=$(sed -n 's/.*vera-dist: stopped by signal after step \([0-9]*\).*/\1/p' "$jobout" | head -n 1)
  [[ -n "$stopped" ]] || fail "$launcher: no 'vera-dist: stopped by signal' in the job output"
  ((stopped < steps)) || fail "$launcher: stopped only at step $stopped"
  [[ $(grep -c 'stopped by signal' "$jobout") -eq 1 ]] || fail "$launcher: stopped more than once"
  ! grep -q 'second signal' "$jobout" || fail "$launcher: the ranks got the signal twice"
  grep -q "state=preempted step=$stopped/$steps" "$jobout" || fail "$launcher: status.json was not preempted at step $stopped"
  grep -q "requeueing job $jobid" "$jobout" || fail "$launcher: the script did not requeue"
  resumed=$(printf 'resume: continuing from .*step_%08d\\.h5 at step %d' "$stopped" "$stopped")
  grep -q "$resumed" "$jobout" || { grep -n 'resume' "$jobout" >&2; fail "$launcher: the requeued job did not continue from step $stopped"; }
  grep -q 'restart 1' "$jobout" || fail "$launcher: the second start did not see SLURM_RESTART_COUNT=1"
  grep -q 'run finished' "$jobout" || fail "$launcher: the script did not report the run finished"
  grep -q "\"state\": \"finished\", \"step\": $steps," "$out/status.json" ||
    fail "$launcher: status.json: $(cat "$out/status.json")"

  # the same run as the uninterrupted reference
  compare_losses "$out/metrics.jsonl" "$ref/metrics.jsonl" 1e-5 "$launcher: preempted+requeued vs uninterrupted"
  local bits="bit-identical"
  cmp -s <(metrics_field "$out/metrics.jsonl" loss) <(metrics_field "$ref/metrics.jsonl" loss) || bits="NOT bit-identical (within 1e-5)"
  cmp -s "$out/adapter_final.safetensors" "$ref/adapter_final.safetensors" ||
    fail "$launcher: adapter_final.safetensors differs from the uninterrupted run"
  note "$launcher: stopped at step $stopped, requeued, resumed at $stopped, finished $steps: losses $bits, adapter identical"
}

smoke_job() {
  local script="$1" name="$2" ref="$3"; shift 3
  local out="$TMP/run-$name" jobdir="$TMP/job-$name" jobid st="" i t0=$SECONDS
  mkdir -p "$jobdir"
  JOB_OUTS+=("$jobdir/out")
  jobid=$(VERA_BIN="$VD" OUT_DIR="$out" EXTRA_ARGS="--ckpt_delay_ms 0" \
          sl timeout 30 sbatch --parsable --chdir="$jobdir" --output="$jobdir/out" "$@" "$REPO_ROOT/launch/slurm/$script") ||
    fail "$name: sbatch failed"
  jobid=${jobid%%;*}
  for ((i = 0; i < 600; i++)); do
    st=$(job_field "$jobid" JobState)
    case "$st" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) break ;; esac
    sleep 0.1
  done
  [[ "$st" == COMPLETED ]] || fail "$name: job $jobid ended '$st' (expected COMPLETED within 60 s)"
  grep -q 'run finished' "$jobdir/out" || fail "$name: the script did not report the run finished"
  cmp -s "$out/adapter_final.safetensors" "$ref/adapter_final.safetensors" ||
    fail "$name: adapter_final.safetensors differs from the reference"
  note "$name: job $jobid COMPLETED in $((SECONDS - t0)) s, adapter identical to the reference"
}
