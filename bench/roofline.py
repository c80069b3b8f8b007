#!/usr/bin/env python3
"""bench/roofline.py: how close a vera-dist training step comes to the sgemm rate of its BLAS.

Two numbers, both from the model's shapes and this machine, and their quotient:

* the **sgemm rate** of the BLAS as vera-dist uses it: the library the binary links (ldd), with
  the kernel vera-dist runs (when vera-dist restarts itself with OPENBLAS_CORETYPE, as
  `vera-dist --version` says, the same variable here), the same thread count, on the step's own
  GEMM shapes (linear layers forward and input gradient, VeRA's products, the LM head; not the
  small per-head attention products), timed row-major as C = A B, each weighted by its share of
  the step's FLOPs;
* the **useful FLOPs per token** of the step vera-dist runs: forward, and the backward it needs
  (input gradients of every linear layer but the first block's attention input, whose gradient
  only reaches the frozen embeddings; no frozen-weight gradient), the VeRA products of the path
  vera-dist picks per layer (merged W0 + dW with its per-step rebuild, or factored; the same rule
  as vd_vera_alloc_acts), causal attention (each query against the keys up to it: T(T+1)/2 per
  head, not T^2), and the tied LM head forward + input gradient. Elementwise work is not counted.

fraction = FLOPs/token x tokens/s / sgemm rate. bench_cpu.py prints it for every vera-dist run;
alone: python3 bench/roofline.py --vera-dist build/vera-dist --shape gpt2-small --batch 4 --seq 256
--threads 2 (no throughput: only the two numbers).
"""
import argparse
import json
import os
import re
import subprocess
import sys

# cblas enums (cblas.h)
ROW_MAJOR, NO_TRANS = 101, 111


def linear_kinds(cfg):
    """(name, in, out) of the adapted linear layers of one block, and the model's sizes."""
    if cfg["family"] == "gpt2":
        C = cfg["n_embd"]
        return [("c_attn", C, 3 * C), ("attn.c_proj", C, C), ("c_fc", C, 4 * C), ("mlp.c_proj", 4 * C, C)]
    C, hd = cfg["hidden_size"], cfg["head_dim"]
    q, kv, inter = cfg["n_head"] * hd, cfg["n_kv_head"] * hd, cfg["intermediate_size"]
    return [("q_proj", C, q), ("k_proj", C, kv), ("v_proj", C, kv), ("o_proj", q, C),
            ("gate_proj", C, inter), ("up_proj", C, inter), ("down_proj", inter, C)]


def first_block_input(cfg):
    """The kinds fed by block 0's normalised embeddings: their input gradient is not needed."""
    return {"c_attn"} if cfg["family"] == "gpt2" else {"q_proj", "k_proj", "v_proj"}


def shared_input(cfg):
    """Kinds whose input is the previous kind's (Llama's k, v after q; up after gate): a merged
    layer's backward reuses that layer's U = X A^T (src/adapter/vera.c, vera_merged_u)."""
    return set() if cfg["family"] == "gpt2" else {"k_proj", "v_proj", "up_proj"}


HEAD_CHUNK = 128  # VD_HEAD_CHUNK (src/model/model.c): the LM head + cross-entropy in row chunks


def step_flops(cfg, batch, seq, r):
    """Useful FLOPs of one optimizer step (dict by part) and the GEMM shapes (M, N, K, count)."""
    N = batch * seq
    L, C, V = cfg["n_layer"], cfg["hidden"], cfg["vocab"]
    parts = dict(linear_fwd=0.0, linear_dgrad=0.0, vera=0.0, vera_rebuild=0.0, attention=0.0, lm_head=0.0)
    shapes = {}
    skip, shares = first_block_input(cfg), shared_input(cfg)
    for name, i, o in linear_kinds(cfg):
        parts["linear_fwd"] += 2.0 * N * i * o * L
        parts["linear_dgrad"] += 2.0 * N * i * o * (L - 1 if name in skip else L)
        shapes[(N, o, i)] = shapes.get((N, o, i), 0) + L          # forward
        shapes[(N, i, o)] = shapes.get((N, i, o), 0) + L          # input gradient
        merged = N * (i + o) > i * o                             # vd_adapter_merge_pays, VD_WEFF_AUTO
        add = lambda s, n: shapes.__setitem__(s, shapes.get(s, 0) + n)  # noqa: E731
        add((o, r, N), L)                                         # M = G^T U
        if merged:   # backward U (r in, once per shared input), M (r out); rebuild once per step
            if name not in shares:
                add((N, r, i), L)                                 # U = X A^T
            parts["vera"] += 2.0 * N * r * ((0 if name in shares else i) + o) * L
            parts["vera_rebuild"] += 2.0 * i * o * r * L
            add((i, o, r), L)
        else:        # forward U (r in), U B^T (r out); backward M (r out), G B (r out), . A (r in)
            add((N, r, i), L)                                     # U = X A^T
            parts["vera"] += 2.0 * N * r * (2 * i + 3 * o) * L
            add((N, o, r), L)
            add((N, r, o), L)
            add((N, i, r), L)
    keys = seq * (seq + 1) / 2.0                                    # causal: keys per sequence
    parts["attention"] = 6 * 2.0 * batch * keys * cfg["n_head"] * cfg["head_dim"] * L
    parts["lm_head"] = 2 * 2.0 * N * V * C
    for m0 in range(0, N, HEAD_CHUNK):                            # logits, then dx, per chunk
        rows = min(HEAD_CHUNK, N - m0)
        shapes[(rows, V, C)] = shapes.get((rows, V, C), 0) + 1
        shapes[(rows, C, V)] = shapes.get((rows, C, V), 0) + 1
    return parts, shapes


