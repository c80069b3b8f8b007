"""Bad Llama-family model directories and target_modules are refused cleanly.

Each case starts from a good model made by transformers (make_llama) and breaks one thing. The
run must exit non-zero with exactly one `vera-dist: error:` line that names the file at fault
(and the tensor / field where there is one) and what was expected, and must write nothing
(`forward --out` is not created).

  missing-shard          model.safetensors.index.json names a shard file that is absent
  tensor-not-in-shard    the index maps a tensor to a shard that does not hold it
  missing-tensor         a single-file model lacks a tensor (no index)
  no-weights             config.json but neither model.safetensors nor an index
  wrong-shape            a tensor of the wrong shape (k_proj as if there were no GQA)
  dtype-I32 / dtype-F64  a tensor of an unsupported dtype
  architecture           config.json "architectures" is ["FalconForCausalLM"] (forward and inspect)
  target_modules         a name that selects nothing (GPT-2's c_attn, a typo in a list)
"""
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import error_lines, make_llama, random_tokens, run_vd, write_shard

B, T = 1, 8


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    single = root / "single"
    sharded = root / "sharded"
    make_llama(single, seed=91)
    make_llama(sharded, seed=91, max_shard_size="40KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2, f"not sharded: {shards}"
    shard = write_shard(root / "val_000.bin", random_tokens(B * T + 1, 101, 92))
    return dict(root=root, single=single, sharded=sharded, shard=shard)


def _copy(good, src, name):
    dst = good["root"] / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(good[src], dst)
    return dst


def _rewrite_tensor(path, name, value=None, drop=False):
    tensors = load_file(str(path))
    assert name in tensors, f"{name} not in {path}"
    if drop:
        del tensors[name]
    else:
        tensors[name] = value(tensors[name])
    save_file(tensors, str(path), metadata={"format": "pt"})


def _index(model_dir):
    return json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]


def case_missing_shard(good):
    d = _copy(good, "sharded", "missing_shard")
    victim = sorted(set(_index(d).values()))[-1]
    (d / victim).unlink()
    return d, [str(d / victim)]


def case_tensor_not_in_shard(good):
    d = _copy(good, "sharded", "tensor_not_in_shard")
    name = "model.layers.1.mlp.down_proj.weight"
    shard = d / _index(d)[name]
    _rewrite_tensor(shard, name, drop=True)
    return d, [str(shard), name]


def case_missing_tensor(good):
    d = _copy(good, "single", "missing_tensor")
    name = "model.layers.0.post_attention_layernorm.weight"
    _rewrite_tensor(d / "model.safetensors", name, drop=True)
    return d, [str(d / "model.safetensors"), name]


def case_no_weights(good):
    d = _copy(good, "single", "no_weights")
    (d / "model.safetensors").unlink()
    return d, ["model.safetensors"]


def case_wrong_shape(good):
    d = _copy(good, "single", "wrong_shape")
    name = "model.layers.0.self_attn.k_proj.weight"  # (2 kv heads * 8, 32) = (16, 32); make it (32, 32)
    _rewrite_tensor(d / "model.safetensors", name, value=lambda t: torch.cat([t, t], 0))
    return d, [str(d / "model.safetensors"), name, "16"]


def case_dtype_i32(good):
    d = _copy(good, "single", "dtype_i32")
    name = "model.layers.0.input_layernorm.weight"
    _rewrite_tensor(d / "model.safetensors", name, value=lambda t: t.round().to(torch.int32))
    return d, [str(d / "model.safetensors"), name, "I32"]


def case_dtype_f64(good):
    d = _copy(good, "single", "dtype_f64")
    name = "model.layers.1.self_attn.q_proj.weight"
    _rewrite_tensor(d / "model.safetensors", name, value=lambda t: t.to(torch.float64))
    return d, [str(d / "model.safetensors"), name, "F64"]


def case_architecture(good):
    d = _copy(good, "single", "architecture")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d, [str(d / "config.json"), "FalconForCausalLM"]


CASES = {
    "missing-shard": case_missing_shard,
    "tensor-not-in-shard": case_tensor_not_in_shard,
    "missing-tensor": case_missing_tensor,
    "no-weights": case_no_weights,
    "wrong-shape": case_wrong_shape,
    "dtype-I32": case_dtype_i32,
    "dtype-F64": case_dtype_f64,
    "architecture": case_architecture,
}


