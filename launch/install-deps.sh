#!/usr/bin/env bash
# install-deps.sh: installs the Debian packages vera-dist needs, only those that are missing.
# Idempotent and quiet when everything is present. Uses sudo when not root (and sudo exists);
# otherwise prints the apt-get command to run and exits 1.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  openmpi-bin libopenmpi-dev
  libopenblas-dev
  libopenblas-openmp-dev
  libhdf5-dev libhdf5-openmpi-dev hdf5-tools
  libcjson-dev libinih-dev libcmocka-dev
  libpcre2-dev
  python3 python3-venv
)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps: dpkg-query not found: this script supports Debian/Ubuntu only." >&2
  echo "install-deps: install these packages (or their equivalents) by hand: ${PACKAGES[*]}" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: missing Debian packages: ${missing[*]}"
cmd=(apt-get install -y --no-install-recommends "${missing[@]}")
if [[ $(id -u) -eq 0 ]]; then
  prefix=()
elif command -v sudo >/dev/null 2>&1; then
  prefix=(sudo)
else
  echo "install-deps: not root and sudo is not available; as root, run:" >&2
  echo "  apt-get update && ${cmd[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${prefix[@]}" apt-get update -q
"${prefix[@]}" "${cmd[@]}"

still=()
for p in "${missing[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || still+=("$p")
done
if [[ ${#still[@]} -gt 0 ]]; then
  echo "install-deps: still missing after apt-get: ${still[*]}" >&2
  exit 1
fi
echo "install-deps: installed ${missing[*]}"
