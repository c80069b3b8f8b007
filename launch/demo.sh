#!/usr/bin/env bash
# demo.sh: the one-command demo on a fresh Debian machine.
#   1. installs the missing Debian packages (launch/install-deps.sh),
#   2. builds vera-dist (Release) into build/,
#   3. writes a tiny random GPT-2 into out/demo/model (vera-dist init-model),
#   4. turns a text file into byte-level token shards in data/demo/ (vera-dist prepare-data),
#   5. trains VeRA adapters on 2 MPI ranks with configs/demo.ini (about a minute on 2 cores),
#   6. prints where the metrics are and how the loss moved.
# Rerunning it replaces the previous demo outputs. Extra arguments go to the trainer, e.g.
#   ./launch/demo.sh --max_steps 50
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
say() { printf '\n==> %s\n' "$*"; }

say "checking Debian packages"
./launch/install-deps.sh

say "building vera-dist (Release) in build/"
mkdir -p build
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >build/configure.log 2>&1 ||
  { cat build/configure.log >&2; echo "demo: cmake configure failed (log: build/configure.log)" >&2; exit 1; }
cmake --build build -j "$(nproc)" --target vera-dist
VD="$ROOT/build/vera-dist"

say "writing a tiny random GPT-2 to out/demo/model"
"$VD" init-model --out out/demo/model --layers 4 --heads 4 --dim 256 --vocab 256 --ctx 128 --seed 1 --overwrite

TEXT=/usr/share/common-licenses/GPL-3
if [[ ! -s "$TEXT" ]]; then
  TEXT="$ROOT/out/demo/text.txt"
  mkdir -p out/demo
  cat docs/*.md README.md >"$TEXT"
fi
say "byte-level token shards from $TEXT into data/demo/"
"$VD" prepare-data --in "$TEXT" --out data/demo --val_fraction 0.1 --overwrite

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
say "training on 2 MPI ranks: ${MPIRUN[*]} build/vera-dist --config configs/demo.ini ${FRESH[*]} $*"
"${MPIRUN[@]}" "$VD" --config configs/demo.ini "${FRESH[@]}" "$@"

# where did it write? (out_dir may be overridden on the command line)
OUT_DIR=$(sed -n -E 's/^[[:space:]]*out_dir[[:space:]]*=[[:space:]]*([^;#[:space:]]+).*/\1/p' configs/demo.ini | tail -n 1)
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --out_dir) OUT_DIR="${args[$((i + 1))]:-$OUT_DIR}" ;;
    --out_dir=*) OUT_DIR="${args[$i]#--out_dir=}" ;;
  esac
done
[[ "$OUT_DIR" == /* ]] || OUT_DIR="$ROOT/$OUT_DIR"
METRICS="$OUT_DIR/metrics.jsonl"
field() { sed -n -E "s/.*\"$1\": *([^,}]+).*/\1/p" "$METRICS"; }
first=$(field loss | head -n 1)
last=$(field loss | tail -n 1)
steps=$(wc -l <"$METRICS")
val=$(field val_loss | tr '\n' ' ')

say "done"
echo "metrics:  $METRICS  ($steps rows, one JSON object per optimizer step)"
echo "adapter:  $OUT_DIR/adapter_final.safetensors"
echo "loss:     first step $first -> last step $last"
[[ -n "$val" ]] && echo "val loss: $val"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' ||
  { echo "demo: the loss did not fall ($first -> $last)" >&2; exit 1; }
