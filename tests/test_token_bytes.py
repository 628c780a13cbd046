"""Token bytes and display text: characters split across tokens read without U+FFFD, in token texts and in
example contexts, for every tokenizer kind the product loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tiktoken

from ingest.errors import ModelNotFound
from ingest.model_rows import token_columns
from ingest.tokenizers import gpt2_tokenizer, load_tokenizer_json, tokenizer_for_dir
from queries import Warehouse
from tests.test_bad_input import tiny
from warehouse.token_text import display_texts, window

# Emoji (4 bytes, one with ZWJ joins), CJK (3 bytes), Latin-1 (2 bytes): byte-level BPE splits several.
TEXTS = [
    "Hi 😀 中文 🤗 naïve",
    "日本語のテキストと絵文字 👩\u200d👩\u200d👧 ok",
    "東京は晴れ。🍣🍜 price: 100€",
]
ESCAPE = re.compile(r"\\x[0-9a-f]{2}")
# Hugging Face's byte-level alphabet: each byte as one visible character (tokenizers' own table).
E4, B8, AD = "ä", "¸", "Ń"  # the bytes of '中' (e4 b8 ad) in that alphabet


def _check_columns(encoding: tiktoken.Encoding, text: str) -> list[str]:
    """Properties every tokenizer's stored columns must have; returns the display texts."""
    columns = token_columns(encoding, [encoding.encode_ordinary(text)])
    pieces, texts = columns["bytes"].to_pylist(), columns["text"].to_pylist()
    assert b"".join(pieces) == text.encode()  # the stored bytes are the text's, token by token
    assert not any("\ufffd" in t for t in texts)
    # every character appears once, on the token that completes it; the rest are escapes
    assert ESCAPE.sub("", "".join(texts)) == text
    assert texts == _expected_texts(pieces, text)
    return texts


def _expected_texts(pieces: list[bytes], text: str) -> list[str]:
    """The convention, computed from the characters of `text` (valid UTF-8 throughout): each character on
    the token holding its last byte, its bytes in earlier tokens as escapes there."""
    owner = [t for t, piece in enumerate(pieces) for _ in piece]  # token of each byte
    expected = [""] * len(pieces)
    at = 0
    for char in text:
        data = char.encode()
        for i, byte in enumerate(data[:-1]):
            if owner[at + i] != owner[at + len(data) - 1]:
                expected[owner[at + i]] += f"\\x{byte:02x}"
        expected[owner[at + len(data) - 1]] += char
        at += len(data)
    return expected


def _split_somewhere(texts: list[str]) -> None:
    """The texts above must split some character, or the checks would not cover the case they are for."""
    assert any(ESCAPE.search(t) for t in texts), texts


def test_the_character_goes_to_the_token_that_completes_it() -> None:
    mid = "中".encode()
    emoji = "😀".encode()
    assert display_texts([b" ", mid[:2], mid[2:] + b"!"]) == [" ", "\\xe4\\xb8", "中!"]
    # a token finishing one character and starting the next; a character over three tokens
    assert display_texts([emoji[:1], emoji[1:] + mid[:1], mid[1:2], mid[2:]]) == ["\\xf0", "😀\\xe4", "\\xb8", "中"]
    # byte-fallback pieces (<0xE4> <0xB8> <0xAD>): one byte per token, the same convention
    assert display_texts([b" ", b"\xe4", b"\xb8", b"\xad"]) == [" ", "\\xe4", "\\xb8", "中"]
    # bytes no character completes: invalid, cut off at the end, or a surrogate's encoding
    assert display_texts([b"\xff", b"a", b"\xed\xa0\x80", mid[:2]]) == ["\\xff", "a", "\\xed\\xa0\\x80", "\\xe4\\xb8"]
    assert display_texts([b"plain", b" text"]) == ["plain", " text"]


def test_windows_decode_the_concatenated_bytes() -> None:
    mid, emoji = "中".encode(), "😀".encode()
    pieces = [b"a", emoji[:2], emoji[2:], mid[:1], mid[1:] + b" x"]
    hit = window(pieces, 2, key=0)
    assert hit.text == "<<a>>[[😀]]中 x" and (hit.left, hit.marked, hit.right) == ("a", "😀", "中 x")
    # a window cut inside a character escapes the stray bytes at its edges only
    cut = window(pieces[2:4], 0)
    assert cut.text == "[[\\x98\\x80]]\\xe4"
    # the key token sharing a character with the hit: the character belongs to the hit
    assert window(pieces, 1, key=2).text == "a[[😀]]中 x"
    with pytest.raises(IndexError):
        window(pieces, 5)


