# shellcheck shell=bash
# common.sh: shared logic of the vera-dist Slurm batch scripts (sourced, not run).
#
# The batch scripts set LAUNCHER, VERA_BIN, CONFIG, OUT_DIR, EXTRA_ARGS (and DEVICE) at their
# top, source this file and call `vera_main`. What it does:
#
#   1. checks the inputs and prints what the job will do (job id, restart count, newest checkpoint);
#   2. starts the training step in the background, always with `--resume auto`, so a requeued
#      job continues from the newest valid checkpoint in OUT_DIR:
#        LAUNCHER=srun    srun --mpi=pmix --kill-on-bad-exit=1 vera-dist ...
#        LAUNCHER=mpirun  mpirun -np $SLURM_NTASKS --bind-to none vera-dist ...
#   3. traps the signals the batch shell gets:
#        USR1  from `#SBATCH --signal=B:USR1@120` (120 s before the time limit) or from
#              `scancel --signal=USR1 --batch JOBID`: forwarded once to the running step
#              (srun and mpirun both pass SIGUSR1 on to every rank); every rank finishes its
#              step, rank 0 writes a checkpoint and status.json {"state": "preempted"}, all exit 0;
#        TERM  Slurm is ending the job (scancel, preemption, time limit): Slurm signals the
#              step's processes itself, so the shell does NOT forward it (a second signal makes
#              vera-dist exit at once, without its final checkpoint); it only waits;
#   4. waits for the step to exit, reads OUT_DIR/status.json and
#        "finished"   -> exits 0;
#        "preempted"  -> after USR1: `scontrol requeue $SLURM_JOB_ID` (the job goes back to
#                        the queue with the same id and continues where it stopped);
#                        after TERM only: no requeue from here (Slurm requeues a preempted job
#                        itself when PreemptMode=REQUEUE; a cancelled job stays cancelled);
#        anything else (a crash, a kill -9, a bad config) -> exits with the step's code and
#                        does not requeue, so a broken run cannot loop in the queue.
#
# Environment knobs (all optional):
#   VERA_MAX_REQUEUES  stop requeueing after this many restarts (default 50)
#   VERA_DRY_RUN=1     print the command instead of running it
#   SRUN_EXTRA_ARGS / MPIRUN_EXTRA_ARGS   extra launcher options (word-split)

vera_log() { echo "[vera-slurm $(date '+%F %T')] $*"; }
vera_fail() { echo "[vera-slurm $(date '+%F %T')] error: $*" >&2; exit 1; }

# vera_status_field FILE KEY: the value of KEY in status.json (no python/jq needed)
vera_status_field() {
  [[ -f "$1" ]] || return 0
  sed -n -E "s/.*\"$2\"[[:space:]]*:[[:space:]]*\"?([A-Za-z0-9_.-]+)\"?.*/\1/p" "$1" | head -n 1
}

vera_newest_checkpoint() {
  local d="$OUT_DIR/checkpoints"
  [[ -d "$d" ]] || return 0
  # names are step_XXXXXXXX.h5 with a fixed width, so the last in name order is the newest
  find "$d" -maxdepth 1 -name 'step_*.h5' -printf '%f\n' 2>/dev/null | sort | tail -n 1
}

# ---- signal handling -------------------------------------------------------------------
VERA_STEP_PID=""
VERA_GOT_USR1=0
VERA_GOT_TERM=0

vera_on_usr1() {
  VERA_GOT_USR1=$((VERA_GOT_USR1 + 1))
  if [[ -n "$VERA_STEP_PID" ]] && kill -0 "$VERA_STEP_PID" 2>/dev/null; then
    vera_log "SIGUSR1 received: asking the training step ($LAUNCHER, pid $VERA_STEP_PID) to checkpoint and stop"
    kill -USR1 "$VERA_STEP_PID" 2>/dev/null || true
  else
    vera_log "SIGUSR1 received, but no training step is running"
  fi
}

vera_on_term() {
  VERA_GOT_TERM=$((VERA_GOT_TERM + 1))
  vera_log "SIGTERM received: Slurm is ending the job and signals the step itself; waiting for it"
}

# ---- the job -----------------------------------------------------------------------------
vera_check_inputs() {
  [[ -n "${SLURM_JOB_ID:-}" ]] || vera_log "warning: SLURM_JOB_ID is not set: not running inside a Slurm job"
  [[ -x "$VERA_BIN" ]] || vera_fail "VERA_BIN=$VERA_BIN is not an executable (build vera-dist first, or set VERA_BIN)"
  [[ -z "$CONFIG" || -f "$CONFIG" ]] || vera_fail "CONFIG=$CONFIG does not exist"
  [[ -n "$OUT_DIR" ]] || vera_fail "OUT_DIR is empty"
  case "$LAUNCHER" in
    srun | mpirun) ;;
    *) vera_fail "LAUNCHER must be srun or mpirun, not '$LAUNCHER'" ;;
  esac
  command -v "$LAUNCHER" >/dev/null 2>&1 || vera_fail "$LAUNCHER not found on PATH"
  mkdir -p "$OUT_DIR" || vera_fail "cannot create OUT_DIR=$OUT_DIR"
}

