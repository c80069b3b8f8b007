#!/usr/bin/env python3
r"""bench/bench_cpu.py: vera-dist against Hugging Face PEFT (+ PyTorch eager, + torch.compile) on
the CPU, side by side in one run, on the same work.

Same model (one Hugging Face GPT-2 directory, random weights, no dropout), same batch and
sequence length, same VeRA settings (r = 256 on all four linear layers, projection_prng_key 0,
d_initial 0.1, no adapter dropout), same tokens in the same order, same AdamW hyperparameters
(constant learning rate, no weight decay, no clipping), same thread count, one process each.
Every measurement is a fresh subprocess; its peak RSS is the child's ru_maxrss (os.wait4).
Runs are interleaved (vera-dist, PEFT eager, PEFT compiled, then the reverse order, ...) so that
load from other work on the machine falls on all of them alike.

Run it with the virtualenv that has torch, transformers and peft (tests/python/run.sh makes it):

    ~/.cache/vera-dist/venv/bin/python bench/bench_cpu.py --shape small --threads 2 --steps 12 \
        --batch 4 --seq 64 --vera-dist build/vera-dist

A real Llama checkpoint instead of the random GPT-2 (SmolLM2-135M-Instruct, docs/benchmarks.md):

    ~/.cache/vera-dist/venv/bin/python bench/bench_cpu.py --gguf ~/.cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --threads 2 --steps 6 --batch 4 --seq 256 --vera-dist build/vera-dist

transformers dequantizes the GGUF to fp32 once (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)),
and the result is saved as a Hugging Face directory in --cache; PEFT loads that directory (or, with
--peft-load gguf, the GGUF itself in every run: same fp32 weights, ~25-50 s more per run). vera-dist
reads the GGUF itself when its build can (--vd-model auto|gguf|dir), else the same directory. VeRA
goes on all linear layers of every block (vera-dist all-linear <-> PEFT the seven projections).

Outputs a table (tokens/s median and spread over the repeats, the ratio vera-dist / PEFT, peak
memory, the last step's loss and the largest relative difference between the loss trajectories)
and, with --json FILE, everything measured. See docs/benchmarks.md.

The model and the token shard are generated once into --cache (default /tmp/vera-bench-cache).
"""
import argparse
import json
import os
import pathlib
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent

SHAPES = {
    # runs in seconds; byte vocabulary
    "small": dict(n_layer=4, n_embd=256, n_head=4, vocab_size=256, n_positions=1024),
    # GPT-2 small (124M) shape, random weights
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
}
PEFT_TARGETS = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]  # = vera-dist target_modules "all"
# Llama family: vera-dist "all-linear" = PEFT "all-linear" (which leaves lm_head out) = these seven
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHARD_MAGIC = 20240520
WARMUP = 2  # steps left out of the timings


# ---------------------------------------------------------------------------------------------
# cache: model directory and token shard

def ensure_model(cache, shape, seed):
    d = pathlib.Path(cache) / f"model-{shape}-seed{seed}"
    if (d / "model.safetensors").is_file() and (d / "config.json").is_file():
        return d
    import torch
    import transformers
    s = SHAPES[shape]
    torch.manual_seed(seed)
    # GPT2Config defaults except the shape and dropout: vera-dist's GPT-2 has no dropout, and
    # the two must compute the same function for the losses to agree.
    cfg = transformers.GPT2Config(n_layer=s["n_layer"], n_embd=s["n_embd"], n_head=s["n_head"],
                                  vocab_size=s["vocab_size"], n_positions=s["n_positions"],
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=min(50256, s["vocab_size"] - 1), eos_token_id=min(50256, s["vocab_size"] - 1))
    model = transformers.GPT2LMHeadModel(cfg)
    tmp = d.with_name(d.name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tmp.rename(d)
    return d


def ensure_hf_from_gguf(cache, gguf):
    """The fp32 weights transformers dequantizes from a GGUF, saved once as a Hugging Face directory
    (model.safetensors without the tied lm_head.weight, config.json without quantization_config).
    Keyed by the GGUF's name and size, so a different file gets its own directory."""
    gguf = pathlib.Path(gguf).resolve()
    d = pathlib.Path(cache) / f"hf-{gguf.stem}-{gguf.stat().st_size}"
    if (d / "model.safetensors").is_file() and (d / "config.json").is_file():
        return d
    import torch
    from safetensors.torch import save_file
    model = load_gguf_model(str(gguf))
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    if not cfg.architectures:
        cfg.architectures = [type(model).__name__]
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(cfg, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(str(tmp))
    (tmp / "SOURCE").write_text(f"{gguf}\ndequantized by transformers {__import__('transformers').__version__}, "
                                f"torch {torch.__version__}\n")
    tmp.rename(d)
    return d


def load_gguf_model(gguf, **kw):
    import torch
    import transformers
    d, name = os.path.split(os.path.abspath(gguf))
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32, **kw)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        return transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32, **kw)


