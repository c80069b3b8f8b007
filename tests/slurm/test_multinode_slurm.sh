#!/usr/bin/env bash
# test_multinode_slurm: Slurm across two "nodes" (network namespaces): sbatch -N 2 of
# launch/slurm/vera-cpu-multi-node.sbatch runs 2 x 2 ranks over TCP, with srun --mpi=pmix and
# with mpirun, and a preemption requeues the job and finishes the same run bit-identically.
#
#   bash tests/slurm/test_multinode_slurm.sh PATH/TO/vera-dist     (as root; ctest labels
#                                                                   "multinode;slurm")
# 1. starts a private Slurm cluster of two nodes (VERA_SLURM_NODES=2 tests/slurm/cluster.sh:
#    the nodes of tests/multinode/lib.sh, one network namespace, hostname and address each on
#    a bridge of their own; slurmctld and one slurmd in node 0, one slurmd in node 1, one
#    munged); it is stopped, namespaces included, on any exit;
# 2. the reference: the same 40-step config uninterrupted on this host, mpirun -np 4 over shared
#    memory (the single-host 4-rank run);
# 3. for LAUNCHER=srun and LAUNCHER=mpirun: submits vera-cpu-multi-node.sbatch unmodified with
#    sbatch -N 2 --ntasks-per-node=2 --cpus-per-task=1 (MPI_IFACE = the nodes' interface, so
#    MPI's TCP traffic takes the link between the nodes), preempts it after its first checkpoint
#    with scancel --signal=USR1 --batch, follows the requeue to COMPLETED (tests/slurm/jobs.sh
#    preempt_scenario: same checks as the single-node test) and checks
#      - the job had both nodes (NodeList, NumNodes=2, NumTasks=4);
#      - mpirun: its rank map (--display-map) has 2 ranks on each node at each start;
#      - node 1's slurmd launched this job's steps (srun: the ranks; mpirun: its orted), before
#        and after the requeue (2 launches at least);
#      - node 1's link carried the all-reduce traffic (its byte counters grew by more than the
#        adapter's gradient size times the steps run there);
#      - losses equal to the single-host 4-rank reference (within 1e-5, bit-identity reported)
#        and adapter_final.safetensors byte-identical.
# 4. stops the cluster while a job runs a task on each node: no task, daemon or namespace is left.
# Every sub-check prints one line; the cluster start is shared. Skips (exit 77) when not root
# or when network namespaces are not possible. VERA_KEEP_TMP=1 keeps the temp dir.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC1091
source "$REPO_ROOT/tests/integration/common.sh"
# shellcheck disable=SC1091
source "$REPO_ROOT/tests/multinode/lib.sh"
mn_require
# shellcheck disable=SC1091
source "$REPO_ROOT/tests/slurm/jobs.sh"
STEPS=40

T_BEGIN=$SECONDS
VERA_SLURM_NODES=2 slurm_cluster_up "$TMP/cluster"
# shellcheck disable=SC1091
source "$CL/mn.env"
read -r NODE0 _ < <(sed -n 1p "$CL/nodes")
read -r NODE1 _ < <(sed -n 2p "$CL/nodes")

slurm_make_run "$STEPS"
# the reference: one host, 4 ranks, shared memory, never interrupted
vd_mpirun 4 "$TMP/ref.log" --config "$CONFIG" --out_dir "$TMP/ref" --ckpt_delay_ms 0
[[ $(wc -l <"$TMP/ref/metrics.jsonl") -eq $STEPS ]] || fail "reference: expected $STEPS metrics rows"

# the jobs get this environment (sbatch passes it on): TCP between the nodes (common.sh's
# single-host setting is shared memory only), on the nodes' interface
export OMPI_MCA_btl=self,vader,tcp MPI_IFACE="$MN_IF"

