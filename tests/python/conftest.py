"""Shared helpers for the Python reference tests (transformers / PEFT against vera-dist).

Everything here builds its reference with the libraries themselves: GPT-2 models come from
transformers (GPT2Config + GPT2LMHeadModel, random weights, save_pretrained with safetensors),
VeRA adapters from PEFT (get_peft_model / save_pretrained), token shards are written with numpy
in llm.c's layout (docs/data-format.md).

The binary under test is $VERA_DIST_BIN (tests/python/run.sh sets it), else build/vera-dist.
A missing binary or a missing Python package is a failure, not a skip: this suite is what
proves vera-dist equal to PEFT.
"""
import copy
import json
import os
import pathlib
import subprocess
import warnings

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("VERA_DIST_BIN", str(REPO / "build" / "vera-dist")))
if not BIN.is_absolute():
    BIN = REPO / BIN

# The whole suite runs on two cores in CI; torch and vera-dist get the same count.
THREADS = int(os.environ.get("VERA_TEST_THREADS", "2"))
torch.set_num_threads(THREADS)

SHARD_MAGIC = 20240520  # llm.c token shards
LLMC_MAGIC = 20240326   # llm.c model files (gpt2_124M.bin)

# PEFT target_modules (matched against the end of a module path) -> vera-dist's target_modules
ALL4 = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
KIND_OF_SUFFIX = {"attn.c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "mlp.c_fc": "mlp.c_fc",
                  "mlp.c_proj": "mlp.c_proj"}


def vd_targets(peft_targets):
    """vera-dist's target_modules for a PEFT target_modules list (PEFT matches suffixes)."""
    kinds = []
    for full in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        if any(full == t or full.endswith("." + t) for t in peft_targets):
            kinds.append(full)
    assert kinds, f"{peft_targets} selects no GPT-2 linear layer"
    return "all" if len(kinds) == 4 else ",".join(kinds)


# ---------------------------------------------------------------------------------------------
# running vera-dist

@pytest.fixture(scope="session")
def vd_bin():
    if not BIN.is_file() or not os.access(BIN, os.X_OK):
        pytest.fail(f"vera-dist binary not found at {BIN} (build it, or set VERA_DIST_BIN)", pytrace=False)
    return BIN


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(THREADS))
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    # a single process (no mpirun) still initialises MPI as a singleton
    env.setdefault("OMPI_MCA_pml", "ob1")
    env.setdefault("OMPI_MCA_btl", "self,vader")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def run_vd(*args, ok=True, timeout=300):
    """Runs `vera-dist ARGS...`. With ok=True a non-zero exit fails the test with the command and
    its stderr; with ok=False a zero exit does; ok=None checks nothing. Returns the CompletedProcess."""
    if not BIN.is_file():
        pytest.fail(f"vera-dist binary not found at {BIN} (build it, or set VERA_DIST_BIN)", pytrace=False)
    cmd = [str(BIN)] + [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    if ok is True and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)}\nexited {proc.returncode}\nstderr:\n{proc.stderr.strip()}\n"
                    f"stdout (tail):\n{proc.stdout[-2000:]}", pytrace=False)
    if ok is False and proc.returncode == 0:
        pytest.fail(f"{' '.join(cmd)}\nsucceeded but was expected to fail\nstdout (tail):\n{proc.stdout[-2000:]}",
                    pytrace=False)
    return proc


def error_lines(proc):
    """The `vera-dist: error: ...` lines of a failed run (MPI_Abort adds its own banner)."""
    return [ln for ln in proc.stderr.splitlines() if "vera-dist: error:" in ln]


def vd_forward(out, model_dir, tokens, B, T, r, key, targets, d_initial, adapter=None, extra=()):
    """`vera-dist forward`: one forward + backward on the first B sequences of `tokens`; extra:
    more options (e.g. --adapter_type lora --lora_alpha 16). Returns the output file's tensors
    (torch, fp32)."""
    args = ["forward", "--model", model_dir, "--tokens", tokens, "--out", out, "--batch_size", B, "--seq_len", T,
            "--r", r, "--projection_prng_key", key, "--target_modules", targets, "--d_initial", repr(float(d_initial)),
            "--threads", THREADS]
    if adapter is not None:
        args += ["--adapter", adapter]
    run_vd(*args, *extra)
    return load_file(str(out))


