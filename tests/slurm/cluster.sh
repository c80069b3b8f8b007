#!/usr/bin/env bash
# cluster.sh: a real Slurm cluster for tests: one node on loopback, or several "nodes" as
# network namespaces (VERA_SLURM_NODES=N).
#
#   DIR=$(bash tests/slurm/cluster.sh start [DIR])   # prints the state directory (only that, on stdout)
#   export SLURM_CONF=$DIR/slurm.conf                # then sbatch / srun / squeue / scontrol work
#   bash tests/slurm/cluster.sh exec DIR CMD...      # CMD on the login node (needed with namespaces)
#   bash tests/slurm/cluster.sh status DIR
#   bash tests/slurm/cluster.sh stop DIR             # kills exactly the daemons start started, removes DIR
#
# What start does (Debian 12, run as root; see ../shared/design/platform-notes.md):
#   * installs slurm-wlm and munge with apt-get when they are missing;
#   * starts a private munged as the munge user on its own socket (/run/munge/vera.*; Slurm
#     gets it with AuthInfo=socket=...), so a system munged or another test cluster is never
#     shared or stopped; its PID is recorded like the daemons'; a Unix socket path works from
#     every network namespace, so all nodes share it;
#   * the nodes: with VERA_SLURM_NODES=1 (the default) this host, `hostname -s` at 127.0.0.1;
#     with N >= 2 the N nodes of the multi-node harness (tests/multinode/lib.sh mn_up: a network
#     namespace, hostname and address each, on a bridge in a namespace of its own; nothing is
#     added to the host's network); slurmctld then runs in node 0, which is also the login
#     node: run sbatch/squeue/... there (`cluster.sh exec DIR CMD`; from the host they cannot
#     reach it);
#   * writes a private slurm.conf into DIR (nothing in /etc changes but the harness's
#     /etc/netns/NODE/hosts with N >= 2): one NodeName line per node
#     (NodeHostname = its name, NodeAddr = its address) with CPUs=2 and the real socket/core
#     counts, per-node spool dir, pid file, log and TmpFS (%n), a TaskProlog that gives every
#     task its node's TMPDIR, cons_tres + CR_Core, proctrack/linuxproc, task/none,
#     MpiDefault=pmix, no accounting, JobRequeue=1, a short KillWait, free TCP ports for
#     slurmctld and slurmd (so it never collides with a system Slurm or another test cluster);
#   * starts `slurmctld -D -i` and one `slurmd -D -N NODE` per node with setsid in the
#     background (in its namespace and with its hostname), records their PIDs in DIR, and waits
#     (bounded) until sinfo reports every node idle. If anything fails, what was started is
#     stopped again (daemons and namespaces).
# stop cancels the jobs left, kills their step processes (scontrol listpids on each node), the
# daemons by their recorded PIDs, and removes the namespaces (mn_down, which also ends anything
# still running in them).
# Logs: DIR/slurmctld.log, DIR/slurmd.NODE.log (DIR/*.out hold the daemons' own stdout/stderr).
# Environment: VERA_SLURM_NODES (number of nodes, default 1; >= 2 needs network namespaces),
#              VERA_SLURM_START_TIMEOUT (seconds to wait for idle nodes, default 60),
#              VERA_SLURM_CPUS (CPUs of a node, default 2),
#              VERA_SLURM_CRED_EXPIRE (credential lifetime = requeue delay in seconds, default 5),
#              VERA_SLURM_OWNER=PID (with N >= 2): the nodes belong to process PID; once it is
#              gone, the next use of the harness removes them with everything running in them
#              (the whole cluster but DIR), even if `stop` never ran (default: slurmctld's PID),
#              VERA_SLURM_GPUS=N (default 0): N fake GPUs per node (character devices
#              DIR/dev/nvidia0..N-1 named in gres.conf, GresTypes=gpu) so --gpus-per-node jobs
#              schedule and see CUDA_VISIBLE_DEVICES; there is no real GPU behind them.
set -euo pipefail

say() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }

usage() { sed -n '2,10p' "$0" >&2; exit 2; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd needs it; SlurmUser=root)"; }

