"""Qwen2 / Qwen2.5: Llama's layout with query, key and value biases (none on the output projection),
and sliding-window attention on the layers its config marks."""

from __future__ import annotations

from ingest.families import llama
from ingest.families.common import activation, sliding_windows
from ingest.families.fields import USED, ConfigReader, inert
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig

_FOLDED = "transformers' config class folds it into sliding_window and layer_types, read here"
FIELDS = {
    **llama.SHAPE_FIELDS,
    "hidden_act": USED,
    "use_sliding_window": inert(_FOLDED),
    "sliding_window": USED,
    "max_window_layers": inert(_FOLDED),
    "layer_types": USED,
}


def read_config(reader: ConfigReader, **switches: object) -> ModelConfig:
    """`switches`: more ModelConfig fields, for the families built on Qwen2's config (Qwen3)."""
    return llama.shape_config(
        reader,
        activation=activation(reader, "hidden_act"),
        sliding_windows=sliding_windows(reader),
        **switches,
    )


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    return llama.convert_with(llama.Layout(qkv_bias=True), cfg, sd, reader)


FAMILY = Family("qwen2", FIELDS, read_config, convert, prefix="model.")
