"""Qwen2 / Qwen2.5: Llama's layout with query, key and value biases (none on the output projection),
and sliding-window attention on the layers its config marks."""

from __future__ import annotations

from ingest.families import llama
from ingest.families.common import activation, sliding_windows
from ingest.families.fields import USED, ConfigReader
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig

FIELDS = {
    **llama.SHAPE_FIELDS,
    "hidden_act": USED,
    "use_sliding_window": USED,
    "sliding_window": USED,
    "max_window_layers": USED,
    "layer_types": USED,
}


def read_config(reader: ConfigReader, **switches: object) -> ModelConfig:
    """`switches`: more ModelConfig fields, for the families built on Qwen2's config (Qwen3)."""
    n_layers = int(reader.require("num_hidden_layers"))
    window = reader.get("sliding_window") if reader.get("use_sliding_window", False) else None
    first_sliding = int(reader.get("max_window_layers", 28))
    default_types = [
        "sliding_attention" if window is not None and i >= first_sliding else "full_attention" for i in range(n_layers)
    ]
    return llama.shape_config(
        reader,
        activation=activation(reader, "hidden_act", "silu"),
        sliding_windows=sliding_windows(reader, window, default_types),
        **switches,
    )


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    return llama.convert_with(llama.Layout(qkv_bias=True), cfg, sd, reader)


FAMILY = Family("qwen2", FIELDS, read_config, convert, prefix="model.")