install_if_missing() {
  local missing=() p st
  for p in slurm-wlm munge; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ "$st" == installed ]] || missing+=("$p")
  done
  for p in slurmctld slurmd sbatch munged; do
    command -v "$p" >/dev/null 2>&1 || [[ -x /usr/sbin/$p ]] || { [[ " ${missing[*]} " == *" slurm-wlm "* ]] || missing+=(slurm-wlm); }
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/vera-cluster-apt.log 2>&1; then
    apt-get update -q >>/tmp/vera-cluster-apt.log 2>&1 || true
    apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/vera-cluster-apt.log 2>&1 ||
      { tail -n 20 /tmp/vera-cluster-apt.log >&2; die "apt-get install ${missing[*]} failed"; }
  fi
}

# munge_works [SOCKET]: a credential encodes and decodes through that munged
munge_works() {
  local sock=()
  [[ -n "${1:-}" ]] && sock=(--socket="$1")
  munge "${sock[@]}" -n </dev/null 2>/dev/null | unmunge "${sock[@]}" >/dev/null 2>&1
}

# A private munged for this cluster, as the munge user, on its own socket
# (/run/munge/vera.<name of DIR>/munge.socket, given to Slurm with AuthInfo=socket=...):
# clusters started side by side, and a system munged, never share or stop each other's.
start_munge() {
  local dir="$1"
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge && chown munge:munge /etc/munge && chmod 700 /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
      runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
      chown munge:munge /etc/munge/munge.key
    fi
    chmod 400 /etc/munge/munge.key
  fi
  # munged (user munge) must reach its socket directory: not under DIR, which may sit in a
  # private (0700) temp dir; munged also wants it executable for all
  mkdir -p /run/munge
  chown munge:munge /run/munge
  chmod 755 /run/munge
  local mdir
  mdir="/run/munge/vera.$(basename "$dir").$$"
  mkdir -p "$mdir"
  chown munge:munge "$mdir"
  chmod 755 "$mdir"
  echo "$mdir" >"$dir/munge.dir"
  MUNGE_SOCKET="$mdir/munge.socket"
  # with namespace nodes munged runs in node 0 too (its socket is a path: every node reaches
  # it), so that removing the nodes ends every daemon of the cluster
  local -a in_node=()
  [[ -f "$dir/mn.env" ]] && in_node=(bash "$0" node-daemon "$dir" 0)
  "${in_node[@]}" runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --pid-file="$mdir/munged.pid" \
    --log-file="$mdir/munged.log" --seed-file="$mdir/munged.seed" ||
    { cat "$mdir/munged.log" >&2 2>/dev/null || true; die "munged failed to start"; }
  local i pid=""
  for ((i = 0; i < 50; i++)); do
    if munge_works "$MUNGE_SOCKET"; then
      pid=$(cat "$mdir/munged.pid" 2>/dev/null || true)
      break
    fi
    sleep 0.1
  done
  [[ -n "$pid" ]] || { cat "$mdir/munged.log" >&2 2>/dev/null || true; die "munged started but does not answer"; }
  echo "$pid" >"$dir/munged.pid"
  say "started munged (pid $pid, socket $MUNGE_SOCKET)"
}

# a TCP port nobody listens on, from a range unlikely to be used by anything else
free_port() {
  local used p i
  used=$(ss -Htan 2>/dev/null | awk '{ n = split($4, a, ":"); print a[n] }' | sort -u)
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 20000))
    grep -qx "$p" <<<"$used" && continue
    grep -qx "$p" <<<"${TAKEN_PORTS:-}" && continue
    TAKEN_PORTS="${TAKEN_PORTS:-}"$'\n'"$p"
    echo "$p"
    return 0
  done
  die "no free TCP port found"
}