def vd_train(out_dir, model_dir, tokens, *, B, T, K, r, key, targets, d_initial, lr, weight_decay, grad_clip,
             init_adapter=None, beta1=0.9, beta2=0.999, eps=1e-8, extra=(), ok=True):
    """A single-process `vera-dist train` run with a constant learning rate (no warmup, no decay)."""
    args = ["train", "--model", model_dir, "--train_data", tokens, "--out_dir", out_dir, "--resume", "none", "--overwrite", 1,
            "--batch_size", B, "--seq_len", T, "--grad_accum", 1, "--max_steps", K, "--warmup_steps", 0,
            "--min_lr_ratio", 1, "--lr", repr(float(lr)), "--weight_decay", repr(float(weight_decay)),
            "--grad_clip", repr(float(grad_clip)), "--beta1", repr(float(beta1)), "--beta2", repr(float(beta2)),
            "--adam_eps", repr(float(eps)), "--r", r, "--projection_prng_key", key, "--target_modules", targets,
            "--d_initial", repr(float(d_initial)), "--ckpt_every", 0, "--threads", THREADS, "--log_every", 1000]
    if init_adapter is not None:
        args += ["--init_adapter", init_adapter]
    return run_vd(*args, *extra, ok=ok)


def read_metrics(out_dir):
    rows = [json.loads(ln) for ln in (pathlib.Path(out_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return rows


def checkpoint_of(out_dir, step):
    path = pathlib.Path(out_dir) / "checkpoints" / f"step_{step:08d}.h5"
    assert path.is_file(), f"no checkpoint {path} after training (have: {sorted(p.name for p in path.parent.glob('*'))})"
    return path


# ---------------------------------------------------------------------------------------------
# models, data, adapters

def gpt2_config(n_embd=32, vocab=101, n_layer=2, n_head=2, n_positions=64):
    # no dropout anywhere: vera-dist's GPT-2 has none, and the gradients must be comparable
    return transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab,
                                   n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                   bos_token_id=vocab - 1, eos_token_id=vocab - 1)


def make_gpt2(out_dir, n_embd=32, vocab=101, seed=0, n_layer=2, n_head=2, n_positions=64, bias_std=0.02):
    """A GPT2LMHeadModel with random weights (seeded), saved with safetensors to out_dir.
    Biases and LayerNorm parameters are randomised too (transformers initialises them to 0 / 1,
    which would hide a mix-up between them). Returns the model in eval mode."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(gpt2_config(n_embd, vocab, n_layer, n_head, n_positions))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, bias_std)
            elif ".ln_" in name and name.endswith(".weight"):
                p.normal_(1.0, 0.1)
    model.eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return model


def write_shard(path, tokens):
    """An llm.c token shard: int32[256] header (magic, version 1, count), then uint16 tokens."""
    tokens = np.asarray(tokens, dtype=np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = SHARD_MAGIC, 1, tokens.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    return path


def random_tokens(n, vocab, seed):
    return np.random.default_rng(seed).integers(0, vocab, size=n, dtype=np.int64).astype(np.uint16)


def batch(tokens, T, first, count):
    """Sequences first .. first+count-1 as vera-dist cuts them (sequence j = tokens[j*T : j*T+T+1]):
    (inputs, targets), each (count, T) int64."""
    rows = np.stack([np.asarray(tokens[j * T: j * T + T + 1], dtype=np.int64) for j in range(first, first + count)])
    x = torch.from_numpy(rows)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def mean_ce(model, inputs, targets):
    logits = model(input_ids=inputs).logits
    return logits, torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def vera_config(r, key, targets, d_initial=0.1, save_projection=True):
    from peft import VeraConfig
    return VeraConfig(r=r, projection_prng_key=key, target_modules=list(targets), d_initial=d_initial,
                      save_projection=save_projection, vera_dropout=0.0, fan_in_fan_out=True)


def peft_model(base, cfg):
    """get_peft_model on a copy of base (PEFT modifies the model it wraps)."""
    from peft import get_peft_model
    pm = get_peft_model(copy.deepcopy(base), cfg)
    pm.eval()
    return pm


def vera_vectors(pm):
    """{module path ("transformer.h.0.attn.c_attn"): (lambda_b param, lambda_d param)} in PEFT order."""
    out = {}
    for name, mod in pm.named_modules():
        if hasattr(mod, "vera_lambda_b") and "default" in getattr(mod, "vera_lambda_b", {}):
            path = name.split("base_model.model.", 1)[1] if "base_model.model." in name else name
            out[path] = (mod.vera_lambda_b["default"], mod.vera_lambda_d["default"])
    assert out, "the PEFT model has no VeRA layers"
    return out


def set_vectors(pm, seed, b_scale=0.5, d_scale=0.5):
    """Non-zero b and d from a seeded generator (b = 0 would hide every adapter bug)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b, d in vera_vectors(pm).values():
            b.copy_(torch.randn(b.shape, generator=g) * b_scale)
            d.copy_(torch.randn(d.shape, generator=g) * d_scale + 0.1)


def peft_projections(pm):
    A = pm.base_model.vera_A["default"].detach().clone()
    B = pm.base_model.vera_B["default"].detach().clone()
    return A, B


def max_rel(a, b):
    """max |a - b| / max |b| (the error relative to the reference's scale)."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def write_llmc(path, model, version, Vp):
    """Writes `model` (a transformers GPT2LMHeadModel) as an llm.c model file, the way llm.c's
    train_gpt2.py write_model does: int32[256] header, then the 16 tensors in llm.c order with
    linear weights as nn.Linear's (out, in), wte padded with zero rows to Vp; version 3 = fp32,
    5 = bf16. Returns the parameters as written, as fp32 tensors keyed by HF name (bf16-rounded
    for version 5), for building the reference."""
    cfg = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    V, C, L = cfg.vocab_size, cfg.n_embd, cfg.n_layer
    assert Vp >= V
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [LLMC_MAGIC, version, cfg.n_positions, V, L, cfg.n_head, C, Vp]
    wte = torch.zeros(Vp, C)
    wte[:V] = sd["transformer.wte.weight"]
    per_layer = lambda s: [sd[f"transformer.h.{l}.{s}"] for l in range(L)]
    lin = lambda s: [sd[f"transformer.h.{l}.{s}"].t() for l in range(L)]  # Conv1D (in, out) -> (out, in)
    tensors = [[wte], [sd["transformer.wpe.weight"]], per_layer("ln_1.weight"), per_layer("ln_1.bias"),
               lin("attn.c_attn.weight"), per_layer("attn.c_attn.bias"), lin("attn.c_proj.weight"),
               per_layer("attn.c_proj.bias"), per_layer("ln_2.weight"), per_layer("ln_2.bias"),
               lin("mlp.c_fc.weight"), per_layer("mlp.c_fc.bias"), lin("mlp.c_proj.weight"),
               per_layer("mlp.c_proj.bias"), [sd["transformer.ln_f.weight"]], [sd["transformer.ln_f.bias"]]]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for group in tensors:
            for t in group:
                t = t.contiguous()
                if version == 3:
                    f.write(t.numpy().astype("<f4").tobytes())
                else:
                    f.write(t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes())
    if version == 5:
        sd = {k: v.to(torch.bfloat16).float() for k, v in sd.items()}
    return sd


# ---------------------------------------------------------------------------------------------
# the Llama family (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)

# PEFT names of the seven linear layers of a decoder layer, in the order PEFT lists them
LLAMA_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA_PATH = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
              "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
              "down_proj": "mlp.down_proj"}
LLAMA_ARCHS = {  # arch -> (config class, model class); config.json "architectures" is the class name
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}


def llama_config(arch="llama", **overrides):
    """A tiny config of the Llama family. Defaults: 2 layers, hidden 32, 4 heads, 2 key/value
    heads (GQA, 2 query heads per group), intermediate 48, vocabulary 101, untied head,
    rms_norm_eps 1e-5 (not the class default, so that reading it is checked), no dropout, and
    initializer_range 0.1 (transformers' 0.02 makes attention almost uniform on 32 channels,
    which would hide RoPE and masking bugs). Any keyword overrides a field; rope_parameters
    (transformers 5's spelling: {"rope_type": ..., "rope_theta": ..., scaling fields}) too."""
    cfg_cls = getattr(transformers, LLAMA_ARCHS[arch][0])
    kw = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=101, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
              initializer_range=0.1, attention_dropout=0.0, bos_token_id=1, eos_token_id=2)
    if arch == "qwen2":
        kw.update(use_sliding_window=False)
    kw.update(overrides)
    cfg = cfg_cls(**kw)
    cfg.architectures = [LLAMA_ARCHS[arch][1]]
    return cfg


def legacy_rope_config_json(model_dir):
    """Rewrites model_dir/config.json in the spelling of transformers 4 and of most published
    checkpoints (Llama 3.x, SmolLM2): top-level "rope_theta" and "rope_scaling" (null or the
    scaling dict) instead of transformers 5's "rope_parameters". Both mean the same model."""
    path = pathlib.Path(model_dir) / "config.json"
    cfg = json.loads(path.read_text())
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    path.write_text(json.dumps(cfg, indent=2))
    return cfg


def make_llama(out_dir, arch="llama", seed=0, bias_std=0.02, norm_std=0.1, max_shard_size=None,
               legacy_rope=False, save_dtype=None, **overrides):
    """A Llama-family model (llama_config(arch, **overrides)) with random weights (seeded), saved
    with safetensors to out_dir (sharded with model.safetensors.index.json when max_shard_size
    is given, e.g. "40KB"). RMSNorm weights are N(1, norm_std) and every bias N(0, bias_std)
    (transformers initialises them to 1 / 0, which would hide a mix-up between them, or a
    missing bias). legacy_rope rewrites config.json with rope_theta / rope_scaling (checked to
    load back to the same rope parameters). save_dtype (torch.bfloat16 / torch.float16) stores
    the weights in that dtype; the returned model then holds the rounded weights in fp32.
    Returns the model (fp32, eval mode)."""
    torch.manual_seed(seed)
    cfg = llama_config(arch, **overrides)
    model = getattr(transformers, LLAMA_ARCHS[arch][1])(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, bias_std)
            elif name.endswith("norm.weight"):
                p.normal_(1.0, norm_std)
    model.eval()
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    if save_dtype is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(save_dtype).float())
        copy.deepcopy(model).to(save_dtype).save_pretrained(str(out_dir), **kw)
    else:
        model.save_pretrained(str(out_dir), **kw)
    if legacy_rope:
        legacy_rope_config_json(out_dir)
        back = transformers.AutoConfig.from_pretrained(str(out_dir))
        assert back.rope_parameters == model.config.rope_parameters, \
            f"legacy config.json reads back as {back.rope_parameters}, not {model.config.rope_parameters}"
    return model


def llama_modules(cfg):
    """Paths of every linear layer of the decoder layers (no LM head), in PEFT's order."""
    return [f"model.layers.{l}.{LLAMA_PATH[p]}" for l in range(cfg.num_hidden_layers) for p in LLAMA_PROJ]


def peft_selected(paths, targets):
    """The paths PEFT's target_modules selects: "all-linear" all of them, a list the paths equal
    to an entry or ending with "." + entry."""
    if targets == "all-linear":
        return list(paths)
    return [p for p in paths if any(p == t or p.endswith("." + t) for t in targets)]


def llama_vd_targets(peft_targets):
    """vera-dist's --target_modules for a PEFT target_modules (the same names, comma-separated)."""
    if isinstance(peft_targets, str):
        return peft_targets
    assert peft_targets, "empty target_modules"
    return ",".join(peft_targets)


def llama_vera_config(r, key, targets, d_initial=0.1, save_projection=True):
    """PEFT's VeraConfig for a Llama-family model: nn.Linear, so fan_in_fan_out is False."""
    from peft import VeraConfig
    return VeraConfig(r=r, projection_prng_key=key, target_modules=targets if isinstance(targets, str) else list(targets),
                      d_initial=d_initial, save_projection=save_projection, vera_dropout=0.0, fan_in_fan_out=False)


def llama_peft_model(base, r, key, targets, d_initial=0.1, save_projection=True, vectors_seed=None):
    """get_peft_model (VeRA) on a copy of a Llama-family model; with vectors_seed, non-zero
    seeded b and d (set_vectors)."""
    pm = peft_model(base, llama_vera_config(r, key, targets, d_initial, save_projection))
    if vectors_seed is not None:
        set_vectors(pm, vectors_seed)
    return pm


def trainable_count(pm):
    """PEFT's trainable parameter count (what print_trainable_parameters reports)."""
    n = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert n == pm.get_nb_trainable_parameters()[0]
    return n


def peft_load_result(base, adapter_dir):
    """PeftModel.from_pretrained on a copy of base, failing on any missing/unexpected-key warning,
    and PEFT's own load result of a second load of the directory: (model in eval mode, missing
    keys, unexpected keys), each sorted."""
    from peft import PeftModel
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir))
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not bad, f"PeftModel.from_pretrained({adapter_dir}) warned: {bad}"
    res = pm.load_adapter(str(adapter_dir), adapter_name="check")
    pm.set_adapter("default")
    pm.eval()
    return pm, sorted(res.missing_keys), sorted(res.unexpected_keys)


