"""Chat templates and instruction data (src/text/chat.c, src/cli/prepare_data.c) against transformers.

  test_render_*        tests/chat_render (built next to vera-dist, in BUILD/tests/) renders conversations
                       with the C templates; the text must equal
                       tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=...) and
                       the loss spans must equal a reference computed here from HF's renderings
                       (each assistant turn's content, trimmed for Llama 3, plus its end token).
                       SmolLM2's template is the one in its GGUF (skipped if the GGUF is absent);
                       Llama 3's, Qwen2's and plain ChatML are set on a small trained BPE tokenizer.
  test_prepare_*       prepare-data on text and JSONL: shards v2 read back here with numpy; ids equal
                       apply_chat_template(..., tokenize=True) / HF tokenization with EOS between
                       documents; the loss flags equal the reference mask; uint32 shards for a vocab
                       over 65536.
"""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
import transformers

from conftest import BIN, REPO, run_vd

CHAT_RENDER = pathlib.Path(os.environ.get("VERA_CHAT_RENDER", str(BIN.parent / "tests" / "chat_render")))
MODELS = pathlib.Path(os.environ.get("VERA_MODELS", str(pathlib.Path.home() / ".cache" / "vera-dist" / "models")))
SMOL_GGUF = pathlib.Path(os.environ.get("VERA_SMOLLM2_GGUF", str(MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")))

# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# Qwen2-Instruct / Qwen1.5-Chat
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# transformers' old default (ChatML, no system prompt)
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "And again?"},
     {"role": "assistant", "content": "Hello again, twice."}],
    # whitespace at the edges (Llama 3 trims it: Python's str.strip, Unicode spaces included),
    # non-ASCII text, Jinja-looking text in the content, an empty turn
    [{"role": "user", "content": "  \n Été, 東京 {{ x }} {% y %}\t"},
     {"role": "assistant", "content": "\u3000\u00a0ok: ünïcode ✓ \n\n"},
     {"role": "user", "content": ""}, {"role": "assistant", "content": " "}],
    [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "fine"}],
    [{"role": "user", "content": "only a question"}],
]

SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CORPUS = ("The quick brown fox jumps over the lazy dog. What is 2+2? Four. Hello again, twice! "
          "Été à Paris, 東京 and ünïcode ✓. Be brief; be kind. Instruction: add the numbers.\n") * 20


