"""Pieces several families' readers share: activation names and the embedding tie."""

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


def activation(reader: ConfigReader, field: str, default: str) -> str:
    name = str(reader.get(field, default))
    if name not in ACTIVATION_NAMES:
        reader.refuse(field, name, f"implemented: {', '.join(ACTIVATION_NAMES)}")
    return ACTIVATION_NAMES[name]


def unembedding(
    reader: ConfigReader, tensors: StateDict, embedding: torch.Tensor, head: str, tied_by_default: bool
) -> torch.Tensor:
    """(d_model, vocab): the embedding's transpose when the config ties them (a saved head is then unused,
    as in transformers), else the checkpoint's own head."""
    if reader.get("tie_word_embeddings", tied_by_default):
        tensors.drop(head)
        return embedding.T.contiguous()
    return tensors.take(head).T.contiguous()


def sliding_windows(reader: ConfigReader, window: object, default_types: list[str]) -> tuple[int | None, ...]:
    """Per layer: the window of a 'sliding_attention' layer, None for 'full_attention' (config `layer_types`,
    else the family's default pattern). No window at all when `window` is None."""
    n_layers = int(reader.require("num_hidden_layers"))
    types = list(reader.get("layer_types") or default_types)
    if len(types) != n_layers:
        reader.refuse("layer_types", types, f"needs one entry per layer ({n_layers})")
    for kind in types:
        if kind not in ("full_attention", "sliding_attention"):
            reader.refuse("layer_types", kind, "implemented: full_attention, sliding_attention")
    if window is None:
        return ()
    return tuple(int(window) if kind == "sliding_attention" else None for kind in types)
