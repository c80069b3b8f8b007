#!/usr/bin/env bash
# shellcheck shell=bash
# tests/multinode/lib.sh: "nodes" as network namespaces on one host, for multi-node tests.
#
# Sourced by tests (bash; needs root and `ip netns`), or run as a command:
#   lib.sh up N          make N nodes; prints the export lines for MN_PREFIX / MN_DIR / ...
#                        (the nodes stay until `lib.sh down`)
#   lib.sh down [PREFIX] remove the cluster PREFIX, or without PREFIX every cluster of this
#                        harness whose owner is gone or that `lib.sh up` made
#   lib.sh exec K CMD... run CMD inside node K of the cluster in $MN_PREFIX
#   lib.sh mpirun RPN -- CMD...   mn_mpirun (below) on the cluster in $MN_PREFIX
#
# Layout (one cluster = one prefix, vdmn<pid of the creator>, so parallel runs never collide):
#   PREFIX-sw          the "switch": a namespace holding bridge `br0` and one port `pK` per node.
#                      The bridge lives in its own namespace, not in the root one, so the harness
#                      never adds a link, address or route to the host: nothing it does can reach
#                      or disturb the host's interfaces, firewall or another helper's cluster, and
#                      deleting the namespaces removes every link at once.
#   PREFIX-nK          node K (K = 0..N-1): interface $MN_IF (veth, peer = pK on the bridge) with
#                      address 10.213.X.(K+1)/24 (X from the pid: a subnet that exists only inside
#                      this cluster), `lo` up. Its hostname is its namespace name (unshare --uts
#                      at each entry); /etc/netns/PREFIX-nK/hosts (which `ip netns exec`
#                      bind-mounts over /etc/hosts) resolves every node name; TMPDIR is
#                      $MN_DIR/nK-tmp so nodes do not share Open MPI's session directories.
#   $MN_DIR            /tmp/PREFIX: hostfile, owner file, per-node TMPDIRs.
#
# Functions (all return non-zero with a one-line "mn: ..." message on stderr on failure; safe
# to call under set -euo pipefail):
#   mn_require          exit 77 (skip) with a message unless root and `ip netns` works
#   mn_up N             make the cluster; sets MN_PREFIX, MN_DIR, MN_NODES, MN_SUBNET, MN_HOSTFILE;
#                       installs an EXIT/INT/TERM trap that runs mn_down (chained before any EXIT
#                       trap already set, e.g. common.sh's temp-dir cleanup); first removes stale
#                       clusters of this harness whose creator is dead (mn_sweep). Call it in the
#                       test's own shell, not in a ( subshell ): a subshell lists its parent's
#                       EXIT trap, which mn_up would then run when the subshell ends
#                       (one cluster per process: the prefix is the shell's pid)
#   mn_down [PREFIX]    kill every process in the cluster's namespaces (TERM, CONT, then KILL),
#                       delete the namespaces, /etc/netns entries and $MN_DIR
#   mn_sweep            mn_down for every cluster whose creator process is gone
#   mn_leftovers [PREFIX] print what is left of PREFIX (namespaces, links named after it in the
#                       root namespace, /etc/netns entries, state dir); prints nothing when clean
#   mn_ns K / mn_host K / mn_addr K   namespace, hostname, address of node K
#   mn_enter K [HOW]    set the array MN_ENTER to the words that run a command in node K (append
#                       CMD): its network namespace, a fresh UTS namespace with its hostname, its
#                       TMPDIR; each word execs the next, so `exec "${MN_ENTER[@]}" CMD` makes CMD
#                       the caller's own process. HOW: netns (default) is `ip netns exec`, which
#                       also bind-mounts /etc/netns/NS/hosts (every node name resolves) and mounts
#                       a fresh /sys; nsenter is `nsenter --net`, the network namespace alone, the
#                       host's mounts kept (slurmd needs the cgroup hierarchies a fresh /sys lacks)
#   mn_exec K CMD...    run CMD in node K (mn_enter K netns); exit code of CMD
#   mn_mpirun RPN -- CMD...  mpirun inside node 0 launching RPN ranks on each node (N*RPN in all,
#                       by slot: ranks K*RPN..K*RPN+RPN-1 on node K; N = $MN_USE_NODES if set,
#                       nodes 0..N-1, else all) through agent.sh;
#                       TCP between nodes, shared memory inside a node. Under `timeout -k 5
#                       $MN_TIMEOUT`; returns mpirun's exit code (124 = timed out)
#   mn_shape RATE       tbf at RATE (tc syntax: 10gbit, 1gbit, 100mbit, 10mbit) on both directions
#                       of every node's link (node egress on $MN_IF, switch egress on pK)
#   mn_unshape          remove the shaping
#   mn_link_down K / mn_link_up K   take node K's switch port down / up (a pulled cable)
#   mn_link_bytes K     "RX TX" byte counters of node K's $MN_IF (what left / reached the node)
#
# Environment:
#   MN_IF        interface name inside each node (default vdmn0)
#   MN_MPIRUN    the mpirun to use (default $VERA_MPIRUN, else mpirun)
#   MN_TIMEOUT   seconds before mn_mpirun is killed (default 300)
#   MN_USE_NODES how many of the nodes (0..N-1) mn_mpirun uses (default all MN_NODES)
#   MN_MPIRUN_ARGS  extra mpirun arguments (word-split), e.g. "--mca btl_base_verbose 30"
#   MN_FORWARD   env vars forwarded to every rank with -x (default: OMP_NUM_THREADS
#                OPENBLAS_NUM_THREADS OPENBLAS_CORETYPE ASAN_OPTIONS, those that are set)
#   MN_KEEP=1    do not tear the cluster down at exit (debugging; remove with `lib.sh down`)
# Set by mn_up: MN_PREFIX, MN_DIR, MN_NODES, MN_SUBNET (e.g. 10.213.57.0/24), MN_HOSTFILE.