# write_conf DIR CTLD_NAME CTLD_ADDR NODE=ADDR...: DIR/slurm.conf for slurmctld on CTLD_NAME
# (reached at CTLD_ADDR) and one slurmd per NODE at ADDR, all with the same CPUs and topology
# (every node is this machine: one host, or one network namespace of it per node)
write_conf() {
  local dir="$1" ctld_name="$2" ctld_addr="$3"; shift 3
  local cpus="${VERA_SLURM_CPUS:-2}" sockets cores threads
  # real topology from slurmd -C (what slurmd will report; a mismatch would drain the node)
  local c
  c=$(slurmd -C 2>/dev/null | head -n 1 || true)
  sockets=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$c")
  cores=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$c")
  threads=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$c")
  if [[ -z "$sockets" || -z "$cores" || -z "$threads" ]]; then
    sockets=$(lscpu | awk -F: '/^Socket\(s\)/ { gsub(/ /, "", $2); print $2 }')
    cores=$(lscpu | awk -F: '/^Core\(s\) per socket/ { gsub(/ /, "", $2); print $2 }')
    threads=$(lscpu | awk -F: '/^Thread\(s\) per core/ { gsub(/ /, "", $2); print $2 }')
  fi
  [[ -n "$sockets" && -n "$cores" && -n "$threads" ]] || die "could not read the CPU topology (slurmd -C, lscpu)"
  # CPUs must match sockets*cores*threads for slurmd; only lower it when the machine has more
  local real=$((sockets * cores * threads))
  [[ $cpus -le $real ]] || cpus=$real
  local nodeopts="CPUs=$cpus"
  [[ $cpus -eq $real ]] && nodeopts+=" Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads"
  local gpus="${VERA_SLURM_GPUS:-0}" gresline="" i
  if ((gpus > 0)); then
    # slurmd drops GPUs whose device files do not exist: fake ones (the /dev/null device)
    mkdir -p "$dir/dev"
    for ((i = 0; i < gpus; i++)); do
      [[ -e "$dir/dev/nvidia$i" ]] || mknod "$dir/dev/nvidia$i" c 1 3 2>/dev/null ||
        { say "warning: cannot create fake GPU devices (mknod): no GPUs in this cluster"; gpus=0; break; }
    done
  fi
  if ((gpus > 0)); then
    echo "Name=gpu File=$dir/dev/nvidia[0-$((gpus - 1))]" >"$dir/gres.conf"
    nodeopts+=" Gres=gpu:$gpus"
    gresline="GresTypes=gpu"
  fi
  local ctld_port slurmd_port
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  # one line per node; NodeHostname is what slurmd -N NAME answers to, NodeAddr where it listens
  local nodelines="" names="" spec
  for spec in "$@"; do
    nodelines+="NodeName=${spec%%=*} NodeHostname=${spec%%=*} NodeAddr=${spec#*=} $nodeopts State=UNKNOWN"$'\n'
    names+="${names:+,}${spec%%=*}"
    mkdir -p "$dir/spool/${spec%%=*}" "$dir/tmp/${spec%%=*}"
  done
  mkdir -p "$dir/state"
  # every task's TMPDIR on its own node (Open MPI keeps its session files there): the nodes share
  # this machine's /tmp, and the TMPDIR a submission passes on would be the same on every node
  cat >"$dir/task_prolog.sh" <<EOF
#!/bin/sh
echo "export TMPDIR=$dir/tmp/\$SLURMD_NODENAME"
EOF
  chmod 755 "$dir/task_prolog.sh"
  cat >"$dir/slurm.conf" <<EOF
# private test cluster written by tests/slurm/cluster.sh
ClusterName=veratest
SlurmctldHost=$ctld_name($ctld_addr)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# this cluster's own munged; the step credential lifetime is also how long a requeued job
# waits before it may start again (default 120 s): short, so a requeue test does not sit idle
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=${VERA_SLURM_CRED_EXPIRE:-5}
StateSaveLocation=$dir/state
# per node (%n: the node's name), since several slurmd may share this machine and directory
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pidfile
SlurmdPidFile=$dir/slurmd.%n.pidfile
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.%n.log
# the node's temporary space; srun --mpi=pmix puts each step's PMIx directory there
TmpFS=$dir/tmp/%n
TaskProlog=$dir/task_prolog.sh
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
# look at pending jobs every second (defaults: 60 s / 30 s), so a requeued job starts as soon
# as its requeue delay has passed
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmix
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# fast turn-around for tests: short grace between SIGTERM and SIGKILL, requeue allowed
KillWait=5
JobRequeue=1
MinJobAge=600
InactiveLimit=0
$gresline
${nodelines}PartitionName=test Nodes=$names Default=YES MaxTime=INFINITE State=UP
EOF
}

