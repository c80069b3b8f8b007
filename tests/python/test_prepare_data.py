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
    (and extra_tokens more added tokens, to push the vocab past 65536)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([CORPUS], trainer)
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
