"""The model's own tokenizer (src/text/tokenizer.c, `vera-dist tokenize`) against Hugging Face.

References (nobody here wrote them): `tokenizers.Tokenizer` (Rust) on a tokenizer.json, and
transformers' GGUF tokenizer, `AutoTokenizer.from_pretrained(dir, gguf_file=name)`.

Tokenizers checked:
  smol-gguf     SmolLM2-135M-Instruct.Q4_1.gguf read by vera-dist against transformers' GGUF tokenizer
                (skipped only when the file is absent: launch/fetch-smollm2.sh downloads it)
  smol-json     that tokenizer saved with save_pretrained (tokenizer.json + tokenizer_config.json +
                chat_template.jinja), against tokenizers.Tokenizer.from_file
  gpt2          GPT-2's scheme, trained here: ByteLevel BPE (GPT-2 regex), ~3800 merges, <|endoftext|>
  gpt2-prefix   the same with add_prefix_space and the merges spelled "a b" instead of ["a", "b"]
  llama3        a Llama-3 style one trained here: Split(Llama-3 regex, Isolated) + ByteLevel(no regex),
                ignore_merges, TemplateProcessing "<|begin_of_text|> $A", added tokens with lstrip /
                rstrip / single_word / normalized, overlapping added tokens (longest match)
  digits        Qwen2's regex as a Split, then Digits(individual_digits) before ByteLevel (StarCoder2 style)

For each: ids identical on a corpus of >= 1 MB (license texts, Python sources, /usr/share/doc
copyright files and generated Unicode: CJK, Hangul, Arabic, Devanagari, combining marks, emoji
with ZWJ sequences and skin tones, digit runs in several scripts, runs of tabs / spaces / newlines
and Unicode spaces, contractions, code), on every added token alone and embedded in text,
add_special_tokens=True as tokenizer(text), decode(encode(x)) == x (and HF's decode of the same
ids), and offsets: each token's bytes are at its offset in the text, inside HF's offset span.
Bad input through the CLI: one `vera-dist: error:` line naming the file or option, exit != 0.

Run:  VERA_DIST_BIN=build/vera-dist ~/.cache/vera-dist/venv/bin/python -m pytest -q tests/python/test_tokenizer.py
"""
import json
import os
import pathlib
import random
import subprocess
import time

import pytest
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers

from conftest import BIN, _env, error_lines, run_vd

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

