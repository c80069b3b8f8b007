"""Hugging Face interoperability of model_io.c, checked with transformers itself.

(a) `vera-dist init-model` writes a directory that GPT2LMHeadModel.from_pretrained loads with no
    missing, unexpected or mismatched keys, and whose parameters equal the file's tensors.
(b) the reverse direction (a transformers-saved model loaded by vera-dist) is covered by the
    conformance suite.

Run:  VERA_DIST_BIN=build/vera-dist /root/.cache/vera-dist/venv/bin/python -m pytest tests/python
The binary path defaults to build/vera-dist under the repository root; the tests skip, saying
why, when it is missing.
"""
import os
import pathlib
import subprocess

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("VERA_DIST_BIN", str(REPO / "build" / "vera-dist")))
if not BIN.is_absolute():
    BIN = REPO / BIN


def init_model(out, layers, heads, dim, vocab, ctx, seed):
    if not BIN.exists():
        pytest.skip(f"vera-dist binary not found at {BIN} (build the vera-dist target or set VERA_DIST_BIN)")
    cmd = [str(BIN), "init-model", "--out", str(out), "--layers", str(layers), "--heads", str(heads),
           "--dim", str(dim), "--vocab", str(vocab), "--ctx", str(ctx), "--seed", str(seed)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"{' '.join(cmd)} failed ({run.returncode}): {run.stderr.strip()}"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file(), \
        f"init-model wrote no config.json/model.safetensors in {out}: stdout {run.stdout!r} stderr {run.stderr!r}"
    return run.stdout


@pytest.mark.parametrize("layers,heads,dim,vocab,ctx,seed", [
    (2, 2, 64, 256, 128, 0),     # the init-model defaults
    (3, 4, 32, 50257, 16, 7),    # GPT-2's vocabulary size: end-of-text id 50256
])
def test_transformers_loads_init_model(tmp_path, layers, heads, dim, vocab, ctx, seed):
    out = tmp_path / "model"
    stdout = init_model(out, layers, heads, dim, vocab, ctx, seed)

    model, info = transformers.GPT2LMHeadModel.from_pretrained(str(out), output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(kind), f"{kind}: {info.get(kind)}"

    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.n_positions) == (layers, heads, dim, vocab, ctx)
    assert cfg.activation_function == "gelu_new" and cfg.tie_word_embeddings
    assert abs(cfg.layer_norm_epsilon - 1e-5) < 1e-12
    assert 0 <= cfg.eos_token_id < vocab and cfg.bos_token_id == cfg.eos_token_id == min(50256, vocab - 1)

    # every tensor in the file is a parameter transformers uses, with the same values and dtype
    tensors = safetensors_torch.load_file(str(out / "model.safetensors"))
    state = model.state_dict()
    assert len(tensors) == 4 + 12 * layers
    for name, t in tensors.items():
        assert name in state, f"{name} not in GPT2LMHeadModel's state_dict"
        assert t.dtype == torch.float32
        assert state[name].shape == t.shape, f"{name}: {tuple(state[name].shape)} vs {tuple(t.shape)}"
        assert torch.equal(state[name], t), f"{name}: values differ"
    # the LM head is tied to wte, as vera-dist assumes
    assert torch.equal(model.lm_head.weight, tensors["transformer.wte.weight"])

    # GPT-2 initialisation
    assert all(torch.all(t == 0) for n, t in tensors.items() if n.endswith(".bias"))
    assert all(torch.all(t == 1) for n, t in tensors.items() if ".ln_" in n and n.endswith(".weight"))
    n_params = sum(t.numel() for t in tensors.values())
    assert f"{n_params} parameters" in stdout, f"summary line does not report {n_params} parameters: {stdout!r}"

    # and the model runs
    ids = torch.randint(0, vocab, (2, min(ctx, 8)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, ids.shape[1], vocab) and torch.isfinite(logits).all()


def test_init_model_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    init_model(a, 1, 2, 16, 40, 8, 3)
    init_model(b, 1, 2, 16, 40, 8, 3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()

# transformers -> vera-dist (loading a save_pretrained directory) is tested by
# test_peft_conformance.py::test_base_forward, which compares logits.
