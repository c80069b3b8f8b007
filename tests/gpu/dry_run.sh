#!/usr/bin/env bash
# tests/gpu/dry_run.sh: prove the GPU bundle (tests/gpu/bundle.sh) here, on a machine without a GPU,
# before a device call is spent on it. Needs root (a mount namespace) and a bundle in .bundle.
#
#   tests/gpu/dry_run.sh [BUNDLE_DIR]     (default .bundle; writes build-dry/ and build-dry/out/)
#
# In a private mount namespace (unshare -m; nothing outside it changes), overlay mounts on /usr,
# /usr/local and /etc hide every file of the installed Debian packages of Open MPI, HDF5 (both
# flavours), OpenBLAS/BLAS/LAPACK, cJSON, inih, PMIx, hwloc, pkgconf, libaec, libevent and the
# -dev packages of PCRE2 and ICU (their runtime libraries stay: grep, mount and CMake load them),
# the alternatives links to them, and the toolkit's NCCL (so NCCL must come from the nvidia-nccl
# wheel as libnccl.so.2, as on the GPU machine). Then:
#   1. a plain `cmake -DVERA_CUDA=ON` (no bundle) must FAIL: the hiding is real;
#   2. tests/gpu/device.sh --dry-run: configure against the bundle with CUDA on, build, run the
#      label-gpu tests (they skip: no GPU) and unit tests, and the host-emulation tests of the CUDA
#      backend that need mpirun, HDF5 and OpenBLAS (through the bundle);
#   3. the loader check: `ldd` of every built program and LD_DEBUG=files of a 2-rank mpirun of
#      vera-dist: every library resolved must come from the bundle, the CUDA toolkit, the
#      nvidia-nccl wheel, or be one of the base libraries the bundle assumes (glibc, libgcc_s,
#      libstdc++, libgomp, zlib: VD_BUNDLE_BASE_SONAMES_RE in env.sh); nothing is "not found".
# Exit 0 when all three hold. Takes about 10-15 minutes on 2 cores (the CUDA build dominates).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUNDLE="$(cd "${1:-.bundle}" && pwd)" || { echo "dry_run: no bundle (run tests/gpu/bundle.sh first)" >&2; exit 1; }
[[ -f $BUNDLE/env.sh && -f $BUNDLE/MANIFEST ]] || { echo "dry_run: $BUNDLE has no env.sh/MANIFEST" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "dry_run: needs root (mount namespace)" >&2; exit 1; }
WORK="$PWD/build-dry"
mkdir -p "$WORK"
say() { printf '[dry_run] %s\n' "$*"; }

