"""Masked loss and packed sequences against transformers + PEFT (docs/instruction-tuning.md).

For a tiny GPT-2 and a tiny Llama (GQA, untied head) made by transformers, each with a PEFT VeRA
adapter on every linear layer with non-zero seeded vectors (saved by PEFT, read by `forward
--adapter`):

  test_masked_forward_grads   a batch whose targets are partly masked (a prompt, padding, an
                              example's end: target -1 in vera-dist, label -100 in transformers):
                              logits, the loss (mean over the unmasked targets) and the gradient of
                              every vera_lambda_b / vera_lambda_d equal PEFT's autograd on
                              cross_entropy(ignore_index=-100);
  test_packed_equals_rows     the same examples packed into rows (positions restarting at every
                              example, pad runs between) and one example per row: loss and every
                              b / d gradient equal within 1e-5, and equal to PEFT on the examples
                              one per row, and to PEFT on transformers' flattened batch (one row,
                              position_ids restarting, a block-causal 4D attention mask);
  test_eval_matches           `vera-dist eval` with the adapter: the mean loss over the shard's
                              sequences equals transformers', the same on 1 and 2 ranks and for
                              batch sizes 1 and 3;
  test_masked_shard_eval      v2 shards of examples (masked prompts; tests/make_sft_shards), pack 0
                              and 1: forward's loss and gradients on the sequences as read, and
                              eval on 1 and 2 ranks, vs PEFT with labels -100, position_ids and the
                              block-causal mask.

vera-dist gets its batch through `forward --batch FILE` (int32 B, T, inputs, targets, positions),
so the first checks do not depend on the shard format; the last reads real v2 shards. Tolerances as in test_peft_conformance.py.
"""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import (ALL4, BIN, _env, batch, llama_peft_model, make_gpt2, make_llama, max_rel, peft_model,
                      random_tokens, run_vd, set_vectors, vera_config, write_shard, THREADS)
from test_peft_conformance import GRAD_RTOL, LOGIT_RTOL, LOSS_RTOL, check_close, check_grads

pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Specified to not (save|load) vera_A:UserWarning")]

R, KEY, D_INIT, T = 8, 3, 0.1, 24
PACK_RTOL = 1e-5


class Family:
    def __init__(self, root, name):
        self.name, self.root = name, root
        root.mkdir(parents=True, exist_ok=True)
        self.model_dir = root / "model"
        if name == "gpt2":
            self.base = make_gpt2(self.model_dir, n_embd=32, vocab=101, seed=5)
            self.pm = peft_model(self.base, vera_config(R, KEY, ALL4, D_INIT))
            set_vectors(self.pm, 6)
        else:
            self.base = make_llama(self.model_dir, seed=5)
            self.pm = llama_peft_model(self.base, R, KEY, "all-linear", D_INIT, vectors_seed=6)
        self.vocab = self.base.config.vocab_size
        self.adapter_dir = root / "peft_adapter"
        self.pm.save_pretrained(str(self.adapter_dir))

    def vd_forward(self, name, inputs, targets, pos):
        """`vera-dist forward --batch` on explicit (B, T) inputs, targets (-1 = no loss), positions."""
        B, TT = inputs.shape
        path = self.root / f"{name}.batch"
        arr = np.concatenate([np.array([B, TT], dtype=np.int32)] +
                             [np.asarray(a, dtype=np.int32).reshape(-1) for a in (inputs, targets, pos)])
        path.write_bytes(arr.astype("<i4").tobytes())
        out = self.root / f"{name}.safetensors"
        run_vd("forward", "--model", self.model_dir, "--batch", path, "--out", out, "--r", R, "--projection_prng_key",
               KEY, "--target_modules", "all", "--d_initial", repr(D_INIT), "--adapter", self.adapter_dir,
               "--threads", THREADS)
        return load_file(str(out))

    def peft_loss(self, inputs, labels, position_ids=None, attention_mask=None):
        """PEFT's mean cross-entropy over the labels that are not -100, after zero_grad + backward."""
        self.pm.zero_grad()
        kw = {} if position_ids is None else {"position_ids": torch.as_tensor(position_ids, dtype=torch.long)}
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        logits = self.pm(input_ids=torch.as_tensor(inputs, dtype=torch.long), **kw).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.as_tensor(labels, dtype=torch.long).reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        return logits.detach(), loss.detach()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def fam(request, tmp_path_factory):
    return Family(tmp_path_factory.mktemp(request.param), request.param)


