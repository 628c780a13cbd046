"""GPT-NeoX / Pythia: LayerNorm, attention and MLP in parallel off the block input (by default), rotary
on the first `partial_rotary_factor` of each head's channels, GELU MLP, biases, an untied head.

The fused query_key_value projection is laid out per head: each head's rows are its query, key and value
channels in turn.
"""

from __future__ import annotations

from ingest.families import rope
from ingest.families.common import activation, unembedding
from ingest.families.fields import USED, ConfigReader, inert
from ingest.families.spec import Family
from ingest.families.tensors import StateDict, Weights, heads_from_columns, zeros
from ingest.model import ModelConfig

FIELDS = {
    "vocab_size": USED,
    "hidden_size": USED,
    "num_hidden_layers": USED,
    "num_attention_heads": USED,
    "intermediate_size": USED,
    "hidden_act": USED,
    "max_position_embeddings": USED,
    "layer_norm_eps": USED,
    "use_parallel_residual": USED,
    "attention_bias": USED,
    "tie_word_embeddings": USED,
    **rope.FIELDS,
    **{
        name: inert("dropout is off at inference")
        for name in ("attention_dropout", "hidden_dropout", "classifier_dropout")
    },
}


def read_config(reader: ConfigReader) -> ModelConfig:
    d_model, n_heads = int(reader.require("hidden_size")), int(reader.require("num_attention_heads"))
    d_head = d_model // n_heads
    return ModelConfig(
        family="gpt_neox",
        n_layers=int(reader.require("num_hidden_layers")),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        d_head=d_head,
        d_mlp=int(reader.require("intermediate_size")),
        vocab_size=int(reader.require("vocab_size")),
        n_ctx=int(reader.require("max_position_embeddings")),
        norm="layernorm",
        norm_eps=float(reader.require("layer_norm_eps")),
        activation=activation(reader, "hidden_act"),
        gated_mlp=False,
        # transformers' config class reads the legacy rotary_pct and rotary_emb_base into rope_parameters
        rope=rope.read_rope(reader, d_head, leading_channels=True),
        parallel_residual=bool(reader.require("use_parallel_residual")),
    )


def convert(cfg: ModelConfig, sd: StateDict, reader: ConfigReader) -> Weights:
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    biased = bool(reader.require("attention_bias"))
    embedding = sd.take("embed_in.weight")
    w: Weights = {
        ("embedding", None): embedding,
        ("unembedding", None): unembedding(reader, sd, embedding, "embed_out.weight"),
        ("layer_norm_gain.final", None): sd.take("final_layer_norm.weight"),
        ("layer_norm_bias.final", None): sd.take("final_layer_norm.bias"),
    }
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        qkv = sd.take(p + "attention.query_key_value.weight").reshape(h, 3, dh, d)
        qkv_bias = sd.take(p + "attention.query_key_value.bias").reshape(h, 3, dh) if biased else zeros(h, 3, dh)
        w.update(
            {
                ("layer_norm_gain.pre_attn", i): sd.take(p + "input_layernorm.weight"),
                ("layer_norm_bias.pre_attn", i): sd.take(p + "input_layernorm.bias"),
                ("attn.to_query", i): qkv[:, 0].transpose(1, 2).contiguous(),
                ("attn.to_key", i): qkv[:, 1].transpose(1, 2).contiguous(),
                ("attn.to_value", i): qkv[:, 2].transpose(1, 2).contiguous(),
                ("attn.query_bias", i): qkv_bias[:, 0].contiguous(),
                ("attn.key_bias", i): qkv_bias[:, 1].contiguous(),
                ("attn.value_bias", i): qkv_bias[:, 2].contiguous(),
                ("attn.to_residual", i): heads_from_columns(sd.take(p + "attention.dense.weight"), h),
                ("attn.residual_bias", i): sd.take(p + "attention.dense.bias") if biased else zeros(d),
                ("layer_norm_gain.pre_mlp", i): sd.take(p + "post_attention_layernorm.weight"),
                ("layer_norm_bias.pre_mlp", i): sd.take(p + "post_attention_layernorm.bias"),
                ("mlp.to_hidden", i): sd.take(p + "mlp.dense_h_to_4h.weight").T.contiguous(),
                ("mlp.hidden_bias", i): sd.take(p + "mlp.dense_h_to_4h.bias"),
                ("mlp.to_residual", i): sd.take(p + "mlp.dense_4h_to_h.weight").T.contiguous(),
                ("mlp.residual_bias", i): sd.take(p + "mlp.dense_4h_to_h.bias"),
            }
        )
    return w


FAMILY = Family("gpt_neox", FIELDS, read_config, convert, prefix="gpt_neox.")
