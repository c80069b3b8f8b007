#!/usr/bin/env bash
# gpu_train: vera-dist training on the CUDA backend against the CPU backend, end to end.
#   usage: bash tests/gpu/gpu_train.sh PATH/TO/vera-dist
#  * parity: 20 steps --device cuda vs --device cpu, same everything: loss and val_loss at every
#    step within 1e-4 relative (fp32), without dropout and with vera_dropout 0.1 (the GPU
#    reproduces the CPU's dropout mask bit for bit), with the merged and the factored input
#    gradient (VERA_WEFF=always / never), with both attention paths (cuBLAS GEMMs, the default,
#    and VERA_CUDA_ATTENTION=kernel);
#  * determinism: the same cuda run twice gives bit-identical losses and adapter files;
#  * data parallel: 2 ranks x grad_accum 1 vs 1 rank x grad_accum 2 on cuda, within 1e-5
#    relative, vectors identical on both ranks. With one GPU the two ranks share it and the
#    all-reduce goes through MPI on host copies (NCCL refuses two ranks on one GPU); with two
#    or more GPUs it is NCCL. The 1-rank runs above use the single-rank NCCL path. Which path
#    ran is printed; VERA_GPU_TEST_REQUIRE_NCCL2=1 makes a 2-rank run without NCCL a failure;
#  * checkpoints across devices: a cuda run's step-10 checkpoint resumed on cpu, and a cpu
#    run's resumed on cuda, continue their runs within 1e-4 relative.
#  * precision: --precision bf16 on cuda vs bf16 on cpu within 1e-3 relative (the same bf16
#    products; a last-bit difference can move a value across a bf16 rounding boundary) and vs
#    fp32 on cpu within 1 % (the bf16 loss curve); two bf16 cuda runs bit-identical;
#    --precision tf32 within 1e-3 of fp32 on cpu.
# Exit 77 ("SKIPPED: ...") when vera-dist cannot use a CUDA device here.
# Environment: VERA_GPU_TEST_PARTS (default "parity determinism ranks resume precision") selects parts;
# VERA_GPU_TEST_SIZE=small uses a smaller model and batch (the host emulation of CUDA is slow).
source "$(dirname "$0")/../integration/common.sh"

PARTS="${VERA_GPU_TEST_PARTS:-parity determinism ranks resume precision}"
want() { [[ " $PARTS " == *" $1 "* ]]; }
STEPS=20
# VD_TEST_ARCH=llama: the same parts on a Llama model (GQA: key/value heads = heads / 2)
ARCH_ARGS=()
if [[ "${VD_TEST_ARCH:-gpt2}" == llama ]]; then ARCH_ARGS=(--arch llama --kv-heads 1); fi
if [[ "${VERA_GPU_TEST_SIZE:-}" == small ]]; then
  make_model "$TMP/model" 2 2 32 256 64 "${ARCH_ARGS[@]}"
  SHAPE=(--batch_size 2 --seq_len 32)
else
  [[ ${#ARCH_ARGS[@]} -gt 0 ]] && ARCH_ARGS[3]=2
  make_model "$TMP/model" 2 4 64 256 64 "${ARCH_ARGS[@]}"
  SHAPE=(--batch_size 4 --seq_len 64)
fi
make_data "$TMP/data" 60000
COMMON=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data "$TMP/data/val_*.bin"
        "${SHAPE[@]}" --max_steps "$STEPS" --warmup_steps 2 --lr 2e-2 --r 16
        --target_modules all --eval_every 5 --eval_seqs 8 --threads 1 --log_every 5 --ckpt_every 10)

# is there a GPU this build can use? (one step; its error line is the reason)
rc=0; run_logged "$TMP/probe.log" "$VD" "${COMMON[@]}" --max_steps 1 --warmup_steps 1 --device cuda \
  --out_dir "$TMP/probe" || rc=$?
if [[ $rc -ne 0 ]]; then
  reason="$(grep -E "$ERR_RE" "$TMP/probe.log" | head -n 1)"
  if grep -q "no CUDA device is available" <<<"$reason"; then
    echo "SKIPPED: no CUDA device ($(sed -E 's/.*no CUDA device is available \((.*)\) \(HINT.*/\1/' <<<"$reason"))"
    exit 77
  fi
  if grep -q "has no CUDA backend" <<<"$reason"; then
    echo "SKIPPED: this vera-dist was built without the CUDA backend (VERA_CUDA=OFF or no toolkit)"
    exit 77
  fi
  cat "$TMP/probe.log" >&2
  fail "--device cuda failed for another reason than a missing device"
fi
grep -E "^cuda: " "$TMP/probe.log" | sed 's/^/  /'

# run NAME NP DEVICE GRAD_ACCUM [args...]
run() {
  local name="$1" np="$2" dev="$3" ga="$4"; shift 4
  vd_mpirun "$np" "$TMP/$name.log" "${COMMON[@]}" --device "$dev" --grad_accum "$ga" --out_dir "$TMP/$name" "$@"
  grep -q "identical on all $np ranks" "$TMP/$name.log" || { cat "$TMP/$name.log" >&2; fail "$name: no final line"; }
}

# parity, fp32 (the cpu and cuda runs are also what the other parts compare against)
run cpu 1 cpu 2
run cuda 1 cuda 2
grep -q "backend cuda" "$TMP/cuda.log" || fail "the cuda run did not use the cuda backend"
grep -q "gradient all-reduce with NCCL" "$TMP/cuda.log" || fail "the 1-rank cuda run did not take the NCCL path"
compare_losses "$TMP/cpu/metrics.jsonl" "$TMP/cuda/metrics.jsonl" 1e-4 "cuda vs cpu, 20 steps"
first=$(metrics_field "$TMP/cuda/metrics.jsonl" loss | head -n 1)
last=$(metrics_field "$TMP/cuda/metrics.jsonl" loss | tail -n 1)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1e-3) }' || fail "cuda loss did not move: $first -> $last"
if want parity; then
  # the run above used VERA_WEFF=auto; cover the other input-gradient path(s) too
  merged="$(sed -n 's/^input gradient: merged W0+dW on \([0-9]*\) of \([0-9]*\) adapted layers.*/\1 \2/p' "$TMP/cuda.log")"
  read -r m_on m_all <<<"${merged:-0 1}"
  others=()
  [[ $m_on -ne $m_all ]] && others+=(always)
  [[ $m_on -ne 0 ]] && others+=(never)
  for w in "${others[@]}"; do
    VERA_WEFF=$w run "cpu_$w" 1 cpu 2
    VERA_WEFF=$w run "cuda_$w" 1 cuda 2
    compare_losses "$TMP/cpu_$w/metrics.jsonl" "$TMP/cuda_$w/metrics.jsonl" 1e-4 "cuda vs cpu, VERA_WEFF=$w"
  done
  VERA_CUDA_ATTENTION=kernel run cuda_attn_kernel 1 cuda 2
  compare_losses "$TMP/cpu/metrics.jsonl" "$TMP/cuda_attn_kernel/metrics.jsonl" 1e-4 \
    "cuda (direct attention kernels) vs cpu"
  run cpu_drop 1 cpu 2 --vera_dropout 0.1
  run cuda_drop 1 cuda 2 --vera_dropout 0.1
  compare_losses "$TMP/cpu_drop/metrics.jsonl" "$TMP/cuda_drop/metrics.jsonl" 1e-4 "cuda vs cpu, vera_dropout 0.1"
