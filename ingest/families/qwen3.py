"""Qwen3: Qwen2's config (sliding windows on the layers it marks) with an RMSNorm over each head's
query and key channels before the rotary (gains `q_norm`, `k_norm`, shared by the heads), and biases on
the query, key, value and output projections only when `attention_bias` says so."""

from __future__ import annotations

from ingest.families import llama, qwen2
from ingest.families.fields import USED, ConfigReader
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig

FIELDS = {**qwen2.FIELDS, "attention_bias": USED}


def read_config(reader: ConfigReader) -> ModelConfig:
    return qwen2.read_config(reader, qk_norm="head")


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    biased = bool(reader.require("attention_bias"))
    return llama.convert_with(llama.Layout(qkv_bias=biased, out_bias=biased, qk_norm="head"), cfg, sd, reader)


FAMILY = Family("qwen3", FIELDS, read_config, convert, prefix="model.")