MODELS = pathlib.Path(os.environ.get("VERA_MODELS", str(pathlib.Path.home() / ".cache" / "vera-dist" / "models")))
GGUF = pathlib.Path(os.environ.get("VERA_SMOLLM2_GGUF", str(MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")))
CORPUS_BYTES = 1_100_000

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# ---------------------------------------------------------------------------------------------
# the corpus

def _read_texts(paths, budget):
    out, total = [], 0
    for p in paths:
        if total >= budget:
            break
        try:
            if not p.is_file() or p.is_symlink():
                continue
            s = p.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "\x00" in s:
            continue
        out.append(s)
        total += len(s.encode())
    return out


def _unicode_text(rng, n_items):
    """Generated text in many scripts, with the cases pre-tokenizer regexes treat specially."""
    def rand_run(lo, hi, a, b):
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(a, b)))

    zwj = ["\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466", "\U0001F3F3\ufe0f\u200d\U0001F308",
           "\U0001F469\U0001F3FD\u200d\U0001F4BB", "\U0001F9D1\u200d\U0001F91D\u200d\U0001F9D1",
           "\u2764\ufe0f\u200d\U0001F525", "\U0001F44D\U0001F3FF", "\U0001F1EB\U0001F1F7", "1\ufe0f\u20e3"]
    spaces = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u2003", "\u3000", "\u0085", "\u180e", "\u2028",
              "\x0b", "\x0c", "\u200b", "\u202f", "\u1680", " \t ", "\t\t\n"]
    words = ["I'm", "you'RE", "don't", "it's", "We'LL", "she'd", "'s", "THEY'VE", "o'clock", "rock'n'roll",
             "naïve", "Straße", "façade", "ﬁne", "Ⅻ", "x²+y³", "½", "№5", "ǅemal", "İstanbul", "ſ's"]
    code = ["def f(x):\n\treturn x**2  # square\n", "if (a && b) { c->d[i] = 0x1F; }\n",
            "http://example.com/a?b=c&d=e#frag", "    for (int i = 0; i < n; i++) {\n        s += v[i];\n    }\n",
            "SELECT * FROM t WHERE id=42;", "<div class=\"x\">&amp;</div>", "$ echo \"$HOME\" | wc -c\n",
            "λx. x + 1", "a_b__c___d", "...!!!???", "— « » ¿ … “quoted” ‘single’", "<<|>> <| |> <s> </s>"]
    gens = [
        lambda: rand_run(0x4E00, 0x9FFF, 1, 16),                       # CJK
        lambda: rand_run(0x3041, 0x3096, 1, 8) + rand_run(0x30A1, 0x30FA, 0, 6),  # kana
        lambda: rand_run(0xAC00, 0xD7A3, 1, 6),                        # Hangul
        lambda: "".join(chr(rng.randint(0x0621, 0x064A)) + (chr(rng.randint(0x064B, 0x0652)) if rng.random() < 0.4 else "")
                        for _ in range(rng.randint(2, 9))),            # Arabic with harakat
        lambda: "".join(chr(rng.randint(0x0915, 0x0939)) + rng.choice(["", "\u093e", "\u093f", "\u0940", "\u094d", "\u0902"])
                        for _ in range(rng.randint(1, 6))),            # Devanagari with matras / virama
        lambda: rand_run(0x0410, 0x044F, 2, 10),                       # Cyrillic
        lambda: rand_run(0x0391, 0x03C9, 2, 8),                        # Greek
        lambda: "".join(rng.choice("aeiouxyzAEN") + ("".join(chr(rng.randint(0x300, 0x36F)) for _ in range(rng.randint(0, 3))))
                        for _ in range(rng.randint(1, 6))),            # combining marks
        lambda: "".join(chr(rng.randint(0x1F600, 0x1F64F)) for _ in range(rng.randint(1, 4))),
        lambda: rng.choice(zwj) * rng.randint(1, 3),
        lambda: "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 24))),  # digit runs
        lambda: rand_run(0x0660, 0x0669, 1, 7),                        # Arabic-Indic digits
        lambda: rand_run(0xFF10, 0xFF19, 1, 5),                        # fullwidth digits
        lambda: rand_run(0x0966, 0x096F, 1, 5),                        # Devanagari digits
        lambda: "".join(rng.choice(spaces) for _ in range(rng.randint(1, 8))),  # whitespace runs
        lambda: " " * rng.randint(1, 40),
        lambda: "\n" * rng.randint(1, 6) + "\t" * rng.randint(0, 4),
        lambda: rng.choice(words),
        lambda: rng.choice(code),
        lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(1, 12))),
        lambda: rand_run(0x00A1, 0x00FF, 1, 6),                        # Latin-1 symbols / letters
        lambda: rand_run(0x2190, 0x22FF, 1, 4),                        # arrows, maths
    ]
    out = []
    for _ in range(n_items):
        out.append(rng.choice(gens)())
        out.append(rng.choice(["", " ", " ", " ", "\n", ", ", ". ", "-", "_", "'"]))
    return "".join(out)


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(0)
    parts = []
    parts += _read_texts(sorted(pathlib.Path("/usr/share/common-licenses").iterdir()), 300_000)
    std = pathlib.Path(json.__file__).parent.parent  # the interpreter's standard library
    py = [std / "json", std / "email", std / "html", std / "urllib", std / "unittest", std / "asyncio",
          pathlib.Path(tokenizers.__file__).parent]
    parts += _read_texts([f for d in py if d.is_dir() for f in sorted(d.rglob("*.py"))], 350_000)
    parts += _read_texts(sorted(pathlib.Path("/usr/share/doc").glob("*/copyright")), 150_000)
    text = "\n".join(parts)
    uni = _unicode_text(rng, 60_000)
    text = text + "\n" + uni
    while len(text.encode()) < CORPUS_BYTES:  # a machine with few of those files: more generated text
        text += _unicode_text(rng, 20_000)
    return text