MN_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MN_IF="${MN_IF:-vdmn0}"
MN_STATE_ROOT=/tmp # state dirs are /tmp/vdmn<pid>: one fixed place, so any run can sweep them

mn__err() { echo "mn: $*" >&2; }

# Runs a command; on failure prints "mn: CONTEXT failed: CMD" and returns its code.
mn__do() {
  local rc=0
  "$@" || rc=$?
  [[ $rc -eq 0 ]] || mn__err "command failed (exit $rc): $*"
  return $rc
}

mn_require() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP: the multi-node harness needs root (network namespaces)"; exit 77
  fi
  command -v ip >/dev/null 2>&1 || { echo "SKIP: no 'ip' command (iproute2)"; exit 77; }
  local probe="vdmnprobe$$"
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "SKIP: 'ip netns add' is not possible here"; exit 77
  fi
  ip netns del "$probe" || { mn__err "cannot delete probe namespace $probe"; exit 1; }
}

mn_ns() { echo "${MN_PREFIX:?mn: MN_PREFIX not set (mn_up first)}-n$1"; }
mn_host() { mn_ns "$1"; }
mn_addr() { echo "${MN_SUBNET%.0/24}.$(($1 + 1))"; }

mn_up() {
  local n="${1:?usage: mn_up N}"
  [[ "$n" =~ ^[0-9]+$ && $n -ge 1 && $n -le 200 ]] || { mn__err "mn_up: N must be 1..200, got '$n'"; return 2; }
  mn_sweep
  MN_PREFIX="vdmn$$"
  MN_DIR="$MN_STATE_ROOT/$MN_PREFIX"
  MN_NODES="$n"
  MN_SUBNET="10.213.$(($$ % 254 + 1)).0/24"
  MN_HOSTFILE="$MN_DIR/hostfile"
  export MN_PREFIX MN_DIR MN_NODES MN_SUBNET MN_HOSTFILE MN_IF
  if [[ "${MN_KEEP:-0}" != 1 ]]; then mn__install_trap; fi
  mkdir -p "$MN_DIR" || { mn__err "cannot create $MN_DIR"; return 1; }
  echo "$$" >"$MN_DIR/owner" || { mn__err "cannot write $MN_DIR/owner"; return 1; }
  local sw="$MN_PREFIX-sw" k ns
  mn__do ip netns add "$sw" || return 1
  mn__do ip -n "$sw" link add br0 type bridge forward_delay 0 stp_state 0 || return 1
  mn__do ip -n "$sw" link set br0 up || return 1
  local hosts="127.0.0.1 localhost"$'\n'
  for ((k = 0; k < n; k++)); do hosts+="$(mn_addr "$k") $(mn_host "$k")"$'\n'; done
  : >"$MN_HOSTFILE" || { mn__err "cannot write $MN_HOSTFILE"; return 1; }
  for ((k = 0; k < n; k++)); do
    ns="$(mn_ns "$k")"
    mn__do ip netns add "$ns" || return 1
    # the pair is created directly in the two namespaces: no link ever appears in the root one
    mn__do ip link add "$MN_IF" netns "$ns" type veth peer name "p$k" netns "$sw" || return 1
    mn__do ip -n "$ns" addr add "$(mn_addr "$k")/24" dev "$MN_IF" || return 1
    mn__do ip -n "$ns" link set lo up || return 1
    mn__do ip -n "$ns" link set "$MN_IF" up || return 1
    mn__do ip -n "$sw" link set "p$k" master br0 up || return 1
    mkdir -p "/etc/netns/$ns" "$MN_DIR/n$k-tmp" || { mn__err "cannot create /etc/netns/$ns"; return 1; }
    printf '%s' "$hosts" >"/etc/netns/$ns/hosts" || { mn__err "cannot write /etc/netns/$ns/hosts"; return 1; }
    echo "$(mn_host "$k") slots=0" >>"$MN_HOSTFILE"  # slots rewritten by mn_mpirun
  done
  # no ping on this host: wait until every link is up and every bridge port forwards instead
  for ((k = 0; k < n; k++)); do
    mn__wait_link "$k" || return 1
  done
}

