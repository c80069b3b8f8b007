#!/usr/bin/env bash
# tests/gpu/bundle.sh: gather, on a Debian 12 machine WITH package registries, everything the CUDA
# build needs that the lent GPU machine lacks (it has the CUDA toolkit, CMake, gcc, PyTorch and the
# nvidia-nccl wheel, but no Debian -dev packages and no registry): the Debian packages of Open MPI,
# HDF5 (openmpi flavour), OpenBLAS (OpenMP build), cJSON, inih, PCRE2, ICU and pkgconf, plus every
# shared library they load that is not in BASE_SONAMES below.
#
#   tests/gpu/bundle.sh [BUNDLE_DIR]     (default .bundle in the repository root; git-ignored)
#
# Result (BUNDLE_DIR, one folder, travels as the device tool's `carry` path):
#   root.tar.xz  the packages unpacked with `dpkg -x` (usr/..., etc/openmpi), docs, man pages,
#                static libraries, Fortran and C++ bindings, OpenSHMEM stripped, then archived:
#                unpacked it is about 50 MiB (ICU's data and OpenBLAS's kernels are 30 MiB each),
#                over the 64 MiB carry limit with the source tree; archived about 20 MiB
#   env.sh       `source` it (bash): unpacks root.tar.xz once into VD_BUNDLE_ROOT (default
#                ${TMPDIR:-/tmp}/vera-bundle-<checksum>, outside the carried folder), then sets
#                PATH, LD_LIBRARY_PATH, CMAKE_PREFIX_PATH, PKG_CONFIG_LIBDIR / PKG_CONFIG_SYSROOT_DIR,
#                OPAL_PREFIX (Open MPI relocated) and VD_BUNDLE_CMAKE_ARGS (the configure
#                arguments that point CMake at the bundle)
#   MANIFEST     package and version of each package, and the sizes
# The downloaded .deb files and the unpacked tree are kept in BUNDLE_DIR.debs (git-ignored, not
# carried).
#
# Which libraries are assumed present on the GPU machine (never bundled, since an older copy on
# LD_LIBRARY_PATH would shadow the image's own): glibc's, libgcc_s, libstdc++ and libgomp (the
# host compiler nvcc needs brings them), and zlib. Everything else a bundled ELF file needs is
# added, package by package, until the closure is complete; an Open MPI / PMIx / hwloc plugin
# whose libraries are still missing then (InfiniBand, UCX, OFI, CUDA, OpenCL) is deleted, so Open
# MPI never tries to load it. tests/gpu/dry_run.sh proves the result with the system's copies hidden.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUNDLE="${1:-.bundle}"
DEBS="${BUNDLE%/}.debs"
ARCH=x86_64-linux-gnu
# what the build and the GPU tests use (headers, .so links, .pc files, wrappers, mpirun)
PKGS=(openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15
      libevent-core-2.1-7 libevent-pthreads-2.1-7
      libhdf5-openmpi-103-1 libhdf5-openmpi-hl-100 libhdf5-openmpi-dev libaec0 libsz2
      libopenblas0-openmp libopenblas-openmp-dev libopenblas-dev libgfortran5
      libcjson1 libcjson-dev libinih1 libinih-dev libpcre2-8-0 libpcre2-dev libicu72 libicu-dev
      pkgconf-bin libpkgconf3)
BASE_SONAMES_RE='^(ld-linux-x86-64\.so\.2|linux-vdso\.so\.1|lib(c|m|dl|pthread|rt|resolv|util|anl|mvec)\.so\.[0-9]+|libgcc_s\.so\.1|libstdc\+\+\.so\.6|libgomp\.so\.1|libz\.so\.1)$'

say() { printf '[bundle] %s\n' "$*"; }
die() { printf '[bundle] error: %s\n' "$*" >&2; exit 1; }
for tool in apt-get dpkg dpkg-deb readelf xz; do
  command -v "$tool" >/dev/null || die "$tool not found (this script needs a Debian machine with apt and binutils)"
done

rm -rf "$BUNDLE" "$DEBS/root" && mkdir -p "$BUNDLE" "$DEBS/root"
ROOT="$(cd "$DEBS/root" && pwd)"

