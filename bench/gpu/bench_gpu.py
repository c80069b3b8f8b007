#!/usr/bin/env python3
"""bench/gpu/bench_gpu.py: vera-dist's CUDA backend against Hugging Face PEFT + PyTorch (eager and
torch.compile) on the same GPU, same work. NOT YET RUN: written on a machine without a GPU; see
bench/gpu/README.md and docs/gpu.md for what remains.

Same model shape (GPT-2 small 124M or medium 350M, random weights, no dropout), seq_len 1024, the
same batch, VeRA r = 256 on all four linear layers (c_attn, attn.c_proj, c_fc, mlp.c_proj),
projection_prng_key 0, d_initial 0.1, AdamW at a constant learning rate, one process per
measurement, one GPU. For each system it reports:

  tok/s     tokens of the measured steps (after --warmup) / their wall time (the step ends when
            the loss is on the host: vera-dist's metrics.jsonl "ms"; PEFT: torch.cuda.synchronize)
  MFU       useful FLOPs per token (the formula in useful_flops_per_token, the same for every
            system) x tok/s / the GPU's measured dense bf16 matmul throughput (torch.matmul of
            8192^3 bf16, best of several; printed), i.e. "model FLOPs utilisation" against
            what this GPU actually reaches, as the issue asks
  peak mem  the process's largest GPU memory in nvidia-smi (sampled every 50 ms; includes the
            CUDA context, the same basis for every system); PEFT also torch.cuda.max_memory_allocated
  loss      first and last loss (all systems see the same tokens: a sanity check, not a gate)

Precision: PEFT runs bf16 autocast (fp32 master weights and vectors, bf16 matmuls: the usual
mixed precision) and, with --peft-fp32, fp32 with TF32 off. vera-dist runs --precision fp32 and
tries --precision bf16, recorded as "not implemented" while the CUDA backend refuses it.

    python bench/gpu/bench_gpu.py --vera-dist build-gpu/vera-dist --shape gpt2-small --batch 8
    python bench/gpu/bench_gpu.py --vera-dist build-gpu/vera-dist --shape gpt2-medium --batch 4

bench/gpu/run_gpu_bench.sh builds vera-dist and runs both shapes, writing the tables and JSON
under bench/gpu/results/ for docs/benchmarks.md.
"""
import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent

SHAPES = {
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),   # 124M
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257, n_positions=1024),  # 350M
}
PEFT_TARGETS = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]  # = vera-dist target_modules "all"
SHARD_MAGIC = 20240520


# ---------------------------------------------------------------------------------------------
# the model directory (random weights, the same for every system) and the token shard

