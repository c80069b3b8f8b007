"""`vera-dist generate` against transformers' generate (the reference nobody here wrote).

  test_greedy_matches_transformers
        GPT-2 tiny and Llama tiny (GQA, biases, untied head) random models from transformers
        (save_pretrained), plain and with a PEFT-made VeRA adapter with non-zero vectors (loaded
        through --adapter): `generate --prompt_ids ... --json --ignore_eos 1` (greedy, the
        default) gives exactly the 64 ids of model.generate(do_sample=False, max_new_tokens=64)
        with eos_token_id None (no stop, no suppression: 64 tokens on both sides)
  test_stops_at_eos
        with eos_token_id set to the token greedy decoding produces at step 10 (--ignore_eos 1
        --stop_ids ID: only that one), both stop at its first occurrence and the stop token is
        the last new id (as transformers returns it)
  test_sampling_seeded
        the same seed gives the same ids twice; another seed gives other ids; top_k 1 equals
        greedy whatever the temperature; top_p tiny equals greedy
  test_sampling_filters_match_transformers
        the first token sampled with 25 seeds lies in the set transformers' warpers keep for
        (temperature, top_k, top_p) = (1, 5, off), (1, off, 0.6), (0.7, 10, 0.8) (GPT-2: the
        unfiltered probability outside that set is 0.81, 0.39, 0.63, so a sampler that filtered
        less would be caught)
  test_checkpoint_equals_exported_adapter
        --checkpoint FILE (a short `vera-dist train` run) gives the ids of exporting it to PEFT
        and passing --adapter, and those of transformers + PEFT on the exported adapter
  test_bad_input
        one-line errors: prompt + max_new_tokens beyond the context, ids outside the vocabulary,
        no prompt, --device cuda in a build without CUDA, top_p 0, --prompt without a tokenizer
  test_prompt_text_and_streaming
        a byte-level BPE trained here with `tokenizers` beside a tiny GPT-2: --prompt gives
        tokenizer(prompt) ids, transformers' greedy ids and tokenizer.decode(ids,
        skip_special_tokens=True) as text (random tokens: split and invalid UTF-8 included);
        the streamed stdout is that text
  test_smollm2_prompt_greedy, test_smollm2_chat_greedy   (skipped when the GGUF is absent)
        SmolLM2-135M-Instruct (GGUF): --prompt and --chat (its chat template, the generation
        prompt, stop at <|im_end|>) give transformers' ids (model and tokenizer read from the
        same GGUF) and text
"""
import copy
import json

import pytest
import torch
import transformers

from conftest import (error_lines, llama_peft_model, make_gpt2, make_llama, peft_model, random_tokens,
                      run_vd, set_vectors, vd_train, vera_config, write_shard, checkpoint_of)

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

N_NEW = 64
# Decoding one token is hundreds of tiny ops: with 2 OpenMP threads on a loaded 2-core machine
# the spinning barriers cost 10x (measured: 17 s instead of 3 s for SmolLM2, 17 tokens)
GEN_THREADS = 1
PROMPT = [5, 17, 33, 2, 60, 8, 41]
R, KEY = 8, 3


def vd_generate(model_dir, prompt, *extra, ok=True):
    proc = run_vd("generate", "--model", model_dir, "--prompt_ids", ",".join(map(str, prompt)), "--json",
                  "--threads", GEN_THREADS, *extra, ok=ok)
    if ok is False:
        return proc
    out = json.loads(proc.stdout)
    assert out["prompt_ids"] == list(prompt)
    return out["ids"]


def hf_greedy(model, prompt, n_new=N_NEW, eos=None):
    with torch.no_grad():
        x = torch.tensor([prompt])
        y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n_new,
                           eos_token_id=eos, pad_token_id=0 if eos is None else eos)
    return y[0, len(prompt):].tolist()


class Family:
    def __init__(self, root, name):
        self.name = name
        self.dir = root / name
        self.adapter_dir = root / f"{name}_adapter"
        if name == "gpt2":
            self.base = make_gpt2(self.dir, n_embd=48, vocab=97, n_layer=2, n_head=3, n_positions=128, seed=11)
            with torch.no_grad():  # transformers' 0.02 init makes a near-uniform next-token distribution
                for n, p in self.base.named_parameters():
                    if n.endswith(".weight") and ".ln_" not in n:
                        p.mul_(5.0)
            self.base.save_pretrained(str(self.dir), safe_serialization=True)
            self.pm = peft_model(self.base, vera_config(R, KEY, ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]))
        else:
            self.base = make_llama(self.dir, seed=12, vocab_size=97, max_position_embeddings=128, attention_bias=True,
                                   mlp_bias=True)
            self.pm = llama_peft_model(self.base, R, KEY, "all-linear")
        # non-zero vectors that change the output without swamping the base (a constant output
        # would make the comparison weak)
        set_vectors(self.pm, 5, b_scale=0.5 if name == "gpt2" else 0.15, d_scale=0.5 if name == "gpt2" else 0.15)
        self.pm.save_pretrained(str(self.adapter_dir))
        self.pm.eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def fam(request, tmp_path_factory):
    return Family(tmp_path_factory.mktemp("gen"), request.param)