# Node K's link is usable: its interface is operationally up and its bridge port forwards.
mn__wait_link() {
  local k="$1" i state oper
  for ((i = 0; i < 50; i++)); do
    oper="$(ip netns exec "$(mn_ns "$k")" cat "/sys/class/net/$MN_IF/operstate" 2>/dev/null || true)"
    state="$(ip netns exec "$MN_PREFIX-sw" cat "/sys/class/net/p$k/brport/state" 2>/dev/null || true)"
    [[ "$oper" == up && "$state" == 3 ]] && return 0 # 3 = BR_STATE_FORWARDING
    sleep 0.1
  done
  mn__err "node $k's link is not up after 5 s (operstate '$oper', bridge port state '$state')"
  return 1
}

# EXIT runs mn_down, then whatever EXIT trap was there before (keeping the exit code);
# INT and TERM exit, which runs the EXIT trap.
mn__install_trap() {
  MN__PREV_EXIT_TRAP="$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT\$//" -e "s/'\\\\''/'/g")"
  trap 'mn__on_exit' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
mn__on_exit() {
  local rc=$?
  set +e # a failing step of the cleanup must not end it (the caller may run under set -e)
  trap - EXIT
  mn_down "$MN_PREFIX" || rc=1
  local left
  left="$(mn_leftovers "$MN_PREFIX")"
  if [[ -n "$left" ]]; then mn__err "left behind after cleanup: $left"; rc=1; fi
  if [[ -n "${MN__PREV_EXIT_TRAP:-}" ]]; then
    (exit "$rc")
    eval "$MN__PREV_EXIT_TRAP"
  fi
  exit "$rc"
}

mn_down() {
  local prefix="${1:-${MN_PREFIX:-}}"
  [[ "$prefix" =~ ^vdmn[0-9]+$ ]] || { mn__err "mn_down: not a harness prefix: '$prefix'"; return 2; }
  local ns nss pids rc=0 i
  nss="$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$prefix-(n[0-9]+|sw)\$" || true)"
  # every process in a node (mpirun, orted, ranks, whatever a test started there), stopped ones too
  pids="$(for ns in $nss; do ip netns pids "$ns" 2>/dev/null; done | sort -u)"
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086 # one pid per word
    { kill -TERM $pids; kill -CONT $pids; } 2>/dev/null || true # some may be gone already
    for ((i = 0; i < 30; i++)); do
      pids="$(for ns in $nss; do ip netns pids "$ns" 2>/dev/null; done | sort -u)"
      [[ -z "$pids" ]] && break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    if [[ -n "$pids" ]]; then kill -KILL $pids 2>/dev/null || true; fi
    for ((i = 0; i < 30; i++)); do
      pids="$(for ns in $nss; do ip netns pids "$ns" 2>/dev/null; done | sort -u)"
      [[ -z "$pids" ]] && break
      sleep 0.1
    done
    [[ -z "$pids" ]] || { mn__err "processes survive SIGKILL in $prefix: $pids"; rc=1; }
  fi
  for ns in $nss; do
    ip netns del "$ns" || { mn__err "cannot delete namespace $ns"; rc=1; }
    [[ -d "/etc/netns/$ns" ]] && { rm -rf "/etc/netns/$ns" || rc=1; }
  done
  # entries without a namespace (a crash between the two), then /etc/netns itself if now empty
  rm -rf "/etc/netns/$prefix-"*
  rmdir /etc/netns 2>/dev/null || true # not empty: others' entries
  rm -rf "${MN_STATE_ROOT:?}/$prefix"
  return $rc
}

