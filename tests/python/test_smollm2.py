"""A real pretrained model: SmolLM2-135M-Instruct (llama GGUF, Q4_1) against transformers.

launch/fetch-smollm2.sh downloads the GGUF once (into ${VERA_MODELS:-~/.cache/vera-dist/models})
and prints its path on its last stdout line. The reference is transformers itself:
AutoTokenizer / AutoModelForCausalLM.from_pretrained(dir, gguf_file=name) (dequantized to fp32),
loaded once per session.

  test_gguf_forward      the first 513 tokens of /usr/share/common-licenses/GPL-3 (transformers'
                         tokenizer from the GGUF) as an llm.c shard; `vera-dist forward --model
                         FILE.gguf` (B 1, T 512): logits max|diff| <= 1e-4 * max|logits_ref|, loss
                         1e-5 relative (transformers gives about 2.94 nats/token here)
  test_hf_dir_matches_gguf
                         the same weights exported here to a Hugging Face directory (state_dict
                         without the tied lm_head.weight, safetensors, config.json without
                         quantization_config): `forward --model DIR` gives the GGUF path's logits,
                         loss and b / d gradients (so both loaders agree), and transformers'
  test_gguf_gradients    the b / d gradients of the GGUF forward (q_proj, v_proj, b = 0, d = 0.1)
                         against PEFT's on transformers' model in float64: max|diff| <=
                         1e-4 * max|grad_ref| per tensor (see the test for why float64)

The logit tolerance is 10x the tiny models' (1e-5): 30 layers, hidden 576 and 512 positions sum
more terms in other orders; both sides are fp32 on the same dequantized weights.
"""
import copy
import os
import pathlib
import subprocess

import pytest
import torch
import transformers
from safetensors.torch import save_file

from conftest import REPO, THREADS, batch, llama_peft_model, max_rel, mean_ce, vd_forward, vera_vectors, write_shard

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

LOGIT_RTOL = 1e-4
LOSS_RTOL = 1e-5
GRAD64_RTOL = 1e-4  # b / d gradients per tensor against float64 PEFT (measured 1.8e-5)
B, T = 1, 512
TEXT = pathlib.Path("/usr/share/common-licenses/GPL-3")
R, KEY, TARGETS = 8, 0, "q_proj,v_proj"


@pytest.fixture(scope="session")
def smollm2_gguf():
    if os.environ.get("VERA_SMOLLM2_GGUF"):  # a copy elsewhere (as test_gguf.py reads it)
        path = pathlib.Path(os.environ["VERA_SMOLLM2_GGUF"])
        assert path.is_file(), f"VERA_SMOLLM2_GGUF={path}: no such file"
        return path
    script = REPO / "launch" / "fetch-smollm2.sh"
    if not script.is_file():
        pytest.fail(f"{script} not found", pytrace=False)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"{script} exited {proc.returncode}:\n{proc.stderr.strip()}", pytrace=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, f"{script} printed no path (stderr: {proc.stderr.strip()})"
    path = pathlib.Path(lines[-1].strip())
    assert path.is_file() and path.suffix == ".gguf", f"{script} printed {path}, not a .gguf file"
    return path


class Smol:
    """The tokenizer, the transformers model (fp32), the tokens and the reference outputs."""

    def __init__(self, gguf, root):
        self.gguf, self.root = gguf, root
        d, name = str(gguf.parent), gguf.name
        tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
        ids = tok(TEXT.read_text(), add_special_tokens=False)["input_ids"]
        assert len(ids) >= B * T + 1, f"{TEXT} has only {len(ids)} tokens"
        self.tokens = ids[:B * T + 1]
        self.model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
        self.model.eval()
        cfg = self.model.config
        assert cfg.vocab_size <= 65536 and max(self.tokens) < cfg.vocab_size
        self.shard = write_shard(root / "gpl3_000.bin", self.tokens)
        self.x, self.y = batch(self.tokens, T, 0, B)
        with torch.no_grad():
            logits, loss = mean_ce(self.model, self.x, self.y)
        self.logits, self.loss = logits, loss
        print(f"transformers: SmolLM2 on {TEXT} ({B * T} predictions): loss {loss.item():.6f} nats/token")

    def forward(self, model, name):
        return vd_forward(self.root / name, model, self.shard, B, T, R, KEY, TARGETS, 0.1)


@pytest.fixture(scope="session")
def smol(smollm2_gguf, tmp_path_factory):
    torch.set_num_threads(THREADS)
    return Smol(smollm2_gguf, tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="session")
def gguf_out(smol):
    return smol.forward(smol.gguf, "fwd_gguf.safetensors")


def check_close(name, got, ref, rtol):
    err = max_rel(got, ref)
    assert err <= rtol, f"{name}: max |diff| / max |ref| = {err:.3g} > {rtol:g}"
    print(f"measured: {name}: {err:.3g} (tolerance {rtol:g})")
    return err