def trained_tokenizer(vocab_size=400, extra_tokens=0):
    """A small byte-level BPE (the GPT-2 / Llama 3 family) trained here, with the chat specials added
    (and extra_tokens more added tokens, to push the vocab past 65536). Like Llama 3's, its
    post-processor adds <|begin_of_text|> to tokenizer(text): apply_chat_template and prepare-data
    must not (the template writes the BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([CORPUS], trainer)
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                      special_tokens=[("<|begin_of_text|>", bos)])
    if extra_tokens:
        tk.add_tokens([f"xtok{i:06d}" for i in range(extra_tokens)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>",
                                                eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def small_tok():
    return trained_tokenizer()


@pytest.fixture(scope="module")
def smol_tok():
    if not SMOL_GGUF.is_file():
        pytest.skip(f"{SMOL_GGUF} absent (launch/fetch-smollm2.sh downloads it)")
    return transformers.AutoTokenizer.from_pretrained(str(SMOL_GGUF.parent), gguf_file=SMOL_GGUF.name)


def render_c(tmp_path, template, messages, gen, bos, eos, ok=True):
    if not CHAT_RENDER.is_file():
        pytest.fail(f"{CHAT_RENDER} not built (cmake --build BUILD --target chat_render)", pytrace=False)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"template": template, "messages": messages, "add_generation_prompt": gen,
                               "bos": bos, "eos": eos}))
    proc = subprocess.run([str(CHAT_RENDER), str(req)], capture_output=True, text=True, timeout=60)
    if not ok:
        assert proc.returncode != 0, f"chat_render accepted a template it should refuse: {proc.stdout}"
        return proc.stderr
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def hf_text(tok, messages, gen=False):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def reference_spans(tok, messages, end_token, trim):
    """Byte spans of the assistant turns from HF's own renderings: turn i ends where the rendering
    of messages[:i+1] ends (less ChatML's trailing newline); it takes its content and end token."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        upto = hf_text(tok, messages[: i + 1]).encode()
        end = len(upto) - (0 if trim else 1)
        content = (m["content"].strip() if trim else m["content"]).encode() + end_token.encode()
        assert upto[end - len(content):end] == content, "the reference did not find the turn"
        spans.append([end - len(content), end])
    return spans


def check_template(tmp_path, tok, template, end_token, trim, want_name):
    tok.chat_template = template
    for messages in CONVERSATIONS:
        for gen in (False, True):
            got = render_c(tmp_path, template, messages, gen, tok.bos_token or "", tok.eos_token or "")
            assert got["name"] == want_name
            want = hf_text(tok, messages, gen)
            assert got["text"] == want, f"{want_name} {messages} gen={gen}"
            assert got["spans"] == reference_spans(tok, messages, end_token, trim), f"{want_name} {messages}"


def test_render_smollm2(tmp_path, smol_tok):
    template = smol_tok.chat_template
    check_template(tmp_path, smol_tok, template, "<|im_end|>", False, "chatml-system (SmolLM2)")


def test_render_llama3(tmp_path, small_tok):
    check_template(tmp_path, small_tok, LLAMA3, "<|eot_id|>", True, "llama3")


def test_render_qwen2_chatml(tmp_path, small_tok):
    check_template(tmp_path, small_tok, QWEN2, "<|im_end|>", False, "chatml-system (Qwen2)")
    check_template(tmp_path, small_tok, CHATML, "<|im_end|>", False, "chatml")
    # another default system prompt, written with Jinja escapes and other spacing inside the tags:
    # the same template to Jinja, so recognised, and the prompt read from it
    other = QWEN2.replace("You are a helpful assistant.", "Tu es \\'utile\\'.\\nRéponds.")
    other = other.replace("\n", "\\n").replace("{{'<|im_start|>'", "{{ \"<|im_start|>\"").replace("%}", " %}")
    check_template(tmp_path, small_tok, other, "<|im_end|>", False, "chatml-system")


def test_render_refuses_other_templates(tmp_path, small_tok):
    others = [
        QWEN2.replace("'<|im_end|>' + '\n'", "'<|im_end|>'"),           # no newline after a turn
        LLAMA3.replace(" | trim", ""),                                   # no trim
        LLAMA3.replace("bos_token + content", "content"),                 # no BOS
        "{{ messages[0]['content'] }}",
        QWEN2.replace("You are a helpful assistant.", "x' + messages[0]['content'] + '"),  # code, not a prompt
        "{% for m in messages %",                                          # not even closed
    ]
    for t in others:
        err = render_c(tmp_path, t, CONVERSATIONS[0], False, "<s>", "</s>", ok=False)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "chat template not recognised" in lines[0] and "llama3" in lines[0], err


# ---------------------------------------------------------------------------------------------
# prepare-data (needs the tokenizer, src/text/tokenizer.c)

def read_shard_v2(path):
    """(tokens, flags or None, header dict) of a v2 shard, read with numpy from the documented layout."""
    raw = pathlib.Path(path).read_bytes()
    h = np.frombuffer(raw[:1024], dtype="<i4")
    assert h[0] == 20240520 and h[1] == 2, f"{path}: not a v2 shard"
    n = int(np.frombuffer(raw[8:16], dtype="<u8")[0])
    width, hflags, vocab = int(h[4]), int(h[5]), int(h[6])
    assert width in (2, 4) and not (set(h[10:].tolist()) - {0}) and h[7] == 0
    tokens = np.frombuffer(raw[1024:1024 + n * width], dtype="<u2" if width == 2 else "<u4").astype(np.int64)
    flags = None
    if hflags & 1:
        flags = np.frombuffer(raw[1024 + n * width:], dtype=np.uint8)
        assert len(flags) == n
    else:
        assert len(raw) == 1024 + n * width
    return tokens, flags, {"width": width, "flags": hflags, "vocab": vocab}


def read_all(out, prefix):
    files = sorted(pathlib.Path(out).glob(prefix + "_*.bin"))
    parts = [read_shard_v2(f) for f in files]
    return files, parts


def examples_of(parts):
    """Splits the flagged shards into examples: lists of (ids, target bits)."""
    out = []
    for tokens, flags, _ in parts:
        starts = np.flatnonzero(flags & 2).tolist() + [len(tokens)]
        assert not len(tokens) or starts[0] == 0
        for a, b in zip(starts[:-1], starts[1:]):
            out.append((tokens[a:b].tolist(), (flags[a:b] & 1).tolist()))
    return out


def save_tokenizer(tok, d):
    d.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(d))
    assert (d / "tokenizer.json").is_file()
    return d


def hf_ids(tok, messages):
    enc = tok.apply_chat_template(messages, tokenize=True)
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def reference_mask(tok, messages, end_token, trim):
    """Loss bits from HF alone: tokenize the rendered text with offsets (characters), mark the
    tokens whose first character lies inside an assistant turn's content + end token."""
    text = hf_text(tok, messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = []
    for b, e in reference_spans(tok, messages, end_token, trim):  # bytes -> characters
        spans.append((len(text.encode()[:b].decode()), len(text.encode()[:e].decode())))
    return enc["input_ids"], [int(any(b <= s < e for b, e in spans)) for s, _ in enc["offset_mapping"]]


def as_messages(rec):
    if "messages" in rec:
        return rec["messages"]
    if "prompt" in rec:
        return [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["completion"]}]
    user = rec["instruction"] + ("\n\n" + rec["input"] if rec.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]


