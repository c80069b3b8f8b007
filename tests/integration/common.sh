# shellcheck shell=bash
# common.sh: shared helpers for the integration tests (sourced, not run).
# Each test is run by ctest as: bash tests/integration/<name>.sh PATH/TO/vera-dist
# It sets up a private temp dir (removed on exit unless VERA_KEEP_TMP=1), the Open MPI
# settings for fast single-host runs, and small helpers to read metrics.jsonl without python.

set -euo pipefail

VD="${1:?usage: bash $0 PATH/TO/vera-dist}"
[[ -x "$VD" ]] || { echo "FAIL: vera-dist binary '$VD' is not executable" >&2; exit 1; }
VD="$(cd "$(dirname "$VD")" && pwd)/$(basename "$VD")"
# shellcheck disable=SC2034 # for the tests that source this file
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TEST_NAME="$(basename "$0" .sh)"

# Open MPI: as root it needs both variables; ob1 + shared memory is the fast, quiet path on
# one host; more ranks than cores is fine for these tiny models.
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
MPIRUN="${VERA_MPIRUN:-mpirun}"   # ctest passes the launcher of the MPI vera-dist was built with
command -v "$MPIRUN" >/dev/null 2>&1 || { echo "FAIL: mpirun ('$MPIRUN') not found" >&2; exit 1; }
# Open MPI itself leaks; a sanitizer build of vera-dist must not fail on that.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/vera-${TEST_NAME}.XXXXXX")"
cleanup() {
  local rc=$?
  if [[ "${VERA_KEEP_TMP:-0}" == 1 ]]; then echo "(kept $TMP)"; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT

fail() { echo "FAIL [$TEST_NAME]: $*" >&2; exit 1; }
note() { echo "[$TEST_NAME] $*"; }

# Runs a command with a time limit (a hang is a failure); stdout+stderr go to log file $1.
# Returns the command's exit code (124 = timed out).
MPI_TIMEOUT="${VERA_TEST_TIMEOUT:-120}"
run_logged() {
  local log="$1"; shift
  local rc=0
  timeout -k 5 "$MPI_TIMEOUT" "$@" >"$log" 2>&1 || rc=$?
  return $rc
}

# vd_mpirun NP LOG ARGS...: vera-dist on NP ranks; fails the test on a non-zero exit or timeout.
vd_mpirun() {
  local np="$1" log="$2"; shift 2
  local rc=0
  run_logged "$log" "$MPIRUN" -np "$np" "$VD" "$@" || rc=$?
  if [[ $rc -ne 0 ]]; then
    tail -n 80 "$log" >&2
    [[ $rc -eq 124 ]] && fail "timed out after ${MPI_TIMEOUT}s: mpirun -np $np vera-dist $*"
    fail "exit code $rc: mpirun -np $np vera-dist $*"
  fi
}

# vd_run LOG ARGS...: vera-dist without mpirun (singleton); fails the test on a non-zero exit.
vd_run() {
  local log="$1"; shift
  local rc=0
  run_logged "$log" "$VD" "$@" || rc=$?
  if [[ $rc -ne 0 ]]; then
    tail -n 30 "$log" >&2
    fail "exit code $rc: vera-dist $*"
  fi
}

# A deterministic English-like text of about $2 bytes in $1 (no python, no network).
make_text() {
  local out="$1" bytes="$2"
  awk -v n="$bytes" 'BEGIN {
    split("the a one every some this that my your our", det, " ");
    split("cat dog bird model rank node shard token layer vector", noun, " ");
    split("sees eats trains reads writes sends keeps finds likes moves", verb, " ");
    split("small big red quick slow old new warm cold bright", adj, " ");
    s = 12345; total = 0;
    while (total < n) {
      line = "";
      for (k = 0; k < 4; k++) {
        s = (s * 1103515245 + 12345) % 2147483648; i1 = int(s / 65536) % 10 + 1;
        s = (s * 1103515245 + 12345) % 2147483648; i2 = int(s / 65536) % 10 + 1;
        s = (s * 1103515245 + 12345) % 2147483648; i3 = int(s / 65536) % 10 + 1;
        s = (s * 1103515245 + 12345) % 2147483648; i4 = int(s / 65536) % 10 + 1;
        line = line det[i1] " " adj[i2] " " noun[i3] " " verb[i4] " " det[i2] " " noun[i1] ". ";
      }
      print line; total += length(line) + 1;
    }
  }' > "$out"
}

# metrics_field FILE KEY: one line per row of metrics.jsonl with the value of KEY ("" if absent).
metrics_field() {
  awk -v key="$2" '{
    v = "";
    if (match($0, "\"" key "\": *[^,}]+")) {
      v = substr($0, RSTART, RLENGTH); sub(/^[^:]*: */, "", v);
    }
    print v;
  }' "$1"
}

