"""Conformance for the Llama family: vera-dist computes what transformers + PEFT compute.

The same four tests as test_peft_conformance.py (GPT-2), on tiny LlamaForCausalLM /
Qwen2ForCausalLM / MistralForCausalLM models made by transformers itself (random weights,
random RMSNorm weights and biases, saved with safetensors, some sharded) and VeRA adapters made
by PEFT itself (fan_in_fan_out False: nn.Linear), for each setting in SETTINGS:

  test_base_forward            no adapter (b = 0, d = d_initial): transformers' logits and loss,
                               and the b / d gradients of PEFT's freshly initialised adapter;
  test_projections_exact       vera_A (r x max_in) / vera_B (max_out x r) equal PEFT's buffers
                               bit for bit (max_in / max_out over the adapted layers only);
  test_adapted_forward_grads   non-zero seeded b and d from PEFT's save_pretrained, read by
                               `forward --adapter`: logits, loss, every vera_lambda_b / _d gradient;
  test_adamw_trajectory        5 steps of `vera-dist train --init_adapter` against
                               torch.optim.AdamW(foreach=False) on PEFT's vectors;
  test_setting_is_visible      (a check of this file, not of vera-dist) the feature a setting
                               exercises (rope_theta, llama3 scaling, biases) moves transformers'
                               logits far beyond the tolerance, so a vera-dist that ignored it
                               would fail test_base_forward.

Tolerances: those of test_peft_conformance.py (fp32 on both sides):
  logits    max|diff| <= 1e-5 * max|logits_ref|;  loss 1e-5 relative
  gradients per tensor, max|diff| <= 2e-5 * max|grad_ref|
  A, B      exact
  training  loss per step 1e-5 relative, grad norm 1e-4 relative, final vectors 2e-5 absolute

What SETTINGS covers (every model has 2 layers, hidden 32, 4 query heads):
  attention   GQA with 2 groups (kv 2), no grouping (kv 4), multi-query (kv 1);
              head_dim 8 (= hidden/heads) and 16 (!= hidden/heads: q/o are 64 wide)
  RoPE        theta 10000 (default), 317, 1e6; llama3 scaling (theta 5e5, factor 8, low 1,
              high 4, original 64, head_dim 16: the 8 frequencies fall in all three bands),
              in transformers 5's config.json spelling (rope_parameters) and in the older one
              (rope_theta + rope_scaling, as Llama 3.x and SmolLM2 publish it)
  biases      none; attention_bias (q/k/v/o); mlp_bias (gate/up/down); both; Qwen2 (q/k/v only)
  head        untied (lm_head.weight in the file) and tied (no lm_head.weight)
  files       one model.safetensors; sharded with model.safetensors.index.json
  targets     all seven by name; "all-linear" (PEFT) as "all-linear" and as "all" (vera-dist);
              ["q_proj", "v_proj"]; ["down_proj"]; ["up_proj", "o_proj"]; and mixed shapes and
              spellings ["self_attn.o_proj", "gate_proj", "k_proj"] (max_in 64 from o_proj,
              max_out 48 from gate_proj)
  vera        r 4 .. 256 (256 > every in/out), keys 0, 5, 2**40 + 7, 2**64 - 1, d_initial 0.1 .. 2,
              clipping off and on (engaging)
"""
import copy
import json
import math
import zlib

import pytest
import torch
from safetensors.torch import load_file

from conftest import (check_grad_keys, check_train_metrics, peft_train_reference,
                      LLAMA_PROJ, batch, llama_config, llama_modules, llama_peft_model, llama_vd_targets,
                      make_llama, max_rel, mean_ce, peft_projections, peft_selected, random_tokens, read_metrics,
                      vd_forward, vd_train, vera_vectors, write_shard)

pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Specified to not (save|load) vera_A:UserWarning")]

LOGIT_RTOL = 1e-5
LOSS_RTOL = 1e-5
GRAD_RTOL = 2e-5
TRAIN_LOSS_RTOL = 1e-5
TRAIN_NORM_RTOL = 1e-4
TRAIN_VEC_ATOL = 2e-5

B, K = 2, 5
LR, WEIGHT_DECAY = 1e-2, 0.1
BIG_KEY = 2**40 + 7

LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# id: settings. cfg: llama_config overrides; save: make_llama file options; targets: PEFT's
# target_modules; vd: vera-dist's --target_modules when not the same names; visible: what
# test_setting_is_visible switches off ("rope": default rope_parameters; "scaling": llama3 ->
# default with the same theta; "bias": every bias to 0).
SETTINGS = {
    "llama-gqa2-untied-all7-sharded": dict(
        arch="llama", cfg={}, save=dict(max_shard_size="40KB"),
        r=16, key=0, targets=list(LLAMA_PROJ), d_init=0.1, clip=0.0, T=16, visible=()),
    "llama-mha-tied-q_v": dict(
        arch="llama", cfg=dict(num_key_value_heads=4, tie_word_embeddings=True, vocab_size=257), save={},
        r=4, key=BIG_KEY, targets=["q_proj", "v_proj"], d_init=1.0, clip=0.01, T=16, visible=()),
    "llama-theta317-attnbias-down": dict(
        arch="llama", cfg=dict(rope_parameters={"rope_type": "default", "rope_theta": 317.0}, attention_bias=True),
        save={}, r=256, key=0, targets=["down_proj"], d_init=0.5, clip=0.0, T=16, visible=("rope", "bias")),
    "llama3rope-hd16-mqa-mlpbias-mixed": dict(
        arch="llama", cfg=dict(head_dim=16, num_key_value_heads=1, rope_parameters=LLAMA3, max_position_embeddings=256,
                               mlp_bias=True),
        save={}, r=16, key=2**64 - 1, targets=["self_attn.o_proj", "gate_proj", "k_proj"], d_init=2.0, clip=0.01,
        T=32, visible=("scaling", "bias")),
    "qwen2-gqa2-tied-all-linear": dict(
        arch="qwen2", cfg=dict(tie_word_embeddings=True), save={},
        r=8, key=BIG_KEY, targets="all-linear", d_init=0.1, clip=0.0, T=16, visible=("bias",)),
    "mistral-theta1e6-legacy-up_o": dict(
        arch="mistral", cfg=dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, head_dim=8),
        save=dict(legacy_rope=True), r=32, key=5, targets=["up_proj", "o_proj"], d_init=0.3, clip=0.0, T=16,
        visible=("rope",)),
    "llama3-legacy-bothbias-all-sharded": dict(
        arch="llama", cfg=dict(rope_parameters=LLAMA3, max_position_embeddings=256, attention_bias=True, mlp_bias=True,
                               vocab_size=257, head_dim=16, num_key_value_heads=2),
        save=dict(legacy_rope=True, max_shard_size="40KB"), r=64, key=0, targets="all-linear", vd="all",
        d_init=0.1, clip=0.01, T=32, visible=("scaling", "bias")),
}


class Case:
    """One setting: the model, the data, PEFT's adapter with non-zero vectors, and vera-dist's
    forward outputs (run once each), shared by the tests below."""

    def __init__(self, root, sid):
        s = SETTINGS[sid]
        self.id, self.s = sid, s
        self.r, self.key, self.targets, self.d_init, self.clip, self.T = s["r"], s["key"], s["targets"], s["d_init"], \
            s["clip"], s["T"]
        self.vd_targets = s.get("vd") or llama_vd_targets(self.targets)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.model_dir = root / "model"
        seed = zlib.crc32(sid.encode()) % 1000
        self.base = make_llama(self.model_dir, arch=s["arch"], seed=seed, **s["save"], **s["cfg"])
        cfg = self.base.config
        if s["save"].get("max_shard_size"):
            assert (self.model_dir / "model.safetensors.index.json").is_file(), "the model was not sharded"
            assert len(list(self.model_dir.glob("model-*.safetensors"))) >= 2
        if cfg.tie_word_embeddings:
            from safetensors import safe_open
            for f in self.model_dir.glob("*.safetensors"):
                with safe_open(str(f), "pt") as sf:
                    assert "lm_head.weight" not in sf.keys(), "a tied model's file holds lm_head.weight"
        self.vocab = cfg.vocab_size
        self.tokens = random_tokens((B * K + 1) * self.T + 1, self.vocab, seed + 1)
        self.shard = write_shard(root / "train_000.bin", self.tokens)
        self.pm_init = llama_peft_model(self.base, self.r, self.key, self.targets, self.d_init)
        self.pm = llama_peft_model(self.base, self.r, self.key, self.targets, self.d_init, vectors_seed=seed + 2)
        # the adapted layers are the ones PEFT's matching rule selects
        assert list(vera_vectors(self.pm)) == peft_selected(llama_modules(cfg), self.targets)
        self.adapter_dir = root / "peft_adapter"
        self.pm.save_pretrained(str(self.adapter_dir))
        self.init_vectors = {n: (b.detach().clone(), d.detach().clone()) for n, (b, d) in vera_vectors(self.pm).items()}
        self._fwd = {}

    def forward(self, adapter):
        if adapter not in self._fwd:
            name = "fwd_adapter.safetensors" if adapter else "fwd_base.safetensors"
            self._fwd[adapter] = vd_forward(self.root / name, self.model_dir, self.shard, B, self.T, self.r, self.key,
                                            self.vd_targets, self.d_init,
                                            adapter=self.adapter_dir if adapter else None)
        return self._fwd[adapter]


@pytest.fixture(scope="module", params=list(SETTINGS), ids=list(SETTINGS))
def case(request, tmp_path_factory):
    return Case(tmp_path_factory.mktemp(request.param), request.param)


def check_close(name, got, ref, rtol):
    err = max_rel(got, ref)
    assert err <= rtol, f"{name}: max |diff| / max |ref| = {err:.3g} > {rtol:g}"
    print(f"measured: {name}: {err:.3g} (tolerance {rtol:g})")
    return err


