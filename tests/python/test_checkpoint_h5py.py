"""HDF5 checkpoints as other tools see them: h5py and h5dump read what vera-dist writes, and every
object, type, shape and checksum is exactly as docs/checkpoint-format.md documents it.

A tiny model is trained for 4 steps with --ckpt_every 2 (with and without --save_projection);
then each checkpoint is opened with h5py and checked against the document:
  * the exact set of groups, datasets and attributes, with their dtypes and shapes;
  * progress values (step, tokens_seen, next_sequence, adam_t, last_loss against metrics.jsonl);
  * module_order for target_modules = all, the stored module table (module_out, module_off_b,
    module_off_d, n_trainable) and the flat layout it describes;
  * every /model attribute of format version 2 (the whole model config, arch as a string);
  * the three checksums recomputed in Python from the documented definitions;
  * every attribute checked here is named in the document;
  * a version-1 file (made from a real checkpoint by h5py surgery, as the version-1 writer wrote
    it: no v2-only attributes, the version-1 data_checksum) still resumes, and the resumed run
    ends bit-identical to the uninterrupted one;
  * a Llama-family run (init-model --arch llama; skipped on builds without it) writes /model
    with arch "llama" and its config, a module table of Llama layers, documented checksums, and
    resumes bit-identically;
  * the final checkpoint's lambda_b / lambda_d equal adapter_final.safetensors;
  * `h5dump -H` exits 0; the docs' h5py snippet runs on the file.

Run:  VERA_DIST_BIN=build/vera-dist /root/.cache/vera-dist/venv/bin/python -m pytest tests/python
The binary path defaults to build/vera-dist under the repository root; the tests skip, saying
why, when it or h5py is missing. (Debian's h5py works too, with /usr/bin/python3.)
"""
import contextlib
import io
import json
import os
import pathlib
import random
import re
import shutil
import struct
import subprocess

import pytest

np = pytest.importorskip("numpy")
h5py = pytest.importorskip("h5py")

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("VERA_DIST_BIN", str(REPO / "build" / "vera-dist")))
if not BIN.is_absolute():
    BIN = REPO / BIN
DOC = REPO / "docs" / "checkpoint-format.md"

LAYERS, HEADS, DIM, VOCAB, CTX = 2, 2, 32, 256, 64
R, BATCH, SEQ, STEPS, EVERY, SEED, KEY = 4, 2, 32, 4, 2, 1234, 7
KINDS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
KIND_IN = {"attn.c_attn": 1, "attn.c_proj": 1, "mlp.c_fc": 1, "mlp.c_proj": 4}    # x n_embd
KIND_OUT = {"attn.c_attn": 3, "attn.c_proj": 1, "mlp.c_fc": 4, "mlp.c_proj": 1}   # x n_embd
MODULES = [f"transformer.h.{l}.{k}" for l in range(LAYERS) for k in KINDS]        # PEFT order

ROOT_ATTRS = {"format": "S", "format_version": "<i4", "step": "<i8", "tokens_seen": "<u8",
              "next_sequence": "<u8", "global_batch_seqs": "<u8", "dropout_seed": "<u8",
              "world_size": "<i4", "adam_t": "<i4", "last_loss": "<f4", "data_checksum": "<u8",
              "created": "S"}
# /model, in the documented order (the order data_checksum hashes them in); "v" = the format
# version that added it. "S" = string, "E" = an enum stored as one of the listed strings.
MODEL_FIELDS = [("n_layer", "<i4", 1), ("n_head", "<i4", 1), ("n_embd", "<i4", 1), ("vocab_size", "<i4", 1),
                ("n_positions", "<i4", 1), ("layer_norm_epsilon", "<f4", 1),
                ("arch", ("E", ["gpt2", "llama"]), 2), ("n_kv_head", "<i4", 2), ("head_dim", "<i4", 2),
                ("intermediate_size", "<i4", 2), ("tie_word_embeddings", "<i4", 2), ("qkv_bias", "<i4", 2),
                ("o_bias", "<i4", 2), ("mlp_bias", "<i4", 2), ("rope_theta", "<f4", 2),
                ("rope_type", ("E", ["default", "llama3"]), 2), ("rope_factor", "<f4", 2),
                ("rope_low_freq_factor", "<f4", 2), ("rope_high_freq_factor", "<f4", 2),
                ("rope_original_max_position_embeddings", "<i4", 2), ("hf_architecture", "S", 2)]