if [[ "${VD_DRY_INSIDE:-}" != 1 ]]; then
  # the packages to hide: every installed one of the libraries the build asks for (and their
  # siblings CMake might pick instead: serial HDF5, OpenBLAS pthread, reference BLAS, ...), with
  # two exceptions: the runtime libraries of PCRE2 and ICU, which grep, mount and CMake here load
  # themselves (their headers, .pc files and .so links are hidden; the loader check below shows
  # vera-dist takes the bundle's copies). The generic libraries the bundle also carries (curl,
  # OpenSSL, Kerberos, ...: HDF5's) stay visible for the same reason and are checked the same way.
  mapfile -t pkgs < <(dpkg-query -W -f='${Package}\n' \
    | grep -E '^(lib)?(hdf5|openmpi|openblas|blas[0-9]|lapack|cjson|inih|pcre2|icu|pmix|hwloc|pkgconf|pkg-config|aec|sz2|event-)' \
    | grep -v -x -E 'libpcre2-(8|16|32)-0|libpcre2-posix3|libicu[0-9]+' | sort -u)
  hide="$WORK/hidden.txt"
  : >"$hide"
  for p in "${pkgs[@]}"; do
    dpkg-query -W "$p" >/dev/null 2>&1 || continue
    # a package's libraries live in the merged /usr (/lib is a link to usr/lib on Debian 12)
    dpkg -L "$p" 2>/dev/null | sed 's|^/lib|/usr/lib|; s|^/bin|/usr/bin|' | while IFS= read -r f; do
      if [[ ( -f $f || -L $f ) && ! -d $f && ( $f == /usr/* || $f == /etc/* ) ]]; then echo "$f"; fi
    done >>"$hide"
  done
  # alternatives links (made by update-alternatives, owned by no package) that lead to a hidden file
  for l in /usr/bin/* /usr/lib/x86_64-linux-gnu/*.so* /usr/lib/x86_64-linux-gnu/pkgconfig/*; do
    [[ -L $l && $(readlink "$l") == /etc/alternatives/* ]] || continue
    t=$(readlink -f "$l" || true)
    if grep -qxF "$t" "$hide"; then echo "$l"; readlink "$l"; fi
  done >>"$hide"
  # NCCL: hide the toolkit's copy, unversioned and versioned (the GPU machine has only the wheel)
  find /usr/local -name 'libnccl.so*' 2>/dev/null >>"$hide" || true
  find /usr/local -name 'nccl.h' -path '*cuda*' 2>/dev/null >>"$hide" || true
  sort -u -o "$hide" "$hide"
  say "hiding $(wc -l <"$hide") files of ${#pkgs[@]} packages, and the toolkit's NCCL"
  exec unshare -m --propagation private env VD_DRY_INSIDE=1 VD_DRY_HIDE="$hide" bash "$0" "$@"
fi

# ---- inside the private mount namespace ----
# whiteouts (character device 0/0) in an overlay's upper layer make the lower file vanish
# (python3 makes the ~3000 of them: one process instead of thousands)
ov="$WORK/overlay"
rm -rf "$ov" && mkdir -p "$ov"
python3 - "$ov" "$VD_DRY_HIDE" <<'PY' || { say "FAILED: cannot make the whiteouts"; exit 1; }
import os, sys
ov, hide = sys.argv[1], sys.argv[2]
lowers = [("local", "/usr/local/"), ("usr", "/usr/"), ("etc", "/etc/")]
for top, _ in lowers:
    os.makedirs(f"{ov}/{top}/upper", exist_ok=True); os.makedirs(f"{ov}/{top}/work", exist_ok=True)
for f in open(hide).read().split("\n"):
    for top, lower in lowers:
        if f.startswith(lower):
            w = f"{ov}/{top}/upper/{f[len(lower):]}"
            os.makedirs(os.path.dirname(w), exist_ok=True)
            if not os.path.lexists(w):
                os.mknod(w, 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout: character device 0/0
            break
PY
# /usr/local is its own overlay on top (it is mounted after /usr, so it is not shadowed)
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$ov/usr/upper,workdir=$ov/usr/work" /usr
mount -t overlay overlay -o "lowerdir=/usr/local,upperdir=$ov/local/upper,workdir=$ov/local/work" /usr/local
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$ov/etc/upper,workdir=$ov/etc/work" /etc
left=0
while IFS= read -r f; do
  if [[ -e $f || -L $f ]]; then say "still visible: $f"; left=$((left + 1)); fi
done <"$VD_DRY_HIDE"
[[ $left -eq 0 ]] || { say "FAILED: $left hidden files are still visible"; exit 1; }
say "hidden: $(wc -l <"$VD_DRY_HIDE") files (mpicc: $(command -v mpicc || echo none), h5pcc: $(command -v h5pcc || echo none), pkg-config: $(command -v pkg-config || echo none))"
# the python3 with the nvidia-nccl wheel (as on the GPU machine: PyTorch's python3 first on PATH)
if [[ -x "${VD_DRY_PYTHON_BIN:-$HOME/.cache/vera-dist/venv/bin}/python3" ]]; then
  export PATH="${VD_DRY_PYTHON_BIN:-$HOME/.cache/vera-dist/venv/bin}:$PATH"
fi

# 1. without the bundle, the configure must fail
rm -rf "$WORK/plain"
if cmake -S . -B "$WORK/plain" -DVERA_CUDA=ON -DCMAKE_BUILD_TYPE=Release >"$WORK/plain.log" 2>&1; then
  say "FAILED: a plain cmake configured with the system's copies hidden (log: $WORK/plain.log)"
  exit 1
fi
say "1. plain cmake fails as it must: $(grep -m1 -E 'Could NOT find|not found|Error' "$WORK/plain.log" | sed 's/^ *//')"

# 2. the device script, in its dry-run mode
export OUT="$WORK/out"
rm -rf "$OUT" && mkdir -p "$OUT"
rc=0
bash tests/gpu/device.sh --dry-run --build "$WORK/gpu" --bundle "$BUNDLE" || rc=$?
[[ $rc -eq 0 ]] || { say "FAILED: device.sh --dry-run exited $rc (logs: $OUT)"; exit 1; }
say "2. device.sh --dry-run passed (summary: $OUT/summary.txt)"

# 3. where every library came from
# shellcheck disable=SC1091
source "$BUNDLE/env.sh"
cls="$OUT/libraries.txt"
: >"$cls"
classify() { # classify SONAME PATH: bundle | cuda | nccl-wheel | base | BAD
  local so="$1" path="$2"
  if [[ $path == "$VD_BUNDLE_ROOT"/* ]]; then echo bundle
  elif [[ $path == /usr/local/cuda* || $so =~ ^lib(cudart|cublas|cublasLt|cuda|nvidia-ml)\.so ]]; then echo cuda
  elif [[ $path == */nvidia/nccl/* ]]; then echo nccl-wheel
  elif [[ $so =~ $VD_BUNDLE_BASE_SONAMES_RE ]]; then echo base
  else echo BAD; fi
}
bad=0
for exe in "$WORK/gpu/vera-dist" "$WORK/gpu/tests/gpu/test_gpu_kernels" "$VD_BUNDLE_ROOT/usr/bin/orted" "$VD_BUNDLE_ROOT/usr/bin/pkgconf"; do
  [[ -x $exe ]] || { say "FAILED: $exe was not built"; exit 1; }
  while read -r so arrow path _; do
    [[ $arrow == "=>" ]] || { [[ $so == /* ]] && path=$so && so=$(basename "$so") || continue; }
    if [[ $path == "not" ]]; then echo "BAD $so not-found ($(basename "$exe"))" >>"$cls"; bad=$((bad + 1)); continue; fi
    c=$(classify "$so" "$path"); echo "$c $so $path ($(basename "$exe"))" >>"$cls"
    if [[ $c == BAD ]]; then bad=$((bad + 1)); fi
  done < <(ldd "$exe")
done
# the libraries a 2-rank training run really loads, plugins (dlopen) included
d="$WORK/ld"
rm -rf "$d" && mkdir -p "$d"
head -c 20000 /usr/share/common-licenses/GPL-3 >"$d/text.txt"
"$WORK/gpu/vera-dist" init-model --out "$d/model" --layers 1 --heads 2 --dim 16 --vocab 256 --ctx 32 --seed 7 \
  >"$d/init.log" 2>&1 || { cat "$d/init.log"; say "FAILED: init-model"; exit 1; }
"$WORK/gpu/vera-dist" prepare-data --in "$d/text.txt" --out "$d/data" --val_fraction 0.1 >"$d/data.log" 2>&1 \
  || { cat "$d/data.log"; say "FAILED: prepare-data"; exit 1; }
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 LD_DEBUG=files LD_DEBUG_OUTPUT="$d/trace" \
  mpirun --oversubscribe -np 2 "$WORK/gpu/vera-dist" --model "$d/model" --train_data "$d/data/train_*.bin" \
  --batch_size 2 --seq_len 16 --max_steps 2 --warmup_steps 1 --r 4 --threads 1 --ckpt_every 2 --out_dir "$d/run" \
  >"$d/mpirun.log" 2>&1 || { tail -n 20 "$d/mpirun.log"; say "FAILED: 2-rank mpirun of vera-dist"; exit 1; }
compgen -G "$d/run/checkpoints/*.h5" >/dev/null || { say "FAILED: the 2-rank run wrote no HDF5 checkpoint"; exit 1; }
n=0
while read -r path; do
  n=$((n + 1))
  c=$(classify "$(basename "$path")" "$path"); echo "$c $(basename "$path") $path (mpirun -np 2, LD_DEBUG)" >>"$cls"
  if [[ $c == BAD ]]; then bad=$((bad + 1)); fi
done < <(sed -n 's/.*calling init: \(\/.*\)$/\1/p' "$d"/trace.* | sort -u)
[[ $n -gt 10 ]] || { say "FAILED: LD_DEBUG traced only $n libraries (parse error?)"; exit 1; }
sort -u -o "$cls" "$cls"
say "3. libraries: $(cut -d' ' -f1 "$cls" | sort | uniq -c | tr -s ' ' | tr '\n' ';') (list: $cls)"
if [[ $bad -gt 0 ]]; then
  grep '^BAD' "$cls"
  say "FAILED: $bad libraries neither from the bundle nor from the assumed base"
  exit 1
fi
say "PASS: the bundle alone builds and runs vera-dist with CUDA on; the system's copies were hidden"
