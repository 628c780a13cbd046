"""OLMo 2: Llama's layout with the norms moved after the blocks (attention and the MLP read the residual
as it is; `post_attention_layernorm` and `post_feedforward_layernorm` norm their outputs before they join
it) and queries and keys RMS-normed over all heads' channels together before the rotary."""

from __future__ import annotations

from ingest.families import llama
from ingest.families.common import activation
from ingest.families.fields import USED, ConfigReader
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig

FIELDS = {**llama.SHAPE_FIELDS, "hidden_act": USED, "attention_bias": USED}


def read_config(reader: ConfigReader) -> ModelConfig:
    return llama.shape_config(
        reader,
        activation=activation(reader, "hidden_act"),
        pre_block_norms=False,
        post_block_norms=True,
        qk_norm="heads",
    )


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    biased = bool(reader.require("attention_bias"))
    layout = llama.Layout(
        qkv_bias=biased,
        out_bias=biased,
        pre_norms=False,
        post_attn_norm="post_attention_layernorm",
        post_mlp_norm="post_feedforward_layernorm",
        qk_norm="heads",
    )
    return llama.convert_with(layout, cfg, sd, reader)


FAMILY = Family("olmo2", FIELDS, read_config, convert, prefix="model.")
