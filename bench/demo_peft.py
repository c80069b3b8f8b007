#!/usr/bin/env python3
r"""bench/demo_peft.py: the PEFT side of ./launch/demo.sh, for a side-by-side comparison.

Runs what the demo runs, with Hugging Face PEFT instead of vera-dist: SmolLM2-135M-Instruct (fp32,
from the GGUF), VeRA r = 256 on all seven linear layers of every block, AdamW (lr from --lr, constant,
no weight decay, gradient clipping at 1.0, as vera-dist's grad_clip default), batches of --batch
sequences of --seq tokens, on the same token stream in the same order as vera-dist's loader
(sequence k = tokens[k*T : k*T + T + 1], the global batch of step s = sequences s*B .. s*B + B - 1,
wrapping at the end of an epoch), with the same text: every /usr/share/common-licenses file except
MPL-2.0 for training (one document each, in sorted order, separated by the tokenizer's EOS) and
MPL-2.0 for validation. Prints the validation loss before training and every --eval_every steps,
the seconds per step, and a JSON summary with --json.

    ~/.cache/vera-dist/venv/bin/python bench/demo_peft.py --steps 24 --eval_every 12 --threads 2

The tokens come from transformers' GGUF tokenizer; launch/demo.sh tokenizes with vera-dist's own
tokenizer, which tests/python/test_tokenizer.py proves identical to it.
"""
import argparse
import json
import os
import pathlib
import time

LICENSES = pathlib.Path("/usr/share/common-licenses")
GGUF_DEFAULT = pathlib.Path.home() / ".cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def license_files(val_name):
    files = sorted(p for p in LICENSES.iterdir() if p.is_file() and not p.is_symlink())
    train = [p for p in files if p.name != val_name]
    val = [p for p in files if p.name == val_name]
    if not val:
        raise SystemExit(f"demo_peft: {LICENSES / val_name} is missing")
    return train, val


def tokenize(tok, paths):
    ids = []
    for i, p in enumerate(paths):
        if i:
            ids.append(tok.eos_token_id)
        ids.extend(tok.encode(p.read_text(encoding="utf-8", errors="strict"), add_special_tokens=False))
    return ids


def windows(ids, T):
    n = (len(ids) - 1) // T
    return [ids[k * T:k * T + T + 1] for k in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=str(GGUF_DEFAULT))
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--eval_every", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--r", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val", default="MPL-2.0")
    ap.add_argument("--json")
    a = ap.parse_args()

    import torch
    import transformers
    from peft import VeraConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gguf = pathlib.Path(a.gguf)
    t_load = time.time()
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    load_s = time.time() - t_load
    train_files, val_files = license_files(a.val)
    train = windows(tokenize(tok, train_files), a.seq)
    val = windows(tokenize(tok, val_files), a.seq)
    cfg = VeraConfig(r=a.r, target_modules=TARGETS, projection_prng_key=0, d_initial=0.1, vera_dropout=0.0,
                     save_projection=False)
    model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def val_loss():
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for w in val:
                x = torch.tensor([w[:-1]])
                y = torch.tensor([w[1:]])
                logits = model(input_ids=x).logits
                tot += torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item()
                n += y.numel()
        model.train()
        return tot / n

    evals = [(0, val_loss())]
    print(f"demo_peft: {len(train)} training sequences of {a.seq} ({sum(len(w) - 1 for w in train)} targets), "
          f"{len(val)} validation; step 0 val_loss {evals[0][1]:.4f}", flush=True)
    step_s, losses = [], []
    for step in range(a.steps):
        t0 = time.time()
        batch = [train[(step * a.batch + b) % len(train)] for b in range(a.batch)]
        x = torch.tensor([w[:-1] for w in batch])
        y = torch.tensor([w[1:] for w in batch])
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step_s.append(time.time() - t0)
        losses.append(loss.item())
        line = f"step {step + 1} loss {losses[-1]:.4f} {step_s[-1] * 1000:.0f} ms"
        if a.eval_every and (step + 1) % a.eval_every == 0:
            evals.append((step + 1, val_loss()))
            line += f" val_loss {evals[-1][1]:.4f}"
        print(line, flush=True)
    med = sorted(step_s)[len(step_s) // 2] if step_s else 0.0
    summary = {"steps": a.steps, "batch": a.batch, "seq": a.seq, "lr": a.lr, "r": a.r, "threads": a.threads,
               "train_seqs": len(train), "val_seqs": len(val), "load_s": load_s, "train_s": sum(step_s),
               "median_step_s": med, "tokens_per_s": a.batch * a.seq / med if med else 0.0, "losses": losses,
               "val": evals}
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
