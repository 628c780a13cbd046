"""GPT-2: LayerNorm, learned absolute positions, GELU MLP, biases everywhere, fused Conv1D q/k/v.

Conv1D tensors are stored (in, out), so their columns split into heads directly.
"""

from __future__ import annotations

import torch

from ingest.families.common import activation, unembedding
from ingest.families.fields import USED, ConfigReader, inert, only
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights
from ingest.model import ModelConfig

FIELDS = {
    "n_layer": USED,
    "n_embd": USED,
    "n_head": USED,
    "n_inner": USED,
    "n_positions": USED,
    "vocab_size": USED,
    "layer_norm_epsilon": USED,
    "activation_function": USED,
    "tie_word_embeddings": USED,
    "n_ctx": inert("transformers' GPT-2 reads n_positions"),
    "scale_attn_weights": only(True),
    "scale_attn_by_inverse_layer_idx": only(False),
    "reorder_and_upcast_attn": inert("reorders and upcasts to float32: the same values in float32"),
    **{name: inert("dropout is off at inference") for name in ("attn_pdrop", "embd_pdrop", "resid_pdrop")},
    **{
        name: inert("the sequence-summary head is not part of the language model")
        for name in (
            "summary_type",
            "summary_use_proj",
            "summary_activation",
            "summary_proj_to_labels",
            "summary_first_dropout",
        )
    },
}


def read_config(reader: ConfigReader) -> ModelConfig:
    d_model, n_heads = int(reader.require("n_embd")), int(reader.require("n_head"))
    n_inner = reader.get("n_inner")
    return ModelConfig(
        family="gpt2",
        n_layers=int(reader.require("n_layer")),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=4 * d_model if n_inner is None else int(n_inner),
        vocab_size=int(reader.require("vocab_size")),
        n_ctx=int(reader.require("n_positions")),
        norm="layernorm",
        norm_eps=float(reader.require("layer_norm_epsilon")),
        activation=activation(reader, "activation_function"),
        gated_mlp=False,
    )


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head

    def per_head(mat: torch.Tensor) -> torch.Tensor:  # (d, h*dh) -> (h, d, dh)
        return mat.reshape(d, h, dh).permute(1, 0, 2).contiguous()

    embedding = sd.take("wte.weight")
    w: Weights = {
        ("embedding", None): embedding,
        ("position_embedding", None): sd.take("wpe.weight"),
        ("unembedding", None): unembedding(reader, sd, embedding, "lm_head.weight"),
        ("layer_norm_gain.final", None): sd.take("ln_f.weight"),
        ("layer_norm_bias.final", None): sd.take("ln_f.bias"),
    }
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        qkv_w, qkv_b = sd.take(p + "attn.c_attn.weight"), sd.take(p + "attn.c_attn.bias")
        w.update(
            {
                ("layer_norm_gain.pre_attn", i): sd.take(p + "ln_1.weight"),
                ("layer_norm_bias.pre_attn", i): sd.take(p + "ln_1.bias"),
                ("attn.to_query", i): per_head(qkv_w[:, :d]),
                ("attn.to_key", i): per_head(qkv_w[:, d : 2 * d]),
                ("attn.to_value", i): per_head(qkv_w[:, 2 * d :]),
                ("attn.query_bias", i): qkv_b[:d].reshape(h, dh),
                ("attn.key_bias", i): qkv_b[d : 2 * d].reshape(h, dh),
                ("attn.value_bias", i): qkv_b[2 * d :].reshape(h, dh),
                ("attn.to_residual", i): sd.take(p + "attn.c_proj.weight").reshape(h, dh, d),
                ("attn.residual_bias", i): sd.take(p + "attn.c_proj.bias"),
                ("layer_norm_gain.pre_mlp", i): sd.take(p + "ln_2.weight"),
                ("layer_norm_bias.pre_mlp", i): sd.take(p + "ln_2.bias"),
                ("mlp.to_hidden", i): sd.take(p + "mlp.c_fc.weight"),
                ("mlp.hidden_bias", i): sd.take(p + "mlp.c_fc.bias"),
                ("mlp.to_residual", i): sd.take(p + "mlp.c_proj.weight"),
                ("mlp.residual_bias", i): sd.take(p + "mlp.c_proj.bias"),
            }
        )
    return w


FAMILY = Family("gpt2", FIELDS, read_config, convert, prefix="transformer.")
