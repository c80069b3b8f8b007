"""LoRA conformance: vera-dist's `adapter_type = lora` computes what transformers + PEFT's LoRA
compute (docs/adapters.md, "LoRA"), on tiny GPT-2 (Conv1D, fan_in_fan_out) and Llama (nn.Linear,
GQA) models made by transformers, with adapters made by PEFT itself (LoraConfig,
get_peft_model, save_pretrained). For each setting in SETTINGS:

  test_init_seed_rule        vera-dist's own init (no --adapter) is the documented rule: one torch
                             generator seeded with `seed` draws every lora_A in module order with
                             kaiming_uniform_(a=sqrt(5)), lora_B = 0. Checked through the gradients:
                             dB depends on A (bit-equal A gives PEFT's dB within GRAD_RTOL), dA = 0.
  test_adapted_forward_grads PEFT-saved lora_A / lora_B (non-zero, seeded) read by
                             `forward --adapter`: logits, loss and the gradient of every
                             lora_A.weight / lora_B.weight equal PEFT's (torch autograd);
  test_adamw_trajectory      K AdamW steps (`train --init_adapter` of the PEFT directory) against
                             torch.optim.AdamW on PEFT's LoRA parameters: losses, grad norms, the
                             final tensors;
  test_export_roundtrip      the run's final checkpoint -> `export --format peft` ->
                             PeftModel.from_pretrained (no missing or unexpected keys, tensors
                             bit-equal to adapter_final) -> the same logits as vera-dist's
                             forward with that directory; `export --format merged` loads in
                             transformers alone with the same logits.

The bounds are the VeRA suite's (test_peft_conformance.py), imported from it.
"""
import copy
import json
import math
import zlib

import pytest
import torch
from safetensors.torch import load_file

from conftest import (check_grad_keys, check_train_metrics, peft_train_reference,
                      ALL4, batch, llama_vd_targets, make_gpt2, make_llama, max_rel, mean_ce, random_tokens,
                      read_metrics, run_vd, THREADS, vd_forward, vd_targets, vd_train, write_shard)
from test_peft_conformance import (GRAD_RTOL, LOGIT_RTOL, LOSS_RTOL, TRAIN_LOSS_RTOL, TRAIN_NORM_RTOL, TRAIN_VEC_ATOL,
                                   check_close)

B, T, K = 2, 16, 5
LR, WEIGHT_DECAY = 1e-2, 0.1
SEED = 1337  # vera-dist's default `seed`: the init seed of LoRA's A

# id: (family, PEFT target_modules, r, lora_alpha, use_rslora, grad_clip)
SETTINGS = {
    "gpt2-all4-r4":            ("gpt2", ALL4, 4, 8.0, False, 0.0),
    "gpt2-c_attn-r8-rslora":   ("gpt2", ["c_attn"], 8, 16.0, True, 0.01),
    "llama-all-linear-r4":     ("llama", "all-linear", 4, 8.0, False, 0.01),
    "llama-q_v-r8-rslora":     ("llama", ["q_proj", "v_proj"], 8, 32.0, True, 0.0),
}


def lora_config(family, r, alpha, targets, use_rslora):
    from peft import LoraConfig
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=targets if isinstance(targets, str) else list(targets),
                      lora_dropout=0.0, use_rslora=use_rslora, fan_in_fan_out=family == "gpt2", bias="none",
                      init_lora_weights=True)


def lora_layers(pm):
    """{module path: (lora_A weight (r, in), lora_B weight (out, r))} in PEFT's module order."""
    out = {}
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            path = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
            out[path] = (mod.lora_A["default"].weight, mod.lora_B["default"].weight)
    assert out, "PEFT adapted no layer"
    return out


