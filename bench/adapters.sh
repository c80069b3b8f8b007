#!/usr/bin/env bash
# adapters.sh: the side-by-side table of docs/adapters.md ("Side by side"). One model (the real
# SmolLM2-135M-Instruct GGUF, all linear layers), the demo's data (Debian's licenses to train on,
# MPL-2.0 to validate on, tokenized as launch/demo.sh does) and the demo's batch (configs/demo.ini:
# 2 ranks x 2 sequences of 256 tokens), the same number of optimizer steps for every method:
#
#   vera-256     VeRA r 256 (the demo's setting), lr 2e-2
#   vera-1024    VeRA r 1024, lr 2e-2
#   vblora       VB-LoRA, PEFT's defaults (r 4, 256 vectors, top-2) but vectors of length 64 (SmolLM2's
#                widths 576, 192, 1536 are not multiples of 256), lr 1e-2 / bank 1e-3
#   vblora-2048  VB-LoRA with the paper's bank of 2048 vectors, otherwise the same
#   lora-16      LoRA r 16, lora_alpha 32, lr 1e-3
#
# (each method at its usual learning rate: a shared one would favour one method). Reports per
# method: trainable parameters (the trainer's log), all-reduce bytes per step (metrics.jsonl),
# the final checkpoint's size, the PEFT export's adapter_model.safetensors size (VB-LoRA also with
# save_only_topk_weights), training tokens/s (median over the steps after the first two) and the
# validation loss after the run (vera-dist eval --checkpoint on MPL-2.0), plus the pretrained
# model's validation loss. A method this build lacks (vblora before it lands) is reported as such.
#
#   bench/adapters.sh BUILD_DIR [STEPS]     (default 12 steps: about a minute per method on 2 cores)
#
# Longer, closer to converged: bench/adapters.sh build 48 (one epoch of the training text).
set -euo pipefail
BUILD="${1:?usage: bench/adapters.sh BUILD_DIR [STEPS]}"
STEPS="${2:-12}"
[[ "$BUILD" == /* ]] || BUILD="$(pwd)/$BUILD"
VD="$BUILD/vera-dist"
source "$(dirname "${BASH_SOURCE[0]}")/../launch/demo-common.sh"   # cd to the root; say, demo_mpi_setup
[[ -x "$VD" ]] || { echo "adapters: $VD is not an executable" >&2; exit 1; }
GGUF="${VERA_DEMO_GGUF:-$(./launch/fetch-smollm2.sh | tail -n 1)}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/vera-adapters.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
demo_mpi_setup   # MPIRUN (2 ranks), FRESH

# the demo's shards (launch/demo.sh, step 3)
LICENSES=/usr/share/common-licenses
TRAIN_IN=()
for f in "$LICENSES"/*; do
  [[ -f "$f" && ! -L "$f" && "$(basename "$f")" != MPL-2.0 ]] && TRAIN_IN+=(--in "$f")
done
"$VD" prepare-data --tokenizer "$GGUF" "${TRAIN_IN[@]}" --out "$TMP/train" --val_fraction 0 >/dev/null
"$VD" prepare-data --tokenizer "$GGUF" --in "$LICENSES/MPL-2.0" --out "$TMP/val" --val_fraction 0 >/dev/null

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores; $("$VD" --version | head -n 1)"
echo "model: $GGUF; $STEPS steps of 2 ranks x 2 x 256 tokens; $(date -u +%Y-%m-%dT%H:%MZ)"

json_field() { sed -n -E "s/.*\"$2\": *([^,}]+).*/\1/p" "$1" | head -n 1; }
"${MPIRUN[@]}" "$VD" eval --model "$GGUF" --data "$TMP/val/train_*.bin" --seq_len 256 --json >"$TMP/eval0.json"
echo "pretrained validation loss: $(json_field "$TMP/eval0.json" loss)"

declare -A ARGS=(
  [vera-256]="--adapter_type vera --r 256 --lr 2e-2"
  [vera-1024]="--adapter_type vera --r 1024 --lr 2e-2"
  [vblora]="--adapter_type vblora --r 4 --num_vectors 256 --vector_length 64 --topk 2 --lr 1e-2 --lr_vector_bank 1e-3"
  [vblora-2048]="--adapter_type vblora --r 4 --num_vectors 2048 --vector_length 64 --topk 2 --lr 1e-2 --lr_vector_bank 1e-3"
  [lora-16]="--adapter_type lora --r 16 --lora_alpha 32 --lr 1e-3"
)
printf '\n| method | trainable parameters | all-reduce bytes / step | checkpoint bytes | PEFT export bytes | tokens/s | validation loss |\n'
printf '|---|---|---|---|---|---|---|\n'
for m in vera-256 vera-1024 vblora vblora-2048 lora-16; do
  out="$TMP/$m"
  # shellcheck disable=SC2086
  if ! "${MPIRUN[@]}" "$VD" --config configs/demo.ini --model "$GGUF" --train_data "$TMP/train/train_*.bin" \
      --val_data "" --eval_every 0 --out_dir "$out" --max_steps "$STEPS" --log_every 1000 "${FRESH[@]}" ${ARGS[$m]} \
      >"$TMP/$m.log" 2>&1; then
    why="$(grep -m1 "vera-dist: error" "$TMP/$m.log" | sed "s/^.*error[^:]*: //")"
    printf '| %s | not run: %s | | | | | |\n' "$m" "${why:-see the log}"
    continue
  fi
  n=$(sed -n 's/^trainable parameters: \([0-9]*\).*/\1/p' "$TMP/$m.log" | head -n 1)
  bytes=$(json_field "$out/metrics.jsonl" allreduce_bytes)
  ck="$(ls -1 "$out"/checkpoints/step_*.h5 | sort | tail -n 1)"
  ckb=$(stat -c %s "$ck")
  "$VD" export --checkpoint "$ck" --format peft --out "$TMP/$m-peft" --model "$GGUF" >/dev/null
  exb=$(stat -c %s "$TMP/$m-peft/adapter_model.safetensors")
  if [[ $m == vblora* ]] && "$VD" export --help 2>&1 | grep -q save_only_topk_weights; then
    "$VD" export --checkpoint "$ck" --format peft --out "$TMP/$m-topk" --model "$GGUF" --save_only_topk_weights 1 >/dev/null
    exb="$exb (top-k only: $(stat -c %s "$TMP/$m-topk/adapter_model.safetensors"))"
  fi
  # tokens/s per step = 2 ranks x 2 x 256 tokens / its time; the median of steps 3..STEPS
  toks=$(tail -n +3 "$out/metrics.jsonl" | sed -n -E 's/.*"ms": *([0-9.]+).*/\1/p' | sort -g |
         awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.0f", 1024 / (m / 1000) }')
  "${MPIRUN[@]}" "$VD" eval --model "$GGUF" --checkpoint "$ck" --data "$TMP/val/train_*.bin" --seq_len 256 --json \
    >"$TMP/$m-eval.json"
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$m" "$n" "$bytes" "$ckb" "$exb" "$toks" \
    "$(json_field "$TMP/$m-eval.json" loss)"
done