# ---------------------------------------------------------------------------------------------
# running vera-dist tokenize

def vd_encode(path, text, tmp, add_special=False, offsets=False):
    f = tmp / "in.txt"
    f.write_bytes(text.encode())
    args = ["tokenize", "--tokenizer", path, "--in", f, "--json", "--add_special_tokens", int(add_special)]
    if offsets:
        args.append("--offsets")
    out = json.loads(run_vd(*args).stdout)
    return (out["ids"], out["offsets"]) if offsets else out


def vd_encode_many(path, texts, tmp, add_special=False):
    f = tmp / "in.jsonl"
    f.write_text("".join(json.dumps(t) + "\n" for t in texts))
    lines = run_vd("tokenize", "--tokenizer", path, "--in", f, "--jsonl", "--add_special_tokens", int(add_special)).stdout
    got = [json.loads(ln) for ln in lines.splitlines()]
    assert len(got) == len(texts), f"{len(texts)} lines in, {len(got)} out"
    return got


def vd_decode(path, ids, tmp, skip_special=False):
    f = tmp / "ids.txt"
    f.write_text(" ".join(map(str, ids)))
    args = ["tokenize", "--tokenizer", path, "--decode", "--in", f, "--skip_special", int(skip_special)]
    # the decoded bytes as they are (run_vd decodes stdout as text)
    proc = subprocess.run([str(BIN)] + [str(a) for a in args], capture_output=True, env=_env(), timeout=300)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


def assert_same_ids(got, want, text_of, label):
    if got == want:
        return
    n = min(len(got), len(want))
    i = next((k for k in range(n) if got[k] != want[k]), n)
    lo = max(0, i - 4)
    pytest.fail(f"{label}: ids differ at token {i} of {len(want)} (vera-dist has {len(got)})\n"
                f"  HF       {want[lo:i + 6]}  {text_of(want[lo:i + 6])!r}\n"
                f"  vera-dist {got[lo:i + 6]}  {text_of(got[lo:i + 6])!r}", pytrace=False)


# ---------------------------------------------------------------------------------------------
# the tokenizers

class Case:
    """A tokenizer: the path vera-dist reads and the Hugging Face reference."""

    def __init__(self, name, path, hf, encode=None, encode_special=None, tf=None):
        self.name, self.path, self.hf = name, path, hf  # hf: a tokenizers.Tokenizer (decode, offsets)
        self.tf = tf  # the transformers tokenizer, where there is one (bos / eos / chat template)
        self.encode = encode or (lambda s: hf.encode(s, add_special_tokens=False).ids)
        self.encode_special = encode_special or (lambda s: hf.encode(s, add_special_tokens=True).ids)
        self.added = [t.content for t in hf.get_added_tokens_decoder().values()]
        self.text_of = lambda ids: hf.decode(ids, skip_special_tokens=False)


def _train(corpus, tmp, name, pre, vocab_size, specials, post=None, model=None, edit=None):
    tok = tokenizers.Tokenizer(model or models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # train on a slice of every kind of text in the corpus (licenses, code, generated Unicode)
    n = len(corpus)
    sample = corpus[:120_000] + corpus[n // 3:n // 3 + 60_000] + corpus[-120_000:]
    tok.train_from_iterator(sample.splitlines(keepends=True), trainer)
    if post is not None:
        tok.post_processor = post
    d = tmp / name
    d.mkdir()
    j = json.loads(tok.to_str())
    if edit:
        edit(j)
    (d / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False))
    return d, tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


@pytest.fixture(scope="module")
def smol_hf():
    if not GGUF.is_file():
        pytest.skip(f"{GGUF} not found (launch/fetch-smollm2.sh downloads it)")
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)


def _case_smol_gguf(smol_hf, corpus, tmp):
    backend = smol_hf.backend_tokenizer
    return Case("smol-gguf", GGUF, backend, encode=lambda s: smol_hf.encode(s, add_special_tokens=False),
                encode_special=lambda s: smol_hf(s)["input_ids"], tf=smol_hf)


