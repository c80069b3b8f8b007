#!/usr/bin/env bash
# hostile_input: what a hostile or careless user can hand the trainer ends it quickly with
#  * a non-zero exit code (every rank ends: a run that takes longer than LIMIT seconds is a
#    hang and fails the case; the FIFO cases hung every rank before),
#  * one "vera-dist: error:" line that names the culprit (the file, or the figures) and is
#    printable: no control characters, no invalid UTF-8 echoed from a file.
# Cases (issue 12, defects 2-4):
#  * a FIFO where a file is expected: in the train_data glob, as --model (x.gguf, and
#    model.safetensors in a model directory), as --config, as --resume FILE, as the
#    init_adapter's adapter_config.json, as prepare-data --in
#  * a run that cannot fit in memory: refused before allocating, with both figures and a HINT
#    (VERA_MEMORY_LIMIT_BYTES on a normal configuration; --batch_size 65536 --seq_len 32 on a
#    tiny model under ulimit -d, and without it where the estimate exceeds MemAvailable)
#  * raw bytes in a safetensors header's tensor name are escaped (\xNN), not echoed
#  * binary garbage as an INI --config is "not a text configuration file", not "unknown key ''"
source "$(dirname "$0")/common.sh"
LIMIT=20          # a run still going after this is a hang: killed, the case fails
QUICK=10          # seconds a refusal may take (an mpirun start and a tiny model load)
MPI_TIMEOUT=$LIMIT

make_model "$TMP/model" 2 2 32 256 64
make_data "$TMP/data" 20000
BASE=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data "$TMP/data/val_*.bin"
      --out_dir "$TMP/out" --batch_size 2 --seq_len 32 --max_steps 2 --warmup_steps 0 --r 8 --threads 1)
# the baseline works (so every refusal below is the case's doing)
vd_mpirun 2 "$TMP/good.log" "${BASE[@]}" --out_dir "$TMP/good"
[[ -s "$TMP/good/adapter_final.safetensors" ]] || fail "the good run wrote no adapter"

NCASES=0
FAILED=()
case_fail() {
  echo "FAIL [$TEST_NAME] $1: $2" >&2
  FAILED+=("$1")
}
# expect_refusal NAME NP 'REGEX1;REGEX2' ARGS...: NP=0 runs vera-dist without mpirun; the run
# must fail within LIMIT seconds with an error line matching every regex, and every error line
# must be printable.
expect_refusal() {
  local name="$1" np="$2" pats="$3"; shift 3
  local log="$TMP/case.$name.log" rc=0 t0=$SECONDS
  NCASES=$((NCASES + 1))
  if [[ "$np" == 0 ]]; then
    run_logged "$log" "$VD" "$@" || rc=$?
  else
    run_logged "$log" "$MPIRUN" -np "$np" "$VD" "$@" || rc=$?
  fi
  local took=$((SECONDS - t0))
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    tail -n 20 "$log" >&2; case_fail "$name" "still running after ${LIMIT}s (hang)"; return
  fi
  if [[ $rc -eq 0 ]]; then
    tail -n 20 "$log" >&2; case_fail "$name" "exit code 0, expected a refusal"; return
  fi
  local -a pat_list
  IFS=';' read -r -a pat_list <<<"$pats"
  if ! (assert_error "$log" "${pat_list[@]}") 2>"$log.why"; then
    tail -n 20 "$log.why" >&2; case_fail "$name" "error message check failed"; return
  fi
  # printable: no byte outside printable ASCII on the error lines (the paths here are ASCII)
  if grep -E "$ERR_RE" "$log" | LC_ALL=C grep -q '[^[:print:]]'; then
    grep -E "$ERR_RE" "$log" | od -c | head -n 20 >&2
    case_fail "$name" "an error line holds non-printable bytes"; return
  fi
  # refused at once, not after a long wait or a large allocation
  if [[ $took -gt $QUICK ]]; then
    case_fail "$name" "refused only after ${took}s (expected within ${QUICK}s)"; return
  fi
  note "$name: rc=$rc, ${took}s: $(grep -E -m1 "$ERR_RE" "$log")"
}