def model_cfg(family, hf_dir=None, shape=None):
    """The sizes this module needs, from bench_cpu's SHAPES entry (GPT-2) or an HF config.json."""
    if family == "gpt2":
        s = shape
        return dict(family="gpt2", n_layer=s["n_layer"], n_embd=s["n_embd"], hidden=s["n_embd"], vocab=s["vocab_size"],
                    n_head=s["n_head"], n_kv_head=s["n_head"], head_dim=s["n_embd"] // s["n_head"])
    c = json.loads((hf_dir / "config.json").read_text()) if hasattr(hf_dir, "read_text") else json.load(open(hf_dir))
    nh = int(c["num_attention_heads"])
    hd = int(c.get("head_dim") or c["hidden_size"] // nh)
    return dict(family="llama", n_layer=int(c["num_hidden_layers"]), hidden_size=int(c["hidden_size"]),
                hidden=int(c["hidden_size"]), intermediate_size=int(c["intermediate_size"]), vocab=int(c["vocab_size"]),
                n_head=nh, n_kv_head=int(c.get("num_key_value_heads", nh)), head_dim=hd)


def vd_blas_lib(vd, env):
    """The OpenBLAS the binary links, and the OPENBLAS_CORETYPE vera-dist restarts itself with (if any)."""
    out = subprocess.run(["ldd", str(vd)], capture_output=True, text=True, env=env).stdout
    lib = next((ln.split("=>")[1].split("(")[0].strip() for ln in out.splitlines()
                if "=>" in ln and "blas" in ln.split("=>")[0]), None)
    ver = subprocess.run([str(vd), "--version"], capture_output=True, text=True, env=env)
    m = re.search(r"OPENBLAS_CORETYPE=(\w+)", ver.stdout + ver.stderr)
    kernel = re.search(r"kernel (\w+)", ver.stdout + ver.stderr)
    return lib, (m.group(1) if m else None), (kernel.group(1) if kernel else "?"), (ver.stdout + ver.stderr).strip()


def sgemm_child(lib, threads, shapes, reps):
    """Runs in a child process (its environment selects the kernel): GFLOP/s per shape, best of reps."""
    import ctypes
    import time
    h = ctypes.CDLL(lib)
    h.openblas_set_num_threads(ctypes.c_int(threads))
    core = h.openblas_get_corename
    core.restype = ctypes.c_char_p
    f = h.cblas_sgemm
    c_int, c_float, P = ctypes.c_int, ctypes.c_float, ctypes.POINTER(ctypes.c_float)
    f.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, c_float, P, c_int, P, c_int, c_float, P, c_int]
    res, res_cpu = [], []
    for M, N, K in shapes:
        A, B, Cm = (ctypes.c_float * (M * K))(), (ctypes.c_float * (K * N))(), (ctypes.c_float * (M * N))()
        for buf in (A, B):   # touch every page with small values (no denormals)
            ctypes.memset(buf, 0x3c, ctypes.sizeof(buf))
        best, best_cpu = float("inf"), float("inf")
        for _ in range(reps + 1):   # the first is warm-up
            t, c = time.perf_counter(), time.process_time()
            f(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, 1.0, A, K, B, N, 0.0, Cm, N)
            best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
        res.append(2.0 * M * N * K / best / 1e9)
        res_cpu.append(2.0 * M * N * K / max(best_cpu, 1e-9) / 1e9)
    return dict(corename=core().decode(), gflops=res, gflops_cpu=res_cpu)


def sgemm_rate(vd, env, threads, shapes, reps=3):
    """The step's GEMM shapes timed with vera-dist's BLAS and kernel; the FLOP-weighted rate."""
    lib, coretype, kernel, version = vd_blas_lib(vd, env)
    if lib is None:
        return dict(error=f"no BLAS in ldd {vd}")
    cenv = dict(env)
    if coretype and "OPENBLAS_CORETYPE" not in env:
        cenv["OPENBLAS_CORETYPE"] = coretype
    order = sorted(shapes)
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import roofline; "
            "print(json.dumps(roofline.sgemm_child(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), "
            "int(sys.argv[5]))))")
    p = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), lib, str(threads),
                        json.dumps([list(s) for s in order]), str(reps)], capture_output=True, text=True, env=cenv)
    if p.returncode != 0:
        return dict(error=p.stderr.strip()[-300:])
    r = json.loads(p.stdout)
    flops = {s: 2.0 * s[0] * s[1] * s[2] * shapes[s] for s in order}
    secs = sum(flops[s] / (g * 1e9) for s, g in zip(order, r["gflops"]))
    cpu_secs = sum(flops[s] / (g * 1e9) for s, g in zip(order, r["gflops_cpu"]))
    return dict(lib=lib, kernel=r["corename"], vd_kernel=kernel, coretype_env=cenv.get("OPENBLAS_CORETYPE"),
                threads=threads, per_shape={f"{s[0]}x{s[1]}x{s[2]}": g for s, g in zip(order, r["gflops"])},
                weighted_gflops=sum(flops.values()) / secs / 1e9,
                weighted_gflops_per_cpu_s=sum(flops.values()) / cpu_secs / 1e9, version=version)


