#!/usr/bin/env bash
# sft_smollm2: the user's path from a JSONL of conversations to a trained VeRA adapter for the real
# SmolLM2-135M-Instruct that they can talk to, with no Python:
#  * prepare-data --tokenizer GGUF on a JSONL holding all three formats (messages,
#    prompt/completion, Alpaca) -> v2 shards with loss flags on the assistant turns only;
#  * 4 steps on 2 ranks with pack 1, then the same 4 steps on 1 rank with grad_accum 2 (the same
#    global batch): the step losses and the targets per step agree (the mean over the target
#    tokens of the global batch does not depend on the split), and targets < tokens (masking);
#  * eval --checkpoint on the validation shards on 2 ranks equals the trainer's last val_loss;
#  * generate --checkpoint --chat answers (JSON with new ids and text) and stops within the limit.
# Skipped (77) when the GGUF is not available and cannot be downloaded. About a minute on 2 cores.
source "$(dirname "$0")/common.sh"
# shellcheck disable=SC2034 # read by vd_mpirun in common.sh
MPI_TIMEOUT="${VERA_TEST_TIMEOUT:-300}"

GGUF="${VERA_SMOLLM2_GGUF:-}"
if [[ -z "$GGUF" ]]; then
  rc=0
  GGUF="$(bash "$REPO_ROOT/launch/fetch-smollm2.sh" 2>"$TMP/fetch.log" | tail -n 1)" || rc=$?
  if [[ $rc -eq 3 ]]; then
    echo "SKIP [$TEST_NAME]: the SmolLM2 GGUF is not available and downloading it failed: $(tail -n 2 "$TMP/fetch.log" | tr '\n' ' ')"
    exit 77
  fi
  [[ $rc -eq 0 ]] || { cat "$TMP/fetch.log" >&2; fail "launch/fetch-smollm2.sh failed (exit $rc)"; }
fi
[[ -f "$GGUF" ]] || fail "no GGUF file at '$GGUF'"

# ---- instruction data: 12 examples in the three formats ----
J="$TMP/chats.jsonl"
: >"$J"
for i in 1 2 3 4; do
  cat >>"$J" <<EOF
{"messages": [{"role": "user", "content": "Which license is number $i in the list?"}, {"role": "assistant", "content": "License number $i is the GNU General Public License, version $i."}]}
{"prompt": "May I copy program $i?", "completion": "Yes: program $i is free software, and you may copy it under the terms of its license."}
{"instruction": "Summarise the license of program $i.", "input": "Program $i uses the MIT license.", "output": "Program $i may be used, copied and changed by anyone, as long as the notice is kept."}
EOF
done
vd_run "$TMP/prep.log" prepare-data --tokenizer "$GGUF" --in "$J" --out "$TMP/sft" --val_fraction 0.25
note "$(tail -n 1 "$TMP/prep.log")"
ls "$TMP"/sft/train_*.bin "$TMP"/sft/val_*.bin >/dev/null 2>&1 || fail "prepare-data wrote no train and val shards"

COMMON=(--model "$GGUF" --train_data "$TMP/sft/train_*.bin" --val_data "$TMP/sft/val_*.bin" --pack 1
        --seq_len 128 --r 32 --target_modules all-linear --lr 2e-2 --warmup_steps 1 --max_steps 4
        --eval_every 4 --eval_seqs 64 --log_every 1 --threads 1 --resume none)
vd_mpirun 2 "$TMP/np2.log" "${COMMON[@]}" --batch_size 1 --grad_accum 1 --out_dir "$TMP/np2"
vd_mpirun 1 "$TMP/np1.log" "${COMMON[@]}" --batch_size 1 --grad_accum 2 --out_dir "$TMP/np1"
M2="$TMP/np2/metrics.jsonl" M1="$TMP/np1/metrics.jsonl"
[[ $(wc -l <"$M2") -eq 4 && $(wc -l <"$M1") -eq 4 ]] || fail "expected 4 metrics rows in each run"
paste <(metrics_field "$M2" loss) <(metrics_field "$M1" loss) <(metrics_field "$M2" targets) \
      <(metrics_field "$M1" targets) <(metrics_field "$M2" tokens) >"$TMP/cmp.txt"
awk '{ d = $1 - $2; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2);
       if (!($1 > 0 && $1 < 20) || r > 1e-5 || $3 != $4 || !($3 > 0)) { print "step " NR ": " $0 > "/dev/stderr"; bad = 1 } }
     END { exit bad }' "$TMP/cmp.txt" || fail "np 2 and np 1 x grad_accum 2 disagree (loss, targets) or a loss is not sane"
# targets (tokens with a loss) are fewer than the tokens seen: prompts, headers and padding take none
awk 'NR == 4 { exit !($3 < $5) }' "$TMP/cmp.txt" || fail "no masking: targets $(awk 'NR==4{print $3}' "$TMP/cmp.txt") vs tokens $(awk 'NR==4{print $5}' "$TMP/cmp.txt")"
note "losses $(metrics_field "$M2" loss | tr '\n' ' ')(np 2 = np 1 x grad_accum 2); targets per step $(metrics_field "$M2" targets | head -n 1)"

# ---- eval of the checkpoint = the trainer's last validation loss ----
CKPT="$(ls -1 "$TMP/np2/checkpoints/"step_*.h5 2>/dev/null | sort | tail -n 1)"
[[ -n "$CKPT" ]] || fail "no checkpoint in $TMP/np2/checkpoints"
vd_mpirun 2 "$TMP/eval.log" eval --model "$GGUF" --checkpoint "$CKPT" --data "$TMP/sft/val_*.bin" --pack 1 \
  --seq_len 128 --threads 1 --json
ev=$(sed -n -E 's/.*"loss": *([^,}]+).*/\1/p' "$TMP/eval.log" | head -n 1)
val=$(metrics_field "$M2" val_loss | tail -n 1)
awk -v a="$ev" -v b="$val" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d <= 1e-5 * a) }' ||
  fail "eval --checkpoint gives loss '$ev', the trainer's last val_loss was '$val'"
note "eval --checkpoint $ev = trainer val_loss $val"

# ---- talk to it ----
vd_run "$TMP/gen.log" generate --model "$GGUF" --checkpoint "$CKPT" --max_new_tokens 16 --threads 1 --json \
  --chat '[{"role": "user", "content": "May I copy program 2?"}]'
grep -q '"prompt_ids":\[' <(tr -d ' ' <"$TMP/gen.log") || { cat "$TMP/gen.log" >&2; fail "generate --json printed no prompt_ids"; }
n_new=$(tr -d ' \n' <"$TMP/gen.log" | sed -n -E 's/.*"ids":\[([0-9,]*)\].*/\1/p' | tr ',' '\n' | grep -c . || true)
[[ $n_new -ge 1 && $n_new -le 16 ]] || { cat "$TMP/gen.log" >&2; fail "generate: $n_new new ids (expected 1..16)"; }
note "generate --chat: $n_new new tokens: $(sed -n -E 's/.*"text": *("[^"]*").*/\1/p' "$TMP/gen.log")"
note "PASS"
