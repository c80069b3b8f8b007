#!/usr/bin/env bash
# recompute.sh: activation recomputation (recompute = block) against none, side by side in one
# run: peak RSS (/usr/bin/time -v, "Maximum resident set size") and the mean step time of steps
# 2-3 (metrics.jsonl "ms"; step 1 also pays first-touch page faults) for GPT-2 small's shape
# (12 layers, 768 wide, vocab 50257, random weights, context 2048 so that T = 2048 fits; byte-level
# shards of the GPL-3 text) and the real SmolLM2-135M-Instruct GGUF (its shipped GPL-3 shards),
# VeRA r = 256 on every linear layer, batch 1, T = 1024 and 2048, 3 steps each, one rank, one
# thread. Results: docs/benchmarks.md, "Activation recomputation".
#   usage: bash bench/recompute.sh BUILD_DIR [OUT_DIR]
# The GGUF: $VERA_SMOLLM2_GGUF, else ~/.cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf
# (launch/fetch-smollm2.sh downloads it). VERA_RECOMPUTE_T="1024" restricts the lengths.
set -euo pipefail
BUILD="${1:?usage: bash bench/recompute.sh BUILD_DIR [OUT_DIR]}"
BUILD="$(cd "$BUILD" && pwd)"
OUT="${2:-$(mktemp -d "${TMPDIR:-/tmp}/vera-recompute.XXXXXX")}"
mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
GGUF="${VERA_SMOLLM2_GGUF:-$HOME/.cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[[ -f "$GGUF" ]] || { echo "no SmolLM2 GGUF at $GGUF (run launch/fetch-smollm2.sh)" >&2; exit 1; }
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
VD="$BUILD/vera-dist"
cd "$REPO"

# GPT-2 small's shape with random weights, and byte-level data (ids < 256 fit any vocab)
[[ -f "$OUT/gpt2s/config.json" ]] || "$VD" init-model --out "$OUT/gpt2s" --layers 12 --heads 12 --dim 768 \
  --vocab 50257 --ctx 2048 --seed 7 > "$OUT/init.log" 2>&1
[[ -d "$OUT/bytes" ]] || "$VD" prepare-data --in /usr/share/common-licenses/GPL-3 --out "$OUT/bytes" \
  --val_fraction 0.1 > "$OUT/prep.log" 2>&1

field() { grep -o "\"$2\": *[0-9.e+-]*" "$1" | sed 's/.*: *//'; }
printf "%-8s %5s %-6s %10s %12s %10s\n" model T mode "RSS MiB" "step ms" "est GiB"
for model in gpt2s smollm2; do
  if [[ $model == gpt2s ]]; then M="$OUT/gpt2s"; DATA="$OUT/bytes/train_*.bin"
  else M="$GGUF"; DATA="launch/data/smollm2-gpl3/train_*.bin"; fi
  for T in ${VERA_RECOMPUTE_T:-1024 2048}; do
    for mode in none block; do
      run="$OUT/$model.$T.$mode"
      /usr/bin/time -v "$VD" --model "$M" --train_data "$DATA" --out_dir "$run" --overwrite 1 --resume none \
        --target_modules all --r 256 --seq_len "$T" --batch_size 1 --grad_accum 1 --max_steps 3 --warmup_steps 1 \
        --threads 1 --ckpt_every 0 --recompute "$mode" > "$run.log" 2>&1 || { tail "$run.log" >&2; exit 1; }
      rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$run.log")
      ms=$(field "$run/metrics.jsonl" ms | tail -n 2 | awk '{ s += $1 } END { printf("%.0f", s / NR) }')
      est=$("$VD" inspect --model "$M" --target_modules all --r 256 --seq_len "$T" --batch_size 1 --recompute "$mode" \
        2>/dev/null | sed -n 's/.*total \([0-9.]*\) GiB.*/\1/p')
      printf "%-8s %5s %-6s %10d %12s %10s\n" "$model" "$T" "$mode" $((rss_kb / 1024)) "$ms" "$est"
      echo "loss $(field "$run/metrics.jsonl" loss | tr '\n' ' ')" >> "$OUT/losses.$model.$T.txt"
    done
    # the two runs must have computed the same thing (recompute_exact.sh checks it on tiny models)
    [[ $(sort -u "$OUT/losses.$model.$T.txt" | wc -l) -eq 1 ]] || echo "WARNING: $model T=$T losses differ"
    rm -f "$OUT/losses.$model.$T.txt"
  done
done