# start one daemon with setsid in the background; records its PID in DIR/NAME.pid
start_daemon() {
  local dir="$1" name="$2"; shift 2
  # a script has no job control, so the background child is not a group leader and setsid
  # execs in place: $! is the daemon itself
  SLURM_CONF="$dir/slurm.conf" setsid "$@" </dev/null >"$dir/$name.out" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/$name.pid"
  sleep 0.2
  kill -0 "$pid" 2>/dev/null || { cat "$dir/$name.out" "$dir/$name.log" >&2 2>/dev/null || true; die "$name exited at once"; }
  say "started $name (pid $pid)"
}

# ---- nodes: this host alone, or VERA_SLURM_NODES network namespaces ---------------------------
# With VERA_SLURM_NODES >= 2 the nodes come from the multi-node harness (tests/multinode/lib.sh:
# one network namespace, hostname and address per node on a bridge of their own; nothing is
# added to the host's network). slurmctld runs in node 0, which is also the login node: Slurm
# commands must run in a node (`cluster.sh exec DIR CMD...` runs them in node 0).
# DIR/nodes lists "NAME ADDR" per node; DIR/mn.env keeps the harness's MN_* variables.
MN_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/multinode/lib.sh"

mn_load() { # DIR: the harness's functions and this cluster's MN_* variables
  # shellcheck disable=SC1090
  source "$MN_LIB"
  # shellcheck disable=SC1091
  source "$1/mn.env"
}

# node_daemon K CMD...: exec CMD in node K: its network namespace and hostname, its TMPDIR.
# Entered with nsenter, not mn_exec's `ip netns exec`: that mounts a fresh /sys without the
# cgroup hierarchies that slurmd 22.05 refuses to start without (mn_enter in lib.sh).
node_daemon() {
  local k="$1"; shift
  mn_enter "$k" nsenter || exit
  exec "${MN_ENTER[@]}" "$@"
}

# cmd_exec DIR CMD...: CMD with this cluster's SLURM_CONF on its login node (node 0 of the
# namespaces; with one node, here)
cmd_exec() {
  local dir="${1:?usage: cluster.sh exec DIR CMD...}"; shift
  [[ -f "$dir/slurm.conf" ]] || die "$dir/slurm.conf: not a cluster directory"
  export SLURM_CONF="$dir/slurm.conf"
  if [[ -f "$dir/mn.env" ]]; then
    mn_load "$dir"
    mn_exec 0 "$@"
  else
    exec "$@"
  fi
}

