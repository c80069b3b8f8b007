"""VB-LoRA conformance: vera-dist computes what PEFT's VB-LoRA computes (docs/adapters.md, "VB-LoRA").

On tiny GPT-2 and Llama models made by transformers itself (random weights) and VB-LoRA adapters
made by PEFT itself (VBLoRAConfig; the logits and the bank replaced by seeded non-zero values
and saved with save_pretrained), for each setting in SETTINGS:

  test_forward_grads     `forward --adapter` on PEFT's directory: logits, loss and the gradient of
                         every trainable tensor (the shared bank, every layer's vblora_logits_A /
                         vblora_logits_B) equal torch autograd through PEFT's model;
  test_peft_initialised_trains  PEFT's own initialisation, saved by PEFT, trains here with the
                         losses and grad norms of torch.optim.AdamW on PEFT's model;
  test_adamw_trajectory  5 AdamW steps (`train --init_adapter`, two learning-rate groups: logits
                         at lr, the bank at lr_vector_bank) against torch.optim.AdamW with the
                         same two parameter groups: losses, grad norms, final tensors;
  test_export_loads      the run's PEFT export loads in PeftModel.from_pretrained with no missing
                         or unexpected keys and gives vera-dist's logits;
  test_topk_round_trip   save_only_topk_weights: vera-dist's top-k export has PEFT's keys,
                         dtypes and shapes, PEFT loads it cleanly and gives vera-dist's logits;
                         PEFT's own top-k file gives PEFT's logits in `forward --adapter`;
                         training from a top-k file is refused with one line naming it.

Tolerances: those of the VeRA suite (tests/python/test_peft_conformance.py): logits 1e-5 and
loss 1e-5 relative, gradients 2e-5 of the tensor's largest, training loss 1e-5, grad norm 1e-4
relative, final tensors 2e-5 absolute.
"""
import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import (peft_load_result,
                      ALL4, batch, llama_vd_targets, make_gpt2, make_llama, max_rel, mean_ce, peft_model,
                      random_tokens, read_metrics, run_vd, error_lines, vd_targets, write_shard, THREADS)
from test_peft_conformance import (GRAD_RTOL, LOGIT_RTOL, LOSS_RTOL, TRAIN_LOSS_RTOL, TRAIN_NORM_RTOL, TRAIN_VEC_ATOL,
                                   check_close)

pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
              pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to:UserWarning")]

B, T, K = 2, 16, 5
LR, LR_BANK, WEIGHT_DECAY = 1e-2, 1e-3, 0.1

# id: (arch, r, num_vectors, vector_length, topk, PEFT target_modules, grad_clip)
SETTINGS = {
    "gpt2-r4-nv12-L16-k2-all4":     ("gpt2", 4, 12, 16, 2, ALL4, 0.0),
    "gpt2-r2-nv300-L32-k3-c_attn":  ("gpt2", 2, 300, 32, 3, ["c_attn"], 0.01),   # I16 indices, clipped
    "llama-r4-nv16-L8-k2-all":      ("llama", 4, 16, 8, 2, "all-linear", 0.05),
    "llama-r3-nv10-L16-k1-q_v":     ("llama", 3, 10, 16, 1, ["q_proj", "v_proj"], 0.0),  # top-1: no logit gradient
}


def vblora_config(sid, save_only_topk_weights=False):
    from peft import VBLoRAConfig
    arch, r, nv, L, k, targets, _ = SETTINGS[sid]
    return VBLoRAConfig(r=r, num_vectors=nv, vector_length=L, topk=k,
                        target_modules=targets if isinstance(targets, str) else list(targets),
                        fan_in_fan_out=arch == "gpt2", vblora_dropout=0.0,
                        save_only_topk_weights=save_only_topk_weights)


def vblora_tensors(pm):
    """{name: parameter}: "vblora_vector_bank" and "<module>.vblora_logits_A" / "_B", PEFT order."""
    out = {"vblora_vector_bank": pm.base_model.vblora_vector_bank["default"]}
    for name, mod in pm.named_modules():
        if hasattr(mod, "vblora_logits_A") and "default" in mod.vblora_logits_A:
            path = name.split("base_model.model.", 1)[1]
            out[f"{path}.vblora_logits_A"] = mod.vblora_logits_A["default"]
            out[f"{path}.vblora_logits_B"] = mod.vblora_logits_B["default"]
    assert len(out) > 1, "the PEFT model has no VB-LoRA layers"
    return out


def peft_key(name):
    return f"base_model.{name}" if name == "vblora_vector_bank" else f"base_model.model.{name}"