@pytest.fixture(scope="module")
def smollm2() -> tiktoken.Encoding:
    from ingest.gguf import load_gguf_tokenizer, smollm2_gguf_path

    return load_gguf_tokenizer(smollm2_gguf_path())


def _byte_level_json(path: Path) -> Path:
    """A byte-level BPE tokenizer.json written with Hugging Face's tokenizers, whose merges stop inside
    characters: '中' is [e4 b8][ad] and ' 😀' is [20 f0 9f][98][80]."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = [(E4, B8), ("Ġ", "ð"), ("Ġð", "Ł")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(path))
    return path


def test_gpt2_tokens(tmp_path: Path) -> None:
    texts = [_check_columns(gpt2_tokenizer(), text) for text in TEXTS]
    _split_somewhere([t for prompt in texts for t in prompt])


def test_smollm2_tokens(smollm2: tiktoken.Encoding) -> None:
    texts = [_check_columns(smollm2, text) for text in TEXTS]
    _split_somewhere([t for prompt in texts for t in prompt])


def test_tokenizer_json_tokens_match_hugging_face(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    path = _byte_level_json(tmp_path / "tokenizer.json")
    ours, theirs = load_tokenizer_json(path), Tokenizer.from_file(str(path))
    for text in TEXTS:
        assert ours.encode_ordinary(text) == theirs.encode(text).ids
        _check_columns(ours, text)
    ids = ours.encode_ordinary("中 😀")
    assert token_columns(ours, [ids])["text"].to_pylist() == ["\\xe4\\xb8", "中", " \\xf0\\x9f", "\\x98", "😀"]


def test_byte_fallback_tokenizer_json_is_refused_in_one_line(tmp_path: Path) -> None:
    """SentencePiece-style BPE (<0xNN> byte tokens, '▁' for spaces) is not byte-level: refused, not misread."""
    from tokenizers import Tokenizer, models

    vocab = {"<unk>": 0, "▁": 1, "a": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, "▁a": 259}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "a")], unk_token="<unk>", byte_fallback=True))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ModelNotFound, match="byte-fallback") as caught:
        tokenizer_for_dir(tmp_path, "llama", 260)
    assert "\n" not in str(caught.value)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["model"]["byte_fallback"] = False  # a character vocabulary without the flag: refused too
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ModelNotFound, match="not a byte-level BPE tokenizer"):
        tokenizer_for_dir(tmp_path, "llama", 260)


def test_ingested_tokens_and_example_contexts(tmp_path: Path) -> None:
    """gpt2-tiny end to end: stored bytes rebuild each prompt, texts show no U+FFFD, and every example
    context over the whole prompt reads as the prompt."""
    db = tmp_path / "w"
    args = [a for text in TEXTS for a in ("--prompt", text)]
    result = tiny(db, "--no-backward", *args)
    assert result.returncode == 0, result.stderr
    wh = Warehouse(db)
    rows = wh.sql(
        "SELECT p.text, list(t.bytes ORDER BY t.token) AS pieces, list(t.text ORDER BY t.token) AS texts"
        " FROM prompts p JOIN tokens t USING (prompt_id) GROUP BY p.prompt_id, p.text ORDER BY p.prompt_id",
        output="rows",
    )
    assert [r[0] for r in rows] == TEXTS
    for text, pieces, texts in rows:
        assert b"".join(pieces) == text.encode() and ESCAPE.sub("", "".join(texts)) == text
        assert texts == display_texts(pieces)
    _split_somewhere([t for r in rows for t in r[2]])
    n = max(len(r[1]) for r in rows)
    examples = wh.top_examples("mlp_post_act", 0, 0, k=sum(len(r[1]) for r in rows), context=n)
    by_prompt = dict(wh.sql("SELECT prompt_id, text FROM prompts", output="rows"))
    for row in examples.to_pylist():
        marked = row["context_text"].split("[[")[1].split("]]")[0]
        assert row["context_text"].replace("[[", "").replace("]]", "") == by_prompt[row["prompt_id"]]
        assert row["left_context"] + marked + row["right_context"] == by_prompt[row["prompt_id"]]
    vocab = wh.sql("SELECT text, bytes FROM vocab", output="rows")
    assert all(text == display_texts([piece])[0] for text, piece in vocab)
    assert not any("\ufffd" in text for text, piece in vocab if b"\xef\xbf\xbd" not in piece)
