#!/usr/bin/env bash
# cluster.sh: a real single-node Slurm cluster on loopback, for tests.
#
#   DIR=$(bash tests/slurm/cluster.sh start [DIR])   # prints the state directory (only that, on stdout)
#   export SLURM_CONF=$DIR/slurm.conf                # then sbatch / srun / squeue / scontrol work
#   bash tests/slurm/cluster.sh status DIR
#   bash tests/slurm/cluster.sh stop DIR             # kills exactly the daemons start started, removes DIR
#
# What start does (Debian 12, run as root; see ../shared/design/platform-notes.md):
#   * installs slurm-wlm and munge with apt-get when they are missing;
#   * starts a private munged as the munge user on its own socket (/run/munge/vera.*; Slurm
#     gets it with AuthInfo=socket=...), so a system munged or another test cluster is never
#     shared or stopped; its PID is recorded like the daemons';
#   * writes a private slurm.conf into DIR (nothing in /etc changes): the node is `hostname -s`
#     at 127.0.0.1 with CPUs=2 and the real socket/core counts, cons_tres + CR_Core,
#     proctrack/linuxproc, task/none, MpiDefault=pmix, no accounting, JobRequeue=1, a short
#     KillWait, free TCP ports for slurmctld and slurmd (so it never collides with a system
#     Slurm or another test cluster);
#   * starts `slurmctld -D -i` and `slurmd -D` with setsid in the background, records their PIDs
#     in DIR, and waits (bounded) until sinfo reports the node idle.
# Logs: DIR/slurmctld.log, DIR/slurmd.log (DIR/*.out hold the daemons' own stdout/stderr).
# Environment: VERA_SLURM_START_TIMEOUT (seconds to wait for an idle node, default 60),
#              VERA_SLURM_CPUS (CPUs of the node, default 2),
#              VERA_SLURM_CRED_EXPIRE (credential lifetime = requeue delay in seconds, default 5),
#              VERA_SLURM_GPUS=N (default 0): N fake GPUs (character devices DIR/dev/nvidia0..N-1
#              named in gres.conf, GresTypes=gpu) so --gpus-per-node jobs schedule and see
#              CUDA_VISIBLE_DEVICES; there is no real GPU behind them.
set -euo pipefail

say() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }

usage() { sed -n '2,8p' "$0" >&2; exit 2; }

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
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --pid-file="$mdir/munged.pid" \
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

write_conf() {
  local dir="$1" host="$2"
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
  local nodeline="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus"
  [[ $cpus -eq $real ]] && nodeline+=" Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads"
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
    nodeline+=" Gres=gpu:$gpus"
    gresline="GresTypes=gpu"
  fi
  local ctld_port slurmd_port
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  mkdir -p "$dir/state" "$dir/spool"
  cat >"$dir/slurm.conf" <<EOF
# private test cluster written by tests/slurm/cluster.sh
ClusterName=veratest
SlurmctldHost=$host(127.0.0.1)
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
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pidfile
SlurmdPidFile=$dir/slurmd.pidfile
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
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
$nodeline State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
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

cmd_start() {
  need_root
  local dir="${1:-}"
  if [[ -z "$dir" ]]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/vera-slurm.XXXXXX")
  else
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
  fi
  [[ ! -e "$dir/slurmctld.pid" ]] || die "$dir already holds a cluster (stop it first)"
  install_if_missing
  local host
  host=$(hostname -s)
  start_munge "$dir"
  write_conf "$dir" "$host"
  export SLURM_CONF="$dir/slurm.conf"
  start_daemon "$dir" slurmctld slurmctld -D -i
  start_daemon "$dir" slurmd slurmd -D
  local timeout="${VERA_SLURM_START_TIMEOUT:-60}" t0=$SECONDS st=""
  while ((SECONDS - t0 < timeout)); do
    st=$(sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n 1 || true)
    [[ "$st" == idle ]] && break
    for n in slurmctld slurmd; do
      kill -0 "$(cat "$dir/$n.pid")" 2>/dev/null ||
        { tail -n 30 "$dir/$n.log" "$dir/$n.out" >&2 2>/dev/null || true; cmd_stop "$dir" >/dev/null 2>&1 || true; die "$n died while starting"; }
    done
    sleep 0.2
  done
  if [[ "$st" != idle ]]; then
    say "node state '${st:-unknown}' after ${timeout}s; logs:"
    tail -n 30 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 2>/dev/null || true
    cmd_stop "$dir" >/dev/null 2>&1 || true
    die "the node did not become idle within ${timeout}s"
  fi
  say "node $host idle after $((SECONDS - t0)) s; SLURM_CONF=$dir/slurm.conf"
  echo "$dir"
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

cmd_status() {
  local dir="${1:?usage: cluster.sh status DIR}" n rc=0
  for n in munged slurmctld slurmd; do
    if [[ -f "$dir/$n.pid" ]]; then
      if alive "$dir/$n.pid"; then echo "$n: running (pid $(cat "$dir/$n.pid"))"; else echo "$n: dead"; rc=1; fi
    else
      echo "$n: not started"; rc=1
    fi
  done
  if [[ -f "$dir/slurm.conf" ]]; then
    SLURM_CONF="$dir/slurm.conf" sinfo -N 2>&1 || rc=1
    SLURM_CONF="$dir/slurm.conf" squeue 2>&1 || true
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
  [[ -f "$dir/slurm.conf" || -f "$dir/slurmctld.pid" ]] || die "$dir does not look like a cluster directory"
  export SLURM_CONF="$dir/slurm.conf"
  if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid"; then
    # end the jobs still in this private cluster, then any step processes slurmd still knows
    local i jobs pids
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n "$jobs" ]]; then
      say "cancelling jobs left in the cluster: $(tr '\n' ' ' <<<"$jobs")"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        [[ -z "$(squeue -h -o %i 2>/dev/null || true)" ]] && break
        sleep 0.2
      done
    fi
    pids=$(scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ { print $1 }' || true)
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  stop_pids "$dir/slurmd.pid" "$dir/slurmctld.pid"
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
  *) usage ;;
esac