def report(cfg, batch, seq, r, rate, tok_s=None, tok_cpu_s=None):
    """The lines bench_cpu.py prints: the rate, the FLOPs per token, and the fraction per tok/s given
    (wall clock, against the wall-clock rate) and per tok/CPU-s given (against GFLOP per CPU second
    of the same sgemm calls: the reading that holds on a busy machine)."""
    parts, _ = step_flops(cfg, batch, seq, r)
    N = batch * seq
    per_tok = sum(parts.values()) / N
    lines = []
    if "error" in rate:
        return [f"roofline: sgemm rate not measured ({rate['error']})"], per_tok
    lines.append(f"roofline: sgemm of {rate['lib']} (kernel {rate['kernel']}, {rate['threads']} threads), the step's "
                 f"shapes M x N x K: " + ", ".join(f"{k} {v:.0f}" for k, v in rate["per_shape"].items()) +
                 f" GFLOP/s; FLOP-weighted {rate['weighted_gflops']:.0f} GFLOP/s wall, "
                 f"{rate['weighted_gflops_per_cpu_s']:.0f} GFLOP per CPU-second (all threads)")
    lines.append(f"roofline: useful FLOPs per token {per_tok / 1e6:.0f} M (" +
                 ", ".join(f"{k} {v / N / 1e6:.1f} M" for k, v in parts.items()) + ")")
    for name, t in (tok_s or {}).items():
        lines.append(f"roofline: {name} at {t:.0f} tok/s = {per_tok * t / 1e9:.0f} GFLOP/s useful = "
                     f"{per_tok * t / 1e9 / rate['weighted_gflops']:.0%} of the sgemm rate")
    for name, t in (tok_cpu_s or {}).items():
        lines.append(f"roofline: {name} at {t:.0f} tok/CPU-s = {per_tok * t / 1e9:.0f} useful GFLOP per CPU-second = "
                     f"{per_tok * t / 1e9 / rate['weighted_gflops_per_cpu_s']:.0%} of the sgemm's")
    return lines, per_tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vera-dist", dest="vera_dist", required=True)
    ap.add_argument("--shape", default="gpt2-small", help="a bench_cpu.py GPT-2 shape")
    ap.add_argument("--hf-config", dest="hf_config", help="a Llama config.json instead of --shape")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--r", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tok-s", dest="tok_s", type=float, help="a measured tok/s to express as a fraction")
    ap.add_argument("--tok-cpu-s", dest="tok_cpu_s", type=float, help="a measured tok/CPU-s to express as a fraction")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_cpu
    cfg = model_cfg("llama", hf_dir=a.hf_config) if a.hf_config else model_cfg("gpt2", shape=bench_cpu.SHAPES[a.shape])
    _, shapes = step_flops(cfg, a.batch, a.seq, a.r)
    rate = sgemm_rate(a.vera_dist, bench_cpu.base_env(a.threads), a.threads, shapes)
    print("\n".join(report(cfg, a.batch, a.seq, a.r, rate, {"given": a.tok_s} if a.tok_s else None,
                           {"given": a.tok_cpu_s} if a.tok_cpu_s else None)[0]))


if __name__ == "__main__":
    sys.exit(main())
