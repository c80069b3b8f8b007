#!/usr/bin/env bash
# bench/demo_compare.sh: ./launch/demo.sh's training against PEFT doing the same (bench/demo_peft.py),
# one after the other on the same machine: wall time of the training steps and the validation loss
# on MPL-2.0 every EVAL steps. Needs the demo's shards (run ./launch/demo.sh once) and the venv.
#   bench/demo_compare.sh [VERA_DIST_BIN] [STEPS] [EVAL] [extra vera-dist options...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VD="${1:-build/vera-dist}"; STEPS="${2:-48}"; EVAL="${3:-12}"; shift $(( $# < 3 ? $# : 3 ))
GGUF="${VERA_DEMO_GGUF:-$HOME/.cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
PY="${VERA_VENV:-$HOME/.cache/vera-dist/venv}/bin/python"
OUT="${TMPDIR:-/tmp}/vera-demo-compare"
mkdir -p "$OUT"
source launch/demo-common.sh
VD="$(cd "$(dirname "$VD")" && pwd)/$(basename "$VD")"
demo_mpi_setup
# the kernel vera-dist runs (it restarts itself with OPENBLAS_CORETYPE where OpenBLAS picks a weak one)
echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); $("$VD" --version)"
t0=$SECONDS
"${MPIRUN[@]}" "$VD" --config configs/demo.ini --model "$GGUF" --max_steps "$STEPS" --eval_every "$EVAL" \
  --out_dir "$OUT/vd" "${FRESH[@]}" "$@" >"$OUT/vd.log" 2>&1
vd_s=$((SECONDS - t0))
echo "vera-dist: $vd_s s for $STEPS steps (process wall time, incl. start-up and evals)"
grep -o '"step": [0-9]*\|"val_loss": [0-9.]*' "$OUT/vd/metrics.jsonl" | paste - - 2>/dev/null | grep val_loss || true
sed -n 's/.*"ms": \([0-9.]*\).*/\1/p' "$OUT/vd/metrics.jsonl" | sort -n | awk '{a[NR]=$1} END {print "vera-dist median step ms: " a[int((NR+1)/2)]}'
OMP_WAIT_POLICY=passive "$PY" bench/demo_peft.py --gguf "$GGUF" --steps "$STEPS" --eval_every "$EVAL" --threads 2 \
  --json "$OUT/peft.json" | tee "$OUT/peft.log" | grep -v '^step [0-9]* loss' || true
