"""Llama, and the layout the Llama-style families share (Mistral, Qwen2, Gemma, Gemma 2).

RMSNorm, rotary positions, gated MLP, grouped key/value heads; nn.Linear tensors stored (out, in).
Llama's config adds optional biases (`attention_bias` on q, k, v and o; `mlp_bias` on gate, up and down)
and a head dimension that need not be d_model / heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ingest.families import rope
from ingest.families.common import activation, unembedding
from ingest.families.fields import USED, ConfigReader, Rule, inert
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights, heads_from_columns, heads_from_rows, zeros
from ingest.model import ModelConfig

# The fields every Llama-style family reads the same way.
SHAPE_FIELDS: dict[str, Rule] = {
    "vocab_size": USED,
    "hidden_size": USED,
    "intermediate_size": USED,
    "num_hidden_layers": USED,
    "num_attention_heads": USED,
    "num_key_value_heads": USED,
    "head_dim": USED,
    "max_position_embeddings": USED,
    "rms_norm_eps": USED,
    "tie_word_embeddings": USED,
    "attention_dropout": inert("dropout is off at inference"),
    **rope.FIELDS,
}

FIELDS: dict[str, Rule] = {
    **SHAPE_FIELDS,
    "hidden_act": USED,
    "attention_bias": USED,
    "mlp_bias": USED,
    "pretraining_tp": inert("splits the projections' matmuls into slices: the same values"),
}


def shape_config(reader: ConfigReader, leading_rotary: bool = False, **switches: object) -> ModelConfig:
    """The sizes, norm and rotary of a Llama-style config; `switches` sets the rest of ModelConfig,
    `leading_rotary` says the family rotates only the channels its frequencies cover (rope.read_rope)."""
    d_model, n_heads = int(reader.require("hidden_size")), int(reader.require("num_attention_heads"))
    # as transformers' attention modules: the config's head_dim where it has one, else d_model / heads
    d_head = int(reader.get("head_dim") or d_model // n_heads)
    n_kv_heads = int(reader.require("num_key_value_heads"))
    if n_kv_heads > n_heads or n_heads % n_kv_heads:
        reader.refuse("num_key_value_heads", n_kv_heads, f"the {n_heads} query heads cannot share them evenly")
    fields: dict[str, object] = {
        "family": reader.family,
        "n_layers": int(reader.require("num_hidden_layers")),
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "d_head": d_head,
        "d_mlp": int(reader.require("intermediate_size")),
        "vocab_size": int(reader.require("vocab_size")),
        "n_ctx": int(reader.require("max_position_embeddings")),
        "norm": "rmsnorm",
        "norm_eps": float(reader.require("rms_norm_eps")),
        "activation": "silu",
        "gated_mlp": True,
        "rope": rope.read_rope(reader, d_head, leading_rotary),
    }
    return ModelConfig(**{**fields, **switches})  # type: ignore[arg-type]


def read_config(reader: ConfigReader) -> ModelConfig:
    return shape_config(reader, activation=activation(reader, "hidden_act"))


@dataclass(frozen=True)
class Layout:
    """Where a Llama-style checkpoint keeps what: which biases exist, how norms are named and stored."""

    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    gain_offset: float = 0.0  # Gemma stores each norm gain as w and applies 1 + w
    pre_mlp_norm: str = "post_attention_layernorm"
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None
    pre_norms: bool = True  # input_layernorm and pre_mlp_norm before the blocks (OLMo 2 has none)
    # q_norm and k_norm: over each head's channels ('head', one gain for every head: Qwen3) or over all
    # heads' channels ('heads': OLMo 2)
    qk_norm: str | None = None


def convert_with(layout: Layout, cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    """Standard-layout tensors from a Llama-style state dict; absent biases are zeros."""
    d, h, hkv, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head

    def gain(name: str) -> torch.Tensor:
        return sd.take(name) + layout.gain_offset

    def bias(name: str, present: bool, *shape: int) -> torch.Tensor:
        return sd.take(name).reshape(shape) if present else zeros(*shape)

    embedding = sd.take("embed_tokens.weight")
    w: Weights = {
        ("embedding", None): embedding,
        ("unembedding", None): unembedding(reader, sd, embedding, "lm_head.weight"),
        ("layer_norm_gain.final", None): gain("norm.weight"),
        ("layer_norm_bias.final", None): zeros(d),
    }
    for i in range(cfg.n_layers):
        p, a, m = f"layers.{i}.", f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        if layout.pre_norms:
            w[("layer_norm_gain.pre_attn", i)] = gain(p + "input_layernorm.weight")
            w[("layer_norm_gain.pre_mlp", i)] = gain(p + layout.pre_mlp_norm + ".weight")
            w[("layer_norm_bias.pre_attn", i)] = w[("layer_norm_bias.pre_mlp", i)] = zeros(d)
        w.update(
            {
                ("attn.to_query", i): heads_from_rows(sd.take(a + "q_proj.weight"), h),
                ("attn.to_key", i): heads_from_rows(sd.take(a + "k_proj.weight"), hkv),
                ("attn.to_value", i): heads_from_rows(sd.take(a + "v_proj.weight"), hkv),
                ("attn.query_bias", i): bias(a + "q_proj.bias", layout.qkv_bias, h, dh),
                ("attn.key_bias", i): bias(a + "k_proj.bias", layout.qkv_bias, hkv, dh),
                ("attn.value_bias", i): bias(a + "v_proj.bias", layout.qkv_bias, hkv, dh),
                ("attn.to_residual", i): heads_from_columns(sd.take(a + "o_proj.weight"), h),
                ("attn.residual_bias", i): bias(a + "o_proj.bias", layout.out_bias, d),
                ("mlp.to_gate", i): sd.take(m + "gate_proj.weight").T.contiguous(),
                ("mlp.to_hidden", i): sd.take(m + "up_proj.weight").T.contiguous(),
                ("mlp.gate_bias", i): bias(m + "gate_proj.bias", layout.mlp_bias, cfg.d_mlp),
                ("mlp.hidden_bias", i): bias(m + "up_proj.bias", layout.mlp_bias, cfg.d_mlp),
                ("mlp.to_residual", i): sd.take(m + "down_proj.weight").T.contiguous(),
                ("mlp.residual_bias", i): bias(m + "down_proj.bias", layout.mlp_bias, d),
            }
        )
        if layout.post_attn_norm and layout.post_mlp_norm:
            w[("layer_norm_gain.post_attn", i)] = gain(p + layout.post_attn_norm + ".weight")
            w[("layer_norm_gain.post_mlp", i)] = gain(p + layout.post_mlp_norm + ".weight")
        if layout.qk_norm is not None:
            # stored per head and channel: a per-head gain is the same for every head
            w[("layer_norm_gain.query", i)] = gain(a + "q_norm.weight").reshape(-1, dh).expand(h, dh).contiguous()
            w[("layer_norm_gain.key", i)] = gain(a + "k_norm.weight").reshape(-1, dh).expand(hkv, dh).contiguous()
    return w


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    biased = bool(reader.require("attention_bias"))
    layout = Layout(qkv_bias=biased, out_bias=biased, mlp_bias=bool(reader.require("mlp_bias")))
    return convert_with(layout, cfg, sd, reader)


FAMILY = Family("llama", FIELDS, read_config, convert, prefix="model.")
