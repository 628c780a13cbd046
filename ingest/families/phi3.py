"""Phi-3: Llama's layout with the query, key and value projections fused into one matrix (rows: all
query heads, then key heads, then value heads) and the MLP's gate and up projections fused (gate rows
first), no biases, optional partial rotary and a sliding window on every layer."""

from __future__ import annotations

from ingest.families import llama, mistral
from ingest.families.fields import ConfigReader, inert
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig

FIELDS = {
    **mistral.FIELDS,
    "resid_pdrop": inert("dropout is off at inference"),
    "embd_pdrop": inert("dropout is off at inference"),
}


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    q, kv = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    for i in range(cfg.n_layers):
        a, m = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        sd.split(a + "qkv_proj.weight", {a + "q_proj.weight": q, a + "k_proj.weight": kv, a + "v_proj.weight": kv})
        sd.split(m + "gate_up_proj.weight", {m + "gate_proj.weight": cfg.d_mlp, m + "up_proj.weight": cfg.d_mlp})
    return llama.convert_with(llama.Layout(), cfg, sd, reader)


def read_config(reader: ConfigReader) -> ModelConfig:
    """Mistral's fields (shapes, activation, a window on every layer), with transformers' Phi-3 rotating
    only the channels its frequencies cover (`partial_rotary_factor`)."""
    return mistral.read_config(reader, leading_rotary=True)


FAMILY = Family("phi3", FIELDS, read_config, convert, prefix="model.")
