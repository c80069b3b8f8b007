#!/usr/bin/env bash
# launcher_death: when mpirun is killed (kill -9, an OOM kill, a lost login node), its ranks
# stop at once and write nothing after that (issue 12, defect 6). A rank started by an MPI
# launcher asks the kernel to kill it when its launcher process dies (PR_SET_PDEATHSIG).
#  * a 2-rank run is killed through its mpirun mid-training: within 0.5 s no rank is left (Open
#    MPI's own detection takes about a second, and a rank can write a checkpoint meanwhile);
#  * out_dir is unchanged afterwards (no file written after the launcher died);
#  * a run started without a launcher (singleton) is not tied to its parent shell.
source "$(dirname "$0")/common.sh"

make_model "$TMP/model" 2 2 32 256 64
make_data "$TMP/data" 60000
TAG="launcher-death-$$"
ARGS=(--model "$TMP/model" --train_data "$TMP/data/train_*.bin" --val_data= --batch_size 4 --seq_len 64
      --max_steps 100000 --warmup_steps 1 --r 8 --target_modules all --threads 1 --log_every 1 --ckpt_every 5)

"$MPIRUN" -np 2 "$VD" "${ARGS[@]}" --out_dir "$TMP/$TAG" >"$TMP/run.log" 2>&1 &
MPI_PID=$!
# wait until training runs (a few metrics rows), then kill the launcher alone
for _ in $(seq 1 200); do
  [[ -f "$TMP/$TAG/metrics.jsonl" && $(wc -l <"$TMP/$TAG/metrics.jsonl") -ge 3 ]] && break
  sleep 0.1
done
[[ -f "$TMP/$TAG/metrics.jsonl" ]] || { cat "$TMP/run.log" >&2; fail "the run never started training"; }
kill -9 "$MPI_PID"
t0=$(date +%s.%N)
left=1
for _ in $(seq 1 5); do
  sleep 0.1
  if ! pgrep -f -- "--out_dir $TMP/$TAG" >/dev/null; then left=0; break; fi
done
t1=$(date +%s.%N)
if [[ $left -ne 0 ]]; then
  pkill -9 -f -- "--out_dir $TMP/$TAG" || true
  fail "ranks still running 0.5 s after mpirun was killed"
fi
note "no rank left $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s after kill -9 of mpirun"
wait "$MPI_PID" 2>/dev/null || true
snap() { find "$TMP/$TAG" -type f -exec sha256sum {} + | sort; }
before="$(snap)"
sleep 1
[[ "$(snap)" == "$before" ]] || fail "files in out_dir changed after the launcher and its ranks were gone"

# a singleton run (no launcher) survives its parent shell: it is not an MPI-launched rank
bash -c "\"$VD\" ${ARGS[*]} --max_steps 3 --out_dir \"$TMP/single\" >\"$TMP/single.log\" 2>&1 &"
for _ in $(seq 1 300); do
  [[ -f "$TMP/single/status.json" ]] && grep -q finished "$TMP/single/status.json" && break
  sleep 0.1
done
grep -q finished "$TMP/single/status.json" 2>/dev/null || { cat "$TMP/single.log" >&2; fail "a singleton run whose parent shell exited did not complete"; }
note "PASS"