@pytest.mark.parametrize("adapted", [False, True], ids=["plain", "vera"])
def test_greedy_matches_transformers(fam, adapted):
    ref = hf_greedy(fam.pm if adapted else fam.base, PROMPT)
    extra = ["--adapter", fam.adapter_dir] if adapted else []
    got = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--max_new_tokens", N_NEW, *extra)
    assert len(ref) == N_NEW
    assert got == ref, f"{fam.name} {'+ VeRA' if adapted else ''}: first difference at " \
                       f"{next(i for i in range(N_NEW) if got[i] != ref[i])}"
    assert len(set(got)) > 3, "degenerate output: the comparison would mean little"


def test_stops_at_eos(fam, tmp_path):
    full = hf_greedy(fam.base, PROMPT)
    eos = full[10]
    first = full.index(eos)
    ref = hf_greedy(fam.base, PROMPT, eos=eos)
    assert ref == full[:first + 1]
    got = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--stop_ids", eos)
    assert got == ref


def test_sampling_seeded(fam):
    greedy = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--max_new_tokens", 32)
    a = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--max_new_tokens", 32, "--temperature", 1.5, "--seed", 7)
    b = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--max_new_tokens", 32, "--temperature", 1.5, "--seed", 7)
    c = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--max_new_tokens", 32, "--temperature", 1.5, "--seed", 8)
    assert a == b, "the same seed gave different samples"
    assert a != c, "seeds 7 and 8 gave the same 32 sampled tokens"
    assert a != greedy, "temperature 1.5 sampled exactly the greedy sequence"
    k1 = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--max_new_tokens", 32, "--temperature", 3, "--top_k", 1,
                     "--seed", 9)
    assert k1 == greedy, "top_k 1 is not greedy"
    p0 = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--max_new_tokens", 32, "--temperature", 3, "--top_p", 1e-6,
                     "--seed", 9)
    assert p0 == greedy, "top_p 1e-6 is not greedy"


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 5, 1.0), (1.0, 0, 0.6), (0.7, 10, 0.8)])
def test_sampling_filters_match_transformers(fam, temperature, top_k, top_p):
    """The first sampled token of 25 seeds lies in the set transformers' warpers keep
    (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper in generate's order)."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)
    with torch.no_grad():
        x = torch.tensor([PROMPT])
        logits = fam.base(x).logits[:, -1, :]
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)] +
                                  ([TopKLogitsWarper(top_k)] if top_k else []) +
                                  ([TopPLogitsWarper(top_p)] if top_p < 1 else []))
    kept = set(torch.nonzero(torch.isfinite(warpers(x, logits.clone())[0])).flatten().tolist())
    assert 1 < len(kept) < logits.shape[-1], f"the warpers keep {len(kept)} tokens: a weak check"
    seen = set()
    for seed in range(25):
        ids = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--max_new_tokens", 1, "--temperature", temperature,
                          "--top_k", top_k, "--top_p", top_p, "--seed", seed)
        assert ids[0] in kept, f"seed {seed}: token {ids[0]} is not among the {len(kept)} transformers keeps"
        seen.add(ids[0])
    assert len(seen) > 1, "25 seeds sampled one token"


def test_checkpoint_equals_exported_adapter(fam, tmp_path):
    tokens = random_tokens(8 * 33 + 1, 97, 3)
    shard = write_shard(tmp_path / "train_000.bin", tokens)
    targets = "all"
    vd_train(tmp_path / "run", fam.dir, shard, B=2, T=32, K=3, r=R, key=KEY, targets=targets, d_initial=0.1, lr=0.05,
             weight_decay=0.0, grad_clip=1.0, extra=["--ckpt_every", 3])
    ck = checkpoint_of(tmp_path / "run", 3)
    run_vd("export", "--checkpoint", ck, "--format", "peft", "--out", tmp_path / "peft")
    from_ck = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--checkpoint", ck, "--max_new_tokens", 32)
    from_peft = vd_generate(fam.dir, PROMPT, "--ignore_eos", 1, "--adapter", tmp_path / "peft", "--max_new_tokens", 32)
    assert from_ck == from_peft
    from peft import PeftModel
    pm = PeftModel.from_pretrained(copy.deepcopy(fam.base), str(tmp_path / "peft"))
    pm.eval()
    assert from_peft == hf_greedy(pm, PROMPT, n_new=32)


def test_bad_input(fam):
    p = vd_generate(fam.dir, PROMPT, "--max_new_tokens", 128, ok=False)
    assert any("exceeds the model's context of 128" in ln for ln in error_lines(p)), p.stderr
    p = vd_generate(fam.dir, [5, 97], ok=False)
    assert any("outside the model's vocabulary" in ln for ln in error_lines(p)), p.stderr
    p = run_vd("generate", "--model", fam.dir, ok=False)
    assert any("exactly one of --prompt" in ln for ln in error_lines(p)), p.stderr
    p = vd_generate(fam.dir, PROMPT, "--device", "cuda", ok=False)
    assert len(error_lines(p)) == 1 and "--device cuda" in error_lines(p)[0], p.stderr
    p = vd_generate(fam.dir, PROMPT, "--top_p", 0, ok=False)
    assert any("--top_p" in ln for ln in error_lines(p)), p.stderr
    p = run_vd("generate", "--model", fam.dir, "--prompt", "hello", ok=False)
    assert any("needs the model's tokenizer" in ln and "tokenizer.json is missing" in ln for ln in error_lines(p)), p.stderr


# ---------------------------------------------------------------------------------------------
# text: a tokenizer from the `tokenizers` library (byte-level BPE, trained here) beside a tiny
# GPT-2, and the SmolLM2 GGUF (model + tokenizer + chat template)

TEXT_PROMPT = "Grüße, 世界! The café's naïve piñata 🎉 says"


def make_tokenized_gpt2(root):
    """A GPT-2 tiny model (vocab 320) with a byte-level BPE tokenizer trained on a few lines,
    saved as tokenizer.json + tokenizer_config.json (PreTrainedTokenizerFast.save_pretrained)."""
    from tokenizers import ByteLevelBPETokenizer
    corpus = ["the quick brown fox jumps over the lazy dog", "Grüße aus München, 世界 und café",
              "naïve piñata parties 🎉 are fun", "hello world, hello tokens"] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=319, min_frequency=1, special_tokens=["<|endoftext|>"])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>")
    vocab = 320
    assert len(fast) <= vocab
    model = make_gpt2(root, n_embd=48, vocab=vocab, n_layer=2, n_head=3, n_positions=128, seed=21)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".weight") and ".ln_" not in n:
                p.mul_(5.0)
    model.save_pretrained(str(root), safe_serialization=True)
    fast.save_pretrained(str(root))
    return model, fast


def test_prompt_text_and_streaming(tmp_path):
    model, tok = make_tokenized_gpt2(tmp_path / "gpt2tok")
    want_prompt = tok(TEXT_PROMPT)["input_ids"]
    ref = hf_greedy(model, want_prompt, n_new=48)
    proc = run_vd("generate", "--model", tmp_path / "gpt2tok", "--prompt", TEXT_PROMPT, "--json", "--ignore_eos", 1,
                  "--max_new_tokens", 48, "--threads", GEN_THREADS)
    out = json.loads(proc.stdout)
    assert out["prompt_ids"] == want_prompt
    assert out["ids"] == ref
    assert out["text"] == tok.decode(ref, skip_special_tokens=True)
    # streamed: the same text, whole characters (the bytes of a character may span tokens)
    proc = run_vd("generate", "--model", tmp_path / "gpt2tok", "--prompt", TEXT_PROMPT, "--ignore_eos", 1,
                  "--max_new_tokens", 48, "--threads", GEN_THREADS)
    assert proc.stdout == out["text"] + "\n"


@pytest.fixture(scope="module")
def smollm2():
    import os
    import pathlib
    path = pathlib.Path(os.environ.get("VERA_SMOLLM2_GGUF", pathlib.Path.home() / ".cache/vera-dist/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32)
    model.eval()
    return path, tok, model


def test_smollm2_chat_greedy(smollm2):
    path, tok, model = smollm2
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(prompt, dict) or hasattr(prompt, "keys"):
        prompt = prompt["input_ids"]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ref = hf_greedy(model, list(prompt), n_new=N_NEW, eos=eos)
    proc = run_vd("generate", "--model", path, "--chat", json.dumps(messages), "--json", "--max_new_tokens", N_NEW,
                  "--threads", GEN_THREADS, timeout=120)
    out = json.loads(proc.stdout)
    assert out["prompt_ids"] == list(prompt)
    assert out["ids"] == ref, f"first difference at {next((i for i, (a, b) in enumerate(zip(out['ids'], ref)) if a != b), None)}"
    assert out["text"] == tok.decode(ref, skip_special_tokens=True)
    print("SmolLM2:", repr(out["text"]))


def test_smollm2_prompt_greedy(smollm2):
    path, tok, model = smollm2
    text = "The three primary colors are"
    prompt = tok(text)["input_ids"]
    ref = hf_greedy(model, prompt, n_new=16, eos=tok.eos_token_id)
    proc = run_vd("generate", "--model", path, "--prompt", text, "--json", "--max_new_tokens", 16,
                  "--threads", GEN_THREADS, timeout=120)
    out = json.loads(proc.stdout)
    assert out["prompt_ids"] == prompt
    assert out["ids"] == ref, f"first difference at {next((i for i, (a, b) in enumerate(zip(out['ids'], ref)) if a != b), None)}"
    assert out["text"] == tok.decode(ref, skip_special_tokens=True)