MODEL_ATTRS = {name: ("S" if isinstance(kind, tuple) else kind) for name, kind, _ in MODEL_FIELDS}
MODEL_ATTRS["fingerprint"] = "<u8"
ADAPTER_ARRAYS = {"module_order": "S", "module_out": "<i4", "module_off_b": "<u8", "module_off_d": "<u8"}
ADAPTER_SCALARS = {"n_trainable": "<u8"}
V2_ONLY = {"/model": [n for n, _, v in MODEL_FIELDS if v == 2], "/adapter": ["module_out", "module_off_b", "module_off_d", "n_trainable"]}
VERA_ATTRS = {"r": "<i4", "max_in": "<i4", "max_out": "<i4", "projection_prng_key": "<u8",
              "target_modules": "S", "projection_checksum": "<u8", "save_projection": "<i4"}

M64 = (1 << 64) - 1


def fnv(data, seed=0):
    """vd_hash64 as documented in docs/checkpoint-format.md, "Checksums": four FNV-1a-style
    lanes over 8-byte little-endian words, then the tail bytes, the length and a final mix."""
    data = bytes(data)
    P = 1099511628211
    lanes = [14695981039346656037 ^ seed, 0x9E3779B97F4A7C15 ^ seed, 0xC2B2AE3D27D4EB4F ^ seed,
             0x165667B19E3779F9 ^ seed]
    n = len(data)
    i = 0
    while i + 32 <= n:
        for k in range(4):
            w = int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little")
            lanes[k] = ((lanes[k] ^ w) * P) & M64
        i += 32
    h = lanes[0]
    for k in range(1, 4):
        h = ((h ^ (lanes[k] >> 29) ^ lanes[k]) * P) & M64
    for c in data[i:]:
        h = ((h ^ c) * P) & M64
    h ^= n
    return ((h ^ (h >> 32)) * P) & M64


def run(cmd, what):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, f"{what} failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    if not BIN.exists():
        pytest.skip(f"vera-dist binary not found at {BIN} (build the vera-dist target or set VERA_DIST_BIN)")
    d = tmp_path_factory.mktemp("ckpt_inputs")
    run([BIN, "init-model", "--out", d / "model", "--layers", LAYERS, "--heads", HEADS, "--dim", DIM,
         "--vocab", VOCAB, "--ctx", CTX], "init-model")
    rng = random.Random(0)
    words = "the a one every cat dog model rank node token layer vector sees reads writes keeps".split()
    (d / "text.txt").write_text(" ".join(rng.choice(words) for _ in range(20000)) + "\n")
    run([BIN, "prepare-data", "--in", d / "text.txt", "--out", d / "data"], "prepare-data")
    return d


def train(inputs, out, save_projection):
    run([BIN, "--model", inputs / "model", "--train_data", inputs / "data" / "train_*.bin", "--out_dir", out,
         "--target_modules", "all", "--r", R, "--batch_size", BATCH, "--seq_len", SEQ, "--grad_accum", 1,
         "--max_steps", STEPS, "--warmup_steps", 0, "--ckpt_every", EVERY, "--save_projection", save_projection,
         "--seed", SEED, "--projection_prng_key", KEY, "--threads", 1, "--log_every", 1], "training")
    ckdir = out / "checkpoints"
    files = sorted(ckdir.glob("step_*.h5")) if ckdir.is_dir() else []
    assert files, (f"vera-dist wrote no checkpoints in {ckdir} (does this build write HDF5 checkpoints? "
                   f"the trainer side may not have landed yet)")
    return files


