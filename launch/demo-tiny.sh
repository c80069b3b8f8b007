#!/usr/bin/env bash
# demo-tiny.sh: the fast demo (about a minute): a tiny random GPT-2 on bytes. ./launch/demo.sh is
# the main one (a real pretrained model, real adaptation, a few minutes).
#   1. installs the missing Debian packages (launch/install-deps.sh),
#   2. builds vera-dist (Release) into build/,
#   3. writes a tiny random GPT-2 into out/demo-tiny/model (vera-dist init-model),
#   4. turns a text file into byte-level token shards in data/demo-tiny/ (vera-dist prepare-data),
#   5. trains VeRA adapters on 2 MPI ranks with configs/demo-tiny.ini (about a minute on 2 cores),
#   6. prints where the metrics are and how the loss moved.
# Rerunning it replaces the previous demo outputs. Extra arguments go to the trainer, e.g.
#   ./launch/demo-tiny.sh --max_steps 50
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/demo-common.sh"   # cd to the repository root; ROOT, say

demo_install_and_build   # sets VD

say "writing a tiny random GPT-2 to out/demo-tiny/model"
"$VD" init-model --out out/demo-tiny/model --layers 4 --heads 4 --dim 256 --vocab 256 --ctx 128 --seed 1 --overwrite

TEXT=/usr/share/common-licenses/GPL-3
if [[ ! -s "$TEXT" ]]; then
  TEXT="$ROOT/out/demo-tiny/text.txt"
  mkdir -p out/demo-tiny
  cat docs/*.md README.md >"$TEXT"
fi
say "byte-level token shards from $TEXT into data/demo-tiny/"
"$VD" prepare-data --in "$TEXT" --out data/demo-tiny --val_fraction 0.1 --overwrite

demo_mpi_setup   # sets MPIRUN, FRESH
say "training on 2 MPI ranks: ${MPIRUN[*]} build/vera-dist --config configs/demo-tiny.ini ${FRESH[*]} $*"
"${MPIRUN[@]}" "$VD" --config configs/demo-tiny.ini "${FRESH[@]}" "$@"

# where did it write? (out_dir may be overridden on the command line)
OUT_DIR=$(demo_out_dir configs/demo-tiny.ini "$@")
METRICS="$OUT_DIR/metrics.jsonl"
field() { demo_field "$METRICS" "$1"; }
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