def vd_reads_gguf(vd):
    """Whether this vera-dist build reads GGUF files itself (builds before src/io/gguf.c say so)."""
    try:
        return b"GGUF files are not supported yet" not in pathlib.Path(vd).read_bytes()
    except OSError:
        return False


def model_spec(a, cache):
    """What both sides train: the model's files, its family's VeRA targets and sizes."""
    if not a.gguf:
        shape = SHAPES[a.shape]
        d = ensure_model(cache, a.shape, a.seed)
        return dict(name=a.shape, family="gpt2", hf_dir=d, vd_model=d, peft_gguf=None, vocab=shape["vocab_size"],
                    n_positions=shape["n_positions"], vd_targets="all", peft_targets=PEFT_TARGETS,
                    fan_in_fan_out=True, describe=str(shape), targets_text="all four linear layers")
    d = ensure_hf_from_gguf(cache, a.gguf)
    cfg = json.loads((d / "config.json").read_text())
    gguf = str(pathlib.Path(a.gguf).resolve())
    use_gguf = a.vd_model == "gguf" or (a.vd_model == "auto" and vd_reads_gguf(a.vera_dist))
    describe = ", ".join(f"{k} {cfg.get(k)}" for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                         "num_attention_heads", "num_key_value_heads", "vocab_size",
                                                         "tie_word_embeddings"))
    return dict(name=pathlib.Path(a.gguf).stem, family="llama", hf_dir=d, vd_model=gguf if use_gguf else d,
                peft_gguf=gguf if a.peft_load == "gguf" else None, vocab=int(cfg["vocab_size"]),
                n_positions=int(cfg.get("max_position_embeddings", 2048)), vd_targets="all-linear",
                peft_targets=LLAMA_TARGETS, fan_in_fan_out=False, describe=describe,
                targets_text="all seven linear layers per block")


def ensure_shard(cache, vocab, ntok, seed):
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


# ---------------------------------------------------------------------------------------------
# the PEFT worker (runs in its own process)

def worker_peft(a):
    import numpy as np
    import resource
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(a.threads)
    import peft
    import transformers
    from peft import VeraConfig, get_peft_model

    t_load = time.perf_counter()
    if a.family == "gpt2":
        model = transformers.GPT2LMHeadModel.from_pretrained(a.model_dir, attn_implementation=a.attn)
    elif a.gguf_file:
        model = load_gguf_model(a.gguf_file, attn_implementation=a.attn)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32,
                                                                  attn_implementation=a.attn)
    targets = PEFT_TARGETS if a.family == "gpt2" else LLAMA_TARGETS
    cfg = VeraConfig(r=a.r, target_modules=list(targets), projection_prng_key=a.key, d_initial=a.d_initial,
                     vera_dropout=0.0, fan_in_fan_out=(a.family == "gpt2"), save_projection=True)
    model = get_peft_model(model, cfg)
    model.train()  # no dropout anywhere (GPT-2: pdrop 0; Llama: attention_dropout 0), train() = eval()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in trainable], lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps,
                            weight_decay=0.0, foreach=False)
    fwd = model
    if a.mode == "compile":
        fwd = torch.compile(model)
    load_s = time.perf_counter() - t_load
    rss_setup_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    tokens = read_shard(a.shard)
    B, T, V = a.batch, a.seq, model.config.vocab_size

    def batch(step):
        first = step * B  # vera-dist: step s takes global sequences s*B .. s*B+B-1 (one rank, grad_accum 1)
        rows = np.stack([tokens[j * T: j * T + T + 1].astype(np.int64) for j in range(first, first + B)])
        x = torch.from_numpy(rows)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    prof = None
    step_ms, step_cpu_ms, losses = [], [], []
    for s in range(a.steps):
        x, y = batch(s)
        if a.profile and s == WARMUP:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            prof.__enter__()
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        logits = fwd(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
        t1, c1 = time.perf_counter(), time.process_time()
        step_ms.append(1e3 * (t1 - t0))
        step_cpu_ms.append(1e3 * (c1 - c0))
        losses.append(float(loss.detach()))
        del logits, loss
        if s == 0 and a.marker:
            pathlib.Path(a.marker).write_text("1")
        print(f"step {s + 1}/{a.steps} loss {losses[-1]:.6f} {step_ms[-1]:.1f} ms", flush=True)
    if prof is not None:
        prof.__exit__(None, None, None)
        with open(a.profile, "w") as f:
            f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=60))
            f.write("\n\n# grouped by input shape\n")
            f.write(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=60))
    vectors = {}
    for n, p in trainable:
        # PEFT names end in ".default" (the adapter name); vera-dist's file drops it
        vectors[n[: -len(".default")] if n.endswith(".default") else n] = p.detach().clone().contiguous()
    from safetensors.torch import save_file
    save_file(vectors, os.path.join(a.out, "vectors.safetensors"))
    info = dict(step_ms=step_ms, step_cpu_ms=step_cpu_ms, losses=losses, load_s=load_s, rss_setup_kb=rss_setup_kb,
                n_trainable=sum(p.numel() for _, p in trainable), torch=torch.__version__,
                transformers=transformers.__version__, peft=peft.__version__,
                attn=getattr(model.config, "_attn_implementation", a.attn), threads=torch.get_num_threads(),
                blas=("mkl" if torch.backends.mkl.is_available() else "other"), blas_info=torch_blas_info())
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(info, f)