@pytest.fixture(scope="module", params=[1, 0], ids=["save_projection=1", "save_projection=0"])
def run_dir(request, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"run_sp{request.param}") / "run"
    files = train(inputs, out, request.param)
    return out, files, request.param


def check_attrs(obj, spec, where, arrays=None):
    """spec: scalar attributes; arrays: one-dimensional ones (name -> (kind, length))."""
    arrays = arrays or {}
    assert set(obj.attrs.keys()) == set(spec) | set(arrays), \
        f"{where}: attributes {sorted(obj.attrs.keys())}, documented {sorted(set(spec) | set(arrays))}"
    for name, kind in list(spec.items()) + list(arrays.items()):
        v = obj.attrs.get_id(name)
        if name in arrays:
            kind, n = kind
            assert v.shape == (n,), f"{where} attribute {name}: shape {v.shape}, documented ({n},)"
        else:
            assert v.shape == (), f"{where} attribute {name} is not a scalar: shape {v.shape}"
        dt = v.dtype
        if kind == "S":
            assert dt.kind == "S", f"{where} attribute {name}: dtype {dt}, documented a fixed-length string"
            tid = v.get_type()
            assert tid.get_cset() == h5py.h5t.CSET_UTF8 and tid.get_strpad() == h5py.h5t.STR_NULLTERM, \
                f"{where} attribute {name}: not a NUL-terminated UTF-8 string"
        else:
            assert dt == np.dtype(kind), f"{where} attribute {name}: dtype {dt.str}, documented {kind}"


def flat(f, tree, order):
    """The documented flat layout: lambda_b then lambda_d of each module in module_order."""
    return np.concatenate([np.concatenate([f[f"{tree}/{m}/lambda_b"][()], f[f"{tree}/{m}/lambda_d"][()]])
                           for m in order]).astype("<f4")


def metrics_loss(out, step):
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("step") == step:
            return row["loss"]
    raise AssertionError(f"no metrics.jsonl row for step {step}")