# the launcher command line (array VERA_CMD)
vera_build_command() {
  local ntasks="${SLURM_NTASKS:-${SLURM_NPROCS:-1}}"
  VERA_CMD=()
  if [[ "$LAUNCHER" == srun ]]; then
    # pmix is what Debian's Open MPI speaks (pmi2 / none fail with "not built with SLURM's PMI
    # support"); --kill-on-bad-exit ends every rank when one fails instead of leaving them hung
    VERA_CMD=(srun --mpi=pmix --kill-on-bad-exit=1)
    # srun does not reliably inherit --cpus-per-task from sbatch (it changed in 22.05): pass it
    [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && VERA_CMD+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
    # shellcheck disable=SC2206
    [[ -n "${SRUN_EXTRA_ARGS:-}" ]] && VERA_CMD+=($SRUN_EXTRA_ARGS)
  else
    # mpirun reads the allocation from Slurm and starts its daemons on the other nodes with
    # srun; as root Open MPI refuses to start without these two variables
    if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
    VERA_CMD=(mpirun -np "$ntasks" --bind-to none)
    if [[ -n "${SLURM_NTASKS_PER_NODE:-}" ]]; then VERA_CMD+=(--map-by "ppr:${SLURM_NTASKS_PER_NODE}:node"); fi
    # shellcheck disable=SC2206
    [[ -n "${MPIRUN_EXTRA_ARGS:-}" ]] && VERA_CMD+=($MPIRUN_EXTRA_ARGS)
  fi
  VERA_CMD+=("$VERA_BIN")
  [[ -n "$CONFIG" ]] && VERA_CMD+=(--config "$CONFIG")
  VERA_CMD+=(--out_dir "$OUT_DIR" --resume auto)
  [[ -n "${DEVICE:-}" ]] && VERA_CMD+=(--device "$DEVICE")
  # one thread per allocated CPU of the task (otherwise vera-dist divides the node's cores)
  [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && VERA_CMD+=(--threads "$SLURM_CPUS_PER_TASK")
  # shellcheck disable=SC2206
  [[ -n "${EXTRA_ARGS:-}" ]] && VERA_CMD+=($EXTRA_ARGS)
  return 0
}

# requeue this job (it keeps its id; SLURM_RESTART_COUNT counts the restarts)
vera_requeue() {
  local restarts="${SLURM_RESTART_COUNT:-0}" max="${VERA_MAX_REQUEUES:-50}"
  if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    vera_log "not inside Slurm: nothing to requeue; rerun the same command to continue"
    return 0
  fi
  if ((restarts >= max)); then
    vera_log "not requeueing: the job was already restarted $restarts times (VERA_MAX_REQUEUES=$max)"
    return 0
  fi
  vera_log "requeueing job $SLURM_JOB_ID (restart $((restarts + 1))): it continues from the checkpoint with --resume auto"
  # Slurm ends this batch script once the requeue is accepted; that is expected
  scontrol requeue "$SLURM_JOB_ID" || { vera_log "error: scontrol requeue $SLURM_JOB_ID failed"; return 1; }
}

vera_main() {
  vera_check_inputs
  vera_build_command
  local status_file="$OUT_DIR/status.json" ckpt
  ckpt=$(vera_newest_checkpoint)
  vera_log "job ${SLURM_JOB_ID:-none} on ${SLURM_JOB_NODELIST:-$(hostname -s)}: ${SLURM_NTASKS:-?} task(s), restart ${SLURM_RESTART_COUNT:-0}"
  vera_log "out_dir $OUT_DIR; newest checkpoint: ${ckpt:-none (starting fresh)}"
  vera_log "running: ${VERA_CMD[*]}"
  if [[ "${VERA_DRY_RUN:-0}" == 1 ]]; then
    vera_log "VERA_DRY_RUN=1: not running"
    return 0
  fi

  trap vera_on_usr1 USR1
  trap vera_on_term TERM
  # in the background, so that the traps run while we wait (bash defers a trap until the
  # foreground command ends, which would be the whole training run)
  "${VERA_CMD[@]}" &
  VERA_STEP_PID=$!
  local rc=0
  while :; do
    rc=0
    wait "$VERA_STEP_PID" || rc=$?
    # wait returns > 128 when a trapped signal interrupted it; the step may still be running
    if kill -0 "$VERA_STEP_PID" 2>/dev/null; then continue; fi
    # the step has exited: one more wait gives its real exit status
    rc=0
    wait "$VERA_STEP_PID" 2>/dev/null || rc=$?
    break
  done
  VERA_STEP_PID=""

  local state step max
  state=$(vera_status_field "$status_file" state)
  step=$(vera_status_field "$status_file" step)
  max=$(vera_status_field "$status_file" max_steps)
  vera_log "training step exited with code $rc; status.json: state=${state:-missing} step=${step:-?}/${max:-?}"

  case "$state" in
    finished)
      vera_log "run finished: $OUT_DIR/adapter_final.safetensors"
      return 0
      ;;
    preempted)
      if ((VERA_GOT_USR1 > 0)); then
        vera_requeue || return 1
        return 0
      fi
      if ((VERA_GOT_TERM > 0)); then
        vera_log "stopped by SIGTERM: not requeueing from the script (a preempted job with PreemptMode=REQUEUE is requeued by Slurm; otherwise resubmit: --resume auto continues)"
        return 0
      fi
      # the step was signalled directly (e.g. scancel --signal=USR1 JOBID without --batch):
      # the run is incomplete and checkpointed, so continue it
      vera_requeue || return 1
      return 0
      ;;
    "")
      if ((rc == 0)); then
        vera_log "exited 0 without $status_file (a vera-dist without status.json): treating the run as finished"
        return 0
      fi
      vera_log "the run did not finish (exit code $rc, no status.json); not requeueing. Resubmit to continue from the newest checkpoint."
      return "$rc"
      ;;
    *)
      vera_log "the run did not finish (exit code $rc); not requeueing. Resubmit to continue from the newest checkpoint."
      ((rc != 0)) || rc=1
      return "$rc"
      ;;
  esac
}