# ---------------------------------------------------------------------------------------------
# running one measurement

def vm_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_s(pid):
    """CPU seconds (user + system, all threads) a live process has used so far; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_child(cmd, env, log_path, train_marker, timeout, progress=None):
    """Runs cmd with stdout+stderr to log_path; returns rc, wall, ru_maxrss of the child (kB),
    and the largest VmRSS sampled once train_marker (a file) exists: the memory of training
    itself, without load-time peaks. progress (optional): the number of steps done so far; the
    child's CPU time is sampled when it first reads k (cpu_at_step[k]), so CPU seconds per step
    come out without the load (a 20 ms sampling period against steps of seconds)."""
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    samples = {"train_max": 0}
    cpu_at = {}
    done = threading.Event()

    def sampler():
        while not done.is_set():
            if train_marker():
                samples["train_max"] = max(samples["train_max"], vm_rss_kb(p.pid))
            if progress is not None:
                k = progress()
                if k not in cpu_at:
                    c = proc_cpu_s(p.pid)
                    if c is not None:
                        cpu_at[k] = c
            done.wait(0.02)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t0 = time.perf_counter()
    timed_out = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        if time.perf_counter() - t0 > timeout:
            timed_out = True
            os.killpg(p.pid, signal.SIGKILL)
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    return dict(rc=p.returncode, timed_out=timed_out, wall_s=wall, maxrss_kb=ru.ru_maxrss,
                train_rss_kb=samples["train_max"], cpu_at_step=cpu_at)


def base_env(threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("OMPI_MCA_pml", "ob1")
    env.setdefault("OMPI_MCA_btl", "self,vader")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def vd_binary(a, extra_env):
    """The binary of a vera-dist system: --vera-dist, or a --vd-binary variant's (its VD_BIN= entry)."""
    return next((e.split("=", 1)[1] for e in extra_env if e.startswith("VD_BIN=")), str(a.vera_dist))


def vd_command(a, spec, shard, out, binary=None):
    return [str(binary or a.vera_dist), "train", "--model", str(spec["vd_model"]), "--train_data", str(shard), "--out_dir", str(out),
            "--resume", "none", "--overwrite", "1", "--batch_size", str(a.batch), "--seq_len", str(a.seq),
            "--grad_accum", "1", "--max_steps", str(a.steps), "--warmup_steps", "0", "--min_lr_ratio", "1",
            "--lr", repr(a.lr), "--weight_decay", "0", "--grad_clip", "0", "--beta1", repr(a.beta1),
            "--beta2", repr(a.beta2), "--adam_eps", repr(a.eps), "--r", str(a.r), "--projection_prng_key",
            str(a.key), "--target_modules", spec["vd_targets"], "--d_initial", repr(a.d_initial), "--vera_dropout", "0",
            "--ckpt_every", "0", "--keep_last", "1", "--threads", str(a.threads), "--log_every", "1000000"]


def measure_vd(a, spec, shard, out, extra_env):
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    cmd = vd_command(a, spec, shard, out, vd_binary(a, extra_env))
    extra_env = [e for e in extra_env if not e.startswith("VD_BIN=")]
    env = vd_env(a, extra_env)
    def steps_done():
        try:
            return metrics.read_text().count("\n")
        except OSError:
            return 0
    r = run_child(cmd, env, out / "log.txt", lambda: metrics.exists() and metrics.stat().st_size > 0, a.timeout,
                  steps_done)
    r["cmd"] = " ".join(shlex.quote(c) for c in cmd)
    if a.vd_env or extra_env:
        r["cmd"] = " ".join(list(a.vd_env) + list(extra_env)) + " " + r["cmd"]
    if r["rc"] != 0:
        r["error"] = tail(out / "log.txt")
        return r
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    r["step_ms"] = [row["ms"] for row in rows]
    r["losses"] = [row["loss"] for row in rows]
    r["tokens_per_step"] = rows[0]["tokens"]
    r["vectors"] = str(out / "adapter_final.safetensors")
    ca, K = r["cpu_at_step"], len(rows)
    r["cpu_s_measured"] = ca[K] - ca[WARMUP] if K in ca and WARMUP in ca else None
    return r