def safetensors_f32(path):
    """Minimal safetensors reader (8-byte header length, JSON header, raw data)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: {info['dtype']}"
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(info["shape"])
    return out


def data_checksum(f, params, m1, m2, version):
    """data_checksum of open file f as docs/checkpoint-format.md defines it for `version`, over the
    flat arrays params, m1, m2 (float32)."""
    a, cfg, m, v, ad = f.attrs, f["config"], f["model"].attrs, f["vera"].attrs, f["adapter"].attrs

    def u64(x):
        return int(x) & M64

    def fbits(x):
        return struct.unpack("<I", np.float32(x).tobytes())[0]

    def model_word(name, kind):
        if kind == "<f4":
            return fbits(m[name])
        if kind == "S":
            return fnv(m[name])                      # the string's bytes, without the NUL
        if isinstance(kind, tuple):
            return kind[1].index(m[name].decode())   # an enum: the index of its spelling
        return int(m[name])

    h = fnv(params.tobytes())
    h = fnv(m1.tobytes(), h)
    h = fnv(m2.tobytes(), h)
    words = [a["step"], a["tokens_seen"], a["next_sequence"], a["global_batch_seqs"], a["adam_t"],
             a["world_size"], a["dropout_seed"], fbits(a["last_loss"]), cfg.attrs["hash"], m["fingerprint"]]
    words += [model_word(name, kind) for name, kind, since in MODEL_FIELDS if since <= version]
    words += [v["r"], v["max_in"], v["max_out"], v["projection_prng_key"], v["projection_checksum"]]
    assert len(words) == (21 if version == 1 else 36)
    h = fnv(b"".join(struct.pack("<Q", u64(w)) for w in words), h)
    h = fnv(v["target_modules"], h)
    if version >= 2:
        order = list(ad["module_order"])
        h = fnv(struct.pack("<QQ", len(order), int(ad["n_trainable"])), h)
        for i, name in enumerate(order):
            h = fnv(name, h)
            h = fnv(struct.pack("<QQQ", u64(ad["module_out"][i]), int(ad["module_off_b"][i]),
                                int(ad["module_off_d"][i])), h)
    return h


def check_checkpoint(path, out, save_projection):
    step_from_name = int(re.fullmatch(r"step_(\d{8,})\.h5", path.name).group(1))
    C = DIM
    with h5py.File(path, "r") as f:
        want_top = {"config", "model", "vera", "adapter", "optimizer"} | ({"projection"} if save_projection else set())
        assert set(f.keys()) == want_top, f"{path.name}: top-level objects {sorted(f.keys())}, documented {sorted(want_top)}"

        # ---- root ----
        check_attrs(f, ROOT_ATTRS, "/")
        a = f.attrs
        assert a["format"] == b"vera-dist-checkpoint" and a["format_version"] == 2
        step = int(a["step"])
        gbs = BATCH * 1 * 1   # batch_size x grad_accum x world_size
        assert step == step_from_name
        assert int(a["global_batch_seqs"]) == gbs
        assert int(a["next_sequence"]) == step * gbs
        assert int(a["tokens_seen"]) == step * gbs * SEQ
        assert int(a["world_size"]) == 1 and int(a["adam_t"]) == step and int(a["dropout_seed"]) == SEED
        assert a["last_loss"] == np.float32(metrics_loss(out, step)), \
            f"last_loss {a['last_loss']} != metrics.jsonl loss at step {step}"
        assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", a["created"]), a["created"]

        # ---- /config ----
        cfg = f["config"]
        assert isinstance(cfg, h5py.Dataset) and cfg.shape == () and cfg.dtype.kind == "S"
        check_attrs(cfg, {"hash": "<u8"}, "/config")
        text = cfg[()]
        assert int(cfg.attrs["hash"]) == fnv(text), "/config hash is not vd_hash64(text, 0)"
        lines = text.decode().splitlines()
        assert lines and all(re.fullmatch(r"[a-z_0-9]+ = .*", l) for l in lines), f"not key = value lines: {lines[:5]}"
        kv = dict(l.split(" = ", 1) for l in lines)
        assert kv["r"] == str(R) and kv["save_projection"] == str(save_projection) and kv["max_steps"] == str(STEPS)

        # ---- /model, /vera ----
        check_attrs(f["model"], MODEL_ATTRS, "/model")
        m = f["model"].attrs
        assert (m["n_layer"], m["n_head"], m["n_embd"], m["vocab_size"], m["n_positions"]) == (LAYERS, HEADS, DIM, VOCAB, CTX)
        assert abs(float(m["layer_norm_epsilon"]) - 1e-5) < 1e-9
        for name, kind, _ in MODEL_FIELDS:
            if isinstance(kind, tuple):
                assert m[name].decode() in kind[1], f"/model {name} = {m[name]!r}, documented one of {kind[1]}"
        assert m["arch"] == b"gpt2" and m["rope_type"] == b"default", (m["arch"], m["rope_type"])
        assert m["hf_architecture"] in (b"", b"GPT2LMHeadModel"), m["hf_architecture"]
        for flag in ("tie_word_embeddings", "qkv_bias", "o_bias", "mlp_bias"):
            assert m[flag] in (0, 1), f"/model {flag} = {m[flag]}"
        check_attrs(f["vera"], VERA_ATTRS, "/vera")
        v = f["vera"].attrs
        max_in, max_out = 4 * C, 4 * C
        assert (v["r"], v["max_in"], v["max_out"]) == (R, max_in, max_out)
        assert int(v["projection_prng_key"]) == KEY and v["target_modules"] == b"all"
        assert v["save_projection"] == save_projection

        # ---- /adapter and /optimizer ----
        order = [s.decode() for s in f["adapter"].attrs["module_order"]]
        assert order == MODULES, f"module_order {order}"
        check_attrs(f["adapter"], ADAPTER_SCALARS, "/adapter",
                    arrays={k: (kind, len(MODULES)) for k, kind in ADAPTER_ARRAYS.items()})
        ad = f["adapter"].attrs
        outs = [int(x) for x in ad["module_out"]]
        assert outs == [KIND_OUT[name.split(".", 3)[3]] * C for name in MODULES], f"module_out {outs}"
        off = 0
        for i, name in enumerate(MODULES):   # lambda_b then lambda_d, back to back, in order
            assert int(ad["module_off_b"][i]) == off and int(ad["module_off_d"][i]) == off + outs[i], \
                f"{name}: offsets {int(ad['module_off_b'][i])}, {int(ad['module_off_d'][i])}; documented {off}, {off + outs[i]}"
            off += outs[i] + R
        assert int(ad["n_trainable"]) == off
        for tree in ("adapter", "optimizer/exp_avg", "optimizer/exp_avg_sq"):
            assert set(f[tree].keys()) == set(MODULES), f"/{tree}: {sorted(f[tree].keys())}"
            for name in MODULES:
                g = f[f"{tree}/{name}"]
                assert set(g.keys()) == {"lambda_b", "lambda_d"}, f"/{tree}/{name}: {sorted(g.keys())}"
                out_w = KIND_OUT[name.split(".", 3)[3]] * C
                for ds, n in (("lambda_b", out_w), ("lambda_d", R)):
                    d = g[ds]
                    assert d.dtype == np.dtype("<f4") and d.shape == (n,), \
                        f"/{tree}/{name}/{ds}: {d.dtype.str} {d.shape}, documented <f4 ({n},)"
                    assert d.chunks is None and d.compression is None, f"/{tree}/{name}/{ds} is not contiguous"
                    assert np.all(np.isfinite(d[()]))
        assert set(f["optimizer"].keys()) == {"exp_avg", "exp_avg_sq"}
        params = flat(f, "adapter", order)
        m1 = flat(f, "optimizer/exp_avg", order)
        m2 = flat(f, "optimizer/exp_avg_sq", order)
        n_trainable = sum(KIND_OUT[k] * C + R for k in KINDS) * LAYERS
        assert params.size == n_trainable
        assert np.all(m2 >= 0) and np.any(m2 > 0) and np.any(m1 != 0), "moments look untrained"

        # ---- /projection ----
        if save_projection:
            assert set(f["projection"].keys()) == {"A", "B"}
            A, B = f["projection/A"], f["projection/B"]
            assert A.dtype == np.dtype("<f4") and A.shape == (R, max_in), f"A {A.dtype} {A.shape}"
            assert B.dtype == np.dtype("<f4") and B.shape == (max_out, R), f"B {B.dtype} {B.shape}"
            proj = fnv(B[()].tobytes(), fnv(A[()].tobytes()))
            assert proj == int(v["projection_checksum"]), "projection_checksum != vd_hash64(B, vd_hash64(A, 0))"

        # ---- data_checksum, exactly as documented ----
        h = fnv(params.tobytes())
        h = fnv(m1.tobytes(), h)
        h = fnv(m2.tobytes(), h)

        def u64(x):
            return int(x) & M64

        def fbits(x):
            return struct.unpack("<I", np.float32(x).tobytes())[0]
        assert int(a["data_checksum"]) == data_checksum(f, params, m1, m2, version=2), \
            "data_checksum does not follow the documented definition"
        return step, dict(zip(order, [(f[f"adapter/{n}/lambda_b"][()], f[f"adapter/{n}/lambda_d"][()]) for n in order]))


def test_checkpoint_objects(run_dir):
    out, files, save_projection = run_dir
    want = [f"step_{s:08d}.h5" for s in range(EVERY, STEPS + 1, EVERY)]
    assert [p.name for p in files] == want, f"checkpoints {[p.name for p in files]}, expected {want}"
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if ".tmp." in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    last = None
    for p in files:
        last = check_checkpoint(p, out, save_projection)
    # the final checkpoint holds the vectors the run exported
    step, vectors = last
    assert step == STEPS
    st = safetensors_f32(out / "adapter_final.safetensors")
    for name, (b, d) in vectors.items():
        assert np.array_equal(st[f"base_model.model.{name}.vera_lambda_b"].reshape(-1), b), f"{name} lambda_b"
        assert np.array_equal(st[f"base_model.model.{name}.vera_lambda_d"].reshape(-1), d), f"{name} lambda_d"


def test_save_projection_size(inputs, tmp_path):
    """Without /projection the file is smaller by exactly about A and B's bytes."""
    sizes = {}
    for sp in (1, 0):
        files = train(inputs, tmp_path / f"sp{sp}", sp)
        sizes[sp] = files[-1].stat().st_size
    ab = 4 * (R * 4 * DIM + 4 * DIM * R)
    assert sizes[1] - sizes[0] >= ab, f"sizes {sizes}: A and B are {ab} bytes"


