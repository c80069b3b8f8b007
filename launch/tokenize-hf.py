#!/usr/bin/env python3
"""tokenize-hf.py: text files -> llm.c token shards (docs/data-format.md) with a model's own
tokenizer, for fine-tuning a pretrained model (vera-dist prepare-data is byte-level and fits
only models trained on bytes).

  python3 launch/tokenize-hf.py --tokenizer MODEL.gguf --in notes.txt more.txt --out data/smollm2
  python3 launch/tokenize-hf.py --tokenizer HF_DIR     --in corpus.txt          --out data/mine

--tokenizer is a Hugging Face directory with tokenizer.json (needs only the `tokenizers`
package) or a GGUF file (needs `transformers`, `gguf` and, for transformers' GGUF reader,
PyTorch: the venv tests/python/run.sh creates has all three). Each input file is one document; documents are separated by
the tokenizer's end-of-sequence token. The last --val_fraction of the tokens go to
OUT/val_000000.bin, the rest to OUT/train_000000.bin (and more shards past --shard_tokens).
Token ids must fit in uint16 (vocabularies up to 65536), as llm.c shards store them.
"""
import argparse
import os
import struct
import sys

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256


def load_tokenizer(path):
    """Returns (encode(text) -> list[int], eos_id or None, vocab_size)."""
    if os.path.isdir(path):
        from tokenizers import Tokenizer
        tj = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tj):
            sys.exit(f"tokenize-hf: {tj}: missing (expected a Hugging Face tokenizer.json)")
        tok = Tokenizer.from_file(tj)
        eos = None
        for name in ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>"):
            if tok.token_to_id(name) is not None:
                eos = tok.token_to_id(name)
                break
        return (lambda text: tok.encode(text, add_special_tokens=False).ids), eos, tok.get_vocab_size()
    if os.path.isfile(path):
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
        return (lambda text: tok.encode(text, add_special_tokens=False)), tok.eos_token_id, len(tok)
    sys.exit(f"tokenize-hf: --tokenizer {path}: does not exist (expected a directory or a .gguf file)")


def write_shard(path, tokens):
    header = [MAGIC, VERSION, len(tokens)] + [0] * (HEADER_INTS - 3)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack(f"<{HEADER_INTS}i", *header))
        f.write(struct.pack(f"<{len(tokens)}H", *tokens))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--in", dest="inputs", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--val_fraction", type=float, default=0.1)
    ap.add_argument("--shard_tokens", type=int, default=100_000_000)
    a = ap.parse_args()
    if not 0.0 <= a.val_fraction <= 0.9:
        sys.exit(f"tokenize-hf: --val_fraction {a.val_fraction} is not in [0, 0.9]")
    encode, eos, vocab = load_tokenizer(a.tokenizer)
    if vocab > 65536:
        sys.exit(f"tokenize-hf: the vocabulary has {vocab} tokens; llm.c shards hold uint16 ids (at most 65536)")
    ids = []
    for i, p in enumerate(a.inputs):
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            sys.exit(f"tokenize-hf: {p}: {e.strerror}")
        except UnicodeDecodeError as e:
            sys.exit(f"tokenize-hf: {p}: not UTF-8 text ({e.reason} at byte {e.start})")
        if i and eos is not None:
            ids.append(eos)
        ids.extend(encode(text))
    n_val = int(len(ids) * a.val_fraction)
    train, val = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    os.makedirs(a.out, exist_ok=True)
    for k in range(0, max(len(train), 1), a.shard_tokens):
        write_shard(os.path.join(a.out, f"train_{k // a.shard_tokens:06d}.bin"), train[k:k + a.shard_tokens])
    if val:
        write_shard(os.path.join(a.out, "val_000000.bin"), val)
    print(f"tokenize-hf: {len(ids)} tokens ({len(train)} train, {len(val)} val) from {len(a.inputs)} file(s) "
          f"into {a.out}")


if __name__ == "__main__":
    main()
