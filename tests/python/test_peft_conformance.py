"""Conformance: vera-dist computes what transformers + PEFT compute (docs/peft-interop.md).

On tiny GPT-2 models made by transformers itself (random weights, random biases and LayerNorm
parameters, saved with safetensors) and VeRA adapters made by PEFT itself, for each setting in
SETTINGS:

  test_base_forward            vera-dist forward without an adapter (b = 0, d = d_initial) gives
                               transformers' logits and loss, and the b / d gradients PEFT's
                               freshly initialised adapter gets;
  test_projections_exact       vera_A / vera_B regenerated from projection_prng_key equal PEFT's
                               buffers bit for bit;
  test_adapted_forward_grads   with non-zero b and d (seeded) written by PEFT's save_pretrained
                               and read by `forward --adapter`: logits, loss and the gradient of
                               every vera_lambda_b / vera_lambda_d equal PEFT's (torch autograd on
                               the mean cross-entropy over the same tokens);
  test_adamw_trajectory        K AdamW steps (`vera-dist train --init_adapter`, constant lr,
                               weight decay, with and without clipping) against
                               torch.optim.AdamW(foreach=False) on PEFT's vera_lambda parameters
                               on the same sequences: the loss and grad-norm trajectories and the
                               final vectors agree.

Tolerances (fp32 on both sides; the differences come only from summation order in the GEMMs):
  logits    max|diff| <= 1e-5 * max|logits_ref|
  loss      |diff|    <= 1e-5 * |loss_ref|
  gradients per tensor, max|diff| <= 2e-5 * max|grad_ref|
  A, B      exact (torch.equal)
  training  loss per step 1e-5 relative, grad norm per step 1e-4 relative,
            final vectors max|diff| <= 2e-5 absolute (they move by up to K * lr = 5e-2)

SETTINGS is a covering subset of r {4, 16, 256} x key {0, 2**40 + 7} x target_modules {one
type, all four} x d_initial {0.1 (PEFT's default), other}: every pair of values appears
together at least once; one more setting uses key 2**64 - 1 and ["c_proj"] (a PEFT suffix
that selects two layer types of different shapes).
"""
import copy
import json
import math
import zlib

import pytest
import torch
from safetensors.torch import load_file

from conftest import (check_grad_keys, check_train_metrics, peft_train_reference,
                      ALL4, batch, make_gpt2, max_rel, mean_ce, peft_model, peft_projections, random_tokens,
                      read_metrics, set_vectors, vd_forward, vd_targets, vd_train, vera_config, vera_vectors,
                      write_shard)

# known noise from the libraries, not from what is tested
pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Specified to not (save|load) vera_A:UserWarning")]

LOGIT_RTOL = 1e-5
LOSS_RTOL = 1e-5
GRAD_RTOL = 2e-5
TRAIN_LOSS_RTOL = 1e-5
TRAIN_NORM_RTOL = 1e-4
TRAIN_VEC_ATOL = 2e-5

B, T, K = 2, 16, 5
LR, WEIGHT_DECAY = 1e-2, 0.1
BIG_KEY = 2**40 + 7  # torch (and PEFT) seed MT19937 with the low 32 bits: 7; vera-dist must agree

# id: (n_embd, vocab, r, key, PEFT target_modules, d_initial, grad_clip)
SETTINGS = {
    "r4-key0-c_attn-d0.1":       (32, 101, 4, 0, ["c_attn"], 0.1, 0.0),
    "r4-bigkey-all4-d1":         (48, 257, 4, BIG_KEY, ALL4, 1.0, 0.01),
    "r16-key0-all4-d0.1":        (48, 101, 16, 0, ALL4, 0.1, 0.01),
    "r16-bigkey-c_attn-d0.5":    (32, 257, 16, BIG_KEY, ["c_attn"], 0.5, 0.0),
    "r256-key0-all4-d0.5":       (32, 101, 256, 0, ALL4, 0.5, 0.0),
    "r256-bigkey-c_attn-d0.1":   (48, 101, 256, BIG_KEY, ["c_attn"], 0.1, 0.01),
    "r16-maxkey-c_proj-d2":      (48, 101, 16, 2**64 - 1, ["c_proj"], 2.0, 0.01),
}


