"""Gemma: Llama's layout with each norm gain stored as w and applied as 1 + w, the embedding multiplied
by sqrt(d_model) (rounded to float32, as transformers does), a GELU-gated MLP and a tied head.

The standard layout holds the applied gain 1 + w, so the views need no Gemma case.
"""

from __future__ import annotations

import math

from ingest.families import llama
from ingest.families.common import activation
from ingest.families.fields import USED, ConfigReader, inert, only
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig

FIELDS = {
    **llama.SHAPE_FIELDS,
    "hidden_act": USED,
    "hidden_activation": inert("transformers' Gemma reads hidden_act; this one is Gemma 2's"),
    "attention_bias": USED,
    "use_bidirectional_attention": only(None, False),
}


def read_config(reader: ConfigReader) -> ModelConfig:
    # Gemma's releases wrote "gelu" meaning the tanh approximation: transformers' config class reads it so
    return llama.shape_config(
        reader,
        activation=activation(reader, "hidden_act"),
        embedding_scale=math.sqrt(int(reader.require("hidden_size"))),
    )


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    biased = bool(reader.require("attention_bias"))
    layout = llama.Layout(qkv_bias=biased, out_bias=biased, gain_offset=1.0)
    return llama.convert_with(layout, cfg, sd, reader)


FAMILY = Family("gemma", FIELDS, read_config, convert, prefix="model.")