def ensure_model(cache, shape, seed):
    d = pathlib.Path(cache) / f"model-{shape}-seed{seed}"
    if (d / "model.safetensors").is_file() and (d / "config.json").is_file():
        return d
    import torch
    import transformers
    s = SHAPES[shape]
    torch.manual_seed(seed)
    # no dropout anywhere: vera-dist's GPT-2 has none, and all systems must compute the same function
    cfg = transformers.GPT2Config(n_layer=s["n_layer"], n_embd=s["n_embd"], n_head=s["n_head"],
                                  vocab_size=s["vocab_size"], n_positions=s["n_positions"],
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg)
    tmp = d.with_name(d.name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tmp.rename(d)
    return d


def ensure_shard(cache, vocab, ntok, seed):
    """An llm.c token shard (docs/data-format.md) of ntok random tokens."""
    import numpy as np
    p = pathlib.Path(cache) / f"tokens-v{vocab}-n{ntok}-seed{seed}.bin"
    if p.is_file() and p.stat().st_size == 1024 + 2 * ntok:
        return p
    tokens = np.random.default_rng(seed).integers(0, vocab, size=ntok, dtype=np.int64).astype(np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = SHARD_MAGIC, 1, ntok
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    tmp.rename(p)
    return p


def read_shard(path):
    import numpy as np
    raw = np.fromfile(path, dtype=np.uint8)
    header = raw[:1024].view(np.int32)
    assert header[0] == SHARD_MAGIC and header[1] == 1, f"{path}: not an llm.c token shard"
    return raw[1024:].view(np.uint16)[: int(header[2])]


def useful_flops_per_token(shape, T, r):
    """FLOPs (2 per multiply-add) one token needs, counted the same for every system:
    frozen linears forward + input gradient (no weight gradients: frozen), attention QK^T and PV
    forward (the full T x T products, as PaLM's MFU counts them) and their four backward
    products, the tied LM head forward + input gradient, and VeRA's factored adapter (PEFT's
    algorithm): forward u = A x, z = B (d u) -> 2 r (in + out); backward d/dx through the adapter
    2 r (in + out) and the vector gradients' M = G^T U -> 2 r out."""
    C, L, V = shape["n_embd"], shape["n_layer"], shape["vocab_size"]
    layers = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
    lin = sum(2 * i * o for i, o in layers) * 2 * L                 # forward + input gradient
    attn = (2 * 2 * T * C) * 3 * L                                  # forward 2 products, backward 4
    head = 2 * V * C * 2
    adapter = sum(2 * r * (i + o) * 2 + 2 * r * o for i, o in layers) * L
    return lin + attn + head + adapter


# ---------------------------------------------------------------------------------------------
# GPU memory sampling (nvidia-smi, per process)

def gpu_mem_mib(pid):
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
    except Exception:  # noqa: BLE001
        return 0
    total = 0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) == pid and parts[1].isdigit():
            total += int(parts[1])
    return total


def run_child(cmd, env, log_path, timeout):
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    peak = {"mib": 0}
    done = threading.Event()

    def sampler():
        while not done.is_set():
            peak["mib"] = max(peak["mib"], gpu_mem_mib(p.pid))
            done.wait(0.05)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        rc = p.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        rc, timed_out = p.wait(), True
    done.set()
    th.join()
    return dict(rc=rc, timed_out=timed_out, wall_s=time.perf_counter() - t0, gpu_peak_mib=peak["mib"])


def why_failed(r):
    """The one line that says why a run failed: vera-dist's error line, else the log's last line."""
    lines = (r.get("error") or "").strip().splitlines()
    for ln in lines:
        if "error" in ln.lower():
            return ln.strip()
    return lines[-1].strip() if lines else "failed"


def tail(path, n=20):
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# vera-dist

def measure_vd(a, model_dir, shard, out, precision):
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    cmd = [str(a.vera_dist), "train", "--device", "cuda", "--precision", precision, "--model", str(model_dir),
           "--train_data", str(shard), "--out_dir", str(out), "--resume", "none", "--overwrite", "1",
           "--batch_size", str(a.batch), "--seq_len", str(a.seq), "--grad_accum", "1", "--max_steps", str(a.steps),
           "--warmup_steps", "0", "--min_lr_ratio", "1", "--lr", repr(a.lr), "--weight_decay", "0",
           "--grad_clip", "0", "--r", str(a.r), "--projection_prng_key", "0", "--target_modules", "all",
           "--d_initial", "0.1", "--vera_dropout", "0", "--ckpt_every", "0", "--keep_last", "1", "--threads", "1",
           "--log_every", "1000000"]
    env = dict(os.environ)
    r = run_child(cmd, env, out / "log.txt", a.timeout)
    r["cmd"] = " ".join(shlex.quote(c) for c in cmd)
    if r["rc"] != 0:
        r["error"] = tail(out / "log.txt")
        return r
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    r["step_ms"] = [row["ms"] for row in rows]
    r["losses"] = [row["loss"] for row in rows]
    return r


# ---------------------------------------------------------------------------------------------
# PEFT (a worker process per measurement)

def worker_peft(a):
    import numpy as np
    import torch
    import torch.nn.functional as F
    import peft
    import transformers
    from peft import VeraConfig, get_peft_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    model = transformers.GPT2LMHeadModel.from_pretrained(a.model_dir, attn_implementation="sdpa").to(dev)
    cfg = VeraConfig(r=a.r, target_modules=list(PEFT_TARGETS), projection_prng_key=0, d_initial=0.1,
                     vera_dropout=0.0, fan_in_fan_out=True, save_projection=True)
    model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, fused=True)
    fwd = torch.compile(model) if a.mode == "compile" else model
    tokens = read_shard(a.shard)
    B, T, V = a.batch, a.seq, model.config.vocab_size
    bf16 = a.precision == "bf16"

    def batch(step):
        first = step * B
        rows = np.stack([tokens[j * T: j * T + T + 1].astype(np.int64) for j in range(first, first + B)])
        x = torch.from_numpy(rows).to(dev, non_blocking=True)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    torch.cuda.reset_peak_memory_stats()
    step_ms, losses = [], []
    for s in range(a.steps):
        x, y = batch(s)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = fwd(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
        lv = float(loss.detach())  # synchronises: the step ends with the loss on the host
        step_ms.append(1e3 * (time.perf_counter() - t0))
        losses.append(lv)
        del logits, loss
        print(f"step {s + 1}/{a.steps} loss {lv:.6f} {step_ms[-1]:.1f} ms", flush=True)
    info = dict(step_ms=step_ms, losses=losses, max_memory_allocated_mib=torch.cuda.max_memory_allocated() / 2**20,
                torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                gpu=torch.cuda.get_device_name(0))
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(info, f)


def measure_peft(a, mode, precision, model_dir, shard, out):
    out.mkdir(parents=True, exist_ok=True)
    res = out / "result.json"
    if res.exists():
        res.unlink()
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", "peft", "--mode", mode,
           "--precision", precision, "--model-dir", str(model_dir), "--shard", str(shard), "--out", str(out),
           "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq), "--r", str(a.r), "--lr", repr(a.lr)]
    r = run_child(cmd, dict(os.environ), out / "log.txt", a.compile_timeout if mode == "compile" else a.timeout)
    r["cmd"] = " ".join(shlex.quote(c) for c in cmd)
    if r["rc"] != 0 or not res.is_file():
        r["error"] = tail(out / "log.txt")
        return r
    r.update(json.loads(res.read_text()))
    return r


# ---------------------------------------------------------------------------------------------

def measured_bf16_peak(n=8192, reps=20):
    """Dense bf16 matmul throughput this GPU reaches (FLOP/s), best of `reps` timed products."""
    import torch
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t0))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["gpt2-small", "gpt2-medium"], default="gpt2-small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the timings")
    ap.add_argument("--r", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vera-dist", dest="vera_dist", default=str(REPO / "build-gpu" / "vera-dist"))
    ap.add_argument("--no-compile", dest="no_compile", action="store_true")
    ap.add_argument("--peft-fp32", dest="peft_fp32", action="store_true", help="also PEFT in fp32 (TF32 off)")
    ap.add_argument("--cache", default=os.environ.get("VERA_BENCH_CACHE", "/tmp/vera-bench-cache"))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--compile-timeout", dest="compile_timeout", type=float, default=3600)
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--markdown", help="append the table here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", dest="model_dir", help=argparse.SUPPRESS)
    ap.add_argument("--shard", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker == "peft":
        return worker_peft(a)
    if a.steps <= a.warmup:
        ap.error("--steps must exceed --warmup")
    a.vera_dist = pathlib.Path(a.vera_dist).resolve()
    if not os.access(a.vera_dist, os.X_OK):
        ap.error(f"--vera-dist {a.vera_dist}: not an executable (tests/gpu/run_gpu_tests.sh builds build-gpu/)")

    import torch
    if not torch.cuda.is_available():
        print("SKIPPED: torch sees no CUDA device")
        return 0
    gpu = torch.cuda.get_device_name(0)
    peak = measured_bf16_peak()
    shape = SHAPES[a.shape]
    cache = pathlib.Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(cache, a.shape, 0)
    shard = ensure_shard(cache, shape["vocab_size"], a.steps * a.batch * a.seq + 1, 0)
    flops_tok = useful_flops_per_token(shape, a.seq, a.r)
    root = cache / "gpu-runs" / f"{a.shape}-b{a.batch}-s{a.seq}-{os.getpid()}"
    print(f"GPU {gpu}; measured dense bf16 matmul: {peak / 1e12:.1f} TFLOP/s; {a.shape} {shape}; batch {a.batch} x "
          f"seq {a.seq}; r {a.r}; useful {flops_tok / 1e9:.3f} GFLOP/token; {a.steps} steps ({a.warmup} warm-up)")

    systems = [("vera-dist fp32", lambda o: measure_vd(a, model_dir, shard, o, "fp32")),
               ("vera-dist bf16", lambda o: measure_vd(a, model_dir, shard, o, "bf16")),
               ("PEFT eager bf16", lambda o: measure_peft(a, "eager", "bf16", model_dir, shard, o))]
    if not a.no_compile:
        systems.append(("PEFT compile bf16", lambda o: measure_peft(a, "compile", "bf16", model_dir, shard, o)))
    if a.peft_fp32:
        systems.append(("PEFT eager fp32", lambda o: measure_peft(a, "eager", "fp32", model_dir, shard, o)))
    results = {}
    for name, fn in systems:
        r = fn(root / name.replace(" ", "-"))
        if r["rc"] == 0 and "step_ms" in r:
            ms = r["step_ms"][a.warmup:]
            r["tok_s"] = a.batch * a.seq * len(ms) / (sum(ms) / 1e3)
            r["mfu"] = flops_tok * r["tok_s"] / peak
        results[name] = r
        status = (f"{r['tok_s']:10.0f} tok/s  MFU {100 * r['mfu']:5.1f}%  peak {r['gpu_peak_mib']} MiB"
                  if "tok_s" in r else "FAILED / not available: " + why_failed(r))
        print(f"  {name:20s} {status}", flush=True)

    eager = results.get("PEFT eager bf16", {}).get("tok_s")
    comp = results.get("PEFT compile bf16", {}).get("tok_s")
    lines = [f"### {a.shape}, batch {a.batch} x {a.seq}, r {a.r}, all four layers: {gpu}", "",
             f"measured dense bf16 matmul {peak / 1e12:.1f} TFLOP/s; useful work {flops_tok / 1e9:.3f} GFLOP/token", "",
             "| system | tok/s | x PEFT eager | x PEFT compile | MFU | peak GPU MiB | loss first -> last |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "tok_s" not in r:
            lines.append(f"| {name} | - | - | - | - | - | {why_failed(r)[:100]} |")
            continue
        lines.append(f"| {name} | {r['tok_s']:.0f} | {r['tok_s'] / eager:.2f} | " if eager else f"| {name} | {r['tok_s']:.0f} | - | ")
        lines[-1] += (f"{r['tok_s'] / comp:.2f} | " if comp else "- | ")
        lines[-1] += f"{100 * r['mfu']:.1f}% | {r['gpu_peak_mib']} | {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f} |"
    lines += ["", "targets: vera-dist >= 2x PEFT eager, >= 1.3x PEFT compile, MFU > 40%", "",
              "commands:"] + [f"    {n}: {r.get('cmd', '')}" for n, r in results.items()] + [""]
    table = "\n".join(lines)
    print()
    print(table)
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write(table + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(gpu=gpu, bf16_peak_flops=peak, useful_flops_per_token=flops_tok, args=vars(a) | {
                "vera_dist": str(a.vera_dist)}, results=results), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
