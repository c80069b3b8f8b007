#!/usr/bin/env bash
# packing.sh: training throughput on the same instruction examples, unpacked (pack 0: one
# example per sequence, the rest padding) and packed (pack 1: several examples per sequence,
# positions restarting, attention bounded). Reports tokens processed per second (what the
# trainer logs), target tokens per second and examples per second, plus the CPU and the
# OpenBLAS kernel. docs/benchmarks.md, "Packing", has the numbers from this machine.
#
#   bench/packing.sh BUILD_DIR [STEPS]     (BUILD_DIR holds vera-dist and tests/make_sft_shards)
#
# Shape: GPT-2, 4 layers x 256, 4 heads, vocab 512, seq_len 256, batch 4, VeRA r 64 on all four
# layer types, 1 rank, 2 threads; 2000 examples of 16..160 tokens (prompt masked).
set -euo pipefail
BUILD="${1:?usage: bench/packing.sh BUILD_DIR [STEPS]}"
STEPS="${2:-20}"
VD="$BUILD/vera-dist"
MAKE="$BUILD/tests/make_sft_shards"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/vera-packing.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
[[ $(id -u) -eq 0 ]] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

"$VD" init-model --out "$TMP/model" --layers 4 --heads 4 --dim 256 --vocab 512 --ctx 256 --seed 7 >/dev/null
"$MAKE" "$TMP/sft" 2000 512 3 16 160 >/dev/null
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores"
python3 - "$VD" <<'EOF' 2>/dev/null || true
import ctypes, subprocess, sys
for line in subprocess.run(["ldd", sys.argv[1]], capture_output=True, text=True).stdout.splitlines():
    if "openblas" in line and "=>" in line:
        lib = ctypes.CDLL(line.split("=>")[1].split()[0])
        lib.openblas_get_corename.restype = ctypes.c_char_p
        print(f"openblas: {line.split('=>')[1].split()[0]}, kernel {lib.openblas_get_corename().decode()}")
EOF
for pack in 0 1; do
  out="$TMP/p$pack"
  "$VD" train --model "$TMP/model" --train_data "$TMP/sft/train_*.bin" --pack "$pack" --batch_size 4 --seq_len 256 \
    --max_steps "$STEPS" --warmup_steps 2 --r 64 --target_modules all --threads 2 --log_every 1000 \
    --ckpt_every 0 --out_dir "$out" --resume none --overwrite 1 >"$TMP/p$pack.log" 2>&1 || { cat "$TMP/p$pack.log"; exit 1; }
  seqs=$(sed -n 's/^data: .*: \([0-9][0-9]*\) sequences of .*/\1/p' "$TMP/p$pack.log" | head -n 1)
  # steady state: skip the first 2 steps; ms, targets per step from metrics.jsonl
  tail -n +3 "$out/metrics.jsonl" | awk -v pack="$pack" -v seqs="$seqs" -v S=4 -v T=256 '
    { match($0, /"ms": [0-9.]+/); ms += substr($0, RSTART + 6, RLENGTH - 6) + 0;
      match($0, /"targets": [0-9]+/); tg += substr($0, RSTART + 11, RLENGTH - 11) + 0; n++ }
    END { s = ms / 1000; ex_per_seq = 2000 / seqs;
          printf("pack %d: %d sequences per epoch (%.2f examples each); %d steps: %.0f tokens/s, %.0f target tokens/s, %.1f examples/s, %.0f ms/step\n",
                 pack, seqs, ex_per_seq, n, n * S * T / s, tg / s, n * S * ex_per_seq / s, ms / n) }'
done