def examples(vocab, seed, lens):
    """Examples of the given lengths: tokens, and targets (the next token; -1 on the first third,
    a prompt, and on the last token, where the example ends)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lens:
        tok = rng.integers(0, vocab, size=n)
        tgt = np.full(n, -1)
        prompt = n // 3
        tgt[prompt:n - 1] = tok[prompt + 1:]
        out.append((tok, tgt))
    return out


def layout(exs, T, one_per_row, pad=0):
    """Rows of T tokens: examples greedily packed (or one per row); the rest of a row is a pad run
    (token `pad`, no target, positions restarting). Returns inputs, targets, pos (rows, T)."""
    rows, cur = [], []

    def close(cur):
        tok = np.concatenate([e[0] for e in cur]) if cur else np.zeros(0, dtype=np.int64)
        tgt = np.concatenate([e[1] for e in cur]) if cur else np.zeros(0, dtype=np.int64)
        pos = np.concatenate([np.arange(len(e[0])) for e in cur]) if cur else np.zeros(0, dtype=np.int64)
        k = T - len(tok)
        rows.append((np.concatenate([tok, np.full(k, pad)]), np.concatenate([tgt, np.full(k, -1)]),
                     np.concatenate([pos, np.arange(k)])))

    for e in exs:
        if cur and (one_per_row or sum(len(c[0]) for c in cur) + len(e[0]) > T):
            close(cur)
            cur = []
        cur.append(e)
    close(cur)
    return tuple(np.stack([r[j] for r in rows]) for j in range(3))


def hf_labels(targets):
    """vera-dist's targets (the next token, -1 = none) as transformers' labels for cross_entropy
    on the unshifted logits: the same array with -100."""
    lab = np.array(targets, dtype=np.int64)
    lab[lab < 0] = -100
    return lab


def test_masked_forward_grads(fam):
    rng = np.random.default_rng(11)
    B = 3
    inputs = rng.integers(0, fam.vocab, size=(B, T))
    targets = np.concatenate([inputs[:, 1:], rng.integers(0, fam.vocab, size=(B, 1))], axis=1)
    mask = np.zeros((B, T), dtype=bool)
    mask[0, :7] = True         # a prompt
    mask[1, 15:] = True        # padding at the end
    mask[2, ::3] = True        # scattered
    targets = np.where(mask, -1, targets)
    pos = np.tile(np.arange(T), (B, 1))
    out = fam.vd_forward("masked", inputs, targets, pos)
    assert int(out["targets"].eq(-1).sum()) == int(mask.sum())
    ref_logits, ref_loss = fam.peft_loss(inputs, hf_labels(targets))
    check_close(f"{fam.name}: logits (masked batch) vs PEFT", out["logits"], ref_logits, LOGIT_RTOL)
    check_close(f"{fam.name}: masked loss vs PEFT (ignore_index -100)", out["loss"], ref_loss.reshape(1), LOSS_RTOL)
    # the mean is over the unmasked targets only: the loss over all of them is another number
    full_loss = torch.nn.functional.cross_entropy(ref_logits.reshape(-1, fam.vocab),
                                                  torch.as_tensor(np.where(mask, 0, targets)).reshape(-1))
    assert abs(full_loss.item() - ref_loss.item()) > 1e-3, "the masked positions do not change the loss here"
    check_grads(out, fam.pm, f"{fam.name}: masked-loss gradients vs PEFT")


def test_packed_equals_rows(fam):
    exs = examples(fam.vocab, 21, [5, 9, 3, 11, 7, 4, 13, 6])
    pi, pt, pp = layout(exs, T, one_per_row=False)
    ui, ut, up = layout(exs, T, one_per_row=True)
    assert pi.shape[0] < ui.shape[0] and (pt >= 0).sum() == (ut >= 0).sum()
    packed = fam.vd_forward("packed", pi, pt, pp)
    rows = fam.vd_forward("rows", ui, ut, up)
    err = abs(packed["loss"].item() - rows["loss"].item()) / abs(rows["loss"].item())
    assert err <= PACK_RTOL, f"{fam.name}: packed loss {packed['loss'].item()} vs one per row {rows['loss'].item()}"
    worst = 0.0
    for k in rows:
        if k.endswith(".grad"):
            e = max_rel(packed[k], rows[k])
            assert e <= PACK_RTOL, f"{fam.name}: {k}: packed vs one per row: {e:.3g} > {PACK_RTOL:g}"
            worst = max(worst, e)
    print(f"measured: {fam.name}: packed vs one per row: loss {err:.3g}, worst gradient {worst:.3g}")
    # PEFT on the examples one per row (its causal mask keeps a row's pad run behind the example)
    _, ref_loss = fam.peft_loss(ui, hf_labels(ut))
    check_close(f"{fam.name}: packed loss vs PEFT one example per row", packed["loss"], ref_loss.reshape(1), LOSS_RTOL)
    check_grads(packed, fam.pm, f"{fam.name}: packed gradients vs PEFT one example per row")
    # transformers' flattened batch: all examples in one row, position_ids restarting at each (as
    # DataCollatorWithFlattening gives them) and a 4D block-causal attention mask (transformers
    # 5.24's eager / sdpa attention does not derive one from position_ids; flash attention does)
    flat_i = np.concatenate([e[0] for e in exs])[None]
    flat_t = np.concatenate([e[1] for e in exs])[None]
    flat_p = np.concatenate([np.arange(len(e[0])) for e in exs])[None]
    L = flat_i.shape[1]
    assert L <= fam.base.config.max_position_embeddings
    seg = torch.cat([torch.full((len(e[0]),), i) for i, e in enumerate(exs)])
    block_causal = (seg[:, None] == seg[None, :]) & (torch.arange(L)[:, None] >= torch.arange(L)[None, :])
    _, flat_loss = fam.peft_loss(flat_i, hf_labels(flat_t), position_ids=flat_p, attention_mask=block_causal[None, None])
    check_close(f"{fam.name}: packed loss vs transformers' flattened batch + position_ids", packed["loss"],
                flat_loss.reshape(1), LOSS_RTOL)
    check_grads(packed, fam.pm, f"{fam.name}: packed gradients vs transformers' flattened batch + position_ids")


def _eval(fam, shard, np_, B, n, pack=0):
    cmd = [str(BIN), "eval", "--model", str(fam.model_dir), "--data", str(shard), "--seq_len", str(T), "--pack", str(pack),
           "--batch_size", str(B), "--max_seqs", str(n), "--adapter", str(fam.adapter_dir), "--r", str(R),
           "--projection_prng_key", str(KEY), "--target_modules", "all", "--threads", "1", "--json"]
    if np_ > 1:
        mpirun = shutil.which(os.environ.get("VERA_MPIRUN", "mpirun"))
        assert mpirun, "mpirun not found"
        cmd = [mpirun, "-np", str(np_)] + cmd
    env = _env()
    env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexited {proc.returncode}\n{proc.stderr[-3000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(line) == 1, f"expected one JSON line, got:\n{proc.stdout}"
    return json.loads(line[0])


def test_eval_matches(fam):
    n = 7
    tokens = random_tokens(n * T + 1 + 5, fam.vocab, 31)
    shard = write_shard(fam.root / "eval_000.bin", tokens)
    x, y = batch(tokens, T, 0, n)
    with torch.no_grad():
        logits = fam.pm(input_ids=x).logits
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, fam.vocab), y.reshape(-1)).item()
    results = [_eval(fam, shard, 1, 3, n), _eval(fam, shard, 2, 3, n), _eval(fam, shard, 1, 1, n)]
    for r in results:
        assert r["targets"] == n * T and r["sequences"] == n
        assert abs(r["loss"] - ref) <= LOSS_RTOL * abs(ref), f"{fam.name}: eval loss {r['loss']} vs transformers {ref}"
        assert abs(r["perplexity"] - np.exp(ref)) <= 1e-4 * np.exp(ref)
    a, b, c = (r["loss"] for r in results)
    assert abs(a - b) <= 1e-12 * abs(a), f"{fam.name}: eval on 1 rank {a!r} vs 2 ranks {b!r}"
    assert abs(a - c) <= 1e-6 * abs(a), f"{fam.name}: eval with batch_size 3 {a!r} vs 1 {c!r}"
    print(f"measured: {fam.name}: eval loss {a:.9f}, transformers {ref:.9f}; np 2 {b:.17g}; batch 1 {c:.17g}")


def block_causal(pos):
    """(rows, 1, T, T) bool: query t sees keys t - pos[t] .. t (the rule of vera-dist's attention),
    as a 4D mask for transformers."""
    pos = torch.as_tensor(pos, dtype=torch.long)
    t = torch.arange(pos.shape[1])
    lo = (t[None, :] - pos)[:, :, None]
    return ((t[None, None, :] <= t[None, :, None]) & (t[None, None, :] >= lo))[:, None]


@pytest.mark.parametrize("pack", [0, 1])
def test_masked_shard_eval(fam, pack):
    """v2 shards of examples (prompt masked; tests/make_sft_shards): the sequences vera-dist reads
    (forward writes inputs, targets, positions), the loss and gradients vs PEFT on them (labels
    -100, position_ids, the block-causal mask), and `eval` over the same sequences on 1 and 2
    ranks vs the same reference."""
    make = BIN.parent / "tests" / "make_sft_shards"
    assert make.is_file(), f"{make} not built (the make_sft_shards target)"
    data = fam.root / f"sft{pack}"
    subprocess.run([str(make), str(data), "40", str(fam.vocab), "9", "4", "20"], check=True, capture_output=True)
    shard = data / "train_000.bin"
    n = 6
    out = fam.root / f"shard{pack}.safetensors"
    run_vd("forward", "--model", fam.model_dir, "--tokens", shard, "--pack", pack, "--out", out, "--batch_size", n,
           "--seq_len", T, "--r", R, "--projection_prng_key", KEY, "--target_modules", "all", "--d_initial",
           repr(D_INIT), "--adapter", fam.adapter_dir, "--threads", THREADS)
    got = load_file(str(out))
    x = got["inputs"].long()
    tg = got["targets"].long()
    pos = got["pos"].long()
    assert (tg == -1).any() and (tg >= 0).any(), "the shard's sequences should have masked and kept targets"
    if pack:
        assert (pos[:, 1:] == 0).any(), "packed rows should restart positions inside a row"
    _, ref = fam.peft_loss(x, hf_labels(tg.numpy()), position_ids=pos, attention_mask=block_causal(pos))
    check_close(f"{fam.name}: pack {pack}: forward loss on the shard vs PEFT", got["loss"], ref.reshape(1), LOSS_RTOL)
    check_grads(got, fam.pm, f"{fam.name}: pack {pack}: gradients on the shard vs PEFT")
    r1 = _eval(fam, shard, 1, 4, n, pack)
    r2 = _eval(fam, shard, 2, 1, n, pack)
    assert r1["targets"] == int((tg >= 0).sum()) == r2["targets"]
    for r in (r1, r2):
        assert abs(r["loss"] - ref.item()) <= LOSS_RTOL * abs(ref.item()), f"eval {r['loss']} vs PEFT {ref.item()}"
    assert abs(r1["loss"] - r2["loss"]) <= 1e-6 * abs(r1["loss"])
    print(f"measured: {fam.name}: pack {pack}: eval {r1['loss']:.9f} (np 2 {r2['loss']:.9f}) vs PEFT {ref.item():.9f} "
          f"over {r1['targets']} targets")