# ---------------------------------------------------------------- defect 2: FIFOs
mkdir -p "$TMP/fifo_glob"
cp "$TMP/data/train_000000.bin" "$TMP/fifo_glob/train_000000.bin"
mkfifo "$TMP/fifo_glob/train_000001.bin"
expect_refusal fifo_in_train_glob 2 "train_data;fifo_glob/train_000001\.bin;FIFO" \
  "${BASE[@]}" --train_data "$TMP/fifo_glob/train_*.bin"

mkfifo "$TMP/x.gguf"
expect_refusal fifo_model_gguf 2 "x\.gguf;FIFO" "${BASE[@]}" --model "$TMP/x.gguf"

mkdir -p "$TMP/mfifo"
cp "$TMP/model/config.json" "$TMP/mfifo/config.json"
mkfifo "$TMP/mfifo/model.safetensors"
expect_refusal fifo_model_safetensors 2 "mfifo/model\.safetensors;FIFO" \
  "${BASE[@]}" --model "$TMP/mfifo"

# the same in a Llama model directory (read by weights.c, not model_io.c)
make_model "$TMP/llama" 2 2 32 256 64 --arch llama
mkdir -p "$TMP/lfifo"
cp "$TMP/llama/config.json" "$TMP/lfifo/config.json"
mkfifo "$TMP/lfifo/model.safetensors"
expect_refusal fifo_llama_model_safetensors 2 "lfifo/model\.safetensors;FIFO" "${BASE[@]}" --model "$TMP/lfifo"

mkfifo "$TMP/fifo.ini"
expect_refusal fifo_config 2 "fifo\.ini;FIFO" --config "$TMP/fifo.ini" "${BASE[@]}"

mkfifo "$TMP/fifo_ckpt.h5"
expect_refusal fifo_resume_file 2 "fifo_ckpt\.h5;FIFO" \
  "${BASE[@]}" --out_dir "$TMP/out_resume" --resume "$TMP/fifo_ckpt.h5"

mkdir -p "$TMP/adapter_fifo"
mkfifo "$TMP/adapter_fifo/adapter_config.json"
expect_refusal fifo_init_adapter 2 "adapter_fifo/adapter_config\.json;FIFO" \
  "${BASE[@]}" --out_dir "$TMP/out_adapter" --init_adapter "$TMP/adapter_fifo"

mkfifo "$TMP/fifo.txt"
expect_refusal fifo_prepare_data_in 0 "fifo\.txt;FIFO" \
  prepare-data --in "$TMP/fifo.txt" --out "$TMP/pd_fifo"

# ---------------------------------------------------------------- defect 3: memory
# a normal configuration made not to fit: both figures, where the limit came from, a HINT
mem_log="$TMP/case.memory_limit_env.log"
VERA_MEMORY_LIMIT_BYTES=100000 expect_refusal memory_limit_env 2 \
  "memory;needs about [0-9.]+ GiB;can have [0-9.]+ GiB;100000 bytes;VERA_MEMORY_LIMIT_BYTES;HINT;batch_size;grad_accum" \
  "${BASE[@]}" --out_dir "$TMP/out_mem"
[[ -e "$TMP/out_mem/metrics.jsonl" ]] && case_fail memory_limit_env "metrics.jsonl was written before the refusal"
grep -q 'vera: r=' "$mem_log" && case_fail memory_limit_env "the adapter was set up before the refusal"