def _case_smol_json(smol_hf, corpus, tmp):
    d = tmp / "smol-json"
    smol_hf.save_pretrained(str(d))
    return Case("smol-json", d, tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")), tf=smol_hf)


def _case_gpt2(smol_hf, corpus, tmp):
    d, hf = _train(corpus, tmp, "gpt2", pre_tokenizers.ByteLevel(add_prefix_space=False), 4096, ["<|endoftext|>"],
                   post=processors.ByteLevel(trim_offsets=True))
    return Case("gpt2", d / "tokenizer.json", hf)


def _case_gpt2_prefix(smol_hf, corpus, tmp):
    def edit(j):
        assert isinstance(j["model"]["merges"][0], list)  # the spelling tokenizers writes today
        j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]  # the older "a b" spelling
    d, hf = _train(corpus, tmp, "gpt2-prefix", pre_tokenizers.ByteLevel(add_prefix_space=True), 3000,
                   ["<|endoftext|>"], edit=edit)
    return Case("gpt2-prefix", d, hf)


def _case_llama3(smol_hf, corpus, tmp):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    def edit(j):
        j["model"]["ignore_merges"] = True
    d, hf = _train(corpus, tmp, "llama3", pre, 5000, specials, edit=edit)
    hf.add_tokens([AddedToken("<tool>", lstrip=True, normalized=False), AddedToken("</tool>", rstrip=True, normalized=False),
                   AddedToken("zebra", single_word=True, normalized=False), AddedToken("<|end", normalized=False),
                   AddedToken("quux", normalized=True), AddedToken("<|end_of", normalized=True)])
    bos = hf.token_to_id("<|begin_of_text|>")
    hf.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                      special_tokens=[("<|begin_of_text|>", bos)])
    hf.save(str(d / "tokenizer.json"))
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    assert json.loads(hf.to_str())["model"]["ignore_merges"] is True
    return Case("llama3", d / "tokenizer.json", hf)