def set_lora(pm, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for A, Bw in lora_layers(pm).values():
            A.copy_(torch.randn(A.shape, generator=g) * scale)
            Bw.copy_(torch.randn(Bw.shape, generator=g) * scale)


class Case:
    def __init__(self, root, sid):
        family, targets, r, alpha, rslora, clip = SETTINGS[sid]
        self.family, self.targets, self.r, self.alpha, self.rslora, self.clip = family, targets, r, alpha, rslora, clip
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.model_dir = root / "model"
        seed = zlib.crc32(sid.encode()) % 1000
        if family == "gpt2":
            self.base = make_gpt2(self.model_dir, n_embd=32, vocab=101, seed=seed)
            self.vd_targets = vd_targets(targets)
        else:
            self.base = make_llama(self.model_dir, seed=seed)
            self.vd_targets = llama_vd_targets(targets)
        self.tokens = random_tokens((B * K + 1) * T + 1, 101, seed + 1)
        self.shard = write_shard(root / "train_000.bin", self.tokens)
        self.pm = self.peft()
        set_lora(self.pm, seed + 2)
        self.adapter_dir = root / "peft_lora"
        self.pm.save_pretrained(str(self.adapter_dir))

    def peft(self):
        from peft import get_peft_model
        return get_peft_model(copy.deepcopy(self.base), lora_config(self.family, self.r, self.alpha, self.targets,
                                                                     self.rslora))

    def lora_args(self):
        return ["--adapter_type", "lora", "--lora_alpha", repr(self.alpha), "--use_rslora", int(self.rslora)]

    def forward(self, name, adapter=None):
        return vd_forward(self.root / name, self.model_dir, self.shard, B, T, self.r, 0, self.vd_targets, 0.1,
                          adapter=adapter, extra=self.lora_args())


@pytest.fixture(scope="module", params=list(SETTINGS), ids=list(SETTINGS))
def case(request, tmp_path_factory):
    return Case(tmp_path_factory.mktemp(request.param), request.param)


def check_lora_grads(out, pm, what, zero_a=False):
    layers = lora_layers(pm)
    check_grad_keys(out, {f"{n}.lora_{x}.weight.grad" for n in layers for x in "AB"}, what)
    worst = 0.0
    for n, (A, Bw) in layers.items():
        for x, p in (("A", A), ("B", Bw)):
            key = f"{n}.lora_{x}.weight.grad"
            assert out[key].shape == p.shape, f"{what}: {key} shape {tuple(out[key].shape)}, PEFT's {tuple(p.shape)}"
            if x == "A" and zero_a:
                assert torch.count_nonzero(out[key]) == 0, f"{what}: {key} is not zero with lora_B = 0"
                continue
            err = max_rel(out[key], p.grad)
            assert err <= GRAD_RTOL, f"{what}: {key}: max |diff| / max |ref| = {err:.3g} > {GRAD_RTOL:g}"
            worst = max(worst, err)
    print(f"measured: {what}: worst gradient {worst:.3g} (tolerance {GRAD_RTOL:g}, {2 * len(layers)} tensors)")


def peft_first_batch(case, pm):
    """PEFT's logits and loss on vera-dist's first batch, gradients accumulated into pm's tensors,
    and the base model's logits on the same batch."""
    x, y = batch(case.tokens, T, 0, B)
    pm.zero_grad()
    logits, loss = mean_ce(pm, x, y)
    loss.backward()
    with torch.no_grad():
        base_logits, _ = mean_ce(case.base, x, y)
    return logits, loss, base_logits


def test_init_seed_rule(case):
    out = case.forward("fwd_init.safetensors")
    pm = case.peft()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for A, Bw in lora_layers(pm).values():  # the documented rule, in PEFT's module order
            torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=g)
            Bw.zero_()
    logits, loss, base_logits = peft_first_batch(case, pm)
    assert torch.equal(logits.detach(), base_logits), "PEFT with lora_B = 0 changed the logits"
    check_close("logits (init) vs transformers", out["logits"], base_logits, LOGIT_RTOL)
    check_close("loss (init) vs PEFT", out["loss"], loss.detach().reshape(1), LOSS_RTOL)
    check_lora_grads(out, pm, "gradients at the seeded init", zero_a=True)


