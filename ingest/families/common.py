"""Pieces several families' readers share: activation names, the embedding tie, sliding windows."""

from __future__ import annotations

import torch

from ingest.families.fields import ConfigReader
from ingest.families.tensors import StateDict

# transformers' activation names (ACT2FN keys) -> the hooked model's
ACTIVATION_NAMES: dict[str, str] = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


def activation(reader: ConfigReader, field: str) -> str:
    """The activation the family's model takes from config field `field`."""
    name = str(reader.require(field))
    if name not in ACTIVATION_NAMES:
        reader.refuse(field, name, f"implemented: {', '.join(ACTIVATION_NAMES)}")
    return ACTIVATION_NAMES[name]


def unembedding(reader: ConfigReader, tensors: StateDict, embedding: torch.Tensor, head: str) -> torch.Tensor:
    """(d_model, vocab): the embedding's transpose when the config ties them (a saved head is then unused,
    as in transformers), else the checkpoint's own head."""
    if reader.require("tie_word_embeddings"):
        tensors.drop(head)
        return embedding.T.contiguous()
    return tensors.take(head).T.contiguous()


def sliding_windows(reader: ConfigReader) -> tuple[int | None, ...]:
    """Per layer, as transformers' model masks it: `sliding_window` on the layers `layer_types` marks
    'sliding_attention' (the config class fills layer_types in from its own pattern where config.json
    has none), None on 'full_attention' ones; empty when no layer slides."""
    n_layers = int(reader.require("num_hidden_layers"))
    types = list(reader.require("layer_types"))
    if len(types) != n_layers:
        reader.refuse("layer_types", types, f"needs one entry per layer ({n_layers})")
    for kind in types:
        if kind not in ("full_attention", "sliding_attention"):
            reader.refuse("layer_types", kind, "implemented: full_attention, sliding_attention")
    if "sliding_attention" not in types:
        return ()
    window = reader.get("sliding_window")
    if window is None:
        reader.refuse("sliding_window", window, "layer_types has sliding layers, and transformers' mask needs a window")
    return tuple(int(window) if kind == "sliding_attention" else None for kind in types)
