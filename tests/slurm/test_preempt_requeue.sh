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
# shellcheck disable=SC1091
source "$REPO_ROOT/tests/slurm/jobs.sh"
STEPS=40

T_BEGIN=$SECONDS
VERA_SLURM_GPUS=2 slurm_cluster_up "$TMP/cluster"

slurm_make_run "$STEPS"

# the reference, outside Slurm, never interrupted (no checkpoint delay: it changes no math)
vd_mpirun 2 "$TMP/ref.log" --config "$TMP/run.ini" --out_dir "$TMP/ref" --ckpt_delay_ms 0
[[ $(wc -l <"$TMP/ref/metrics.jsonl") -eq $STEPS ]] || fail "reference: expected $STEPS metrics rows"

preempt_scenario srun vera-cpu-single-node.sbatch "$TMP/ref" "$STEPS"
preempt_scenario mpirun vera-cpu-single-node.sbatch "$TMP/ref" "$STEPS"

# the multi-node script on the one node (its #SBATCH lines ask for 2 nodes x 16 cores)
smoke_job vera-cpu-multi-node.sbatch multi-node-srun "$TMP/ref" --nodes=1 --ntasks-per-node=2 --cpus-per-task=1
if [[ "$(sl sinfo -h -N -o %G 2>/dev/null)" == *gpu:2* ]]; then
  # the GPU script with 2 fake GPUs: one rank per GPU; DEVICE=cpu until the CUDA backend exists
  DEVICE=cpu smoke_job vera-gpu.sbatch gpu-script "$TMP/ref" --gpus-per-node=2 --ntasks-per-node=2 --cpus-per-task=1
  grep -q 'CUDA_VISIBLE_DEVICES=0,1' "$TMP/job-gpu-script/out" || fail "gpu-script: the job did not see 2 GPUs"
else
  note "gpu-script: skipped (no fake GPUs in the test cluster)"
fi
note "PASS in $((SECONDS - T_BEGIN)) s"