def set_values(pm, seed):
    """Seeded non-zero values: logits N(0, 1) (well-separated top-k), bank U(-0.3, 0.3) (a
    PEFT-initialised bank of 0.02 would barely move the logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vblora_tensors(pm).items():
            if name == "vblora_vector_bank":
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g))


class Case:
    def __init__(self, root, sid):
        self.id = sid
        arch, r, nv, L, k, targets, clip = SETTINGS[sid]
        self.arch, self.r, self.nv, self.L, self.k, self.clip = arch, r, nv, L, k, clip
        self.root = root
        self.model_dir = root / "model"
        seed = sum(sid.encode()) % 1000
        if arch == "gpt2":
            self.base = make_gpt2(self.model_dir, n_embd=32, vocab=101, seed=seed)
            self.vd_targets = vd_targets(targets)
        else:
            self.base = make_llama(self.model_dir, seed=seed)
            self.vd_targets = llama_vd_targets(targets)
        vocab = self.base.config.vocab_size
        self.tokens = random_tokens((B * K + 1) * T + 1, vocab, seed + 1)
        self.shard = write_shard(root / "train_000.bin", self.tokens)
        # PEFT's own initialisation (bank U(-0.02, 0.02), logits N(0, 0.1)), saved as is ...
        torch.manual_seed(seed + 3)
        self.init_dir = root / "peft_init"
        peft_model(self.base, vblora_config(sid)).save_pretrained(str(self.init_dir))
        # ... and an adapter with seeded non-zero values
        self.pm = peft_model(self.base, vblora_config(sid))
        set_values(self.pm, seed + 2)
        self.adapter_dir = root / "peft_adapter"
        self.pm.save_pretrained(str(self.adapter_dir))
        self.init_values = {n: p.detach().clone() for n, p in vblora_tensors(self.pm).items()}

    def adapter_args(self):
        return ["--adapter_type", "vblora", "--r", self.r, "--num_vectors", self.nv, "--vector_length", self.L,
                "--topk", self.k, "--target_modules", self.vd_targets]

    def forward(self, name, adapter):
        out = self.root / name
        run_vd("forward", "--model", self.model_dir, "--tokens", self.shard, "--out", out, "--batch_size", B,
               "--seq_len", T, "--threads", THREADS, "--adapter", adapter, *self.adapter_args())
        return load_file(str(out))

    def train(self, out_dir, init_adapter, extra=(), ok=True):
        args = ["train", "--model", self.model_dir, "--train_data", self.shard, "--out_dir", out_dir, "--resume", "none",
                "--overwrite", 1, "--batch_size", B, "--seq_len", T, "--grad_accum", 1, "--max_steps", K,
                "--warmup_steps", 0, "--min_lr_ratio", 1, "--lr", repr(LR), "--lr_vector_bank", repr(LR_BANK),
                "--weight_decay", repr(WEIGHT_DECAY), "--grad_clip", repr(float(self.clip)), "--ckpt_every", K,
                "--threads", THREADS, "--log_every", 1000, "--init_adapter", init_adapter, *self.adapter_args(), *extra]
        return run_vd(*args, ok=ok)


@pytest.fixture(scope="module", params=list(SETTINGS), ids=list(SETTINGS))
def case(request, tmp_path_factory):
    return Case(tmp_path_factory.mktemp(request.param), request.param)


def peft_logits_loss(pm, tokens, step=0):
    x, y = batch(tokens, T, step * B, B)
    return mean_ce(pm, x, y)


def test_forward_grads(case):
    cfg = json.loads((case.adapter_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "VBLORA" and cfg["num_vectors"] == case.nv and cfg["topk"] == case.k
    out = case.forward("fwd.safetensors", case.adapter_dir)
    pm = case.pm
    pm.zero_grad()
    logits, loss = peft_logits_loss(pm, case.tokens)
    loss.backward()
    with torch.no_grad():
        base_logits, _ = peft_logits_loss(case.base, case.tokens)
    assert max_rel(logits.detach(), base_logits) > 100 * LOGIT_RTOL, "the adapter barely changes the logits"
    check_close("logits (PEFT VB-LoRA) vs PEFT", out["logits"], logits.detach(), LOGIT_RTOL)
    check_close("loss (PEFT VB-LoRA) vs PEFT", out["loss"], loss.detach().reshape(1), LOSS_RTOL)
    tensors = vblora_tensors(pm)
    grad_keys = {k for k in out if k.endswith(".grad")}
    want = {f"{n}.grad" for n in tensors}
    assert grad_keys == want, f"gradient tensors: extra {sorted(grad_keys - want)}, missing {sorted(want - grad_keys)}"
    worst = 0.0
    for n, p in tensors.items():
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        if n != "vblora_vector_bank" and case.k > 1:
            assert ref.abs().max() > 0, f"{n}: PEFT's gradient is 0: the comparison proves nothing"
        got = out[f"{n}.grad"]
        assert got.shape == ref.shape, f"{n}.grad: shape {tuple(got.shape)} vs PEFT's {tuple(ref.shape)}"
        if case.k == 1 and n != "vblora_vector_bank":
            assert torch.all(got == 0) and torch.all(ref == 0), f"{n}: top-1 logits must get no gradient"
            continue
        err = max_rel(got, ref)
        assert err <= GRAD_RTOL, f"{n}.grad: max |diff| / max |ref| = {err:.3g} > {GRAD_RTOL:g}"
        worst = max(worst, err)
    print(f"measured: gradients: worst {worst:.3g} (tolerance {GRAD_RTOL:g}, {len(tensors)} tensors)")


def torch_adamw(case, adapter_dir):
    """K AdamW steps on PEFT's model from adapter_dir: two groups (logits at LR, bank at LR_BANK)."""
    from peft import PeftModel
    pm = PeftModel.from_pretrained(copy.deepcopy(case.base), str(adapter_dir), is_trainable=True)
    pm.eval()
    tensors = vblora_tensors(pm)
    bank = [tensors["vblora_vector_bank"]]
    logits = [p for n, p in tensors.items() if n != "vblora_vector_bank"]
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == sum(p.numel() for p in tensors.values())
    opt = torch.optim.AdamW([{"params": logits, "lr": LR}, {"params": bank, "lr": LR_BANK}], betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=WEIGHT_DECAY, foreach=False)
    params = logits + bank
    losses, norms = [], []
    for s in range(K):
        opt.zero_grad()
        _, loss = peft_logits_loss(pm, case.tokens, s)
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]))
        if case.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, case.clip)
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
    return pm, tensors, losses, norms