fi

if want determinism; then
  run cuda_again 1 cuda 2
  cmp -s <(metrics_field "$TMP/cuda/metrics.jsonl" loss) <(metrics_field "$TMP/cuda_again/metrics.jsonl" loss) ||
    fail "two identical cuda runs: losses differ"
  cmp -s "$TMP/cuda/adapter_final.safetensors" "$TMP/cuda_again/adapter_final.safetensors" ||
    fail "two identical cuda runs: adapter files differ"
  note "two identical cuda runs: bit-identical losses and adapters"
fi

if want ranks; then
  run cuda_np2 2 cuda 1
  path="$(grep -o -E "gradient all-reduce with (NCCL|MPI)" "$TMP/cuda_np2.log" | head -n 1)"
  note "2 ranks: ${path:-?} ($(grep -c '^cuda: rank' "$TMP/cuda_np2.log") GPU lines)"
  grep -E "^cuda: rank" "$TMP/cuda_np2.log" | sed 's/^/  /'
  if [[ "${VERA_GPU_TEST_REQUIRE_NCCL2:-0}" == 1 && "$path" != *NCCL ]]; then
    fail "2 ranks did not use NCCL (VERA_GPU_TEST_REQUIRE_NCCL2=1)"
  fi
  compare_losses "$TMP/cuda/metrics.jsonl" "$TMP/cuda_np2/metrics.jsonl" 1e-5 "cuda: 2 ranks ga 1 vs 1 rank ga 2"
fi

if want resume; then
  # checkpoints across devices: resume the other device from step 10
  for pair in "cuda cpu" "cpu cuda"; do
    read -r from to <<<"$pair"
    ck="$TMP/$from/checkpoints/step_00000010.h5"
    [[ -f "$ck" ]] || fail "no step-10 checkpoint in the $from run"
    vd_mpirun 1 "$TMP/resume_$to.log" "${COMMON[@]}" --device "$to" --grad_accum 2 --out_dir "$TMP/resume_$to" \
      --resume "$ck"
    grep -q "resume: continuing from .* at step 10" "$TMP/resume_$to.log" || fail "$from -> $to: did not resume at step 10"
    tail -n 10 "$TMP/$from/metrics.jsonl" > "$TMP/${from}_tail.jsonl"
    compare_losses "$TMP/${from}_tail.jsonl" "$TMP/resume_$to/metrics.jsonl" 1e-4 "$from checkpoint resumed on $to"
  done
fi
if want precision; then
  run cpu_bf16 1 cpu 2 --precision bf16
  run cuda_bf16 1 cuda 2 --precision bf16
  grep -q "^precision: bf16" "$TMP/cuda_bf16.log" || fail "the cuda bf16 run does not say bf16"
  compare_losses "$TMP/cpu_bf16/metrics.jsonl" "$TMP/cuda_bf16/metrics.jsonl" 1e-3 "cuda bf16 vs cpu bf16"
  compare_losses "$TMP/cpu/metrics.jsonl" "$TMP/cuda_bf16/metrics.jsonl" 1e-2 "cuda bf16 vs cpu fp32 (loss curve)"
  run cuda_bf16_again 1 cuda 2 --precision bf16
  cmp -s <(metrics_field "$TMP/cuda_bf16/metrics.jsonl" loss) <(metrics_field "$TMP/cuda_bf16_again/metrics.jsonl" loss) ||
    fail "two identical cuda bf16 runs: losses differ"
  run cuda_tf32 1 cuda 2 --precision tf32
  compare_losses "$TMP/cpu/metrics.jsonl" "$TMP/cuda_tf32/metrics.jsonl" 1e-3 "cuda tf32 vs cpu fp32"
fi
note "PASS ($PARTS)"