def measure_peft(a, mode, spec, shard, out, extra_env=()):
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "trained_one_step"
    for p in (marker, out / "result.json"):
        if p.exists():
            p.unlink()
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", "peft", "--mode", mode,
           "--family", spec["family"], "--model-dir", str(spec["hf_dir"]), "--shard", str(shard), "--out", str(out), "--marker", str(marker),
           "--threads", str(a.threads), "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq),
           "--r", str(a.r), "--key", str(a.key), "--d-initial", repr(a.d_initial), "--lr", repr(a.lr),
           "--beta1", repr(a.beta1), "--beta2", repr(a.beta2), "--eps", repr(a.eps), "--attn", a.attn]
    if spec["peft_gguf"]:
        cmd += ["--gguf-file", spec["peft_gguf"]]
    if a.profile and mode == "eager":
        cmd += ["--profile-out", str(out / "torch_profile.txt")]
    timeout = a.compile_timeout if mode == "compile" else a.timeout
    env = apply_env(base_env(a.threads), list(a.peft_env) + list(extra_env))
    r = run_child(cmd, env, out / "log.txt", marker.exists, timeout)
    r["cmd"] = " ".join(shlex.quote(c) for c in cmd)
    if a.peft_env or extra_env:
        r["cmd"] = " ".join(list(a.peft_env) + list(extra_env)) + " " + r["cmd"]
    if r["rc"] != 0 or not (out / "result.json").is_file():
        r["error"] = ("timed out after %d s" % timeout if r["timed_out"] else "") + tail(out / "log.txt")
        return r
    r.update(json.loads((out / "result.json").read_text()))
    r["tokens_per_step"] = a.batch * a.seq
    r["vectors"] = str(out / "vectors.safetensors")
    return r


def tail(path, n=25):
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def cpu_throughput(r):
    """tokens per CPU second (all threads) over the steps after the warm-up; None when not sampled."""
    c = r.get("cpu_s_measured")
    if c is None and r.get("step_cpu_ms"):
        c = sum(r["step_cpu_ms"][WARMUP:]) / 1e3
    return r["tokens_per_step"] * (len(r["step_ms"]) - WARMUP) / c if c else None


def throughput(r):
    """tokens/s over the steps after the warm-up: all measured tokens / their summed time."""
    ms = r["step_ms"][WARMUP:]
    return r["tokens_per_step"] * len(ms) / (sum(ms) / 1e3)


# ---------------------------------------------------------------------------------------------
# machine description

def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return f"({e})"


