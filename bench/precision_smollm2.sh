#!/usr/bin/env bash
# precision_smollm2.sh: --precision bf16 against fp32 on the real SmolLM2-135M-Instruct (30 Llama
# blocks, GQA, all-linear VeRA r = 256), one rank, 20 steps of 2 x 64 tokens of the shipped
# GPL-3 shards: each step's loss and the final validation loss, relative difference, and the
# wall time of each run. Too slow for the test suite on 2 cores (~7 min a run); the tiny-model
# version is tests/integration/precision_bf16.sh. Results: docs/benchmarks.md,
# "bf16 on SmolLM2-135M".
#   usage: bash bench/precision_smollm2.sh BUILD_DIR [OUT_DIR]
# The GGUF: $VERA_SMOLLM2_GGUF, else ~/.cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf
# (launch/fetch-smollm2.sh downloads it).
set -euo pipefail
BUILD="${1:?usage: bash bench/precision_smollm2.sh BUILD_DIR [OUT_DIR]}"
OUT="${2:-$(mktemp -d "${TMPDIR:-/tmp}/vera-precision-smollm2.XXXXXX")}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
GGUF="${VERA_SMOLLM2_GGUF:-$HOME/.cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[[ -f "$GGUF" ]] || { echo "no SmolLM2 GGUF at $GGUF (run launch/fetch-smollm2.sh)" >&2; exit 1; }
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
cd "$REPO"
for p in fp32 bf16; do
  t0=$SECONDS
  "$BUILD/vera-dist" --config configs/smollm2-demo.ini --model "$GGUF" --out_dir "$OUT/$p" --seq_len 64 \
    --batch_size 2 --max_steps 20 --warmup_steps 3 --log_every 1 --eval_every 20 --eval_seqs 5 --threads 1 \
    --resume none --ckpt_every 0 --precision "$p" > "$OUT/$p.log" 2>&1 || { tail "$OUT/$p.log" >&2; exit 1; }
  echo "$p: $((SECONDS - t0)) s"
done
field() { grep -o "\"$2\": *[0-9.e+-]*" "$1" | sed 's/.*: *//'; }
paste <(field "$OUT/fp32/metrics.jsonl" loss) <(field "$OUT/bf16/metrics.jsonl" loss) | awk '
  { d = ($2 - $1) / $1; if (d < 0) d = -d; if (d > m) m = d; printf("step %2d  fp32 %s  bf16 %s  rel %.2e\n", NR, $1, $2, d) }
  END { printf("max relative difference over %d steps: %.2e\n", NR, m) }'
echo "val_loss fp32 $(field "$OUT/fp32/metrics.jsonl" val_loss)  bf16 $(field "$OUT/bf16/metrics.jsonl" val_loss)"