def _case_digits(smol_hf, corpus, tmp):
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                   pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    d, hf = _train(corpus, tmp, "digits", pre, 3500, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return Case("digits", d / "tokenizer.json", hf)


BUILDERS = {"smol-gguf": _case_smol_gguf, "smol-json": _case_smol_json, "gpt2": _case_gpt2,
            "gpt2-prefix": _case_gpt2_prefix, "llama3": _case_llama3, "digits": _case_digits}
NEEDS_SMOL = {"smol-gguf", "smol-json"}


@pytest.fixture(scope="module")
def cases(request, corpus, tmp_module):
    return {}


@pytest.fixture(params=list(BUILDERS))
def case(request, cases, corpus, tmp_module):
    name = request.param
    if name not in cases:
        smol = request.getfixturevalue("smol_hf") if name in NEEDS_SMOL else None
        cases[name] = BUILDERS[name](smol, corpus, tmp_module)
    return cases[name]


# ---------------------------------------------------------------------------------------------
# the checks

def test_corpus_ids_and_round_trip(case, corpus, tmp_path):
    assert len(corpus.encode()) >= 1_000_000
    want = case.encode(corpus)
    t0 = time.perf_counter()
    got = vd_encode(case.path, corpus, tmp_path)
    dt = time.perf_counter() - t0
    print(f"{case.name}: {len(corpus.encode())} bytes -> {len(want)} tokens; vera-dist tokenize {dt:.2f} s (load included)")
    assert_same_ids(got, want, case.text_of, f"{case.name}: corpus")
    assert dt < 20, f"{case.name}: encoding 1 MB took {dt:.1f} s"
    # decode(encode(x)) == x (with add_prefix_space: " " + x), and HF decodes the ids to the same text
    hf_text = case.hf.decode(got, skip_special_tokens=False)
    assert hf_text == (" " + corpus if case.name == "gpt2-prefix" else corpus)
    assert vd_decode(case.path, got, tmp_path) == hf_text.encode()


def test_added_tokens(case, tmp_path):
    texts = []
    for s in case.added:
        texts += [s, "a" + s + "b", " " + s + " ", s + s, "x " + s + "\n" + s + "y", s[:-1], "word" + s + "word",
                  "\t" + s + "  \n", "héllo " + s + " 世界", s + "<" + s + ">"]
    texts += ["<|endoftext|><|im_start|>user\nHi<|im_end|>\n", "<|end_of_text|><|end>", "<|end_of", "<|endo",
              "a zebra, zebras, _zebra zebra_ 3zebra zebra.", "  <tool>  x  </tool>  y", "quux xquux", ""]
    want = [case.encode(t) for t in texts]
    got = vd_encode_many(case.path, texts, tmp_path)
    for t, g, w in zip(texts, got, want):
        assert_same_ids(g, w, case.text_of, f"{case.name}: {t!r}")
    # add_special_tokens=True is tokenizer(text): what the post-processor adds (llama3: a BOS)
    some = texts[:40] + ["plain text", "", " leading space"]
    got = vd_encode_many(case.path, some, tmp_path, add_special=True)
    for t, g in zip(some, got):
        assert_same_ids(g, case.encode_special(t), case.text_of, f"{case.name}: add_special_tokens=1 {t!r}")
    # decode, with and without the special tokens
    ids = [i for g in vd_encode_many(case.path, texts, tmp_path) for i in g]
    assert vd_decode(case.path, ids, tmp_path) == case.hf.decode(ids, skip_special_tokens=False).encode()
    strips = any(t.lstrip or t.rstrip for t in case.hf.get_added_tokens_decoder().values())
    if case.name != "gpt2-prefix" and not strips:  # lstrip / rstrip tokens swallow the spaces beside them
        assert vd_decode(case.path, ids, tmp_path) == "".join(texts).encode()
    want_skip = case.hf.decode(ids, skip_special_tokens=True)
    assert vd_decode(case.path, ids, tmp_path, skip_special=True) == want_skip.encode()


def _byte_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def test_offsets(case, corpus, tmp_path):
    if case.name == "gpt2-prefix":
        pytest.skip("a prefix space is not in the text: its token has no bytes there")
    text = corpus[:100_000] + corpus[-150_000:]
    ids, offs = vd_encode(case.path, text, tmp_path, offsets=True)
    enc = case.hf.encode(text, add_special_tokens=False)
    assert ids == enc.ids
    raw = text.encode()
    # char offset -> byte offset
    starts = [0] * (len(text) + 1)
    b = 0
    for i, ch in enumerate(text):
        starts[i] = b
        b += len(ch.encode())
    starts[len(text)] = b
    dec = _byte_decoder()
    added = {i: t.content for i, t in case.hf.get_added_tokens_decoder().items()}
    bad = []
    for k, (tid, off, (cs, ce)) in enumerate(zip(ids, offs, enc.offsets)):
        tb = added[tid].encode() if tid in added else bytes(dec[c] for c in case.hf.id_to_token(tid))
        # HF's span is in characters (a token that splits a character gets all of it) and may be
        # trimmed of spaces (ByteLevel trim_offsets): it must overlap the token's bytes
        hs, he = starts[cs], starts[ce]
        overlap = (hs < off + len(tb) and off < he) if he > hs else off <= hs <= off + len(tb)
        if raw[off:off + len(tb)] != tb or not overlap:
            bad.append((k, tid, off, (hs, he), tb))
        if len(bad) > 5:
            break
    assert not bad, f"{case.name}: tokens not at their offsets (index, id, offset, HF byte span, bytes): {bad}"
    assert offs == sorted(offs)


def test_info(case, tmp_path):
    info = json.loads(run_vd("tokenize", "--tokenizer", case.path, "--info").stdout)
    assert info["vocab_size"] == case.hf.get_vocab_size(with_added_tokens=True)
    specials = sorted(i for i, t in case.hf.get_added_tokens_decoder().items() if t.special)
    assert info["special_ids"] == specials
    if case.tf is not None:
        assert info["bos"] == case.tf.bos_token and info["eos"] == case.tf.eos_token
        assert info["bos_id"] == case.tf.bos_token_id and info["eos_id"] == case.tf.eos_token_id
        assert info["chat_template"] == case.tf.chat_template


# ---------------------------------------------------------------------------------------------
# bad input: one line, naming the file / option, exit != 0

def _fails(args, *needles):
    proc = run_vd(*args, ok=False)
    lines = error_lines(proc)
    assert len(lines) == 1, f"{args}: expected one error line, got {proc.stderr!r}"
    for n in needles:
        assert n in lines[0], f"{args}: {lines[0]!r} does not say {n!r}"


def _gguf_file(path, model):
    """A GGUF with only tokenizer metadata (gguf's writer)."""
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    w.add_token_list(["a", "b", "ab"])
    w.add_token_merges(["a b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_bad_input(tmp_path, corpus):
    d, _ = _train(corpus[:20000], tmp_path, "t", pre_tokenizers.ByteLevel(add_prefix_space=False), 300, ["<|endoftext|>"])
    good = json.loads((d / "tokenizer.json").read_text())

    def variant(name, edit):
        j = json.loads(json.dumps(good))
        edit(j)
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(j))
        return p

    missing = tmp_path / "nope"
    _fails(["tokenize", "--tokenizer", missing, "--text", "x"], str(missing))
    (tmp_path / "empty").mkdir()
    _fails(["tokenize", "--tokenizer", tmp_path / "empty", "--text", "x"], "no tokenizer.json")
    p = variant("wp", lambda j: j["model"].update(type="WordPiece"))
    _fails(["tokenize", "--tokenizer", p, "--text", "x"], str(p), "WordPiece")
    p = variant("nfkc", lambda j: j.update(normalizer={"type": "NFKC"}))
    _fails(["tokenize", "--tokenizer", p, "--text", "x"], str(p), "normalizer NFKC")
    p = variant("ws", lambda j: j.update(pre_tokenizer={"type": "Whitespace"}))
    _fails(["tokenize", "--tokenizer", p, "--text", "x"], str(p), "Whitespace")
    p = variant("meta", lambda j: j.update(decoder={"type": "Metaspace", "replacement": "_"}))
    _fails(["tokenize", "--tokenizer", p, "--text", "x"], str(p), "decoder Metaspace")
    p = variant("merge", lambda j: j["model"]["merges"].insert(0, ["zzzq", "qzzz"]))
    _fails(["tokenize", "--tokenizer", p, "--text", "x"], str(p), "not in the vocabulary")
    p = variant("bfb", lambda j: j["model"].update(byte_fallback=True))
    _fails(["tokenize", "--tokenizer", p, "--text", "x"], str(p), "byte_fallback")
    p = tmp_path / "broken.json"
    p.write_text('{"model": {"type": "BPE", "vocab": {')
    _fails(["tokenize", "--tokenizer", p, "--text", "x"], str(p), "not a JSON object")
    g = _gguf_file(tmp_path / "spm.gguf", "llama")
    _fails(["tokenize", "--tokenizer", g, "--text", "x"], str(g), "tokenizer.ggml.model 'llama'")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfe")
    _fails(["tokenize", "--tokenizer", d, "--in", bad], str(bad), "not UTF-8", "offset 3")
    _fails(["tokenize", "--tokenizer", d, "--decode", "--text", "1 2 999999"], "--text", "999999", "out of range")
    _fails(["tokenize", "--tokenizer", d, "--decode", "--text", "1 x2"], "'x2' is not a token id")
    _fails(["tokenize", "--tokenizer", d, "--text", "x", "--bogus", "1"], "unexpected argument '--bogus'")
    _fails(["tokenize", "--tokenizer", d], "exactly one of --text")
    _fails(["tokenize", "--tokenizer", d, "--text", "x", "--add_special_tokens", "2"], "--add_special_tokens")
    _fails(["tokenize", "--text", "x"], "--tokenizer")
    # and a good call prints ids (space-separated by default)
    out = run_vd("tokenize", "--tokenizer", d, "--text", "ab ab").stdout.split()
    assert out and all(x.isdigit() for x in out)
