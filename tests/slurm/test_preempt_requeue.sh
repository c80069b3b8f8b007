#!/usr/bin/env bash
# test_preempt_requeue: a real Slurm job is preempted, requeued and finishes the same run.
#
#   bash tests/slurm/test_preempt_requeue.sh PATH/TO/vera-dist      (as root; ctest label "slurm")
#
# 1. starts a private single-node Slurm cluster on loopback (tests/slurm/cluster.sh; installs
#    slurm-wlm and munge when missing) and stops it, by PID, on any exit;
# 2. writes a tiny random GPT-2 and byte-level shards (vera-dist init-model / prepare-data) and
#    a 40-step config with ckpt_every 5 and a test-only ckpt_delay_ms (each checkpoint then
#    takes about a second, so the job is still running when it is signalled);
# 3. the reference: the same config uninterrupted, mpirun -np 2 outside Slurm;
# 4. for LAUNCHER=srun (the primary) and LAUNCHER=mpirun: submits
#    launch/slurm/vera-cpu-single-node.sbatch unmodified with sbatch (2 tasks; paths through
#    VERA_BIN / CONFIG / OUT_DIR in the environment), waits for its first checkpoint, then
#       scancel --signal=USR1 --batch JOBID
#    (--batch signals only the batch shell, exactly like #SBATCH --signal=B:USR1@120: its trap
#    forwards one SIGUSR1 to the step. --full would signal the shell AND srun/mpirun AND the
#    ranks: the ranks would see the signal two or three times, and a second signal makes
#    vera-dist exit at once without its checkpoint.) and checks:
#      - the step stops with "stopped by signal", status.json "preempted", and the script runs
#        `scontrol requeue`: the job goes RUNNING -> REQUEUED/PENDING -> RUNNING -> COMPLETED
#        with Restarts >= 1 (scontrol show job), keeping its id;
#      - the second start continues from the checkpoint of the step it stopped at
#        (--resume auto), and the job ends COMPLETED with status.json "finished" at step 40;
#      - the 40 losses equal the reference within 1e-5 relative (bit-identical is expected with
#        the same world size; the result says which) and adapter_final.safetensors is identical;
# 5. submits vera-cpu-multi-node.sbatch (on the one node) and vera-gpu.sbatch (2 fake GPUs, see
#    cluster.sh VERA_SLURM_GPUS; DEVICE=cpu) unmodified: both run to the end with the reference's
#    adapter, and the GPU job sees CUDA_VISIBLE_DEVICES=0,1.
# Everything is bounded by timeouts; on failure the job output and the Slurm logs are printed.
# Skips (exit 77) when not root. VERA_KEEP_TMP=1 keeps the temp dir (and the cluster's).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC1091
source "$REPO_ROOT/tests/integration/common.sh"

if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP [$TEST_NAME]: needs root (slurmd runs as root with SlurmUser=root)"
  exit 77
fi
CLUSTER_SH="$REPO_ROOT/tests/slurm/cluster.sh"
SBATCH_SCRIPT="$REPO_ROOT/launch/slurm/vera-cpu-single-node.sbatch"
STEPS=40
CL=""
JOB_OUTS=()

on_exit() {
  local rc=$?
  trap - EXIT
  if [[ $rc -ne 0 ]]; then
    echo "======== [$TEST_NAME] failed (exit $rc): diagnostics" >&2
    local f
    for f in "${JOB_OUTS[@]}"; do
      [[ -f "$f" ]] && { echo "---- job output $f" >&2; tail -n 80 "$f" >&2; }
    done
    if [[ -n "$CL" && -d "$CL" ]]; then
      SLURM_CONF="$CL/slurm.conf" scontrol show job 2>/dev/null | tail -n 60 >&2 || true
      for f in slurmctld.log slurmd.log; do
        [[ -f "$CL/$f" ]] && { echo "---- $CL/$f (last 60 lines)" >&2; tail -n 60 "$CL/$f" >&2; }
      done
    fi
  fi
  if [[ -n "$CL" ]]; then bash "$CLUSTER_SH" stop "$CL" >&2 || true; fi
  (exit $rc)
  cleanup
}
trap on_exit EXIT

T_BEGIN=$SECONDS
CL=$(VERA_SLURM_GPUS=2 VERA_SLURM_START_TIMEOUT=60 timeout -k 5 300 bash "$CLUSTER_SH" start "$TMP/cluster") || fail "could not start the Slurm cluster"
export SLURM_CONF="$CL/slurm.conf"
note "cluster up in $((SECONDS - T_BEGIN)) s ($SLURM_CONF)"

make_model "$TMP/model" 2 2 32 256 64
make_data "$TMP/data" 30000
cat >"$TMP/run.ini" <<EOF
; 40 steps on a tiny model; each checkpoint is made slow (ckpt_delay_ms per dataset)
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
max_steps = $STEPS
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

# the reference, outside Slurm, never interrupted (no checkpoint delay: it changes no math)
vd_mpirun 2 "$TMP/ref.log" --config "$TMP/run.ini" --out_dir "$TMP/ref" --ckpt_delay_ms 0
[[ $(wc -l <"$TMP/ref/metrics.jsonl") -eq $STEPS ]] || fail "reference: expected $STEPS metrics rows"