# The prefixes of every cluster of this harness on the host (namespaces, /etc/netns, state dirs).
mn__prefixes() {
  {
    ip netns list 2>/dev/null | awk '{print $1}'
    ls /etc/netns 2>/dev/null || true
    ls "$MN_STATE_ROOT" 2>/dev/null || true
  } | sed -n -E 's/^(vdmn[0-9]+)(-.*)?$/\1/p' | sort -u
}

# A cluster is stale when its creator (the pid in its owner file, else in its prefix) is dead.
# Clusters made by `lib.sh up` (owner "cli") are only removed by `lib.sh down`.
mn__owner_alive() {
  local prefix="$1" owner
  owner="$(cat "$MN_STATE_ROOT/$prefix/owner" 2>/dev/null || echo "${prefix#vdmn}")"
  [[ "$owner" == cli ]] && return 0
  kill -0 "$owner" 2>/dev/null
}

mn_sweep() {
  local p
  for p in $(mn__prefixes); do
    [[ "$p" == "${MN_PREFIX:-}" ]] && continue
    if ! mn__owner_alive "$p"; then
      echo "mn: removing stale cluster $p (its creator is gone)" >&2
      mn_down "$p" || true
    fi
  done
}

mn_leftovers() {
  local prefix="${1:-$MN_PREFIX}" out=""
  out+="$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$prefix-" | tr '\n' ' ' || true)"
  out+="$(ip -o link 2>/dev/null | grep -F "$prefix" | awk -F': ' '{print "link:" $2}' | tr '\n' ' ' || true)"
  out+="$(find /etc/netns -maxdepth 1 -name "$prefix-*" 2>/dev/null | tr '\n' ' ' || true)"
  [[ -e "$MN_STATE_ROOT/$prefix" ]] && out+="$MN_STATE_ROOT/$prefix"
  echo -n "$out"
}

mn_enter() {
  local k="${1:?usage: mn_enter K [netns|nsenter]}" how="${2:-netns}" ns
  ns="$(mn_ns "$k")"
  [[ -e "/run/netns/$ns" ]] || { mn__err "no node $k in cluster $MN_PREFIX"; return 2; }
  MN_ENTER=(env "TMPDIR=$MN_DIR/n$k-tmp")
  case "$how" in
    netns) MN_ENTER+=(ip netns exec "$ns") ;;
    nsenter) MN_ENTER+=(nsenter --net="/run/netns/$ns") ;;
    *) mn__err "mn_enter: how is netns or nsenter, got '$how'"; return 2 ;;
  esac
  # env, ip netns exec / nsenter, unshare and sh all exec: CMD keeps the pid the words started as
  # shellcheck disable=SC2016 # $0 and $@ belong to the inner sh
  MN_ENTER+=(unshare --uts -- sh -c 'hostname "$0" || exit 1; exec "$@"' "$(mn_host "$k")")
}

mn_exec() {
  local k="${1:?usage: mn_exec K CMD...}"; shift
  mn_enter "$k" netns || return
  "${MN_ENTER[@]}" "$@"
}

mn_mpirun() {
  local rpn="${1:?usage: mn_mpirun RANKS_PER_NODE -- CMD...}"; shift
  [[ "${1:-}" == -- ]] && shift
  [[ "$rpn" =~ ^[1-9][0-9]*$ ]] || { mn__err "mn_mpirun: ranks per node must be a positive integer, got '$rpn'"; return 2; }
  local k fwd=() v nodes="${MN_USE_NODES:-$MN_NODES}"
  [[ "$nodes" =~ ^[1-9][0-9]*$ && $nodes -le $MN_NODES ]] ||
    { mn__err "mn_mpirun: MN_USE_NODES must be 1..$MN_NODES, got '$nodes'"; return 2; }
  : >"$MN_HOSTFILE" || { mn__err "cannot write $MN_HOSTFILE"; return 1; }
  for ((k = 0; k < nodes; k++)); do echo "$(mn_host "$k") slots=$rpn" >>"$MN_HOSTFILE"; done
  for v in ${MN_FORWARD:-OMP_NUM_THREADS OPENBLAS_NUM_THREADS OPENBLAS_CORETYPE ASAN_OPTIONS}; do
    [[ -n "${!v:-}" ]] && fwd+=(-x "$v")
  done
  local mpirun="${MN_MPIRUN:-${VERA_MPIRUN:-mpirun}}"
  # in the background + wait: bash runs a trap only when its foreground command ends, but `wait`
  # returns at once, so a TERM/INT to the test cleans up now instead of after mpirun
  local rc=0
  # shellcheck disable=SC2086 # MN_MPIRUN_ARGS is word-split on purpose
  timeout -k 5 "${MN_TIMEOUT:-300}" bash "$MN_LIB_DIR/lib.sh" exec 0 \
    "$mpirun" --hostfile "$MN_HOSTFILE" -np $((rpn * nodes)) --map-by slot \
    --mca plm_rsh_agent "$MN_LIB_DIR/agent.sh" --mca plm_rsh_no_tree_spawn 1 \
    --mca pml ob1 --mca btl self,vader,tcp \
    --mca btl_tcp_if_include "$MN_SUBNET" --mca oob_tcp_if_include "$MN_SUBNET" \
    "${fwd[@]}" ${MN_MPIRUN_ARGS:-} "$@" <&0 &
  wait $! || rc=$?
  return $rc
}