@pytest.fixture(scope="module")
def trained(case):
    out_dir = case.root / "run"
    case.train(out_dir, case.adapter_dir)
    return out_dir, torch_adamw(case, case.adapter_dir)


def check_trajectory(out_dir, losses, norms):
    rows = read_metrics(out_dir)
    assert [r["step"] for r in rows] == list(range(1, K + 1)), f"metrics steps {[r['step'] for r in rows]}"
    for s in range(K):
        got, ref = rows[s]["loss"], losses[s]
        assert abs(got - ref) <= TRAIN_LOSS_RTOL * abs(ref), f"step {s + 1}: loss {got!r} vs torch {ref!r}"
        got, ref = rows[s]["grad_norm"], norms[s]
        assert abs(got - ref) <= TRAIN_NORM_RTOL * abs(ref), f"step {s + 1}: grad norm {got!r} vs torch {ref!r}"


def test_peft_initialised_trains(case):
    """An adapter as PEFT initialises and saves it trains here with PEFT's losses."""
    out_dir = case.root / "run_peft_init"
    case.train(out_dir, case.init_dir)
    _, _, losses, norms = torch_adamw(case, case.init_dir)
    check_trajectory(out_dir, losses, norms)


def test_adamw_trajectory(case, trained):
    out_dir, (pm, tensors, losses, norms) = trained
    if case.clip > 0:
        assert max(norms) > case.clip, "clipping never engaged: the clipped setting tests nothing"
    check_trajectory(out_dir, losses, norms)
    final = load_file(str(out_dir / "adapter_final.safetensors"))
    want = {peft_key(n) for n in tensors}
    assert set(final) == want, f"adapter_final keys: extra {sorted(set(final) - want)}, missing {sorted(want - set(final))}"
    worst, moved = 0.0, {}
    for n, p in tensors.items():
        got = final[peft_key(n)]
        err = (got - p.detach()).abs().max().item()
        worst = max(worst, err)
        moved[n] = (p.detach() - case.init_values[n]).abs().max().item()
        assert err <= TRAIN_VEC_ATOL, f"after {K} steps: {n}: max |diff| {err:.3g} > {TRAIN_VEC_ATOL:g}"
    # both groups must move (each at its own rate), or the two-group comparison proves nothing
    assert moved["vblora_vector_bank"] > 10 * TRAIN_VEC_ATOL, f"the bank moved only {moved['vblora_vector_bank']:.3g}"
    logit_move = max(v for n, v in moved.items() if n != "vblora_vector_bank")
    assert logit_move > 100 * TRAIN_VEC_ATOL, f"the logits moved only {logit_move:.3g}"
    print(f"measured: {K} AdamW steps: final tensors {worst:.3g} absolute (bank moved "
          f"{moved['vblora_vector_bank']:.3g}, logits {logit_move:.3g})")