def _forward(good, model, out, targets="q_proj,v_proj"):
    return run_vd("forward", "--model", model, "--tokens", good["shard"], "--out", out, "--batch_size", B,
                  "--seq_len", T, "--r", 4, "--target_modules", targets, ok=False)


def _check_one_error(proc, fragments, what):
    lines = error_lines(proc)
    assert len(lines) == 1, f"{what}: expected one 'vera-dist: error:' line, got {lines!r}\nstderr:\n{proc.stderr}"
    # paths first; numbers (an expected dimension) are looked for as words in what the paths leave
    rest = lines[0]
    for f in sorted((f for f in fragments if "/" in f), key=len, reverse=True):
        rest = rest.replace(f, " ")
    missing = [f for f in fragments if (f not in lines[0] if not f.isdigit() else not re.search(rf"\b{f}\b", rest))]
    assert not missing, f"{what}: the error line {lines[0]!r} lacks {missing!r}"
    print(f"error ({what}): {lines[0]}")


def test_good_models_load(good):
    """The untouched models run (so every failure below is caused by the one thing broken)."""
    for src in ("single", "sharded"):
        out = good["root"] / f"ok_{src}.safetensors"
        run_vd("forward", "--model", good[src], "--tokens", good["shard"], "--out", out, "--batch_size", B,
               "--seq_len", T, "--r", 4, "--target_modules", "q_proj,v_proj")
        assert out.is_file()


@pytest.mark.parametrize("what", list(CASES))
def test_bad_model(good, what):
    model, fragments = CASES[what](good)
    out = good["root"] / f"never_{what}.safetensors"
    proc = _forward(good, model, out)
    _check_one_error(proc, fragments, what)
    assert not out.exists(), f"{what}: a failed forward wrote {out}"


def test_unsupported_architecture_inspect(good):
    """inspect reads config.json only, and refuses an unsupported architecture the same way."""
    model, fragments = case_architecture(good)
    proc = run_vd("inspect", "--model", model, "--r", 4, "--target_modules", "q_proj", ok=False)
    _check_one_error(proc, fragments, "inspect architecture")


@pytest.mark.parametrize("targets,bad", [("c_attn", "c_attn"), ("q_proj,foo_proj", "foo_proj"),
                                         ("mlp.q_proj", "mlp.q_proj")])
def test_target_modules_selecting_nothing(good, targets, bad):
    out = good["root"] / f"never_targets_{bad}.safetensors"
    proc = _forward(good, good["single"], out, targets=targets)
    _check_one_error(proc, ["target_modules", bad], f"target_modules {targets}")
    assert not out.exists(), f"target_modules {targets}: a failed forward wrote {out}"
    train_dir = good["root"] / f"never_train_{bad}"
    proc = run_vd("train", "--model", good["single"], "--train_data", good["shard"], "--out_dir", train_dir,
                  "--batch_size", B, "--seq_len", T, "--max_steps", 1, "--warmup_steps", 0, "--r", 4, "--target_modules", targets,
                  "--resume", "none", "--overwrite", 1, ok=False)
    _check_one_error(proc, ["target_modules", bad], f"train target_modules {targets}")
    assert not (train_dir / "checkpoints").exists() or not any((train_dir / "checkpoints").iterdir()), \
        f"train with target_modules {targets} wrote a checkpoint"


def test_adapter_naming_some_layers_only(good, tmp_path):
    """PEFT saves all-linear as every full module path; vera-dist maps such a list to layer
    types, and refuses one that names a type in some layers only (it adapts whole types)."""
    cfg = json.loads((good["single"] / "config.json").read_text())
    n_layer = cfg["num_hidden_layers"]
    assert n_layer >= 2, "the test needs a model with at least two layers"
    adapter = tmp_path / "partial_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "VERA", "r": 4, "projection_prng_key": 0, "d_initial": 0.1, "bias": "none",
        "target_modules": ["model.layers.0.self_attn.q_proj"], "save_projection": False}))
    out = tmp_path / "fwd.safetensors"
    proc = run_vd("forward", "--model", good["single"], "--tokens", good["shard"], "--out", out, "--batch_size", B,
                  "--seq_len", T, "--r", 4, "--target_modules", "q_proj", "--adapter", adapter, ok=False)
    lines = error_lines(proc)
    assert len(lines) == 1 and "adapter_config.json" in lines[0] and \
        f"names self_attn.q_proj in 1 of {n_layer} layers" in lines[0], f"got {lines!r}\n{proc.stderr}"
    assert not out.exists(), "forward wrote its output despite the error"
