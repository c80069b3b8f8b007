#!/usr/bin/env bash
# tests/run.sh: the whole test suite in one command (CI runs it through .ci/run).
#   1. deps        launch/install-deps.sh (installs only what is missing)
#   2. build       Release, warnings as errors, into build/
#   3. ctest       every ctest test in build/ (labels unit + integration)
#   4. asan-build  AddressSanitizer + UndefinedBehaviorSanitizer, Debug, into build-asan/
#   5. asan-ctest  the unit tests and the asan-smoke training runs (1 and 2 ranks) in build-asan/
#   6. python      tests/python/run.sh: PyTorch / transformers / PEFT reference tests
# Every part runs even when an earlier one failed (except those that need a failed build);
# the summary at the end lists each part's result and time; the exit code is non-zero if any
# part failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
JOBS="${VERA_JOBS:-$(nproc)}"
export CTEST_OUTPUT_ON_FAILURE=1
# Open MPI on one host (the integration tests set these too; here for anything else)
export OMPI_MCA_pml="${OMPI_MCA_pml:-ob1}" OMPI_MCA_btl="${OMPI_MCA_btl:-self,vader}" OMPI_MCA_rmaps_base_oversubscribe=1
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

NAMES=() RESULTS=() TIMES=()
FAILED=0
declare -A STATUS=()

# part NAME [needs=OTHER] -- COMMAND...
part() {
  local name="$1"; shift
  local needs=""
  if [[ "$1" == needs=* ]]; then needs="${1#needs=}"; shift; fi
  [[ "$1" == "--" ]] && shift
  NAMES+=("$name")
  if [[ -n "$needs" && "${STATUS[$needs]:-}" != ok ]]; then
    printf '\n======== %s: skipped (%s failed)\n' "$name" "$needs"
    STATUS[$name]=skipped; RESULTS+=("SKIPPED ($needs failed)"); TIMES+=("-"); FAILED=1
    return
  fi
  printf '\n======== %s: %s\n' "$name" "$*"
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  local dt=$((SECONDS - t0))
  TIMES+=("$(printf '%d:%02d' $((dt / 60)) $((dt % 60)))")
  if [[ $rc -eq 0 ]]; then
    STATUS[$name]=ok; RESULTS+=("ok")
  else
    STATUS[$name]=failed; RESULTS+=("FAILED (exit $rc)"); FAILED=1
  fi
  printf -- '-------- %s: %s in %ss\n' "$name" "${RESULTS[-1]}" "$dt"
}

build() { # build DIR CMAKE_ARGS...
  local dir="$1"; shift
  cmake -S . -B "$dir" "$@" && cmake --build "$dir" -j "$JOBS"
}

T0=$SECONDS
part deps -- ./launch/install-deps.sh
part build needs=deps -- build build -DCMAKE_BUILD_TYPE=Release -DVERA_WERROR=ON -DVERA_SANITIZE=OFF
part ctest needs=build -- ctest --test-dir build --output-on-failure
part asan-build needs=deps -- build build-asan -DCMAKE_BUILD_TYPE=Debug -DVERA_SANITIZE=ON -DVERA_WERROR=ON
# Open MPI leaks at exit: no leak check for anything that runs MPI (the asan-smoke script
# sets detect_leaks=0 itself; the unit tests keep the default).
part asan-ctest needs=asan-build -- ctest --test-dir build-asan --output-on-failure -L 'unit|asan-smoke'
part python needs=build -- ./tests/python/run.sh

printf '\n======== summary (%d:%02d in total)\n' $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60))
for i in "${!NAMES[@]}"; do
  printf '  %-11s %-28s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
done
if [[ $FAILED -ne 0 ]]; then
  echo "tests/run.sh: FAILED"
  exit 1
fi
echo "tests/run.sh: all parts passed"