mn_shape() {
  local rate="${1:?usage: mn_shape RATE (e.g. 100mbit)}" bps k
  bps="$(mn__rate_bps "$rate")" || return 2
  # burst: 1 ms of traffic, at least two full-size packets; queue: 0.5 s of traffic (64 KiB ..
  # 32 MiB) so TCP meets a slow link instead of drops (a drop costs a 200 ms retransmit timeout)
  local burst=$((bps / 8 / 1000)) limit=$((bps / 8 / 2))
  ((burst < 3200)) && burst=3200
  ((limit < 65536)) && limit=65536
  ((limit > 33554432)) && limit=33554432
  for ((k = 0; k < MN_NODES; k++)); do
    mn__do ip netns exec "$(mn_ns "$k")" tc qdisc replace dev "$MN_IF" root tbf rate "$rate" burst "$burst" limit "$limit" || return 1
    mn__do ip netns exec "$MN_PREFIX-sw" tc qdisc replace dev "p$k" root tbf rate "$rate" burst "$burst" limit "$limit" || return 1
  done
}

mn_unshape() {
  local k
  for ((k = 0; k < MN_NODES; k++)); do
    # "no qdisc" is not an error here: unshaped links stay unshaped
    ip netns exec "$(mn_ns "$k")" tc qdisc del dev "$MN_IF" root 2>/dev/null || true
    ip netns exec "$MN_PREFIX-sw" tc qdisc del dev "p$k" root 2>/dev/null || true
  done
  return 0
}

# bits per second of a tc rate: 10gbit, 1gbit, 100mbit, 10mbit, 500kbit, 1000bit
mn__rate_bps() {
  local r="$1"
  case "$r" in
    *gbit) echo $((${r%gbit} * 1000000000)) ;;
    *mbit) echo $((${r%mbit} * 1000000)) ;;
    *kbit) echo $((${r%kbit} * 1000)) ;;
    *bit) echo "${r%bit}" ;;
    *) mn__err "rate must be like 10gbit, 100mbit, 10mbit (tc syntax), got '$r'"; return 2 ;;
  esac
}

mn_link_down() { mn__do ip -n "$MN_PREFIX-sw" link set "p${1:?}" down; }
mn_link_up() { mn__do ip -n "$MN_PREFIX-sw" link set "p${1:?}" up; }

mn_link_bytes() {
  local d="/sys/class/net/$MN_IF/statistics"
  ip netns exec "$(mn_ns "${1:?}")" sh -c "echo \$(cat $d/rx_bytes) \$(cat $d/tx_bytes)"
}

# ---- command-line use ----
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -uo pipefail
  case "${1:-}" in
    up)
      MN_KEEP=1
      mn_up "${2:?usage: lib.sh up N}" || { mn_down "$MN_PREFIX"; exit 1; }
      echo cli >"$MN_DIR/owner"
      echo "export MN_PREFIX=$MN_PREFIX MN_DIR=$MN_DIR MN_NODES=$MN_NODES MN_SUBNET=$MN_SUBNET MN_HOSTFILE=$MN_HOSTFILE MN_IF=$MN_IF"
      ;;
    down)
      if [[ -n "${2:-}" ]]; then mn_down "$2"; exit; fi
      rc=0
      for p in $(mn__prefixes); do
        if [[ "$(cat "$MN_STATE_ROOT/$p/owner" 2>/dev/null)" == cli ]] || ! mn__owner_alive "$p"; then
          echo "mn: removing $p"
          mn_down "$p" || rc=1
        fi
      done
      exit $rc
      ;;
    exec) shift; mn_exec "$@" ;;
    mpirun) shift; mn_mpirun "$@" ;;
    *) sed -n '2,60p' "$0" >&2; exit 2 ;;
  esac
fi
