#!/usr/bin/env bash
# harness_cleanup (ctest label multinode): the multi-node harness (tests/multinode/lib.sh) leaves
# nothing behind, whatever way the test that made a cluster ends:
#  1. a test that fails (set -e, `false`) while a process runs in node 1 and a SIGSTOPped one in
#     node 0: its EXIT trap removes every namespace, /etc/netns entry, state dir and process,
#     and the test's own earlier EXIT trap still runs with the failing exit code;
#  2. a test killed by SIGTERM in the middle of an mpirun across the nodes: the same;
#  3. a test killed by SIGKILL (no trap can run): its cluster stays, and the next mn_up (or
#     `lib.sh down`) sweeps it because its creator is gone, while a live cluster is left alone.
# After each: `ip netns list`, `ip link` (root namespace), /etc/netns and /tmp hold nothing of the
# cluster's prefix, and no process of it is left. Exit 77 (skipped) when not root or no `ip netns`.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=tests/multinode/lib.sh
source "$HERE/lib.sh"
mn_require
TMP="$(mktemp -d "${TMPDIR:-/tmp}/vera-harness_cleanup.XXXXXX")"
CHILDREN=()
# on any exit: end the child tests this test started (each in its own session) and remove
# their clusters, so a failure here leaves nothing either
cleanup() {
  local rc=$? c d
  for c in "${CHILDREN[@]}"; do kill -KILL -- "-$c" 2>/dev/null || true; done
  for d in "$TMP"/*/prefix; do [[ -f "$d" ]] && { mn_down "$(cat "$d")" || rc=1; }; done
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
fail() { echo "FAIL [harness_cleanup]: $*" >&2; exit 1; }
note() { echo "[harness_cleanup] $*"; }
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# a child test: makes 2 nodes, writes its prefix and the pids it started, then does $1
cat >"$TMP/child.sh" <<'EOF'
set -euo pipefail
trap 'echo "earlier trap rc=$?" >"$OUT/earlier"' EXIT
source "$LIB"
mn_up 2
echo "$MN_PREFIX" >"$OUT/prefix"
mn_exec 1 sleep 1000 &
mn_exec 0 sh -c 'kill -STOP $$; exec sleep 1000' &
sleep 0.5
ip netns pids "$(mn_ns 0)" >"$OUT/pids"; ip netns pids "$(mn_ns 1)" >>"$OUT/pids"
case "$1" in
  fail) false ;;
  mpirun) mn_mpirun 1 -- sleep 1000 ;;
  hold) sleep 1000 & wait $! ;; # wait, not a foreground sleep: a TERM runs the trap at once
esac
EOF

# gone PREFIX PIDFILE WHAT: nothing of PREFIX is left and none of the pids runs
gone() {
  local prefix="$1" pids="$2" what="$3" left p
  left="$(mn_leftovers "$prefix")"
  [[ -z "$left" ]] || fail "$what: left behind: $left"
  local i alive
  for ((i = 0; i < 30; i++)); do # a killed process may take a moment to be reaped
    alive=""
    while read -r p; do
      [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null && [[ "$(ps -o stat= -p "$p" 2>/dev/null)" != Z* ]] && alive+=" $p"
    done <"$pids"
    [[ -z "$alive" ]] && break
    sleep 0.1
  done
  [[ -z "$alive" ]] || { ps -o pid,ppid,stat,cmd -p "${alive# }" >&2 || true; fail "$what: processes of the cluster still run:$alive"; }
  note "$what: nothing of $prefix left ($(wc -l <"$pids") processes it ran are gone)"
}

# child MODE DIR: start a child test in the background; waits until its cluster is up
child() {
  local mode="$1" dir="$2" i
  mkdir -p "$dir"
  OUT="$dir" LIB="$HERE/lib.sh" setsid bash "$TMP/child.sh" "$mode" >"$dir/log" 2>&1 &
  CHILD=$!
  CHILDREN+=("$CHILD")
  for ((i = 0; i < 200; i++)); do
    [[ -s "$dir/pids" ]] && return 0
    kill -0 "$CHILD" 2>/dev/null || { cat "$dir/log" >&2; fail "$mode: the child test ended before its cluster was up"; }
    sleep 0.1
  done
  fail "$mode: the child's cluster did not come up in 20 s"
}

# 1. a failing test
child fail "$TMP/fail"
rc=0; wait "$CHILD" || rc=$?
[[ $rc -eq 1 ]] || { cat "$TMP/fail/log" >&2; fail "failing child exited $rc, expected 1"; }
[[ "$(cat "$TMP/fail/earlier" 2>/dev/null)" == "earlier trap rc=1" ]] ||
  fail "the child's own EXIT trap did not run with the exit code (got '$(cat "$TMP/fail/earlier" 2>/dev/null)')"
gone "$(cat "$TMP/fail/prefix")" "$TMP/fail/pids" "failed test"

# 2. SIGTERM during an mpirun across the nodes
child mpirun "$TMP/term"
sleep 2 # mpirun has started its orted in node 1 and the ranks
ip netns pids "$(cat "$TMP/term/prefix")-n1" >>"$TMP/term/pids"
kill -TERM "$CHILD"
rc=0; wait "$CHILD" || rc=$?
[[ $rc -eq 143 ]] || { cat "$TMP/term/log" >&2; fail "SIGTERMed child exited $rc, expected 143"; }
gone "$(cat "$TMP/term/prefix")" "$TMP/term/pids" "SIGTERM during mpirun"

# 3. SIGKILL: no trap; the next cluster's mn_up sweeps it, a live one is kept
child hold "$TMP/live"
live_pid=$CHILD
child hold "$TMP/kill"
kill -KILL "$CHILD" # the test's shell only: the processes it started in the nodes live on
wait "$CHILD" 2>/dev/null || true
killed="$(cat "$TMP/kill/prefix")"
[[ -n "$(mn_leftovers "$killed")" ]] || fail "SIGKILL: the cluster vanished without a sweep (the test proves nothing)"
while read -r p; do
  kill -0 "$p" 2>/dev/null || fail "SIGKILL: process $p in the nodes died with its test (the sweep's kill is not tested)"
done <"$TMP/kill/pids"
# another test (its own process: its trap removes its own cluster again)
bash -c 'source "$1" && mn_up 1 && echo "$MN_PREFIX" >"$2"' sweeper "$HERE/lib.sh" "$TMP/sweeper" >"$TMP/sweeper.log" 2>&1 ||
  { cat "$TMP/sweeper.log" >&2; fail "the sweeping test failed"; }
gone "$killed" "$TMP/kill/pids" "SIGKILLed test, swept by the next mn_up"
kill -KILL -- "-$CHILD" 2>/dev/null || true # its foreground sleep, outside the nodes
live="$(cat "$TMP/live/prefix")"
[[ -e "/run/netns/$live-n0" ]] || fail "the sweep removed the live cluster $live"
gone "$(cat "$TMP/sweeper")" /dev/null "the sweeping run itself"
kill -TERM "$live_pid"
wait "$live_pid" 2>/dev/null || true
gone "$live" "$TMP/live/pids" "the live cluster after its test ended"
note "PASS"
