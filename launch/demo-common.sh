# shellcheck shell=bash
# demo-common.sh: the steps launch/demo.sh and launch/demo-tiny.sh share (sourced, not run).
# Sourcing it changes to the repository root and sets ROOT; then, in order:
#   demo_install_and_build     Debian packages (launch/install-deps.sh), then a Release build of
#                              vera-dist in build/ (VERA_DEMO_BUILD=DIR builds elsewhere); sets VD
#   demo_mpi_setup             Open MPI / OpenMP settings for one host; sets MPIRUN (2 ranks) and
#                              FRESH (the trainer options that start over instead of resuming)
#   demo_out_dir CONFIG ARGS.. the out_dir a run writes to: the config's, unless ARGS override it
#   demo_field METRICS KEY     the values of KEY in metrics.jsonl, one line per row that has it
#   demo_inspect_args ARGS..   sets INSPECT_ARGS to those of the trainer's ARGS that
#                              `vera-dist inspect` reads (it refuses the others)

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT="$(pwd)"
say() { printf '\n==> %s\n' "$*"; }

demo_install_and_build() {
  local build="${VERA_DEMO_BUILD:-build}"
  say "checking Debian packages"
  ./launch/install-deps.sh

  say "building vera-dist (Release) in $build/"
  mkdir -p "$build"
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log" >&2; echo "demo: cmake configure failed (log: $build/configure.log)" >&2; exit 1; }
  cmake --build "$build" -j "$(nproc)" --target vera-dist
  [[ "$build" == /* ]] || build="$ROOT/$build"
  VD="$build/vera-dist"
}

demo_mpi_setup() {
  # Open MPI on one host: fast shared-memory transport; as root it needs two variables.
  export OMPI_MCA_pml="${OMPI_MCA_pml:-ob1}" OMPI_MCA_btl="${OMPI_MCA_btl:-self,vader}"
  # OpenMP threads that sleep instead of spinning when idle: measured 1.6-2x faster per step on a
  # machine shared with other work (docs/benchmarks.md); set OMP_WAIT_POLICY=active to override.
  export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
  if [[ $(id -u) -eq 0 ]]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  MPIRUN=(mpirun -np 2)
  if [[ $(nproc) -lt 2 ]]; then MPIRUN+=(--oversubscribe); fi

  # a rerun starts over (and replaces the previous demo run) rather than resuming it
  FRESH=(--overwrite 1)
  if "$VD" --help 2>/dev/null | grep -q -- '--resume'; then FRESH+=(--resume none); fi
}

demo_out_dir() {
  local config="$1"; shift
  local out args i
  out=$(sed -n -E 's/^[[:space:]]*out_dir[[:space:]]*=[[:space:]]*([^;#[:space:]]+).*/\1/p' "$config" | tail -n 1)
  args=("$@")
  for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
      --out_dir) out="${args[$((i + 1))]:-$out}" ;;
      --out_dir=*) out="${args[$i]#--out_dir=}" ;;
    esac
  done
  [[ "$out" == /* ]] || out="$ROOT/$out"
  printf '%s\n' "$out"
}

# the keys inspect reads (src/cli/inspect.c, inspect_keys; --model is passed separately)
demo_inspect_args() {
  local args i key
  args=("$@")
  INSPECT_ARGS=()
  for ((i = 0; i < ${#args[@]}; i++)); do
    key="${args[$i]%%=*}"
    case "$key" in
      --r | --target_modules | --projection_prng_key | --batch_size | --seq_len | --grad_accum | --vera_dropout)
        if [[ "${args[$i]}" == *=* ]]; then INSPECT_ARGS+=("${args[$i]}")
        else INSPECT_ARGS+=("${args[$i]}" "${args[$((i + 1))]:-}"); i=$((i + 1)); fi ;;
    esac
  done
}

demo_field() { sed -n -E "s/.*\"$2\": *([^,}]+).*/\1/p" "$1"; }