job_field() { # JOBID KEY: one field of scontrol show job
  scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

# scenario LAUNCHER
scenario() {
  local launcher="$1" t0=$SECONDS
  local out="$TMP/run-$launcher" jobdir="$TMP/job-$launcher"
  mkdir -p "$jobdir"
  local jobout="$jobdir/vera-cpu.out"
  JOB_OUTS+=("$jobout")
  local jobid
  jobid=$(LAUNCHER="$launcher" VERA_BIN="$VD" CONFIG="$TMP/run.ini" OUT_DIR="$out" EXTRA_ARGS="" \
          timeout 30 sbatch --parsable --chdir="$jobdir" --output="$jobout" "$SBATCH_SCRIPT") ||
    fail "$launcher: sbatch failed"
  jobid=${jobid%%;*}
  note "$launcher: submitted job $jobid"

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
  scancel --signal=USR1 --batch "$jobid" || fail "$launcher: scancel --signal=USR1 --batch $jobid failed"
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
  ((stopped < STEPS)) || fail "$launcher: stopped only at step $stopped"
  [[ $(grep -c 'stopped by signal' "$jobout") -eq 1 ]] || fail "$launcher: stopped more than once"
  ! grep -q 'second signal' "$jobout" || fail "$launcher: the ranks got the signal twice"
  grep -q "state=preempted step=$stopped/$STEPS" "$jobout" || fail "$launcher: status.json was not preempted at step $stopped"
  grep -q "requeueing job $jobid" "$jobout" || fail "$launcher: the script did not requeue"
  resumed=$(printf 'resume: continuing from .*step_%08d\\.h5 at step %d' "$stopped" "$stopped")
  grep -q "$resumed" "$jobout" || { grep -n 'resume' "$jobout" >&2; fail "$launcher: the requeued job did not continue from step $stopped"; }
  grep -q 'restart 1' "$jobout" || fail "$launcher: the second start did not see SLURM_RESTART_COUNT=1"
  grep -q 'run finished' "$jobout" || fail "$launcher: the script did not report the run finished"
  grep -q "\"state\": \"finished\", \"step\": $STEPS," "$out/status.json" ||
    fail "$launcher: status.json: $(cat "$out/status.json")"

  # the same run as the uninterrupted reference
  compare_losses "$out/metrics.jsonl" "$TMP/ref/metrics.jsonl" 1e-5 "$launcher: preempted+requeued vs uninterrupted"
  local bits="bit-identical"
  cmp -s <(metrics_field "$out/metrics.jsonl" loss) <(metrics_field "$TMP/ref/metrics.jsonl" loss) || bits="NOT bit-identical (within 1e-5)"
  cmp -s "$out/adapter_final.safetensors" "$TMP/ref/adapter_final.safetensors" ||
    fail "$launcher: adapter_final.safetensors differs from the uninterrupted run"
  note "$launcher: stopped at step $stopped, requeued, resumed at $stopped, finished $STEPS: losses $bits, adapter identical"
}

scenario srun
scenario mpirun

# smoke SCRIPT NAME [sbatch options]: the other scripts, submitted unmodified, run the same
# 40 steps to the end (no signal) and give the reference's adapter
smoke() {
  local script="$1" name="$2"; shift 2
  local out="$TMP/run-$name" jobdir="$TMP/job-$name" jobid st="" i t0=$SECONDS
  mkdir -p "$jobdir"
  JOB_OUTS+=("$jobdir/out")
  jobid=$(VERA_BIN="$VD" CONFIG="$TMP/run.ini" OUT_DIR="$out" EXTRA_ARGS="--ckpt_delay_ms 0" \
          timeout 30 sbatch --parsable --chdir="$jobdir" --output="$jobdir/out" "$@" "$REPO_ROOT/launch/slurm/$script") ||
    fail "$name: sbatch failed"
  jobid=${jobid%%;*}
  for ((i = 0; i < 600; i++)); do
    st=$(job_field "$jobid" JobState)
    case "$st" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) break ;; esac
    sleep 0.1
  done
  [[ "$st" == COMPLETED ]] || fail "$name: job $jobid ended '$st' (expected COMPLETED within 60 s)"
  grep -q 'run finished' "$jobdir/out" || fail "$name: the script did not report the run finished"
  cmp -s "$out/adapter_final.safetensors" "$TMP/ref/adapter_final.safetensors" ||
    fail "$name: adapter_final.safetensors differs from the reference"
  note "$name: job $jobid COMPLETED in $((SECONDS - t0)) s, adapter identical to the reference"
}
# the multi-node script on the one node (its #SBATCH lines ask for 2 nodes x 16 cores)
smoke vera-cpu-multi-node.sbatch multi-node-srun --nodes=1 --ntasks-per-node=2 --cpus-per-task=1
if [[ "$(sinfo -h -N -o %G 2>/dev/null)" == *gpu:2* ]]; then
  # the GPU script with 2 fake GPUs: one rank per GPU; DEVICE=cpu until the CUDA backend exists
  DEVICE=cpu smoke vera-gpu.sbatch gpu-script --gpus-per-node=2 --ntasks-per-node=2 --cpus-per-task=1
  grep -q 'CUDA_VISIBLE_DEVICES=0,1' "$TMP/job-gpu-script/out" || fail "gpu-script: the job did not see 2 GPUs"
else
  note "gpu-script: skipped (no fake GPUs in the test cluster)"
fi
note "PASS in $((SECONDS - T_BEGIN)) s"