class Case:
    """One setting: the model, the data, PEFT's adapter with non-zero vectors, and vera-dist's
    forward outputs, built once per setting and shared by the tests below."""

    def __init__(self, root, sid):
        self.id = sid
        n_embd, vocab, r, key, targets, d_init, clip = SETTINGS[sid]
        self.r, self.key, self.targets, self.d_init, self.clip = r, key, targets, d_init, clip
        self.vd_targets = vd_targets(targets)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.model_dir = root / "model"
        seed = zlib.crc32(sid.encode()) % 1000
        self.base = make_gpt2(self.model_dir, n_embd=n_embd, vocab=vocab, seed=seed)
        self.tokens = random_tokens((B * K + 1) * T + 1, vocab, seed + 1)
        self.shard = write_shard(root / "train_000.bin", self.tokens)
        # PEFT's freshly initialised adapter (b = 0, d = d_initial) ...
        self.pm_init = peft_model(self.base, vera_config(r, key, targets, d_init))
        # ... and one with non-zero vectors, saved as PEFT saves it
        self.pm = peft_model(self.base, vera_config(r, key, targets, d_init))
        set_vectors(self.pm, seed + 2)
        self.adapter_dir = root / "peft_adapter"
        self.pm.save_pretrained(str(self.adapter_dir))
        self.init_vectors = {n: (b.detach().clone(), d.detach().clone()) for n, (b, d) in vera_vectors(self.pm).items()}

    def forward(self, adapter):
        name = "fwd_adapter.safetensors" if adapter else "fwd_base.safetensors"
        return vd_forward(self.root / name, self.model_dir, self.shard, B, T, self.r, self.key, self.vd_targets,
                          self.d_init, adapter=self.adapter_dir if adapter else None)


@pytest.fixture(scope="module", params=list(SETTINGS), ids=list(SETTINGS))
def case(request, tmp_path_factory):
    return Case(tmp_path_factory.mktemp(request.param), request.param)


def check_close(name, got, ref, rtol):
    err = max_rel(got, ref)
    assert err <= rtol, f"{name}: max |diff| / max |ref| = {err:.3g} > {rtol:g}"
    print(f"measured: {name}: {err:.3g} (tolerance {rtol:g})")  # shown with pytest -s
    return err


def check_grads(out, pm, what):
    """Every vera_lambda_b / vera_lambda_d gradient in vera-dist's forward output against PEFT's."""
    vecs = vera_vectors(pm)
    check_grad_keys(out, {f"{n}.vera_lambda_{x}.grad" for n in vecs for x in "bd"}, what)
    worst = 0.0
    for n, (b, d) in vecs.items():
        for x, p in (("b", b), ("d", d)):
            key = f"{n}.vera_lambda_{x}.grad"
            err = max_rel(out[key], p.grad)
            assert err <= GRAD_RTOL, f"{what}: {key}: max |diff| / max |ref| = {err:.3g} > {GRAD_RTOL:g}"
            worst = max(worst, err)
    print(f"measured: {what}: worst gradient {worst:.3g} (tolerance {GRAD_RTOL:g}, {2 * len(vecs)} tensors)")
    return worst


def test_base_forward(case):
    """No adapter: b = 0, so the logits are the base model's; the gradients are those of PEFT's
    freshly initialised adapter (d = d_initial, lambda_d gradients exactly 0)."""
    out = case.forward(adapter=False)
    x, y = batch(case.tokens, T, 0, B)
    with torch.no_grad():
        ref_logits, ref_loss = mean_ce(case.base, x, y)
    check_close("logits (no adapter) vs transformers", out["logits"], ref_logits, LOGIT_RTOL)
    check_close("loss (no adapter) vs transformers", out["loss"], ref_loss.reshape(1), LOSS_RTOL)

    pm = case.pm_init
    for b, d in vera_vectors(pm).values():
        assert torch.all(b == 0) and torch.all(d == torch.tensor(case.d_init, dtype=torch.float32))
    pm.zero_grad()
    logits, loss = mean_ce(pm, x, y)
    loss.backward()
    assert torch.equal(logits.detach(), ref_logits), "PEFT with b = 0 changed the logits"
    check_grads(out, pm, "gradients at PEFT's initialisation")


def test_projections_exact(case):
    out = case.forward(adapter=False)
    A, Bm = peft_projections(case.pm)
    assert out["vera_A"].shape == A.shape, f"vera_A shape {tuple(out['vera_A'].shape)} vs PEFT's {tuple(A.shape)}"
    assert out["vera_B"].shape == Bm.shape, f"vera_B shape {tuple(out['vera_B'].shape)} vs PEFT's {tuple(Bm.shape)}"
    for name, got, ref in (("vera_A", out["vera_A"], A), ("vera_B", out["vera_B"], Bm)):
        n_diff = int((got != ref).sum())
        assert n_diff == 0, f"{name}: {n_diff} of {ref.numel()} elements differ from PEFT's " \
                            f"(key {case.key}, max |diff| {(got - ref).abs().max().item():.3g})"