RECORDS = [
    {"messages": CONVERSATIONS[0]},
    {"messages": CONVERSATIONS[1]},
    {"prompt": "Add 2 and 2.", "completion": " Four."},
    {"instruction": "Translate to French", "input": "Hello again", "output": "Bonjour à nouveau"},
    {"instruction": "Say hi", "input": "", "output": "hi ✓", "id": 7},
    {"messages": CONVERSATIONS[2]},
    {"messages": CONVERSATIONS[3]},
]


def write_jsonl(path, records, blank_lines=True):
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if blank_lines:
        lines.insert(2, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def check_chat_shards(tmp_path, tok, tok_arg, template_args, end_token, trim, want_width=2, val_fraction="0"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "chat.jsonl", RECORDS)
    out = tmp_path / "out"
    run_vd("prepare-data", "--tokenizer", tok_arg, "--in", data, "--out", out, "--val_fraction", val_fraction,
           "--shard_tokens", "100", *template_args)
    files, train = read_all(out, "train")
    _, val = read_all(out, "val")
    assert files and all(p[2]["flags"] == 3 and p[2]["width"] == want_width and p[2]["vocab"] == len(tok)
                         for p in train + val)
    got = examples_of(train) + examples_of(val)
    assert len(got) == len(RECORDS)
    if val_fraction != "0":
        assert len(examples_of(val)) == int(len(RECORDS) * float(val_fraction))
    for rec, (ids, bits) in zip(RECORDS, got):
        messages = as_messages(rec)
        assert ids == hf_ids(tok, messages), f"ids of {rec}"
        ref_ids, ref_bits = reference_mask(tok, messages, end_token, trim)
        assert ids == ref_ids
        assert bits == ref_bits, f"loss mask of {rec}"
    for tokens, flags, _ in train + val:  # at most 100 tokens a shard, unless one example is longer
        assert len(tokens) <= 100 or int(np.count_nonzero(flags & 2)) == 1


def test_prepare_chat_llama3(tmp_path, small_tok):
    small_tok.chat_template = LLAMA3
    d = save_tokenizer(small_tok, tmp_path / "tok")
    # the tokenizer's own template (chat_template.jinja beside tokenizer.json), then by name
    check_chat_shards(tmp_path / "own", small_tok, d, [], "<|eot_id|>", True, val_fraction="0.3")
    check_chat_shards(tmp_path / "name", small_tok, d, ["--chat_template", "llama3"], "<|eot_id|>", True)
    # the template given as a file is recognised like a tokenizer's
    (tmp_path / "llama3.jinja").write_text(LLAMA3)
    check_chat_shards(tmp_path / "f", small_tok, d / "tokenizer.json", ["--chat_template", tmp_path / "llama3.jinja"],
                      "<|eot_id|>", True)


def test_prepare_chat_chatml(tmp_path, small_tok):
    small_tok.chat_template = QWEN2
    d = save_tokenizer(small_tok, tmp_path / "tok")
    check_chat_shards(tmp_path, small_tok, d, ["--chat_template", "qwen2"], "<|im_end|>", False)


def test_prepare_chat_smollm2(tmp_path, smol_tok):
    # the GGUF's own template, no --chat_template
    check_chat_shards(tmp_path, smol_tok, SMOL_GGUF, [], "<|im_end|>", False, val_fraction="0.2")


def test_prepare_text(tmp_path, small_tok):
    docs = ["First document.\nWith two lines, ünïcode ✓ and <|im_end|> written in it.\n",
            "Second: The quick brown fox jumps over the lazy dog. " * 30, "third"]
    paths = []
    for i, d in enumerate(docs):
        paths.append(tmp_path / f"doc{i}.txt")
        paths[-1].write_text(d)
    tokdir = save_tokenizer(small_tok, tmp_path / "tok")
    out = tmp_path / "out"
    args = []
    for p in paths:
        args += ["--in", p]
    run_vd("prepare-data", "--tokenizer", tokdir, *args, "--out", out, "--val_fraction", "0.25", "--shard_tokens", "64")
    want = []
    for i, d in enumerate(docs):
        if i:
            want.append(small_tok.eos_token_id)
        want += small_tok(d, add_special_tokens=False)["input_ids"]
    _, train = read_all(out, "train")
    _, val = read_all(out, "val")
    assert all(p[1] is None and p[2]["flags"] == 0 and p[2]["width"] == 2 for p in train + val)
    assert all(len(p[0]) <= 64 for p in train + val)
    got_train = [t for p in train for t in p[0].tolist()]
    got_val = [t for p in val for t in p[0].tolist()]
    assert got_train + got_val == want
    assert len(got_val) == int(len(want) * 0.25)


def test_prepare_text_smollm2(tmp_path, smol_tok):
    text = pathlib.Path("/usr/share/common-licenses/GPL-3")
    if not text.is_file():
        pytest.skip(f"{text} absent")
    head = tmp_path / "a.txt"
    head.write_bytes(text.read_bytes()[:20000])
    second = tmp_path / "b.txt"
    second.write_text("  Second document\n\n\twith  spaces  ")
    out = tmp_path / "out"
    run_vd("prepare-data", "--tokenizer", SMOL_GGUF, "--in", head, "--in", second, "--out", out, "--val_fraction", "0")
    _, train = read_all(out, "train")
    want = (smol_tok(head.read_text(), add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id]
            + smol_tok(second.read_text(), add_special_tokens=False)["input_ids"])
    assert [t for p in train for t in p[0].tolist()] == want


def test_prepare_uint32(tmp_path):
    big = trained_tokenizer(extra_tokens=66000)
    assert len(big) > 65536
    big.chat_template = CHATML
    d = save_tokenizer(big, tmp_path / "tok")
    doc = tmp_path / "doc.txt"
    doc.write_text("some text xtok065999 and xtok000001 then xtok065000.")
    out = tmp_path / "out"
    run_vd("prepare-data", "--tokenizer", d, "--in", doc, "--out", out, "--val_fraction", "0")
    _, train = read_all(out, "train")
    assert train[0][2]["width"] == 4 and train[0][2]["vocab"] == len(big)
    ids = train[0][0].tolist()
    assert ids == big(doc.read_text(), add_special_tokens=False)["input_ids"] and max(ids) > 65535
    # and instruction data too
    recs = [{"prompt": "xtok065001?", "completion": "xtok065002 yes"}]
    data = write_jsonl(tmp_path / "c.jsonl", recs, blank_lines=False)
    run_vd("prepare-data", "--tokenizer", d, "--in", data, "--out", tmp_path / "out2", "--val_fraction", "0",
           "--chat_template", "chatml")
    _, train = read_all(tmp_path / "out2", "train")
    (ids, bits), = examples_of(train)
    assert train[0][2]["width"] == 4 and ids == hf_ids(big, as_messages(recs[0]))
    assert bits == reference_mask(big, as_messages(recs[0]), "<|im_end|>", False)[1]


def test_prepare_bad_lines(tmp_path, small_tok):
    d = save_tokenizer(small_tok, tmp_path / "tok")
    cases = [
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n{"bad json',
         ":2: not valid JSON"),
        ('\n\n{"text": "plain"}', ":3: no \"messages\""),
        ('{"messages": [{"role": "user", "content": "x"}]}', ":1: no assistant message"),
        ('{"instruction": "x", "input": "", "output": 5}', ":1: the Alpaca field \"output\" is a number"),
        ("\n\n", "holds no examples"),
    ]
    out = tmp_path / "out"
    for i, (text, needle) in enumerate(cases):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(text)
        proc = run_vd("prepare-data", "--tokenizer", d, "--in", path, "--out", out, "--chat_template", "chatml",
                      ok=False)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[-1] and str(path) in lines[-1], proc.stderr
        assert not out.exists(), "a refused run created the output directory"
    # an unrecognised template, and none at all
    small_tok.chat_template = "{{ messages }}"
    d2 = save_tokenizer(small_tok, tmp_path / "tok2")
    good = write_jsonl(tmp_path / "good.jsonl", RECORDS[:1], blank_lines=False)
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    proc = run_vd("prepare-data", "--tokenizer", d2, "--in", good, "--out", out, "--chat_template",
                  tmp_path / "t.jinja", ok=False)
    assert "chat template not recognised" in proc.stderr and "llama3" in proc.stderr
    proc = run_vd("prepare-data", "--tokenizer", d2, "--in", good, "--out", out, "--chat_template", "jinja2", ok=False)
    assert "--chat_template: 'jinja2' is neither a template name" in proc.stderr
    # text and instruction data in one run
    txt = tmp_path / "t.txt"
    txt.write_text("hello")
    proc = run_vd("prepare-data", "--tokenizer", d, "--in", good, "--in", txt, "--out", out, ok=False)
    assert "prepare text and instruction data separately" in proc.stderr
    proc = run_vd("prepare-data", "--tokenizer", d, "--in", txt, "--out", out, "--chat_template", "chatml", ok=False)
    assert "--chat_template applies to instruction data" in proc.stderr
    assert not out.exists()