def test_gguf_forward(smol, gguf_out):
    # the reference itself is what we think it is: a language model that knows English
    assert 2.5 < smol.loss.item() < 3.4, f"transformers' loss {smol.loss.item():.4f} (expected about 2.94)"
    assert gguf_out["logits"].shape == smol.logits.shape, \
        f"logits shape {tuple(gguf_out['logits'].shape)} vs {tuple(smol.logits.shape)}"
    check_close("SmolLM2 GGUF: logits vs transformers", gguf_out["logits"], smol.logits, LOGIT_RTOL)
    check_close("SmolLM2 GGUF: loss vs transformers", gguf_out["loss"], smol.loss.reshape(1), LOSS_RTOL)
    print(f"measured: vera-dist loss {gguf_out['loss'].item():.6f}, transformers {smol.loss.item():.6f}")


def test_gguf_gradients(smol, gguf_out):
    """The b / d gradients of the fresh adapter (b = 0, d = 0.1) on q_proj, v_proj of all 30
    layers against PEFT's on transformers' model in float64 (torch autograd, the same tokens).
    float64, not float32: on this model torch's own fp32 gradients are up to 7e-4 of their scale
    off the fp64 ones (layer 20's v_proj), vera-dist's 2e-5; an fp32 reference would measure
    torch's rounding, not vera-dist."""
    m64 = copy.deepcopy(smol.model).to(torch.float64)
    pm = llama_peft_model(m64, R, KEY, TARGETS.split(","), 0.1).to(torch.float64)
    del m64
    pm.zero_grad()
    _, loss = mean_ce(pm, smol.x, smol.y)
    loss.backward()
    vecs = vera_vectors(pm)
    assert sorted(f"{n}.vera_lambda_{x}.grad" for n in vecs for x in "bd") == sorted(k for k in gguf_out if k.endswith(".grad"))
    worst = 0.0
    for n, (b, d) in vecs.items():
        for x, p in (("b", b), ("d", d)):
            err = max_rel(gguf_out[f"{n}.vera_lambda_{x}.grad"], p.grad)
            assert err <= GRAD64_RTOL, f"{n}.vera_lambda_{x}.grad: max |diff| / max |ref| = {err:.3g} > {GRAD64_RTOL:g}"
            worst = max(worst, err)
    assert max(b.grad.abs().max().item() for b, _ in vecs.values()) > 0, "all b gradients are 0: nothing was compared"
    print(f"measured: SmolLM2 GGUF: worst b / d gradient vs PEFT in float64 {worst:.3g} (tolerance {GRAD64_RTOL:g}, "
          f"{2 * len(vecs)} tensors); loss vs float64 {max_rel(gguf_out['loss'], loss.detach().reshape(1)):.3g}")


def export_hf_dir(model, out):
    """The model's weights and config as a plain Hugging Face directory (fp32 safetensors)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(model.config)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.architectures = [type(model).__name__]
    cfg.save_pretrained(str(out))
    assert "quantization_config" not in (out / "config.json").read_text()
    return out


def test_hf_dir_matches_gguf(smol, gguf_out):
    d = export_hf_dir(smol.model, smol.root / "hf")
    # transformers reads the directory back to the same model
    back = transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    back.eval()
    with torch.no_grad():
        again, _ = mean_ce(back, smol.x, smol.y)
    assert torch.equal(again, smol.logits), "the exported directory is not the GGUF's model in transformers"
    del back

    out = smol.forward(d, "fwd_hf.safetensors")
    same = torch.equal(out["logits"], gguf_out["logits"])
    print(f"measured: HF directory vs GGUF logits bit-identical: {same}")
    check_close("SmolLM2 HF dir vs GGUF: logits", out["logits"], gguf_out["logits"], 1e-5)
    check_close("SmolLM2 HF dir vs GGUF: loss", out["loss"], gguf_out["loss"], LOSS_RTOL)
    check_close("SmolLM2 HF dir: logits vs transformers", out["logits"], smol.logits, LOGIT_RTOL)
    grads = sorted(k for k in gguf_out if k.endswith(".grad"))
    assert grads and grads == sorted(k for k in out if k.endswith(".grad"))
    assert len(grads) == 2 * 2 * smol.model.config.num_hidden_layers, f"{len(grads)} gradient tensors for {TARGETS}"
    worst = max(max_rel(out[k], gguf_out[k]) for k in grads)
    assert worst <= 1e-5, f"b / d gradients: HF directory vs GGUF {worst:.3g} > 1e-5"
    print(f"measured: HF dir vs GGUF: worst b / d gradient {worst:.3g}")
    (d / "model.safetensors").unlink()  # 540 MB