def check_grads(out, pm, what):
    vecs = vera_vectors(pm)
    check_grad_keys(out, {f"{n}.vera_lambda_{x}.grad" for n in vecs for x in "bd"}, what)
    worst = 0.0
    for n, (b, d) in vecs.items():
        for x, p in (("b", b), ("d", d)):
            key = f"{n}.vera_lambda_{x}.grad"
            assert out[key].shape == p.grad.shape, f"{what}: {key}: shape {tuple(out[key].shape)} vs {tuple(p.grad.shape)}"
            err = max_rel(out[key], p.grad)
            assert err <= GRAD_RTOL, f"{what}: {key}: max |diff| / max |ref| = {err:.3g} > {GRAD_RTOL:g}"
            worst = max(worst, err)
    print(f"measured: {what}: worst gradient {worst:.3g} (tolerance {GRAD_RTOL:g}, {2 * len(vecs)} tensors)")
    return worst


def test_base_forward(case):
    out = case.forward(adapter=False)
    x, y = batch(case.tokens, case.T, 0, B)
    with torch.no_grad():
        ref_logits, ref_loss = mean_ce(case.base, x, y)
    assert out["logits"].shape == ref_logits.shape, f"logits shape {tuple(out['logits'].shape)} vs {tuple(ref_logits.shape)}"
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
    cfg = json.loads((case.adapter_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "VERA" and cfg["projection_prng_key"] == case.key and cfg["r"] == case.r
    assert cfg["fan_in_fan_out"] is False
    out = case.forward(adapter=True)
    pm = case.pm
    x, y = batch(case.tokens, case.T, 0, B)
    pm.zero_grad()
    logits, loss = mean_ce(pm, x, y)
    loss.backward()
    with torch.no_grad():
        base_logits, _ = mean_ce(case.base, x, y)
    assert max_rel(logits.detach(), base_logits) > 100 * LOGIT_RTOL, "the adapter barely changes the logits"
    check_close("logits (PEFT adapter) vs PEFT", out["logits"], logits.detach(), LOGIT_RTOL)
    check_close("loss (PEFT adapter) vs PEFT", out["loss"], loss.detach().reshape(1), LOSS_RTOL)
    check_grads(out, pm, "gradients with non-zero b, d")


def test_adamw_trajectory(case):
    out_dir = case.root / "run"
    T = case.T
    vd_train(out_dir, case.model_dir, case.shard, B=B, T=T, K=K, r=case.r, key=case.key, targets=case.vd_targets,
             d_initial=case.d_init, lr=LR, weight_decay=WEIGHT_DECAY, grad_clip=case.clip, init_adapter=case.adapter_dir)
    rows = read_metrics(out_dir)
    assert [r["step"] for r in rows] == list(range(1, K + 1)), f"metrics steps {[r['step'] for r in rows]}"
    assert all(r["lr"] == pytest.approx(LR, rel=1e-6) for r in rows), "the learning rate is not constant"

    from peft import PeftModel
    pm = PeftModel.from_pretrained(copy.deepcopy(case.base), str(case.adapter_dir), is_trainable=True)
    pm.eval()
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


def _variant(case, what):
    """transformers' model with the same weights and the feature `what` switched off."""
    cfg = copy.deepcopy(case.base.config)
    sd = {k: v.clone() for k, v in case.base.state_dict().items()}
    if what == "rope":
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    elif what == "scaling":
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": case.base.config.rope_parameters["rope_theta"]}
    elif what == "bias":
        n = 0
        for k in sd:
            if k.endswith(".bias"):
                sd[k].zero_()
                n += 1
        assert n > 0, "the setting has no bias"
    else:
        raise AssertionError(what)
    m = type(case.base)(cfg)
    m.load_state_dict(sd)
    m.eval()
    return m


def test_setting_is_visible(case):
    """Each feature a setting is about changes the logits far beyond the tolerance (so the
    comparisons above would catch a vera-dist that ignored it); attention is not near-uniform
    (so RoPE and the causal mask are exercised at all)."""
    x, y = batch(case.tokens, case.T, 0, B)
    with torch.no_grad():
        ref, _ = mean_ce(case.base, x, y)
        for what in case.s["visible"]:
            other, _ = mean_ce(_variant(case, what), x, y)
            err = max_rel(other, ref)
            print(f"measured: switching off {what} moves the logits by {err:.3g} of their scale")
            assert err > 100 * LOGIT_RTOL, f"switching off {what} moves the logits only {err:.3g}: the setting tests nothing"
        eager = copy.deepcopy(case.base)
        eager.set_attn_implementation("eager")
        out = eager(input_ids=x, output_attentions=True)
    # the attention of the last query over T keys, against uniform attention (1/T)
    att = out.attentions[0][:, :, -1, :]
    spread = (att - 1.0 / case.T).abs().max().item()
    print(f"measured: layer 0, last query: max |p - 1/T| = {spread:.3g} (uniform attention: 0)")
    assert spread > 0.1 / case.T, f"layer 0's attention is almost uniform (max |p - 1/T| = {spread:.3g})"
