"""Gemma 2: Gemma (1 + w gains, sqrt(d_model) embedding scale, GELU-gated MLP, tied head) plus a norm
after the attention block and after the MLP, queries scaled by query_pre_attn_scalar^-1/2, attention
logits and final logits soft-capped (cap * tanh(x / cap)), and sliding-window attention on alternate
layers (from the first, unless `layer_types` says otherwise)."""

from __future__ import annotations

import math

from ingest.families import llama
from ingest.families.common import activation, sliding_windows
from ingest.families.fields import USED, ConfigReader, inert, only
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig

FIELDS = {
    **llama.SHAPE_FIELDS,
    "hidden_activation": USED,
    "hidden_act": inert("transformers' Gemma 2 reads hidden_activation"),
    "attention_bias": USED,
    "query_pre_attn_scalar": USED,
    "attn_logit_softcapping": USED,
    "final_logit_softcapping": USED,
    "sliding_window": USED,
    "layer_types": USED,
    "cache_implementation": inert("generation cache"),
    "use_bidirectional_attention": only(None, False),
}


def _cap(reader: ConfigReader, name: str) -> float | None:
    """A soft cap as transformers' Gemma 2 applies it: none where the config's value is None."""
    value = reader.get(name)
    return None if value is None else float(value)


def read_config(reader: ConfigReader) -> ModelConfig:
    return llama.shape_config(
        reader,
        activation=activation(reader, "hidden_activation"),
        embedding_scale=math.sqrt(int(reader.require("hidden_size"))),
        post_block_norms=True,
        attn_scale=float(reader.require("query_pre_attn_scalar")) ** -0.5,
        attn_logit_softcap=_cap(reader, "attn_logit_softcapping"),
        final_logit_softcap=_cap(reader, "final_logit_softcapping"),
        sliding_windows=sliding_windows(reader),
    )


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    biased = bool(reader.require("attention_bias"))
    layout = llama.Layout(
        qkv_bias=biased,
        out_bias=biased,
        gain_offset=1.0,
        pre_mlp_norm="pre_feedforward_layernorm",
        post_attn_norm="post_attention_layernorm",
        post_mlp_norm="post_feedforward_layernorm",
    )
    return llama.convert_with(layout, cfg, sd, reader)


FAMILY = Family("gemma2", FIELDS, read_config, convert, prefix="model.")