# The number in "trainable parameters: N" of a training log.
log_trainable() { sed -n 's/^trainable parameters: \([0-9][0-9]*\).*/\1/p' "$1" | head -n 1; }

# assert_error LOG PATTERN...: the log holds a one-line "vera-dist: error:" (or
# "vera-dist: error [rank k]:") message that matches every extended regex PATTERN.
ERR_RE='vera-dist: error( \[rank [0-9]+\])?:'
assert_error() {
  local log="$1"; shift
  local lines line p ok
  lines="$(grep -E "$ERR_RE" "$log" || true)"
  [[ -n "$lines" ]] || { cat "$log" >&2; fail "no 'vera-dist: error:' line in the output"; }
  while IFS= read -r line; do
    ok=1
    for p in "$@"; do grep -E -q -- "$p" <<<"$line" || { ok=0; break; }; done
    [[ $ok -eq 1 ]] && return 0
  done <<<"$lines"
  cat "$log" >&2
  fail "no error line matches all of: $(printf '/%s/ ' "$@")"
}

# make_model DIR LAYERS HEADS DIM VOCAB CTX [init-model options]: a random model (seed 7) written
# by init-model; GPT-2 unless the options say --arch llama.
make_model() {
  local dir="$1" layers="$2" heads="$3" dim="$4" vocab="$5" ctx="$6"; shift 6
  vd_run "$TMP/init-model.$(basename "$dir").log" init-model --out "$dir" --layers "$layers" --heads "$heads" \
    --dim "$dim" --vocab "$vocab" --ctx "$ctx" --seed 7 "$@"
}

# make_data DIR BYTES: byte-level shards DIR/train_*.bin, DIR/val_*.bin from make_text.
make_data() {
  mkdir -p "$1"
  make_text "$TMP/text.$(basename "$1").txt" "$2"
  vd_run "$TMP/prepare-data.$(basename "$1").log" prepare-data --in "$TMP/text.$(basename "$1").txt" \
    --out "$1" --val_fraction 0.1
}

# compare_losses FILE_A FILE_B RELTOL WHAT: the same number of rows, and every row's loss
# (and val_loss where present) agrees within RELTOL relative.
compare_losses() {
  local a="$1" b="$2" tol="$3" what="$4"
  local out
  out="$(paste -d' ' <(metrics_field "$a" loss) <(metrics_field "$b" loss) \
                     <(metrics_field "$a" val_loss) <(metrics_field "$b" val_loss) | awk -v tol="$tol" '
    function rel(x, y) { d = x - y; if (d < 0) d = -d; m = (x < 0 ? -x : x); if (m < 1e-30) m = 1e-30; return d / m; }
    {
      n++;
      if (NF != 2 && NF != 4) { printf("row %d: loss or val_loss missing in one file\n", n); bad = 1; exit }
      if (rel($1, $2) > tol) { printf("step %d: loss %s vs %s (rel %.3g > %g)\n", n, $1, $2, rel($1, $2), tol); bad = 1 }
      if (NF == 4 && rel($3, $4) > tol) { printf("step %d: val_loss %s vs %s (rel %.3g > %g)\n", n, $3, $4, rel($3, $4), tol); bad = 1 }
      if (rel($1, $2) > worst) worst = rel($1, $2);
    }
    END { if (n == 0) { print "no rows"; bad = 1 } if (!bad) printf("OK %d rows, max rel diff %.3g\n", n, worst); }')"
  [[ "$out" == OK* ]] || fail "$what: $out"
  note "$what: ${out#OK }"
}

# The adapter a parameterised script trains (VD_TEST_ADAPTER, default vera; docs/adapters.md):
# ADAPTER_ARGS (adapter_type, rank and the method's own keys), DROPOUT_KEY (its dropout key),
# HAS_PROJECTION (1: the method has frozen projections that save_projection stores) and
# OTHER_ADAPTER (another adapter type, for refusals).
case "${VD_TEST_ADAPTER:-vera}" in
  vera) ADAPTER_ARGS=(--adapter_type vera --r 16); DROPOUT_KEY=--vera_dropout; HAS_PROJECTION=1; OTHER_ADAPTER=lora ;;
  lora) ADAPTER_ARGS=(--adapter_type lora --r 4 --lora_alpha 8); DROPOUT_KEY=--lora_dropout; HAS_PROJECTION=0
        OTHER_ADAPTER=vera ;;
  vblora) ADAPTER_ARGS=(--adapter_type vblora --r 4 --num_vectors 32 --vector_length 16 --topk 2 --lr_vector_bank 1e-3)
          DROPOUT_KEY=--vblora_dropout; HAS_PROJECTION=0; OTHER_ADAPTER=lora ;;
  *) fail "VD_TEST_ADAPTER=${VD_TEST_ADAPTER} is not vera, lora or vblora" ;;
esac