# the reported case: --batch_size 65536 --seq_len 32 on a tiny model (~17 GiB per rank), under
# a 4 GiB data limit (ulimit -d, which the check reads like MemAvailable): refused at once
BIG=(--batch_size 65536 --seq_len 32 --out_dir "$TMP/out_big" --val_data "")
# (a sanitizer build cannot start under a data limit: its shadow memory is reserved up front)
if (ulimit -d 4194304 && "$VD" --help) >/dev/null 2>&1; then
  (ulimit -d 4194304; expect_refusal memory_batch_65536_ulimit 2 \
     "memory;needs about [0-9.]+ GiB;can have [0-9.]+ GiB;RLIMIT_DATA;HINT;batch_size" "${BASE[@]}" "${BIG[@]}"
   [[ ${#FAILED[@]} -eq 0 ]]) || FAILED+=(memory_batch_65536_ulimit)
  NCASES=$((NCASES + 1))
else
  note "memory_batch_65536_ulimit: skipped (ulimit -d not available, or vera-dist cannot start under it)"
fi
# and without a limit where the machine cannot hold it: inspect prints the same estimate
# (inspect takes only the keys it reads)
need_gib="$("$VD" inspect --model "$TMP/model" --r 8 --batch_size 65536 --seq_len 32 2>/dev/null | sed -n 's/.*; total \([0-9.]*\) GiB$/\1/p')"
[[ -n "$need_gib" ]] || fail "vera-dist inspect printed no memory total (its arguments refused?)"
avail_kb="$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"
if [[ -n "$need_gib" && -n "$avail_kb" ]] && awk -v n="$need_gib" -v a="$avail_kb" 'BEGIN { exit !(n * 1048576 > a) }'; then
  expect_refusal memory_batch_65536 0 "memory;needs about [0-9.]+ GiB;can have [0-9.]+ GiB;MemAvailable|cgroup;HINT" \
    "${BASE[@]}" "${BIG[@]}"
else
  note "memory_batch_65536 (no limit): skipped: this machine has $((avail_kb / 1048576)) GiB available, the run needs ${need_gib:-?} GiB"
fi

# ---------------------------------------------------------------- defect 4: messages
# a safetensors header whose tensor name is raw bytes and whose entry lacks "dtype"
mkdir -p "$TMP/mgarbage"
cp "$TMP/model/config.json" "$TMP/mgarbage/config.json"
hdr=$'{"\xff\xfe\x1b[31m__":{"shape":[1],"data_offsets":[0,4]}}'
len=$(printf '%s' "$hdr" | LC_ALL=C wc -c)
{ printf "$(printf '\\x%02x' $((len & 255)) $(((len >> 8) & 255)))"; printf '\0\0\0\0\0\0'; printf '%s' "$hdr"; printf '\0\0\0\0'; } \
  >"$TMP/mgarbage/model.safetensors"
expect_refusal safetensors_garbage_name 2 'mgarbage/model\.safetensors;\\xff\\xfe\\x1b\[31m__;dtype' \
  "${BASE[@]}" --model "$TMP/mgarbage"

# a GGUF whose one tensor is named with raw bytes and a terminal escape, and has 9 dimensions
{ printf 'GGUF\x03\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0'   # magic, v3, 1 tensor, 0 keys
  printf '\x06\0\0\0\0\0\0\0\xff\xfe\x1b[0m\x09\0\0\0'                # name (6 bytes), n_dims 9
  head -c 256 /dev/zero; } >"$TMP/garbage.gguf"
expect_refusal gguf_garbage_name 2 'garbage\.gguf;tensor \\xff\\xfe\\x1b\[0m has 9 dimensions' \
  "${BASE[@]}" --model "$TMP/garbage.gguf"

# binary garbage as --config (a copy of the model's weights), and a terminal escape in an INI
cp "$TMP/model/model.safetensors" "$TMP/binary.ini"
expect_refusal ini_binary 0 "binary\.ini;not a text configuration file;NUL|control|UTF-8" --config "$TMP/binary.ini" "${BASE[@]}"
printf '[train]\nlr = 0.001\n\x1b[2J\n' >"$TMP/escape.ini"
expect_refusal ini_control_character 0 "escape\.ini;not a text configuration file;control" \
  --config "$TMP/escape.ini" "${BASE[@]}"
printf '[train]\nlr = 0.001\nmax_steps = 2\xe9\n' >"$TMP/latin1.ini"
expect_refusal ini_invalid_utf8 0 "latin1\.ini;not a text configuration file;UTF-8" \
  --config "$TMP/latin1.ini" "${BASE[@]}"
# UTF-8 text stays accepted (a comment in another script)
printf '; réglages — 設定\n[train]\nmax_steps = 1\n' >"$TMP/utf8.ini"
vd_run "$TMP/utf8.log" --config "$TMP/utf8.ini" "${BASE[@]}" --max_steps 1 --out_dir "$TMP/out_utf8"

if [[ ${#FAILED[@]} -gt 0 ]]; then
  fail "${#FAILED[@]} of $NCASES cases failed: ${FAILED[*]}"
fi
note "PASS ($NCASES cases)"
