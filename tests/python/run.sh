#!/usr/bin/env bash
# tests/python/run.sh: the Python reference tests (PyTorch / transformers / PEFT against
# vera-dist). Creates the virtual environment when it is missing, or installs what it lacks
# (from PyPI, with pip); a failed install fails the suite: nothing is skipped. Then runs pytest
# on tests/python/ with VERA_DIST_BIN pointing at build/vera-dist.
#
#   VERA_VENV            the venv (default ~/.cache/vera-dist/venv)
#   VERA_DIST_BIN        the binary under test (default build/vera-dist)
#   VERA_TORCH_INDEX_URL optional pip index for torch only, e.g.
#                        https://download.pytorch.org/whl/cpu (smaller CPU-only wheels)
#   extra arguments go to pytest, e.g. tests/python/run.sh -k safetensors -x
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VERA_VENV:-$HOME/.cache/vera-dist/venv}"
PKGS=(torch transformers peft safetensors h5py pytest numpy tokenizers gguf)
MODS=(torch transformers peft safetensors h5py pytest numpy tokenizers gguf)   # import names of PKGS

missing_modules() {
  "$VENV/bin/python" - "${MODS[@]}" <<'PY'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
PY
}

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "python: creating the virtual environment $VENV"
  mkdir -p "$(dirname "$VENV")"
  created=0
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -m venv "$VENV"; then created=1; break; fi
    rm -rf "$VENV"
  done
  [[ $created -eq 1 ]] || { echo "python: cannot create a venv (install python3-venv: launch/install-deps.sh)" >&2; exit 1; }
fi

missing="$(missing_modules)"
if [[ -n "$missing" ]]; then
  echo "python: installing into $VENV: $missing"
  "$VENV/bin/python" -m pip install --upgrade pip >/dev/null
  to_install=()
  for m in $missing; do
    for i in "${!MODS[@]}"; do [[ "${MODS[$i]}" == "$m" ]] && to_install+=("${PKGS[$i]}"); done
  done
  if [[ " ${to_install[*]} " == *" torch "* && -n "${VERA_TORCH_INDEX_URL:-}" ]]; then
    "$VENV/bin/python" -m pip install --index-url "$VERA_TORCH_INDEX_URL" torch
  fi
  "$VENV/bin/python" -m pip install "${to_install[@]}"
  missing="$(missing_modules)"
  [[ -z "$missing" ]] || { echo "python: still missing after pip install: $missing" >&2; exit 1; }
fi

BIN="${VERA_DIST_BIN:-$ROOT/build/vera-dist}"
[[ "$BIN" == /* ]] || BIN="$ROOT/$BIN"
[[ -x "$BIN" ]] || { echo "python: $BIN not found; build first (cmake -S . -B build && cmake --build build)" >&2; exit 1; }
export VERA_DIST_BIN="$BIN"
# the tests may launch mpirun: the same single-host settings as the C integration tests
export OMPI_MCA_pml="${OMPI_MCA_pml:-ob1}" OMPI_MCA_btl="${OMPI_MCA_btl:-self,vader}" OMPI_MCA_rmaps_base_oversubscribe=1
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

cd "$ROOT"
rc=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
  echo "python: pytest collected no tests in tests/python (expected test_*.py files)" >&2
fi
exit $rc