# multinode_scenario LAUNCHER: preempt + requeue of the 2 x 2 job, then where it ran
multinode_scenario() {
  local launcher="$1" rx0 tx0 rx1 tx1 launches
  read -r rx0 tx0 < <(mn_link_bytes 1)
  # mpirun prints where it put each rank (--display-map); srun's layout is Slurm's own (NumTasks,
  # --ntasks-per-node)
  MPIRUN_EXTRA_ARGS="--display-map" preempt_scenario "$launcher" vera-cpu-multi-node.sbatch \
    "$TMP/ref" "$STEPS" --nodes=2 --ntasks-per-node=2 --cpus-per-task=1
  read -r rx1 tx1 < <(mn_link_bytes 1)
  local nodes
  nodes=$(job_field "$JOBID" NodeList)
  [[ "$(job_field "$JOBID" NumNodes)" == 2 && "$(job_field "$JOBID" NumTasks)" == 4 ]] ||
    fail "$launcher: job $JOBID: NumNodes=$(job_field "$JOBID" NumNodes) NumTasks=$(job_field "$JOBID" NumTasks), expected 2 and 4"
  [[ "$(sl scontrol show hostnames "$nodes" | paste -sd' ')" == "$NODE0 $NODE1" ]] ||
    fail "$launcher: job $JOBID ran on '$nodes', expected $NODE0 and $NODE1"
  if [[ "$launcher" == mpirun ]]; then
    local node maps
    for node in "$NODE0" "$NODE1"; do
      maps=$(grep -cE "Data for node: ${node}[[:space:]]+Num slots: 2[[:space:]].*Num procs: 2\$" "$JOB_OUT" || true)
      ((maps >= 2)) || fail "mpirun: its map (--display-map) did not put 2 ranks on $node at each start"
    done
  fi
  launches=$(grep -c "launch task StepId=$JOBID\." "$CL/slurmd.$NODE1.log" || true)
  ((launches >= 2)) || fail "$launcher: $NODE1's slurmd launched $launches step(s) of job $JOBID, expected one per start (2)"
  # VeRA's gradient is tiny, but every step all-reduces it: node 1 sends and receives at least
  # its 4-byte-per-value vectors each step (a lower bound far below the real traffic)
  local trainable sent=$((tx1 - tx0)) got=$((rx1 - rx0))
  trainable=$(log_trainable "$TMP/ref.log")
  [[ -n "$trainable" ]] || fail "reference: no 'trainable parameters' line"
  ((sent > 4 * trainable * STEPS && got > 4 * trainable * STEPS)) ||
    fail "$launcher: node 1's link carried $sent bytes out / $got in, expected > $((4 * trainable * STEPS)) each (ranks there?)"
  note "$launcher: job $JOBID on $nodes (2 nodes x 2 ranks); $launches launches on $NODE1; its link: $sent B out, $got B in (lower bound $((4 * trainable * STEPS)))"
}

multinode_scenario srun
multinode_scenario mpirun

# stop with a job still running on both nodes: nothing of the cluster may be left
marker="vera-mn-sleep-$$"
JOBID=$(sl sbatch --parsable -N 2 --ntasks-per-node=1 --output=/dev/null \
          --wrap "srun -N 2 -n 2 bash -c 'exec -a $marker sleep 300'") || fail "stop: sbatch failed"
for ((i = 0; i < 100; i++)); do
  (($(pgrep -c -f "^$marker" || true) == 2)) && break
  sleep 0.1
done
(($(pgrep -c -f "^$marker" || true) == 2)) || fail "stop: job $JOBID did not start a task on each node within 10 s"
daemons=$(cat "$CL"/*.pid | paste -sd' ')
bash "$CLUSTER_SH" stop "$CL" >&2 || fail "stop: cluster.sh stop failed"
CL=""
left=$(pgrep -f "^$marker" | paste -sd' ' || true)
[[ -z "$left" ]] || fail "stop: the job's tasks survive the cluster: $left"
for pid in $daemons; do
  ! kill -0 "$pid" 2>/dev/null || fail "stop: daemon $pid ($(ps -o comm= -p "$pid")) survives"
done
left=$(mn_leftovers "$MN_PREFIX")
[[ -z "$left" ]] || fail "stop: left of the nodes: $left"
note "stop with job $JOBID running on both nodes: its tasks, munged, slurmctld, both slurmd and the namespaces are gone"
note "PASS in $((SECONDS - T_BEGIN)) s"