cmd_start() {
  need_root
  local dir="${1:-}"
  local nnodes="${VERA_SLURM_NODES:-1}"
  [[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || die "VERA_SLURM_NODES=$nnodes: expected a number of nodes >= 1"
  ((nnodes == 1)) || [[ -f "$MN_LIB" ]] || die "VERA_SLURM_NODES=$nnodes needs the multi-node harness $MN_LIB"
  if [[ -z "$dir" ]]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/vera-slurm.XXXXXX")
  else
    [[ ! -e "$dir/slurmctld.pid" ]] || die "$dir already holds a cluster (stop it first)"
    # stop (also after a failed start) removes DIR: never take a directory that holds anything
    [[ ! -e "$dir" || -z "$(ls -A "$dir" 2>/dev/null)" ]] || die "$dir exists and is not empty (give a new or empty directory)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
  fi
  install_if_missing
  # whatever fails from here on, stop what was started (daemons, namespaces): nothing is left
  # shellcheck disable=SC2064  # (expanded now: dir is local)
  trap "cmd_stop $(printf %q "$dir") >/dev/null 2>&1 || true" EXIT
  local k name addr
  if ((nnodes == 1)); then
    # the classic test cluster: this host is the node and the controller, on loopback
    echo "$(hostname -s) 127.0.0.1" >"$dir/nodes"
  else
    # shellcheck disable=SC1090
    source "$MN_LIB"
    # no harness trap (this process ends, the cluster lives on); cmd_stop removes the nodes
    MN_KEEP=1 mn_up "$nnodes" || die "could not make $nnodes nodes (tests/multinode/lib.sh mn_up)"
    local v
    for v in MN_PREFIX MN_DIR MN_NODES MN_SUBNET MN_HOSTFILE MN_IF; do
      printf 'export %s=%q\n' "$v" "${!v}"
    done >"$dir/mn.env"
    for ((k = 0; k < nnodes; k++)); do echo "$(mn_host "$k") $(mn_addr "$k")"; done >"$dir/nodes"
  fi
  local -a specs=()
  while read -r name addr; do specs+=("$name=$addr"); done <"$dir/nodes"
  start_munge "$dir"
  # the controller runs on the first node (the login node)
  write_conf "$dir" "${specs[0]%%=*}" "${specs[0]#*=}" "${specs[@]}"
  export SLURM_CONF="$dir/slurm.conf"
  if [[ -f "$dir/mn.env" ]]; then
    start_daemon "$dir" slurmctld bash "$0" node-daemon "$dir" 0 slurmctld -D -i
    # the harness sweeps away (mn_sweep: every process in the nodes, then the namespaces) a
    # cluster whose owner has died: the caller's VERA_SLURM_OWNER, else slurmctld
    echo "${VERA_SLURM_OWNER:-$(cat "$dir/slurmctld.pid")}" >"$MN_DIR/owner"
    k=0
    while read -r name addr; do
      start_daemon "$dir" "slurmd.$name" bash "$0" node-daemon "$dir" "$k" slurmd -D -N "$name"
      k=$((k + 1))
    done <"$dir/nodes"
  else
    start_daemon "$dir" slurmctld slurmctld -D -i
    start_daemon "$dir" "slurmd.${specs[0]%%=*}" slurmd -D -N "${specs[0]%%=*}"
  fi
  local timeout="${VERA_SLURM_START_TIMEOUT:-60}" t0=$SECONDS st="" f n
  while ((SECONDS - t0 < timeout)); do
    st=$(bash "$0" exec "$dir" sinfo -h -N -o %T 2>/dev/null | sort -u | tr '\n' ' ' || true)
    [[ "$st" == "idle " ]] && break
    for f in "$dir"/slurmctld.pid "$dir"/slurmd.*.pid; do
      n=$(basename "$f" .pid)
      kill -0 "$(cat "$f")" 2>/dev/null ||
        { tail -n 30 "$dir/$n.log" "$dir/$n.out" >&2 2>/dev/null || true; die "$n died while starting"; }
    done
    sleep 0.2
  done
  if [[ "$st" != "idle " ]]; then
    say "node states '${st:-unknown}' after ${timeout}s; logs:"
    tail -n 30 "$dir/slurmctld.log" "$dir"/slurmd.*.log >&2 2>/dev/null || true
    die "the nodes did not become idle within ${timeout}s"
  fi
  trap - EXIT
  say "$nnodes node(s) $(cut -d' ' -f1 "$dir/nodes" | paste -sd,) idle after $((SECONDS - t0)) s; SLURM_CONF=$dir/slurm.conf"
  echo "$dir"
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

cmd_status() {
  local dir="${1:?usage: cluster.sh status DIR}" n rc=0 name addr
  local -a daemons=(munged slurmctld)
  if [[ -f "$dir/nodes" ]]; then
    while read -r name addr; do daemons+=("slurmd.$name"); done <"$dir/nodes"
  fi
  for n in "${daemons[@]}"; do
    if [[ -f "$dir/$n.pid" ]]; then
      if alive "$dir/$n.pid"; then echo "$n: running (pid $(cat "$dir/$n.pid"))"; else echo "$n: dead"; rc=1; fi
    else
      echo "$n: not started"; rc=1
    fi
  done
  if [[ -f "$dir/slurm.conf" ]]; then
    bash "$0" exec "$dir" sinfo -N 2>&1 || rc=1
    bash "$0" exec "$dir" squeue 2>&1 || true
  fi
  return $rc
}

# stop_pids PIDFILE...: TERM to each recorded PID at once, wait up to 10 s, then KILL; only
# the PIDs recorded in those files (the daemons are not our children: poll, do not wait)
stop_pids() {
  local f pid i left
  local -a pids=() names=()
  for f in "$@"; do
    [[ -f "$f" ]] || continue
    pid=$(cat "$f")
    rm -f "$f"
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid"); names+=("$(basename "$f" .pid)")
  done
  [[ ${#pids[@]} -gt 0 ]] || return 0
  for ((i = 0; i < 100; i++)); do
    left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; done
  for ((i = 0; i < 25; i++)); do
    left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do say "stopped ${names[$i]} (pid ${pids[$i]})"; done
}

cmd_stop() {
  local dir="${1:?usage: cluster.sh stop DIR}"
  [[ -d "$dir" ]] || return 0
  [[ -f "$dir/slurm.conf" || -f "$dir/slurmctld.pid" || -f "$dir/nodes" ]] || die "$dir does not look like a cluster directory"
  export SLURM_CONF="$dir/slurm.conf"
  local name addr f k pids
  local -a slurmds=()
  for f in "$dir"/slurmd.*.pid; do [[ -f "$f" ]] && slurmds+=("$f"); done
  if alive "$dir/slurmctld.pid" && ((${#slurmds[@]} > 0)); then
    # end the jobs still in this private cluster, then any step processes a slurmd still knows
    local i jobs
    jobs=$(bash "$0" exec "$dir" squeue -h -o %i </dev/null 2>/dev/null || true)
    if [[ -n "$jobs" ]]; then
      say "cancelling jobs left in the cluster: $(tr '\n' ' ' <<<"$jobs")"
      # shellcheck disable=SC2086
      bash "$0" exec "$dir" scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        [[ -z "$(bash "$0" exec "$dir" squeue -h -o %i 2>/dev/null || true)" ]] && break
        sleep 0.2
      done
    fi
    # scontrol listpids asks the slurmd of the node it runs on
    k=0
    while read -r name addr; do
      if alive "$dir/slurmd.$name.pid"; then
        if [[ -f "$dir/mn.env" ]]; then
          pids=$( (mn_load "$dir" && mn_exec "$k" scontrol listpids) </dev/null 2>/dev/null || true)
        else
          pids=$(scontrol listpids </dev/null 2>/dev/null || true)
        fi
        # shellcheck disable=SC2013  # (one PID per word)
        for pid in $(awk 'NR > 1 && $1 ~ /^[0-9]+$/ { print $1 }' <<<"$pids"); do kill -KILL "$pid" 2>/dev/null || true; done
      fi
      k=$((k + 1))
    done <"$dir/nodes"
  fi
  stop_pids "${slurmds[@]}" "$dir/slurmctld.pid"
  # the nodes (namespaces) after their daemons; mn_down also ends anything still running in them
  if [[ -f "$dir/mn.env" ]]; then
    (mn_load "$dir" && mn_down "$MN_PREFIX") || say "warning: tests/multinode/lib.sh mn_down failed"
  fi
  # munged last: the Slurm daemons talk to it while stopping
  stop_pids "$dir/munged.pid"
  if [[ -f "$dir/munge.dir" ]]; then
    local mdir
    mdir=$(cat "$dir/munge.dir")
    [[ "$mdir" == /run/munge/vera.* ]] && rm -rf "$mdir"
    rm -f "$dir/munge.dir"
  fi
  if [[ "${VERA_KEEP_TMP:-0}" == 1 ]]; then
    say "kept $dir"
  else
    rm -rf "$dir"
  fi
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  exec) shift; cmd_exec "$@" ;;
  # internal: how start_daemon enters a node
  node-daemon) shift; mn_load "$1"; shift; node_daemon "$@" ;;
  *) usage ;;
esac
