#!/usr/bin/env bash
# openblas-coretype.sh PATH/TO/vera-dist: prints the OPENBLAS_CORETYPE to run that binary with on
# this CPU, or nothing when OpenBLAS's own choice is fine (or OPENBLAS_CORETYPE is already set,
# or the binary does not use OpenBLAS). Debian 12's OpenBLAS 0.3.21 does not know newer CPUs
# (e.g. Xeon family 6 model 207) and falls back to its Prescott (SSE3) kernels: 5-7x slower
# GEMMs (docs/benchmarks.md, "BLAS kernel"). Then this names the kernel the CPU flags allow:
# SkylakeX with AVX-512, Haswell with AVX2. No python: the kernel OpenBLAS picks comes from
# openblas_get_corename() in a throwaway C program (cc, from build-essential).
#   export OPENBLAS_CORETYPE=$(launch/openblas-coretype.sh build/vera-dist)   # empty = unset
set -euo pipefail

VD="${1:?usage: openblas-coretype.sh PATH/TO/vera-dist}"
[[ -n "${OPENBLAS_CORETYPE:-}" ]] && exit 0
LIB="$(ldd "$VD" 2>/dev/null | sed -n 's/.*libopenblas[^ ]* => \([^ ]*\) .*/\1/p' | head -n 1)"
[[ -n "$LIB" && -r "$LIB" ]] || exit 0
command -v cc >/dev/null 2>&1 || exit 0

TMP="$(mktemp -d "${TMPDIR:-/tmp}/openblas-coretype.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
cat >"$TMP/corename.c" <<'C'
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
  void *h = argc > 1 ? dlopen(argv[1], RTLD_NOW | RTLD_LOCAL) : NULL;
  char *(*corename)(void) = h ? (char *(*)(void))dlsym(h, "openblas_get_corename") : NULL;
  if (!corename) return 1;
  puts(corename());
  return 0;
}
C
cc -O0 -o "$TMP/corename" "$TMP/corename.c" -ldl >/dev/null 2>&1 || exit 0
PICKED="$(OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "$TMP/corename" "$LIB" 2>/dev/null || true)"
case "$PICKED" in
  [Pp]rescott)   # its fallback for a CPU model it does not know
    if grep -qw avx512f /proc/cpuinfo 2>/dev/null && grep -qw avx512bw /proc/cpuinfo 2>/dev/null; then
      echo SkylakeX
    elif grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo 2>/dev/null; then
      echo Haswell
    fi
    ;;
esac