def test_h5dump_reads(run_dir):
    h5dump = shutil.which("h5dump")
    if not h5dump:
        pytest.skip("h5dump not found (Debian: apt-get install hdf5-tools)")
    _, files, _ = run_dir
    for p in files:
        r = subprocess.run([h5dump, "-H", str(p)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"h5dump -H {p} exited {r.returncode}: {r.stderr}"
        assert "GROUP \"adapter\"" in r.stdout and "transformer.h.1.mlp.c_proj" in r.stdout
        r = subprocess.run([h5dump, "-a", "/step", str(p)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and re.search(r"\(0\): %d\b" % int(p.stem.split("_")[1]), r.stdout), r.stdout


def test_doc_snippet_runs(run_dir):
    """The ```python block of docs/checkpoint-format.md runs on a real checkpoint."""
    _, files, _ = run_dir
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, f"expected one python block in {DOC}, found {len(blocks)}"
    code, n = re.subn(r'^path = ".*"$', f"path = {str(files[-1])!r}", blocks[0], count=1, flags=re.M)
    assert n == 1, "the snippet has no `path = \"...\"` line to substitute"
    stdout = io.StringIO()
    scope = {}
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, str(DOC), "exec"), scope)
    printed = stdout.getvalue()
    assert f"step {STEPS}" in printed, printed
    for name in MODULES:
        assert name in printed, f"{name} not printed:\n{printed}"
    assert isinstance(scope.get("config"), str) and f"r = {R}" in scope["config"]


def test_doc_names_every_attribute():
    """Every attribute this test checks is documented (as `name`), and the v2-only ones are marked."""
    doc = DOC.read_text()
    names = set(ROOT_ATTRS) | set(MODEL_ATTRS) | set(VERA_ATTRS) | set(ADAPTER_ARRAYS) | set(ADAPTER_SCALARS)
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"{DOC.name} does not document {missing}"
    for where, v2names in V2_ONLY.items():
        for n in v2names:
            rows = [l for l in doc.splitlines() if l.startswith("|") and f"`{n}`" in l]
            assert rows and any("v2" in l for l in rows), f"{DOC.name}: the row of {where} {n} does not say it is v2-only"


def make_v1(src, dst):
    """The file format version 1 wrote for the same checkpoint: the v2-only attributes removed,
    format_version 1, data_checksum by version 1's definition."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        order = [s.decode() for s in f["adapter"].attrs["module_order"]]
        for where, names in V2_ONLY.items():
            for n in names:
                del f[where].attrs[n]
        params, m1, m2 = (flat(f, t, order) for t in ("adapter", "optimizer/exp_avg", "optimizer/exp_avg_sq"))
        f.attrs.modify("format_version", np.int32(1))
        f.attrs.modify("data_checksum", np.uint64(data_checksum(f, params, m1, m2, version=1)))


def test_version1_resumes(inputs, tmp_path):
    """A version-1 checkpoint still resumes, and the run ends exactly where the uninterrupted one does."""
    full = tmp_path / "full"
    files = train(inputs, full, 0)
    mid = full / "checkpoints" / f"step_{EVERY:08d}.h5"
    assert mid in files
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    v1 = resumed / "checkpoints" / mid.name
    make_v1(mid, v1)
    with h5py.File(v1, "r") as f:
        assert f.attrs["format_version"] == 1 and "arch" not in f["model"].attrs and "module_out" not in f["adapter"].attrs
    p = run([BIN, "--model", inputs / "model", "--train_data", inputs / "data" / "train_*.bin", "--out_dir", resumed,
             "--target_modules", "all", "--r", R, "--batch_size", BATCH, "--seq_len", SEQ, "--grad_accum", 1,
             "--max_steps", STEPS, "--warmup_steps", 0, "--ckpt_every", EVERY, "--save_projection", 0,
             "--seed", SEED, "--projection_prng_key", KEY, "--threads", 1, "--log_every", 1, "--resume", v1],
            "resuming from a version-1 checkpoint")
    assert f"at step {EVERY}" in p.stdout + p.stderr, p.stdout + p.stderr
    want = safetensors_f32(full / "adapter_final.safetensors")
    got = safetensors_f32(resumed / "adapter_final.safetensors")
    assert want.keys() == got.keys()
    for k in want:
        assert np.array_equal(want[k], got[k]), f"{k} differs after resuming from the version-1 file"
    # what the resumed run writes is version 2
    with h5py.File(resumed / "checkpoints" / f"step_{STEPS:08d}.h5", "r") as f:
        assert f.attrs["format_version"] == 2


def test_llama_checkpoint(inputs, tmp_path):
    """A Llama-family run's checkpoints: /model holds the Llama config (arch "llama"), the module
    table describes the Llama layers, the checksums follow the document, and a resume from the
    middle ends bit-identical. Skips on a build whose init-model has no --arch llama."""
    model = tmp_path / "llama"
    p = subprocess.run([str(BIN), "init-model", "--arch", "llama", "--out", str(model), "--layers", str(LAYERS),
                        "--heads", "4", "--kv-heads", "2", "--dim", str(DIM), "--vocab", str(VOCAB), "--ctx", str(CTX)],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.skip(f"this build cannot make a Llama model (init-model --arch llama: {p.stderr.strip()[:200]})")
    args = ["--model", model, "--train_data", inputs / "data" / "train_*.bin", "--target_modules", "all", "--r", R,
            "--batch_size", BATCH, "--seq_len", SEQ, "--grad_accum", 1, "--max_steps", STEPS, "--warmup_steps", 0,
            "--ckpt_every", EVERY, "--save_projection", 1, "--seed", SEED, "--projection_prng_key", KEY,
            "--threads", 1, "--log_every", 1]
    full = tmp_path / "full"
    run([BIN, *args, "--out_dir", full], "Llama training")
    files = sorted((full / "checkpoints").glob("step_*.h5"))
    assert [f.name for f in files] == [f"step_{s:08d}.h5" for s in range(EVERY, STEPS + 1, EVERY)]
    cfg = json.loads((model / "config.json").read_text())
    for path in files:
        with h5py.File(path, "r") as f:
            assert f.attrs["format_version"] == 2
            check_attrs(f["model"], MODEL_ATTRS, "/model")
            m = f["model"].attrs
            assert m["arch"] == b"llama" and m["hf_architecture"] == b"LlamaForCausalLM", (m["arch"], m["hf_architecture"])
            assert (m["n_layer"], m["n_head"], m["n_kv_head"], m["n_embd"]) == (LAYERS, 4, 2, DIM)
            assert m["intermediate_size"] == cfg["intermediate_size"] and m["vocab_size"] == VOCAB
            assert np.float32(m["rope_theta"]) == np.float32(cfg.get("rope_theta", 10000.0))
            order = [s.decode() for s in f["adapter"].attrs["module_order"]]
            assert order and all(n.startswith("model.layers.") for n in order), order
            check_attrs(f["adapter"], ADAPTER_SCALARS, "/adapter",
                        arrays={k: (kind, len(order)) for k, kind in ADAPTER_ARRAYS.items()})
            ad = f["adapter"].attrs
            off = 0
            for i, name in enumerate(order):
                out_w = f[f"adapter/{name}/lambda_b"].shape[0]
                assert int(ad["module_out"][i]) == out_w and f[f"adapter/{name}/lambda_d"].shape == (R,)
                assert int(ad["module_off_b"][i]) == off and int(ad["module_off_d"][i]) == off + out_w
                off += out_w + R
            assert int(ad["n_trainable"]) == off
            assert int(f["vera"].attrs["max_out"]) == max(int(x) for x in ad["module_out"])
            params, m1, m2 = (flat(f, t, order) for t in ("adapter", "optimizer/exp_avg", "optimizer/exp_avg_sq"))
            assert int(f.attrs["data_checksum"]) == data_checksum(f, params, m1, m2, version=2)
            A, B = f["projection/A"][()], f["projection/B"][()]
            assert fnv(B.tobytes(), fnv(A.tobytes())) == int(f["vera"].attrs["projection_checksum"])
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copyfile(files[0], resumed / "checkpoints" / files[0].name)
    run([BIN, *args, "--out_dir", resumed], "Llama resume")
    want = safetensors_f32(full / "adapter_final.safetensors")
    got = safetensors_f32(resumed / "adapter_final.safetensors")
    assert want.keys() == got.keys()
    for k in want:
        assert np.array_equal(want[k], got[k]), f"{k} differs after resuming the Llama run"


def test_checkpoint_without_pack_resumes(inputs, tmp_path):
    """A checkpoint written before the `pack` key existed (its configuration text ends at
    `precision`, without pack and the adapter keys after it) resumes with pack at its default 0, and ends where the uninterrupted run does;
    with --pack 1 the resume is refused naming pack (packing changes the data)."""
    full = tmp_path / "full"
    train(inputs, full, 0)
    mid = full / "checkpoints" / f"step_{EVERY:08d}.h5"
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    old = resumed / "checkpoints" / mid.name
    shutil.copyfile(mid, old)
    with h5py.File(old, "r+") as f:
        text = f["config"][()]
        text = text.decode() if isinstance(text, bytes) else text
        # pack and the keys added after it (the adapter's, docs/adapters.md) end the text: cut there
        cut = text.find("\npack = 0\n")
        assert cut >= 0 and text.endswith("\n"), f"no pack line in the stored configuration:\n{text}"
        text = text[: cut + 1]
        raw = text.encode()
        del f["config"]
        # the writer's type: a NUL-terminated UTF-8 string of len + 1 bytes, scalar
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(len(raw) + 1)
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        tid.set_cset(h5py.h5t.CSET_UTF8)
        dsid = h5py.h5d.create(f.id, b"config", tid, h5py.h5s.create(h5py.h5s.SCALAR))
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype=f"S{len(raw) + 1}"), mtype=tid)
        f["config"].attrs["hash"] = np.uint64(fnv(raw))
        order = [s.decode() for s in f["adapter"].attrs["module_order"]]
        params, m1, m2 = (flat(f, t, order) for t in ("adapter", "optimizer/exp_avg", "optimizer/exp_avg_sq"))
        f.attrs.modify("data_checksum", np.uint64(data_checksum(f, params, m1, m2, version=2)))
    args = [BIN, "--model", inputs / "model", "--train_data", inputs / "data" / "train_*.bin", "--out_dir", resumed,
            "--target_modules", "all", "--r", R, "--batch_size", BATCH, "--seq_len", SEQ, "--grad_accum", 1,
            "--max_steps", STEPS, "--warmup_steps", 0, "--ckpt_every", EVERY, "--save_projection", 0,
            "--seed", SEED, "--projection_prng_key", KEY, "--threads", 1, "--log_every", 1, "--resume", old]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    bad = subprocess.run([str(c) for c in args + ["--pack", 1]], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode != 0 and "before the key 'pack' existed" in bad.stderr and "pack = 1" in bad.stderr, \
        bad.stderr[-2000:]
    p = run(args, "resuming from a checkpoint without the pack line")
    assert f"at step {EVERY}" in p.stdout + p.stderr, p.stdout + p.stderr
    want = safetensors_f32(full / "adapter_final.safetensors")
    got = safetensors_f32(resumed / "adapter_final.safetensors")
    for k in want:
        assert np.array_equal(want[k], got[k]), f"{k} differs after resuming from the checkpoint without pack"