def load_peft_cleanly(case, adapter_dir):
    """No unexpected keys, and exactly the missing keys PEFT reports for its own file of the same
    configuration: PEFT lists every layer's alias of the shared bank
    (base_model.model.<module>.vblora_vector_bank.<adapter>) as missing for any file, its own too."""
    pm, missing, unexpected = peft_load_result(case.base, adapter_dir)
    _, ref_missing, ref_unexpected = peft_load_result(case.base, case.adapter_dir)
    assert not ref_unexpected and all(k.endswith(".vblora_vector_bank.check") for k in ref_missing), \
        f"PEFT's own file: missing {ref_missing}, unexpected {ref_unexpected}"
    assert not unexpected, f"PEFT: unexpected keys {unexpected}"
    assert missing == ref_missing, f"PEFT: missing keys {sorted(set(missing) - set(ref_missing))}"
    return pm


def export(case, out_dir, ckpt, topk):
    run_vd("export", "--checkpoint", ckpt, "--format", "peft", "--out", out_dir, "--save_only_topk_weights", topk)
    return out_dir


def test_export_loads(case, trained):
    out_dir, _ = trained
    ckpt = out_dir / "checkpoints" / f"step_{K:08d}.h5"
    exp = export(case, case.root / "export_full", ckpt, 0)
    pm = load_peft_cleanly(case, exp)
    out = case.forward("fwd_export.safetensors", exp)
    with torch.no_grad():
        logits, loss = peft_logits_loss(pm, case.tokens)
    check_close("logits of the exported adapter, PEFT vs vera-dist", out["logits"], logits, LOGIT_RTOL)


def st_layout(path):
    with safe_open(str(path), "pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


def test_topk_round_trip(case, trained):
    out_dir, _ = trained
    ckpt = out_dir / "checkpoints" / f"step_{K:08d}.h5"
    exp = export(case, case.root / "export_topk", ckpt, 1)
    cfg = json.loads((exp / "adapter_config.json").read_text())
    assert cfg["save_only_topk_weights"] is True
    # the same keys, dtypes and shapes as PEFT's own top-k save of this configuration
    ref_dir = case.root / "peft_topk"
    pm_ref = peft_model(case.base, vblora_config(case.id, save_only_topk_weights=True))
    pm_ref.save_pretrained(str(ref_dir))
    got, want = st_layout(exp / "adapter_model.safetensors"), st_layout(ref_dir / "adapter_model.safetensors")
    assert got == want, f"top-k export layout differs from PEFT's: ours {got}, PEFT's {want}"
    # PEFT loads it cleanly; vera-dist and PEFT give the same logits from it
    pm = load_peft_cleanly(case, exp)
    with torch.no_grad():
        logits, _ = peft_logits_loss(pm, case.tokens)
    out = case.forward("fwd_topk.safetensors", exp)
    check_close("logits of the top-k export, PEFT vs vera-dist", out["logits"], logits, LOGIT_RTOL)
    # and they are the full adapter's logits (the top-k form loses nothing for inference)
    full = case.forward("fwd_full_ckpt.safetensors", export(case, case.root / "export_full2", ckpt, 0))
    check_close("logits: top-k export vs full export", out["logits"], full["logits"], LOGIT_RTOL)
    # PEFT's own top-k file of the seeded adapter: forward works, training is refused by name
    peft_topk = case.root / "peft_topk_seeded"
    pm2 = peft_model(case.base, vblora_config(case.id, save_only_topk_weights=True))
    with torch.no_grad():
        for n, p in vblora_tensors(pm2).items():
            p.copy_(case.init_values[n])
    pm2.save_pretrained(str(peft_topk))
    from peft import PeftModel
    pm3 = PeftModel.from_pretrained(copy.deepcopy(case.base), str(peft_topk))
    pm3.eval()
    with torch.no_grad():
        ref_logits, _ = peft_logits_loss(pm3, case.tokens)
    out = case.forward("fwd_peft_topk.safetensors", peft_topk)
    check_close("logits of PEFT's top-k file, vera-dist vs PEFT", out["logits"], ref_logits, LOGIT_RTOL)
    run_dir = case.root / "run_from_topk"
    proc = case.train(run_dir, peft_topk, ok=False)
    lines = error_lines(proc)
    assert len(lines) == 1 and "save_only_topk_weights" in lines[0] and str(peft_topk) in lines[0], proc.stderr
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir()), \
        "a refused run wrote a checkpoint"