def load_peft_cleanly(base, adapter_dir):
    """peft_load_result with no missing and no unexpected keys; the model."""
    pm, missing, unexpected = peft_load_result(base, adapter_dir)
    assert not missing, f"PEFT: missing keys {missing}"
    assert not unexpected, f"PEFT: unexpected keys {unexpected}"
    return pm


def peft_train_reference(pm, params, tokens, T, B, K, lr, weight_decay, clip):
    """The reference side of a K-step training check: torch AdamW (one group) on params of pm over
    vera-dist's batches (step s: global sequences s*B .. s*B+B-1), global-norm clip when clip > 0.
    Returns (losses, gradient norms before clipping), one per step; fails when clip > 0 never engaged."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, foreach=False)
    losses, norms = [], []
    for s in range(K):
        x, y = batch(tokens, T, s * B, B)
        opt.zero_grad()
        _, loss = mean_ce(pm, x, y)
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
    if clip > 0:
        assert max(norms) > clip, "clipping never engaged: the clipped setting tests nothing"
    return losses, norms


def check_train_metrics(rows, losses, norms, loss_rtol, norm_rtol):
    """vera-dist's metrics rows against peft_train_reference's losses and norms, step by step."""
    for s in range(len(losses)):
        got, ref = rows[s]["loss"], losses[s]
        assert abs(got - ref) <= loss_rtol * abs(ref), f"step {s + 1}: loss {got!r} vs torch {ref!r}"
        got, ref = rows[s]["grad_norm"], norms[s]
        assert abs(got - ref) <= norm_rtol * abs(ref), f"step {s + 1}: grad norm {got!r} vs torch {ref!r}"


def check_grad_keys(out, want, what):
    """The gradient tensors of vera-dist's forward output (keys ending ".grad") are exactly want."""
    got = {k for k in out if k.endswith(".grad")}
    assert got == want, f"{what}: gradient tensors differ: extra {sorted(got - want)}, missing {sorted(want - got)}"
