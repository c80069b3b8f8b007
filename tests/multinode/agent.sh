#!/usr/bin/env bash
# tests/multinode/agent.sh: Open MPI's launch agent (--mca plm_rsh_agent) for the multi-node
# harness: where mpirun would run `ssh HOST orted ...`, it runs `agent.sh HOST orted ...`, and
# this enters node HOST's namespace (lib.sh mn_exec: netns, hostname, TMPDIR) and runs the
# command there through a shell, as sshd would. HOST must be a node of the cluster in
# $MN_PREFIX (inherited from mpirun's environment). Leading options (ssh-style) are ignored.
set -uo pipefail
# shellcheck source=tests/multinode/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
while [[ "${1:-}" == -* ]]; do shift; done
host="${1:-}"
[[ -n "$host" ]] || { echo "mn agent: usage: agent.sh HOST COMMAND..." >&2; exit 2; }
shift
[[ "$host" =~ ^${MN_PREFIX:?mn agent: MN_PREFIX not set}-n([0-9]+)$ ]] ||
  { echo "mn agent: '$host' is not a node of cluster $MN_PREFIX" >&2; exit 2; }
exec_k="${BASH_REMATCH[1]}"
mn_exec "$exec_k" sh -c "$*"