def openblas_corename(lib):
    """openblas_get_corename() of a loaded OpenBLAS (the kernel it picked for this CPU), as threadpoolctl
    reports it; scipy-openblas (numpy's wheels) prefixes and suffixes its symbols."""
    import ctypes
    try:
        h = ctypes.CDLL(lib)
    except OSError as e:
        return f"({e})"
    for sym in ("openblas_get_corename", "scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                "openblas_get_corename64_"):
        f = getattr(h, sym, None)
        if f is not None:
            f.restype = ctypes.c_char_p
            return f().decode()
    return "(no openblas_get_corename)"


def loaded_blas_libs():
    with open("/proc/self/maps") as f:
        return sorted({ln.split()[-1] for ln in f if "/" in ln and ("openblas" in ln.lower() or "mkl" in ln.lower())})


def torch_blas_info():
    """The BLAS of this (PEFT) process: torch's (MKL in the PyPI wheel) and numpy's OpenBLAS kernel."""
    import numpy  # noqa: F401  (loads its OpenBLAS)
    import torch
    cfg = torch.__config__.show()
    mkl = [ln.strip(" -") for ln in cfg.splitlines() if "Math Kernel Library" in ln or "MKL-DNN" in ln]
    out = dict(torch_blas=mkl or [f"BLAS_INFO={'mkl' if torch.backends.mkl.is_available() else 'other'}"],
               cpu_capability=torch.backends.cpu.get_cpu_capability(), numpy_openblas={})
    for lib in loaded_blas_libs():
        if "openblas" in lib.lower():
            out["numpy_openblas"][lib] = openblas_corename(lib)
    return out


def vd_blas_info(vd, env):
    """What the vera-dist binary links (ldd, under env: LD_LIBRARY_PATH counts) and the kernel its OpenBLAS
    picks on this CPU under env (OPENBLAS_CORETYPE counts): the library loaded with ctypes in a child
    process with that environment, so the same selection code runs as in vera-dist."""
    r = subprocess.run(["ldd", str(vd)], capture_output=True, text=True, env=env)
    lines = [" ".join(ln.split()) for ln in r.stdout.splitlines() if "blas" in ln or "gomp" in ln]
    core = {}
    for ln in lines:
        parts = ln.split("=>")
        if len(parts) == 2 and "blas" in parts[0]:
            lib = parts[1].split("(")[0].strip()
            c = subprocess.run([sys.executable, "-c", "import sys, bench_cpu; print(bench_cpu.openblas_corename(sys.argv[1]))",
                                lib], capture_output=True, text=True, env=dict(env, PYTHONPATH=str(HERE)))
            core[lib] = c.stdout.strip() or c.stderr.strip()[-200:]
    return dict(ldd=lines, corename=core,
                env={k: v for k, v in env.items() if k.startswith(("OPENBLAS", "GOTO", "OMP_WAIT", "LD_LIBRARY"))})


def apply_env(env, kvs):
    """KEY=VALUE sets, -KEY removes (back to the library's default)."""
    for kv in kvs:
        if kv.startswith("-") and "=" not in kv:
            env.pop(kv[1:], None)
        else:
            k, _, v = kv.partition("=")
            env[k] = v
    return env


def vd_env(a, extra_env):
    return apply_env(base_env(a.threads), list(a.vd_env) + list(extra_env))


def machine_info():
    return dict(nproc=sh("nproc"), lscpu=sh("lscpu | head -20"), uptime=sh("uptime"),
                model_name=sh("lscpu | sed -n 's/^Model name: *//p'"),
                cpu=sh("lscpu | sed -n -e 's/^CPU family: *//p' -e 's/^Model: *//p' -e 's/^Stepping: *//p' | paste -sd/"),
                mem=sh("free -m | sed -n 2p"))


def fmt_mib(kb):
    return f"{kb / 1024:.0f}" if kb else "-"


def spread(xs):
    if not xs:
        return "-"
    return f"{statistics.median(xs):.0f} [{min(xs):.0f}-{max(xs):.0f}]"


def compare_vectors(path_a, path_b):
    try:
        from safetensors.numpy import load_file
        va, vb = load_file(path_a), load_file(path_b)
    except Exception as e:  # noqa: BLE001
        return f"({e})"
    import numpy as np
    common = sorted(set(va) & set(vb))
    if not common or len(common) != len(vb):
        return f"(names differ: {len(common)} shared of {len(va)}/{len(vb)})"
    worst = 0.0
    for k in common:
        a, b = va[k].astype(np.float64), vb[k].astype(np.float64)
        worst = max(worst, float(np.max(np.abs(a - b)) / max(1e-12, float(np.max(np.abs(b))))))
    return worst


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small", help="random GPT-2 shape (without --gguf)")
    ap.add_argument("--gguf", help="a Llama-family GGUF (e.g. SmolLM2-135M-Instruct.Q4_1.gguf) instead of a random GPT-2")
    ap.add_argument("--vd-model", dest="vd_model", choices=["auto", "gguf", "dir"], default="auto",
                    help="with --gguf: vera-dist reads the GGUF (gguf), the dequantized HF directory (dir), or the "
                         "GGUF if its build can (auto)")
    ap.add_argument("--peft-load", dest="peft_load", choices=["dir", "gguf"], default="dir",
                    help="with --gguf: PEFT loads the dequantized HF directory (dir) or the GGUF itself in every run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run; the first %d are warm-up" % WARMUP)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vera-dist", dest="vera_dist", default=str(REPO / "build" / "vera-dist"))
    ap.add_argument("--no-compile", dest="no_compile", action="store_true", help="skip PEFT + torch.compile")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (A B C, C B A, ...)")
    ap.add_argument("--r", type=int, default=256)
    ap.add_argument("--key", type=int, default=0, help="projection_prng_key")
    ap.add_argument("--d-initial", dest="d_initial", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random model and of the tokens")
    ap.add_argument("--attn", default="sdpa", help="transformers attn_implementation for PEFT (sdpa, eager)")
    ap.add_argument("--cache", default=os.environ.get("VERA_BENCH_CACHE", "/tmp/vera-bench-cache"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per vera-dist / PEFT eager run")
    ap.add_argument("--compile-timeout", dest="compile_timeout", type=float, default=1800,
                    help="seconds per PEFT + torch.compile run (compilation included)")
    ap.add_argument("--vd-env", dest="vd_env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for vera-dist (e.g. VERA_WEFF=never, OMP_WAIT_POLICY=passive)")
    ap.add_argument("--peft-env", dest="peft_env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the PEFT workers (e.g. OMP_WAIT_POLICY=passive)")
    ap.add_argument("--peft-variant", dest="peft_variant", action="append", default=[], metavar="NAME:K=V[,K=V]",
                    help="also run PEFT eager with this extra environment, shown as peft-eager[NAME] "
                         "(e.g. stock:-OMP_WAIT_POLICY; -KEY unsets)")
    ap.add_argument("--vd-binary", dest="vd_binary", action="append", default=[], metavar="NAME:PATH",
                    help="also run another vera-dist binary (e.g. a build of the previous commit) as vera-dist[NAME], "
                         "interleaved with the others, same environment")
    ap.add_argument("--vd-variant", dest="vd_variant", action="append", default=[], metavar="NAME:K=V[,K=V]",
                    help="also run vera-dist with this extra environment, shown as vera-dist[NAME]; -KEY unsets "
                         "(e.g. passive:OMP_WAIT_POLICY=passive)")
    ap.add_argument("--skip", action="append", default=[], choices=["peft-eager", "peft-compile"],
                    help="leave this reference out (e.g. a vera-dist-only A/B of environments)")
    ap.add_argument("--no-roofline", dest="no_roofline", action="store_true",
                    help="skip the sgemm-rate measurement and the FLOP fraction after the runs (bench/roofline.py)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over PEFT eager's measured steps")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--label", default="", help="free text stored in --json")
    # worker mode (internal)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", dest="model_dir", help=argparse.SUPPRESS)
    ap.add_argument("--family", default="gpt2", help=argparse.SUPPRESS)
    ap.add_argument("--gguf-file", dest="gguf_file", help=argparse.SUPPRESS)
    ap.add_argument("--shard", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--marker", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", dest="profile_out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker == "peft":
        a.profile = a.profile_out
        return worker_peft(a)
    if a.steps <= WARMUP:
        ap.error(f"--steps must be larger than the {WARMUP} warm-up steps")
    a.vera_dist = pathlib.Path(a.vera_dist).resolve()
    if not os.access(a.vera_dist, os.X_OK):
        ap.error(f"--vera-dist: {a.vera_dist} is not an executable (build it: cmake --build build --target vera-dist)")

    cache = pathlib.Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if a.gguf and not os.path.isfile(a.gguf):
        ap.error(f"--gguf: {a.gguf} is not a file (launch/fetch-smollm2.sh fetches SmolLM2-135M-Instruct)")
    t0 = time.perf_counter()
    spec = model_spec(a, cache)
    if a.seq > spec["n_positions"]:
        ap.error(f"--seq {a.seq} exceeds n_positions {spec['n_positions']}")
    shard = ensure_shard(cache, spec["vocab"], a.steps * a.batch * a.seq + 1, a.seed)
    if "torch" in sys.modules:
        # The model was just written with torch in this process. A child's ru_maxrss starts from the
        # high-water mark of the process it was forked from (Linux keeps it across exec), so start over
        # in a fresh interpreter, which finds the model in the cache and never imports torch.
        print(f"model files written in {time.perf_counter() - t0:.1f} s; restarting without torch", flush=True)
        os.execv(sys.executable, [sys.executable] + sys.argv)
    print(f"model files ready in {time.perf_counter() - t0:.1f} s: vera-dist --model {spec['vd_model']}, "
          f"PEFT {spec['peft_gguf'] or spec['hf_dir']}")
    run_root = cache / "runs" / f"{spec['name']}-t{a.threads}-b{a.batch}-s{a.seq}-k{a.steps}-{os.getpid()}"

    variants = {}
    for v in a.vd_binary:
        name, _, path = v.partition(":")
        if not os.access(path, os.X_OK):
            ap.error(f"--vd-binary {v}: {path} is not an executable")
        variants["vera-dist[" + name + "]"] = ["VD_BIN=" + str(pathlib.Path(path).resolve())]
    for v in a.vd_variant:
        name, _, envs = v.partition(":")
        variants["vera-dist[" + name + "]"] = [e for e in envs.split(",") if e]
    peft_variants = {}
    for v in a.peft_variant:
        name, _, envs = v.partition(":")
        peft_variants["peft-eager[" + name + "]"] = [e for e in envs.split(",") if e]
    systems = (["vera-dist"] + list(variants) + ["peft-eager"] + list(peft_variants) +
               ([] if a.no_compile else ["peft-compile"]))
    systems = [s for s in systems if s not in a.skip]
    info = machine_info()
    print(f"machine: {info['model_name']} ({info['cpu']}), nproc {info['nproc']}, {info['uptime']}")
    info["vd_blas"] = {}
    for sysname in systems:
        if sysname.startswith("vera-dist"):
            ve = variants.get(sysname, [])
            b = info["vd_blas"][sysname] = vd_blas_info(vd_binary(a, ve),
                                                        vd_env(a, [e for e in ve if not e.startswith("VD_BIN=")]))
            print(f"{sysname} BLAS: {'; '.join(b['ldd'])}; OpenBLAS kernel {b['corename']}; env {b['env']}")
    print(f"model {spec['name']} ({spec['describe']}), VeRA on {spec['targets_text']}, batch {a.batch}, seq {a.seq}, steps {a.steps} (first {WARMUP} are warm-up), "
          f"threads {a.threads}, r {a.r}, lr {a.lr}, repeats {a.repeats}")
    runs = {s: [] for s in systems}
    skipped = {}
    for rep in range(a.repeats):
        order = systems if rep % 2 == 0 else systems[::-1]
        for sysname in order:
            if sysname in skipped:
                continue
            out = run_root / f"rep{rep}-{sysname.replace('[', '-').replace(']', '')}"
            load_before = os.getloadavg()
            if sysname.startswith("vera-dist"):
                r = measure_vd(a, spec, shard, out, variants.get(sysname, []))
            else:
                r = measure_peft(a, sysname.split("-")[1].split("[")[0], spec, shard, out, peft_variants.get(sysname, []))
            r["load_before"], r["load_after"] = load_before, os.getloadavg()
            r["rep"] = rep
            if rep == 0:
                print(f"  command ({sysname}): {r['cmd']}")
                if "blas_info" in r and "peft_blas" not in info:
                    info["peft_blas"] = r["blas_info"]
                    print(f"  PEFT BLAS: {r['blas_info']}")
            if r["rc"] != 0 or "error" in r:
                msg = r.get("error", "")
                print(f"  rep {rep} {sysname}: FAILED (rc {r['rc']}{', timed out' if r['timed_out'] else ''})\n"
                      + "\n".join("    " + ln for ln in msg.splitlines()[-15:]))
                if sysname == "peft-compile":
                    skipped[sysname] = f"rc {r['rc']}" + (" (timed out)" if r["timed_out"] else "") + ": " + \
                        (msg.strip().splitlines()[-1] if msg.strip() else "")
                runs[sysname].append(r)
                continue
            r["tok_s"] = throughput(r)
            r["tok_s_medstep"] = r["tokens_per_step"] / (statistics.median(r["step_ms"][WARMUP:]) / 1e3)
            r["tok_cpu_s"] = cpu_throughput(r)
            runs[sysname].append(r)
            extra = f", first step {r['step_ms'][0] / 1e3:.1f} s" if sysname == "peft-compile" else ""
            if "load_s" in r:
                extra += f", load {r['load_s']:.1f} s"
            cpu_txt = f", {r['tok_cpu_s']:.0f} tok/CPU-s" if r["tok_cpu_s"] else ""
            print(f"  rep {rep} {sysname:26s}: {r['tok_s']:9.0f} tok/s{cpu_txt}, peak RSS {fmt_mib(r['maxrss_kb'])} MiB, "
                  f"loss {r['losses'][-1]:.6f}, load {r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}{extra}",
                  flush=True)

    ok = {s: [r for r in runs[s] if "tok_s" in r] for s in systems}
    print()
    print(f"== {spec['name']}: batch {a.batch} x seq {a.seq} = {a.batch * a.seq} tokens/step, threads {a.threads}, "
          f"r {a.r}, {spec['targets_text']}, {a.steps} steps ({WARMUP} warm-up), {a.repeats} rounds ==")
    ref_name = "PEFT eager" if "peft-eager" in systems else "vera-dist"
    print(f"{'system':26s} {'tok/s median [min-max]':>24s} {'n':>2s} {'x / ' + ref_name:>20s} {'med-step':>8s} "
          f"{'peak RSS':>9s} "
          f"{'train RSS':>9s} {'last loss':>11s} {'dloss':>9s} {'dvec':>9s}")
    ref_sys = "peft-eager" if "peft-eager" in systems else "vera-dist"
    ref_rep = {r["rep"]: r["tok_s"] for r in ok.get(ref_sys, [])}
    vd = ok["vera-dist"]
    summary = {}
    for s in systems:
        rs = ok[s]
        if not rs:
            why = skipped.get(s, "all runs failed")
            print(f"{s:26s} skipped: {why}")
            summary[s] = dict(skipped=why)
            continue
        toks = [r["tok_s"] for r in rs]
        ratios = [r["tok_s"] / ref_rep[r["rep"]] for r in rs if r["rep"] in ref_rep]
        ratio = (f"{statistics.median(toks) / statistics.median(ref_rep.values()):.2f}x "
                 f"({min(ratios):.2f}-{max(ratios):.2f})") if ratios else "-"
        ref = vd[0]["losses"] if vd else None
        dloss = max(abs(x - y) / abs(y) for x, y in zip(rs[0]["losses"], ref)) if ref else float("nan")
        dvec = compare_vectors(rs[0]["vectors"], vd[0]["vectors"]) if vd else float("nan")
        dvec_s = f"{dvec:.1e}" if isinstance(dvec, float) else str(dvec)
        maxrss = statistics.median(r["maxrss_kb"] for r in rs)
        trss = statistics.median(r["train_rss_kb"] for r in rs)
        ms_ratio = "-"
        if ok.get(ref_sys):
            ms_ratio = "%.2fx" % (statistics.median(r["tok_s_medstep"] for r in rs) /
                                 statistics.median(r["tok_s_medstep"] for r in ok[ref_sys]))
        print(f"{s:26s} {spread(toks):>24s} {len(rs):>2d} {ratio:>20s} {ms_ratio:>8s} {fmt_mib(maxrss):>7s}Mi "
              f"{fmt_mib(trss):>7s}Mi {rs[0]['losses'][-1]:11.6f} {dloss:9.1e} {dvec_s:>9s}")
        summary[s] = dict(tok_s=toks, tok_s_median=statistics.median(toks), ratio_to_peft_eager=ratios,
                          tok_s_medstep=[r["tok_s_medstep"] for r in rs],
                          tok_cpu_s=[r.get("tok_cpu_s") for r in rs],
                          maxrss_kb=[r["maxrss_kb"] for r in rs], train_rss_kb=[r["train_rss_kb"] for r in rs],
                          last_loss=rs[0]["losses"][-1], losses=rs[0]["losses"], max_rel_loss_diff_vs_vd=dloss,
                          max_rel_vec_diff_vs_vd=dvec, load=[(r["load_before"][0], r["load_after"][0]) for r in rs])
        if s == "peft-compile":
            summary[s]["first_step_s"] = [r["step_ms"][0] / 1e3 for r in rs]
    def fastest(rs):
        ms = [x for r in rs for x in r["step_ms"][WARMUP:]]
        return rs[0]["tokens_per_step"] / (min(ms) / 1e3) if ms else None
    if ok.get(ref_sys):
        print(f"fastest single step (least disturbed by other load), tok/s and / {ref_name}: " + ", ".join(
            f"{s} {fastest(ok[s]):.0f} ({fastest(ok[s]) / fastest(ok[ref_sys]):.2f}x)" for s in systems if ok[s]))
    for s in systems:
        if s.startswith("vera-dist") and ok[s]:
            parts = []
            for p in ("peft-eager", "peft-compile"):
                if ok.get(p):
                    by = {r["rep"]: r["tok_s"] for r in ok[p]}
                    per = [r["tok_s"] / by[r["rep"]] for r in ok[s] if r["rep"] in by]
                    med = statistics.median(r["tok_s"] for r in ok[s]) / statistics.median(by.values())
                    parts.append(f"{med:.2f}x {p} (rounds {min(per):.2f}-{max(per):.2f})")
            print(f"ratio {s}: " + ", ".join(parts))
    if "peft-compile" in skipped:
        print(f"peft-compile skipped after a failure: {skipped['peft-compile']}")
    cpu_med = {s: statistics.median(x) for s in systems if ok[s]
               for x in [[r["tok_cpu_s"] for r in ok[s] if r.get("tok_cpu_s")]] if x}
    if cpu_med:
        ref_cpu = cpu_med.get(ref_sys)
        print("tokens per CPU-second (user + system of all threads, the measured steps; the same work on a busy "
              "machine costs about the same CPU time): " + ", ".join(
                  f"{s} {v:.0f}" + (f" ({v / ref_cpu:.2f}x {ref_name})" if ref_cpu else "") for s, v in cpu_med.items()))
    roof = {}
    if not a.no_roofline:
        import roofline
        cfg = (roofline.model_cfg("gpt2", shape=SHAPES[a.shape]) if spec["family"] == "gpt2"
               else roofline.model_cfg("llama", hf_dir=pathlib.Path(spec["hf_dir"])))
        _, shapes = roofline.step_flops(cfg, a.batch, a.seq, a.r)
        for s in systems:
            if not (s.startswith("vera-dist") and ok[s]):
                continue
            ve = variants.get(s, [])
            rate = roofline.sgemm_rate(vd_binary(a, ve), vd_env(a, [e for e in ve if not e.startswith("VD_BIN=")]),
                                       a.threads, shapes)
            tok = {f"{s} (median)": statistics.median(r["tok_s"] for r in ok[s]), f"{s} (fastest step)": fastest(ok[s])}
            cpu = [r["tok_cpu_s"] for r in ok[s] if r.get("tok_cpu_s")]
            lines, per_tok = roofline.report(cfg, a.batch, a.seq, a.r, rate, tok,
                                             {f"{s} (median)": statistics.median(cpu)} if cpu else None)
            print("\n".join(lines))
            roof[s] = dict(rate=rate, flops_per_token=per_tok, tok_s=tok)
    print("tok/s: tokens of steps %d..%d / their time, per run; 'x / PEFT eager': ratio of the medians (range of "
          "the per-round ratios); med-step: the same ratio from each run's median step time (robust to bursts of "
          "load); peak RSS: ru_maxrss of the process (load included); train RSS: largest VmRSS "
          "sampled after the first step; dloss: max over steps of |loss_x - loss_vd| / loss_vd; dvec: max over "
          "layers of max|v_x - v_vd| / max|v_vd| of the final b and d (vd = vera-dist, first round)."
          % (WARMUP + 1, a.steps))
    print(f"load average at the end: {os.getloadavg()}")
    if a.json:
        for s in runs:
            for r in runs[s]:
                r.pop("vectors", None)
        with open(a.json, "w") as f:
            json.dump(dict(label=a.label, args={k: str(v) for k, v in vars(a).items()}, machine=info,
                           model={k: str(v) if isinstance(v, pathlib.Path) else v for k, v in spec.items()},
                           summary=summary, runs=runs, skipped=skipped, roofline=roof), f, indent=1)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    sys.exit(main())
