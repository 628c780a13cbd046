"""Mistral: Llama's layout without biases, with a sliding attention window on every layer."""

from __future__ import annotations

from ingest.families import llama
from ingest.families.common import activation
from ingest.families.fields import USED, ConfigReader
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig

# (a layer_types field makes transformers read the file as ministral, refused before this table)
FIELDS = {**llama.SHAPE_FIELDS, "hidden_act": USED, "sliding_window": USED}


def read_config(reader: ConfigReader, leading_rotary: bool = False) -> ModelConfig:
    """`leading_rotary`: as llama.shape_config, for the families built on Mistral's config (Phi-3)."""
    window = reader.get("sliding_window")
    n_layers = int(reader.require("num_hidden_layers"))
    return llama.shape_config(
        reader,
        leading_rotary,
        activation=activation(reader, "hidden_act"),
        sliding_windows=(int(window),) * n_layers if window is not None else (),
    )


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    return llama.convert_with(llama.Layout(), cfg, sd, reader)


FAMILY = Family("mistral", FIELDS, read_config, convert, prefix="model.")
