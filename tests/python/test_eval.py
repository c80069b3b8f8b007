"""`vera-dist eval` with a training checkpoint, and its refusals (docs/instruction-tuning.md, "eval").

  test_eval_checkpoint   a short `vera-dist train` run: eval --checkpoint on its final HDF5
                         checkpoint equals PEFT's mean cross-entropy with the trained vectors
                         (adapter_final.safetensors loaded into PEFT) over the same sequences, and
                         eval --adapter on the same vectors gives the same number;
  test_eval_refusals     one-line errors, non-zero exit: no --data, --adapter with --checkpoint,
                         a checkpoint of another base model, an adapter of another r, a bad
                         --max_seqs, a seq_len beyond the model's context.
(eval against transformers on masked tokens, on 1 and 2 ranks: test_masked_loss.py.)
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import (ALL4, batch, checkpoint_of, error_lines, make_gpt2, peft_model, random_tokens, run_vd,
                      set_vectors, vd_targets, vd_train, vera_config, vera_vectors, write_shard)

pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Specified to not (save|load) vera_A:UserWarning")]

B, T, K, R, KEY, D_INIT = 2, 16, 3, 16, 7, 0.5
VOCAB = 101


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model_dir = root / "model"
    base = make_gpt2(model_dir, n_embd=32, vocab=VOCAB, seed=21)
    tokens = random_tokens((B * K + 1) * T + 1, VOCAB, 22)
    shard = write_shard(root / "train_000.bin", tokens)
    out_dir = root / "run"
    vd_train(out_dir, model_dir, shard, B=B, T=T, K=K, r=R, key=KEY, targets=vd_targets(ALL4), d_initial=D_INIT,
             lr=1e-2, weight_decay=0.0, grad_clip=0.0)
    return dict(root=root, model_dir=model_dir, base=base, tokens=tokens, shard=shard, out_dir=out_dir,
                ckpt=checkpoint_of(out_dir, K))


def eval_json(*args):
    proc = run_vd("eval", *args, "--json", "--threads", 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def test_eval_checkpoint(trained):
    n = 5
    got = eval_json("--model", trained["model_dir"], "--data", trained["shard"], "--seq_len", T, "--batch_size", 2,
                    "--max_seqs", n, "--checkpoint", trained["ckpt"])
    final = load_file(str(trained["out_dir"] / "adapter_final.safetensors"))
    pm = peft_model(trained["base"], vera_config(R, KEY, ALL4, D_INIT))
    with torch.no_grad():
        for name, (b, d) in vera_vectors(pm).items():
            b.copy_(final[f"base_model.model.{name}.vera_lambda_b"])
            d.copy_(final[f"base_model.model.{name}.vera_lambda_d"])
        x, y = batch(trained["tokens"], T, 0, n)
        logits = pm(input_ids=x).logits
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1)).item()
    assert got["targets"] == n * T and got["sequences"] == n and got["adapter"] == str(trained["ckpt"])
    assert abs(got["loss"] - ref) <= 1e-5 * abs(ref), f"eval --checkpoint {got['loss']} vs PEFT {ref}"
    # the same vectors as a PEFT directory
    adapter_dir = trained["root"] / "peft_final"
    pm.save_pretrained(str(adapter_dir))
    via_adapter = eval_json("--model", trained["model_dir"], "--data", trained["shard"], "--seq_len", T,
                            "--batch_size", 2, "--max_seqs", n, "--adapter", adapter_dir, "--r", R,
                            "--projection_prng_key", KEY, "--target_modules", "all", "--d_initial", D_INIT)
    assert via_adapter["loss"] == got["loss"], f"--adapter {via_adapter['loss']!r} vs --checkpoint {got['loss']!r}"
    # and without an adapter: the base model's loss, another number
    plain = eval_json("--model", trained["model_dir"], "--data", trained["shard"], "--seq_len", T, "--max_seqs", n)
    with torch.no_grad():
        ref0 = torch.nn.functional.cross_entropy(trained["base"](input_ids=x).logits.reshape(-1, VOCAB),
                                                 y.reshape(-1)).item()
    assert abs(plain["loss"] - ref0) <= 1e-5 * abs(ref0) and abs(plain["loss"] - got["loss"]) > 1e-4
    print(f"measured: eval --checkpoint {got['loss']:.9f}, PEFT {ref:.9f}; base {plain['loss']:.9f} vs {ref0:.9f}")


def test_eval_refusals(trained, tmp_path):
    m, d, ck = trained["model_dir"], trained["shard"], trained["ckpt"]
    other = tmp_path / "other"
    make_gpt2(other, n_embd=32, vocab=VOCAB, seed=99)
    pm = peft_model(trained["base"], vera_config(4, KEY, ALL4, D_INIT))
    set_vectors(pm, 1)
    r4 = tmp_path / "r4"
    pm.save_pretrained(str(r4))
    cases = [
        (("--model", m), "--data GLOB is required"),
        (("--model", m, "--data", d, "--adapter", r4, "--checkpoint", ck), "exclusive"),
        (("--model", other, "--data", d, "--checkpoint", ck), "another base model"),
        (("--model", m, "--data", d, "--adapter", r4, "--r", R, "--projection_prng_key", KEY, "--target_modules", "all"),
         "r"),
        (("--model", m, "--data", d, "--max_seqs", "-3"), "--max_seqs"),
        (("--model", m, "--data", d, "--seq_len", 65), "seq_len"),
        (("--model", m, "--data", str(tmp_path / "none_*.bin")), "data"),
    ]
    for args, needle in cases:
        proc = run_vd("eval", *args, ok=False)
        lines = error_lines(proc)
        assert len(lines) == 1 and needle in lines[0], f"eval {args}: expected one error line with '{needle}', got " \
                                                        f"{proc.stderr[-800:]}"