def test_adapted_forward_grads(case):
    cfg = json.loads((case.adapter_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == case.r and cfg["use_rslora"] == case.rslora
    out = case.forward("fwd_adapter.safetensors", adapter=case.adapter_dir)
    pm = case.pm
    logits, loss, base_logits = peft_first_batch(case, pm)
    assert max_rel(logits.detach(), base_logits) > 100 * LOGIT_RTOL, "the adapter barely changes the logits"
    check_close("logits (PEFT LoRA) vs PEFT", out["logits"], logits.detach(), LOGIT_RTOL)
    check_close("loss (PEFT LoRA) vs PEFT", out["loss"], loss.detach().reshape(1), LOSS_RTOL)
    check_lora_grads(out, pm, "gradients with non-zero A, B")


def test_forward_reads_adapter_config(case):
    """`forward --adapter DIR` with no adapter keys on the command line takes the method, targets,
    r and LoRA's keys from DIR/adapter_config.json (as generate does): bit-identical output to the
    run that spells them all out; a key given that disagrees with the directory is named."""
    want = case.forward("fwd_adapter.safetensors", adapter=case.adapter_dir)
    out = case.root / "fwd_from_config.safetensors"
    run_vd("forward", "--model", case.model_dir, "--tokens", case.shard, "--out", out, "--batch_size", B,
           "--seq_len", T, "--threads", THREADS, "--adapter", case.adapter_dir)
    got = load_file(str(out))
    assert set(got) == set(want), f"tensors differ: {sorted(set(got) ^ set(want))}"
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k}: forward with the options read from adapter_config.json differs"
    proc = run_vd("forward", "--model", case.model_dir, "--tokens", case.shard, "--out", case.root / "bad.safetensors",
                  "--batch_size", B, "--seq_len", T, "--threads", THREADS, "--adapter", case.adapter_dir,
                  "--adapter_type", "lora", "--r", case.r + 1, "--target_modules", case.vd_targets, ok=False)
    assert f"r is {case.r}, this run has r = {case.r + 1}" in proc.stderr, proc.stderr
    assert not (case.root / "bad.safetensors").exists(), "a refused forward wrote its output"


def train_dir(case):
    """The K-step run from PEFT's directory (shared by the trajectory and export tests)."""
    out_dir = case.root / "run"
    if not (out_dir / "adapter_final.safetensors").is_file():
        vd_train(out_dir, case.model_dir, case.shard, B=B, T=T, K=K, r=case.r, key=0, targets=case.vd_targets,
                 d_initial=0.1, lr=LR, weight_decay=WEIGHT_DECAY, grad_clip=case.clip, init_adapter=case.adapter_dir,
                 extra=case.lora_args())
    return out_dir


def test_adamw_trajectory(case):
    out_dir = train_dir(case)
    rows = read_metrics(out_dir)
    assert [r["step"] for r in rows] == list(range(1, K + 1)), f"metrics steps {[r['step'] for r in rows]}"
    from peft import PeftModel
    pm = PeftModel.from_pretrained(copy.deepcopy(case.base), str(case.adapter_dir), is_trainable=True)
    pm.eval()
    layers = lora_layers(pm)
    params = [t for ab in layers.values() for t in ab]
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == sum(p.numel() for p in params)
    init = {n: (A.detach().clone(), Bw.detach().clone()) for n, (A, Bw) in layers.items()}
    losses, norms = peft_train_reference(pm, params, case.tokens, T, B, K, LR, WEIGHT_DECAY, case.clip)
    check_train_metrics(rows, losses, norms, TRAIN_LOSS_RTOL, TRAIN_NORM_RTOL)
    final = load_file(str(out_dir / "adapter_final.safetensors"))
    want = {f"base_model.model.{n}.lora_{x}.weight" for n in layers for x in "AB"}
    assert set(final) == want, f"adapter_final keys: extra {sorted(set(final) - want)}, missing {sorted(want - set(final))}"
    worst, moved = 0.0, 0.0
    for n, (A, Bw) in layers.items():
        for i, (x, p) in enumerate((("A", A), ("B", Bw))):
            err = (final[f"base_model.model.{n}.lora_{x}.weight"] - p.detach()).abs().max().item()
            worst = max(worst, err)
            moved = max(moved, (p.detach() - init[n][i]).abs().max().item())
            assert err <= TRAIN_VEC_ATOL, f"after {K} steps: {n}.lora_{x}: max |diff| {err:.3g} > {TRAIN_VEC_ATOL:g}"
    assert moved > 100 * TRAIN_VEC_ATOL, f"the tensors moved only {moved:.3g}: the comparison proves nothing"
    print(f"measured: {K} AdamW steps: final tensors {worst:.3g} (absolute; they moved up to {moved:.3g})")


def test_export_roundtrip(case):
    out_dir = train_dir(case)
    ck = out_dir / "checkpoints" / f"step_{K:08d}.h5"
    exp = case.root / "exported"
    run_vd("export", "--checkpoint", ck, "--format", "peft", "--out", exp, "--overwrite")
    cfg = json.loads((exp / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == case.r and cfg["lora_alpha"] == case.alpha
    assert cfg["use_rslora"] == case.rslora
    from peft import PeftModel
    pm = PeftModel.from_pretrained(copy.deepcopy(case.base), str(exp))
    res = pm.load_adapter(str(exp), adapter_name="again")
    assert not res.unexpected_keys, f"unexpected keys {res.unexpected_keys}"
    missing = [k for k in res.missing_keys if "lora_" in k]
    assert not missing, f"missing LoRA keys {missing}"
    final = load_file(str(out_dir / "adapter_final.safetensors"))
    got = load_file(str(exp / "adapter_model.safetensors"))
    assert got.keys() == final.keys() and all(torch.equal(got[k], final[k]) for k in final), \
        "the exported tensors are not the run's final tensors"
    pm.set_adapter("default")
    x, y = batch(case.tokens, T, 0, B)
    with torch.no_grad():
        logits, _ = mean_ce(pm, x, y)
    out = case.forward("fwd_exported.safetensors", adapter=exp)
    check_close("logits (exported LoRA) vs PEFT", out["logits"], logits, LOGIT_RTOL)
    # merged: W0 + s B A folded in, read by transformers without PEFT
    merged = case.root / "merged"
    run_vd("export", "--checkpoint", ck, "--format", "merged", "--out", merged, "--overwrite")
    import transformers
    m = transformers.AutoModelForCausalLM.from_pretrained(str(merged))
    m.eval()
    with torch.no_grad():
        mlogits, _ = mean_ce(m, x, y)
    check_close("logits (merged LoRA) vs PEFT", mlogits, logits, LOGIT_RTOL)