def test_adapted_forward_grads(case):
    """Non-zero b and d from PEFT's save_pretrained: logits, loss, every gradient."""
    cfg = json.loads((case.adapter_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "VERA" and cfg["projection_prng_key"] == case.key and cfg["r"] == case.r
    out = case.forward(adapter=True)
    pm = case.pm
    x, y = batch(case.tokens, T, 0, B)
    pm.zero_grad()
    logits, loss = mean_ce(pm, x, y)
    loss.backward()
    with torch.no_grad():
        base_logits, _ = mean_ce(case.base, x, y)
    # the vectors must move the logits well beyond the tolerance, or this test proves nothing
    assert max_rel(logits.detach(), base_logits) > 100 * LOGIT_RTOL, "the adapter barely changes the logits"
    check_close("logits (PEFT adapter) vs PEFT", out["logits"], logits.detach(), LOGIT_RTOL)
    check_close("loss (PEFT adapter) vs PEFT", out["loss"], loss.detach().reshape(1), LOSS_RTOL)
    check_grads(out, pm, "gradients with non-zero b, d")


def test_adamw_trajectory(case):
    """K optimizer steps: vera-dist train vs torch AdamW on PEFT's vectors, same sequences."""
    out_dir = case.root / "run"
    vd_train(out_dir, case.model_dir, case.shard, B=B, T=T, K=K, r=case.r, key=case.key, targets=case.vd_targets,
             d_initial=case.d_init, lr=LR, weight_decay=WEIGHT_DECAY, grad_clip=case.clip, init_adapter=case.adapter_dir)
    rows = read_metrics(out_dir)
    assert [r["step"] for r in rows] == list(range(1, K + 1)), f"metrics steps {[r['step'] for r in rows]}"
    assert all(r["lr"] == pytest.approx(LR, rel=1e-6) for r in rows), "the learning rate is not constant"

    # torch: a fresh PEFT model from the same adapter directory, the same sequences
    from peft import PeftModel
    pm = PeftModel.from_pretrained(copy.deepcopy(case.base), str(case.adapter_dir), is_trainable=True)
    pm.eval()  # no dropout anywhere (the configs have none either)
    vecs = vera_vectors(pm)
    params = [t for bd in vecs.values() for t in bd]
    assert all(p.requires_grad for p in params)
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == sum(p.numel() for p in params)
    losses, norms = peft_train_reference(pm, params, case.tokens, T, B, K, LR, WEIGHT_DECAY, case.clip)
    check_train_metrics(rows, losses, norms, TRAIN_LOSS_RTOL, TRAIN_NORM_RTOL)

    final = load_file(str(out_dir / "adapter_final.safetensors"))
    want = {f"base_model.model.{n}.vera_lambda_{x}" for n in vecs for x in "bd"}
    assert set(final) == want, f"adapter_final keys: extra {sorted(set(final) - want)}, missing {sorted(want - set(final))}"
    worst, moved = 0.0, 0.0
    for n, (b, d) in vecs.items():
        for x, p in (("b", b), ("d", d)):
            got = final[f"base_model.model.{n}.vera_lambda_{x}"]
            err = (got - p.detach()).abs().max().item()
            worst = max(worst, err)
            moved = max(moved, (p.detach() - case.init_vectors[n]["bd".index(x)]).abs().max().item())
            assert err <= TRAIN_VEC_ATOL, f"after {K} steps: {n}.vera_lambda_{x}: max |diff| {err:.3g} > {TRAIN_VEC_ATOL:g}"
    assert moved > 100 * TRAIN_VEC_ATOL, f"the vectors moved only {moved:.3g}: the comparison proves nothing"
    loss_err = max(abs(r["loss"] - l) / abs(l) for r, l in zip(rows, losses))
    norm_err = max(abs(r["grad_norm"] - n) / abs(n) for r, n in zip(rows, norms))
    print(f"measured: {K} AdamW steps: loss {loss_err:.3g}, grad norm {norm_err:.3g} (relative), final vectors "
          f"{worst:.3g} (absolute; they moved up to {moved:.3g})")
    assert math.isfinite(worst)