fetch() { # fetch PKG...: download (once, in one apt-get call) and unpack each package into ROOT
  local p deb get=()
  for p in "$@"; do compgen -G "$DEBS/${p}_*.deb" >/dev/null || get+=("$p"); done
  if [[ ${#get[@]} -gt 0 ]]; then
    (cd "$DEBS" && apt-get download "${get[@]}" >/dev/null 2>apt.err) || { cat "$DEBS/apt.err" >&2; die "apt-get download ${get[*]} failed"; }
  fi
  for p in "$@"; do
    deb=$(compgen -G "$DEBS/${p}_*.deb" | head -n 1)
    dpkg -x "$deb" "$ROOT"
    printf '%s %s\n' "$p" "$(dpkg-deb -f "$deb" Version)" >>"$BUNDLE/MANIFEST.pkgs"
  done
}
say "downloading and unpacking ${#PKGS[@]} packages into $BUNDLE/root"
fetch "${PKGS[@]}"

# strip what no build or run reads: docs, static libraries, Fortran and C++ bindings,
# OpenSHMEM, the ICU libraries beyond icu-uc, OpenBLAS's separate BLAS/LAPACK alternatives
strip_unused() {
  local L="$ROOT/usr/lib/$ARCH"
  rm -rf "$ROOT/usr/share/doc" "$ROOT/usr/share/man" "$ROOT/usr/share/info" "$ROOT/usr/share/lintian" \
         "$ROOT/usr/share/bug" "$L/fortran" "$L/openblas-openmp/cmake"
  find "$ROOT" \( -name '*.a' -o -name '*.mod' -o -name '*.la' -o -name 'liboshmem*' -o -name 'libmpi_mpifh*' \
                -o -name 'libmpi_use*' -o -name 'libhdf5*_fortran*' -o -name 'libhdf5*_cpp*' -o -name 'libhdf5*hl_f*' \
                -o -name 'libicui18n*' -o -name 'libicuio*' -o -name 'libicutest*' -o -name 'libicutu*' \) -delete
  rm -f "$L"/openblas-openmp/libblas.so* "$L"/openblas-openmp/liblapack.so* "$ROOT"/usr/bin/osh* "$ROOT"/usr/bin/shmem* \
        "$ROOT"/usr/bin/*fort* "$ROOT"/usr/bin/h5pfc* "$ROOT"/usr/bin/*++* "$ROOT"/usr/bin/mpic[Cx]*
}
strip_unused

# the candidates (readelf ignores the files that are not ELF)
elf_files() { find "$ROOT" -type f \( -name '*.so*' -o -path '*/bin/*' \) ! -name '*.xz'; }
# loaded only by dlopen from Open MPI / PMIx / hwloc (libmca_common_*: only by such plugins)
is_plugin() { [[ $1 == */openmpi3/mca_* || $1 == */openmpi/mca_* || $1 == */libmca_common_* || $1 == */pmix/pmix_mca_* || $1 == */hwloc/hwloc_* ]]; }
declare -A HAVE=()
index_sonames() { HAVE=(); local n; while IFS= read -r n; do HAVE[$n]=1; done < <(find "$ROOT" \( -type f -o -type l \) -name '*.so*' -printf '%f\n'); }
missing_of() { # missing_of FILE: the DT_NEEDED sonames of FILE found neither in ROOT nor in BASE
  local so
  for so in $(readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [[ $so =~ $BASE_SONAMES_RE || -n ${HAVE[$so]:-} ]] || echo "$so"
  done
}

# the closure: for each soname a core (non-plugin) file needs and nothing provides, add the
# Debian package that provides it on this machine (dpkg -S), until nothing is missing
for round in 1 2 3 4 5 6 7 8; do
  index_sonames
  need=()
  while IFS= read -r f; do
    is_plugin "$f" && continue
    while IFS= read -r so; do [[ -n $so ]] && need+=("$so"); done < <(missing_of "$f")
  done < <(elf_files)
  [[ ${#need[@]} -eq 0 ]] && break
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  add=()
  for so in "${need[@]}"; do
    pkg=$(dpkg -S "*/$so" 2>/dev/null | grep -v -E '^(diversion|local)' | head -n 1 | cut -d: -f1 || true)
    [[ -n $pkg ]] || die "no installed package here provides $so (install it, then rerun)"
    add+=("$pkg")
  done
  mapfile -t add < <(printf '%s\n' "${add[@]}" | sort -u)
  say "round $round: ${need[*]} -> ${add[*]}"
  fetch "${add[@]}"
  strip_unused
done
[[ ${#need[@]} -eq 0 ]] || die "the library closure did not converge: ${need[*]}"

# plugins whose libraries are still missing (InfiniBand, UCX, OFI, CUDA, OpenCL): delete them
index_sonames
dropped=()
while IFS= read -r f; do
  is_plugin "$f" || continue
  [[ -z $(missing_of "$f") ]] && continue
  dropped+=("$(basename "$f")"); rm -f "$f"
done < <(elf_files)
say "dropped ${#dropped[@]} plugins with libraries outside the bundle: ${dropped[*]}"

# the links update-alternatives makes at install time (dpkg -x does not run it)
ln -sf mpirun.openmpi "$ROOT/usr/bin/mpirun"
ln -sf mpirun.openmpi "$ROOT/usr/bin/mpiexec"
ln -sf mpicc.openmpi "$ROOT/usr/bin/mpicc"
ln -sf h5pcc.openmpi "$ROOT/usr/bin/h5pcc"
ln -sf pkgconf "$ROOT/usr/bin/pkg-config"
ln -sf openblas-openmp/libopenblas.so.0 "$ROOT/usr/lib/$ARCH/libopenblas.so.0"
ln -sf openblas-openmp/libopenblas.so "$ROOT/usr/lib/$ARCH/libopenblas.so"
# the HDF5 wrapper hard-codes prefix=/usr: make it relative to where it lies
sed -i 's|^prefix="/usr"$|prefix="$(cd "$(dirname "$(readlink -f "$0")")/.." \&\& pwd)"|' "$ROOT/usr/bin/h5pcc.openmpi"
grep -q '^prefix="\$(cd' "$ROOT/usr/bin/h5pcc.openmpi" || die "h5pcc.openmpi: its prefix= line changed; adapt the relocation"
# Open MPI's wrapper data: sysconfdir etc. are outside the prefix in Debian's build
for f in "$ROOT"/usr/share/openmpi/*-wrapper-data.txt; do [[ -f $f ]] || die "no Open MPI wrapper data in the bundle"; done

# the unversioned names the link step asks for (-lcrypto -lcurl -lsz from h5pcc -show): the
# runtime packages carry only libX.so.N, the -dev packages that add libX.so are not bundled
while IFS= read -r f; do
  base="${f%%.so.*}.so"
  [[ -e $base || -L $base ]] || ln -s "$(basename "$f")" "$base"
done < <(find "$ROOT/usr/lib/$ARCH" -maxdepth 1 -name 'lib*.so.[0-9]*' | sort)
bad_links=$(find "$ROOT" -xtype l ! -path '*/fortran/*' | sed "s|^$ROOT||" | tr '\n' ' ')
[[ -z $bad_links ]] || say "links left dangling (libraries nothing here loads): $bad_links"

unpacked=$(du -sb "$ROOT" | cut -f1)
say "unpacked: $(( unpacked / 1048576 )) MiB; archiving"
tar -C "$ROOT" -cf - . | xz -T2 -6 >"$BUNDLE/root.tar.xz"

OMPI_LIB="usr/lib/$ARCH/openmpi/lib"
ARCHIVE_SUM=$(sha256sum "$BUNDLE/root.tar.xz" | cut -c1-12)
[[ -d "$ROOT/$OMPI_LIB" ]] || die "no $OMPI_LIB in the bundle"
cat >"$BUNDLE/env.sh" <<EOF
# generated by tests/gpu/bundle.sh: \`source\` it (bash). The bundle may lie anywhere.
_vd_dir="\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)"
_vd_b="\${VD_BUNDLE_ROOT:-\${TMPDIR:-/tmp}/vera-bundle-$ARCHIVE_SUM}"
# unpack once (outside the carried folder, which must stay small); python3 when xz is missing
if [[ ! -f "\$_vd_b/.complete" ]]; then
  rm -rf "\$_vd_b" && mkdir -p "\$_vd_b" || return 1
  if command -v xz >/dev/null; then
    xz -dc "\$_vd_dir/root.tar.xz" | tar -C "\$_vd_b" -xf - || { echo "env.sh: cannot unpack \$_vd_dir/root.tar.xz" >&2; return 1; }
  else
    python3 -c 'import sys,tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "\$_vd_dir/root.tar.xz" "\$_vd_b" \
      || { echo "env.sh: cannot unpack \$_vd_dir/root.tar.xz" >&2; return 1; }
  fi
  # zlib is a base library (libz.so.1 on every image), its -dev link libz.so maybe not: HDF5 links -lz
  _vd_z=\$(ldconfig -p 2>/dev/null | sed -n 's|.*libz\\.so\\.1 (libc6,x86-64) => ||p' | head -n 1)
  [[ -n "\$_vd_z" ]] && ln -sf "\$_vd_z" "\$_vd_b/usr/lib/$ARCH/libz.so"
  touch "\$_vd_b/.complete"
fi
export VD_BUNDLE_ROOT="\$_vd_b"
export PATH="\$_vd_b/usr/bin:\$PATH"
# lib/$ARCH: the packages not yet moved to /usr (libcom-err2, libkeyutils1, ...) unpack there
export LD_LIBRARY_PATH="\$_vd_b/usr/lib/$ARCH:\$_vd_b/lib/$ARCH:\$_vd_b/usr/lib/$ARCH/openblas-openmp:\$_vd_b/usr/lib/$ARCH/hdf5/openmpi:\$_vd_b/$OMPI_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
# the link step of h5pcc and of CMake's checks: -lsz -lcurl -lcrypto live in the bundle
export LIBRARY_PATH="\$_vd_b/usr/lib/$ARCH\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CMAKE_PREFIX_PATH="\$_vd_b/usr\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
# pkg-config reads the bundle's .pc files only; they say prefix=/usr, the sysroot maps that
export PKG_CONFIG_LIBDIR="\$_vd_b/usr/lib/$ARCH/openblas-openmp/pkgconfig:\$_vd_b/usr/lib/$ARCH/pkgconfig:\$_vd_b/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="\$_vd_b"
unset PKG_CONFIG_PATH
# Open MPI relocated: every install path derives from OPAL_PREFIX; Debian's sysconfdir and
# pkgdatadir are not under prefix, so they are named too. PMIx finds its plugins the same way.
export OPAL_PREFIX="\$_vd_b/usr"
export OPAL_LIBDIR="\$_vd_b/$OMPI_LIB"
export OPAL_SYSCONFDIR="\$_vd_b/etc/openmpi"
export OPAL_PKGDATADIR="\$_vd_b/usr/share/openmpi"
export PMIX_PREFIX="\$_vd_b/usr/lib/$ARCH/pmix2"
export PMIX_MCA_mca_base_component_path="\$_vd_b/usr/lib/$ARCH/pmix2/lib/pmix"
# h5pcc links the static libraries unless told (they are stripped from the bundle)
export HDF5_USE_SHLIB=yes
export HWLOC_PLUGINS_PATH="\$_vd_b/usr/lib/$ARCH/hwloc"
# the libraries the bundle assumes the machine has (tests/gpu/dry_run.sh checks nothing else came from outside)
export VD_BUNDLE_BASE_SONAMES_RE='$BASE_SONAMES_RE'
export VD_BUNDLE_CMAKE_ARGS="-DPKG_CONFIG_EXECUTABLE=\$_vd_b/usr/bin/pkgconf -DMPI_C_COMPILER=\$_vd_b/usr/bin/mpicc.openmpi -DMPIEXEC_EXECUTABLE=\$_vd_b/usr/bin/mpirun.openmpi -DHDF5_C_COMPILER_EXECUTABLE=\$_vd_b/usr/bin/h5pcc.openmpi -DVERA_OPENBLAS_OPENMP_PC=\$_vd_b/usr/lib/$ARCH/openblas-openmp/pkgconfig"
unset _vd_b _vd_dir _vd_z
EOF

size=$(du -sb "$BUNDLE" | cut -f1)
{
  echo "# vera-dist GPU bundle, made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "# size: $size bytes ($(( size / 1048576 )) MiB) carried; unpacked $unpacked bytes ($(( unpacked / 1048576 )) MiB) in $(find "$ROOT" -type f | wc -l) files"
  echo "# dropped plugins: ${dropped[*]}"
  sort -u "$BUNDLE/MANIFEST.pkgs"
} >"$BUNDLE/MANIFEST"
rm -f "$BUNDLE/MANIFEST.pkgs"
say "$(grep -c -v '^#' "$BUNDLE/MANIFEST") packages; $BUNDLE is $(( size / 1048576 )) MiB (limit with the source tree: 64 MiB); unpacked $(( unpacked / 1048576 )) MiB"
