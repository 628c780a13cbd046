"""The component registry: the one source of truth for names and shapes.

Hooks, the Arrow converter, the schema's ENUM types and the derived views all read the names here, so a
location added here is captured, stored and typed everywhere without a second list to keep in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Dimension(StrEnum):
    """Named tensor axes; sizes come from a model's config (see `dimension_sizes`)."""

    SEQUENCE_TOKENS = "sequence_tokens"
    ATTENDED_TO_SEQUENCE_TOKENS = "attended_to_sequence_tokens"
    MAX_CONTEXT_LENGTH = "max_context_length"
    RESIDUAL_STREAM_CHANNELS = "residual_stream_channels"
    VOCAB_SIZE = "vocab_size"
    ATTN_HEADS = "attn_heads"
    KV_HEADS = "kv_heads"
    QUERY_AND_KEY_CHANNELS = "query_and_key_channels"
    VALUE_CHANNELS = "value_channels"
    MLP_ACTS = "mlp_acts"
    LAYERS = "layers"
    SINGLETON = "singleton"
    AUTOENCODER_LATENTS = "autoencoder_latents"  # sized by the sparse autoencoder, not the model

    @property
    def is_token(self) -> bool:
        return self in (Dimension.SEQUENCE_TOKENS, Dimension.ATTENDED_TO_SEQUENCE_TOKENS)

    @property
    def is_head(self) -> bool:
        return self in (Dimension.ATTN_HEADS, Dimension.KV_HEADS)


class NodeType(StrEnum):
    """What the last axis of a location indexes: the `node_index` column."""

    ATTENTION_HEAD = "attention_head"
    QK_CHANNEL = "qk_channel"
    V_CHANNEL = "v_channel"
    MLP_NEURON = "mlp_neuron"
    LAYER = "layer"
    RESIDUAL_STREAM_CHANNEL = "residual_stream_channel"
    VOCAB_TOKEN = "vocab_token"
    AUTOENCODER_LATENT = "autoencoder_latent"  # a latent of an SAE on the residual stream
    MLP_AUTOENCODER_LATENT = "mlp_autoencoder_latent"  # ... on the MLP's activations or output
    ATTENTION_AUTOENCODER_LATENT = "attention_autoencoder_latent"  # ... on attention's z or output


class PassType(StrEnum):
    FORWARD = "forward"
    BACKWARD = "backward"


NODE_TYPE_BY_DIMENSION: dict[Dimension, NodeType] = {
    Dimension.MLP_ACTS: NodeType.MLP_NEURON,
    Dimension.ATTN_HEADS: NodeType.ATTENTION_HEAD,
    Dimension.KV_HEADS: NodeType.ATTENTION_HEAD,
    Dimension.QUERY_AND_KEY_CHANNELS: NodeType.QK_CHANNEL,
    Dimension.VALUE_CHANNELS: NodeType.V_CHANNEL,
    Dimension.SINGLETON: NodeType.LAYER,
    Dimension.RESIDUAL_STREAM_CHANNELS: NodeType.RESIDUAL_STREAM_CHANNEL,
    Dimension.VOCAB_SIZE: NodeType.VOCAB_TOKEN,
    Dimension.AUTOENCODER_LATENTS: NodeType.AUTOENCODER_LATENT,
}

D = Dimension
_T, _K = D.SEQUENCE_TOKENS, D.ATTENDED_TO_SEQUENCE_TOKENS
# `only_with` of the locations a spliced sparse autoencoder writes (ingest --sae): no model has them alone.
SAE_SWITCH = "sae"


@dataclass(frozen=True)
class ActivationLocation:
    """A tensor the hooked model exposes, with its per-prompt shape.

    Axes map onto the fact table's columns: the first token axis is `token`, a second one `token2`, a
    head axis that is not the last axis is `head`, and the last axis is `node_index`.
    """

    name: str
    shape: tuple[Dimension, ...]
    description: str
    has_layers: bool = True
    has_backward: bool = True
    reference_dst: str | None = None
    only_with: str = ""  # a model config switch this location needs (e.g. post_block_norms); "": every model
    node: NodeType | None = None  # the node type where the last axis alone does not tell it
    sparse: bool = False  # stored only where the forward value is non-zero

    @property
    def from_sae(self) -> bool:
        """Written by a sparse autoencoder spliced in with `--sae`, never asked for by --locations."""
        return self.only_with == SAE_SWITCH

    @property
    def dst(self) -> str:
        """The `dst` of this location's rows: the reference system's DerivedScalarType name (lower case)
        where it names the location differently, else the location with its dots replaced."""
        return self.reference_dst or self.name.replace(".", "_")

    @property
    def node_type(self) -> NodeType:
        return self.node or NODE_TYPE_BY_DIMENSION[self.shape[-1]]

    @property
    def n_token_axes(self) -> int:
        return sum(d.is_token for d in self.shape)

    @property
    def head_axis(self) -> int | None:
        """Index of a head axis stored in the `head` column (None when the head is the node)."""
        for i, d in enumerate(self.shape[:-1]):
            if d.is_head:
                return i
        return None


_LOCATIONS = [
    ActivationLocation(
        "resid.post_emb",
        (_T, D.RESIDUAL_STREAM_CHANNELS),
        "token embedding (times the model's embedding scale) plus position embedding",
        has_layers=False,
        reference_dst="resid_post_embedding",
    ),
    ActivationLocation(
        "attn_ln.scale",
        (_T, D.SINGLETON),
        "scale of the norm before attention: sqrt(var + eps) (LayerNorm) or rms",
        reference_dst="attn_input_layer_norm_scale",
        only_with="pre_block_norms",
    ),
    ActivationLocation(
        "resid.post_mlp_ln",
        (_T, D.RESIDUAL_STREAM_CHANNELS),
        "normed residual read by this layer's attention",
        reference_dst="resid_post_mlp_layer_norm",
        only_with="pre_block_norms",
    ),
    ActivationLocation(
        "attn.q",
        (_T, D.ATTN_HEADS, D.QUERY_AND_KEY_CHANNELS),
        "query after rotary, times the square root of the logit scaling (d_head^-1/4 by default)",
        reference_dst="attn_query",
    ),
    ActivationLocation(
        "attn.k",
        (_K, D.KV_HEADS, D.QUERY_AND_KEY_CHANNELS),
        "key after rotary, scaled as the query; head is the key/value head",
        reference_dst="attn_key",
    ),
    ActivationLocation(
        "attn.v",
        (_K, D.KV_HEADS, D.VALUE_CHANNELS),
        "value including its bias; head is the key/value head",
        reference_dst="attn_value",
    ),
    ActivationLocation(
        "attn.qk_logits",
        (_T, _K, D.ATTN_HEADS),
        "the softmax's input: q . k (times the logit scaling, which attn.q and attn.k share), soft-capped "
        "(cap * tanh(x / cap)) where the model caps attention logits; every causal pair, keys outside a "
        "sliding window included (their probabilities are 0)",
    ),
    ActivationLocation(
        "attn.qk_probs",
        (_T, _K, D.ATTN_HEADS),
        "attention probabilities (of the capped logits where the model caps them), causal pairs only",
    ),
    ActivationLocation(
        "attn.v_out",
        (_T, D.ATTN_HEADS, D.VALUE_CHANNELS),
        "sum_k p v per head, before the output projection",
        reference_dst="attn_weighted_sum_of_values",
    ),
    ActivationLocation(
        "attn.v_write_norm",
        (_K, D.ATTN_HEADS),
        "||v[k, kv(h)] W_O[h]||, computed at capture (the write norm per unit probability); with a norm after "
        "the attention block ||gain_post * (v W_O[h])||, the post-norm's scale at the query token left to the "
        "views",
        has_backward=False,
    ),
    ActivationLocation(
        "attn.v_out_write_norm",
        (_T, D.ATTN_HEADS),
        "||v_out[q, h] W_O[h]||, computed at capture (the head's summed write norm); with a norm after the "
        "attention block ||gain_post * (v_out W_O[h])||, the post-norm's scale left to the views",
        has_backward=False,
    ),
    ActivationLocation(
        "attn_post_ln.scale",
        (_T, D.SINGLETON),
        "scale of the norm after the attention block (models that norm block outputs): the block output's rms",
        reference_dst="attn_output_layer_norm_scale",
        only_with="post_block_norms",
    ),
    ActivationLocation(
        "resid.delta_attn",
        (_T, D.RESIDUAL_STREAM_CHANNELS),
        "what the attention block adds to the residual: its output (output bias included), normed where the "
        "model norms block outputs",
    ),
    ActivationLocation(
        "resid.post_attn",
        (_T, D.RESIDUAL_STREAM_CHANNELS),
        "residual after attention (with a parallel MLP: the block input plus the attention output)",
    ),
    ActivationLocation(
        "mlp_ln.scale",
        (_T, D.SINGLETON),
        "scale of the norm before the MLP",
        reference_dst="mlp_input_layer_norm_scale",
        only_with="pre_block_norms",
    ),
    ActivationLocation(
        "resid.post_attn_ln",
        (_T, D.RESIDUAL_STREAM_CHANNELS),
        "normed residual read by this layer's MLP",
        reference_dst="resid_post_attn_layer_norm",
        only_with="pre_block_norms",
    ),
    ActivationLocation("mlp.pre_act", (_T, D.MLP_ACTS), "MLP pre-activation (the gate projection for gated MLPs)"),
    ActivationLocation("mlp.post_act", (_T, D.MLP_ACTS), "MLP activation: the input of the output projection"),
    ActivationLocation(
        "mlp_post_ln.scale",
        (_T, D.SINGLETON),
        "scale of the norm after the MLP (models that norm block outputs): the MLP output's rms",
        reference_dst="mlp_output_layer_norm_scale",
        only_with="post_block_norms",
    ),
    ActivationLocation(
        "resid.delta_mlp",
        (_T, D.RESIDUAL_STREAM_CHANNELS),
        "what the MLP adds to the residual: its output (output bias included), normed where the model norms "
        "block outputs",
    ),
    ActivationLocation("resid.post_mlp", (_T, D.RESIDUAL_STREAM_CHANNELS), "residual after the MLP"),
    ActivationLocation(
        "resid.ln_f.scale",
        (_T, D.SINGLETON),
        "scale of the final norm",
        has_layers=False,
        reference_dst="resid_final_layer_norm_scale",
    ),
    ActivationLocation(
        "resid.post_ln_f",
        (_T, D.RESIDUAL_STREAM_CHANNELS),
        "normed final residual",
        has_layers=False,
        reference_dst="resid_post_final_layer_norm",
    ),
    ActivationLocation(
        "logits",
        (_T, D.VOCAB_SIZE),
        "next-token logits (by default only the last token's top-k and the target and distractor ids)",
        has_layers=False,
        has_backward=False,
    ),
]


def _latents(name: str, node: NodeType, reads: str) -> ActivationLocation:
    return ActivationLocation(
        name,
        (_T, D.AUTOENCODER_LATENTS),
        f"latents of a sparse autoencoder reading {reads} (rows only where the latent is non-zero)",
        only_with=SAE_SWITCH,
        node=node,
        sparse=True,
    )


def _error(name: str, shape: tuple[Dimension, ...], reads: str) -> ActivationLocation:
    return ActivationLocation(
        name, (_T, *shape), f"{reads} minus its sparse autoencoder's reconstruction", only_with=SAE_SWITCH
    )


# The reference system's names (its online autoencoder activations); the residual stream's and attention
# z's errors have none there and are named alike.
_LOCATIONS += [
    _latents("online_autoencoder_latent", NodeType.AUTOENCODER_LATENT, "the residual stream"),
    _latents("online_mlp_autoencoder_latent", NodeType.MLP_AUTOENCODER_LATENT, "mlp.post_act or resid.delta_mlp"),
    _latents(
        "online_attention_autoencoder_latent",
        NodeType.ATTENTION_AUTOENCODER_LATENT,
        "attn.v_out (heads x value channels flattened) or resid.delta_attn",
    ),
    _error("online_autoencoder_error", (D.RESIDUAL_STREAM_CHANNELS,), "the residual stream"),
    _error("online_mlp_autoencoder_error", (D.MLP_ACTS,), "mlp.post_act"),
    _error("online_residual_mlp_autoencoder_error", (D.RESIDUAL_STREAM_CHANNELS,), "resid.delta_mlp"),
    _error("online_residual_attention_autoencoder_error", (D.RESIDUAL_STREAM_CHANNELS,), "resid.delta_attn"),
    _error("online_attention_autoencoder_error", (D.ATTN_HEADS, D.VALUE_CHANNELS), "attn.v_out"),
]
# An SAE that layer-normalises its input (OpenAI's TopK autoencoders) un-normalises its reconstruction with
# the input's mean and standard deviation per token: the views scale its latents' writes by the std.
_LOCATIONS += [
    ActivationLocation(
        f"online_{kind}autoencoder_input_{stat}",
        (_T, D.SINGLETON),
        f"{what} over the channels of the site value a layer-normalising {kind}sparse autoencoder reads "
        "(stored for such SAEs only)",
        has_backward=False,
        only_with=SAE_SWITCH,
    )
    for kind in ("", "mlp_", "attention_")
    for stat, what in (("mean", "mean"), ("std", "standard deviation (unbiased)"))
]

LOCATIONS: dict[str, ActivationLocation] = {loc.name: loc for loc in _LOCATIONS}


def locations_of(config: object) -> list[str]:
    """The locations a model has: those whose `only_with` switch is set in its config (a ModelConfig, or
    any object with the switches as attributes)."""
    return [name for name, loc in LOCATIONS.items() if not loc.only_with or getattr(config, loc.only_with)]


# The locations of a model with a norm before each block and none after (GPT-2, Llama and most families).
PRE_NORM_LOCATIONS: list[str] = [name for name, loc in LOCATIONS.items() if loc.only_with in ("", "pre_block_norms")]
LOCATION_BY_DST: dict[str, ActivationLocation] = {loc.dst: loc for loc in _LOCATIONS}

# What a default ingest stores: the Tier-1 node-table inputs, forward and backward where the columns
# need gradients, plus the residual after each MLP and the norm scales (the post-block norms' only in
# models that have them: see `default_capture`).
DEFAULT_CAPTURE: dict[str, tuple[PassType, ...]] = {
    "resid.post_emb": (PassType.FORWARD, PassType.BACKWARD),
    "mlp.post_act": (PassType.FORWARD, PassType.BACKWARD),
    "attn.qk_probs": (PassType.FORWARD, PassType.BACKWARD),
    "attn.v": (PassType.FORWARD,),
    "attn.v_write_norm": (PassType.FORWARD,),
    "attn.v_out_write_norm": (PassType.FORWARD,),
    "resid.post_mlp": (PassType.FORWARD,),
    "attn_ln.scale": (PassType.FORWARD,),
    "mlp_ln.scale": (PassType.FORWARD,),
    "attn_post_ln.scale": (PassType.FORWARD,),
    "mlp_post_ln.scale": (PassType.FORWARD,),
    "resid.ln_f.scale": (PassType.FORWARD,),
    "logits": (PassType.FORWARD,),
}


@dataclass(frozen=True)
class WeightLocation:
    """A weight tensor in standard layout: privileged axis first, then input, then output."""

    name: str
    shape: tuple[Dimension, ...]
    has_layers: bool = True


_WEIGHTS = [
    WeightLocation("embedding", (D.VOCAB_SIZE, D.RESIDUAL_STREAM_CHANNELS), has_layers=False),
    WeightLocation("position_embedding", (D.MAX_CONTEXT_LENGTH, D.RESIDUAL_STREAM_CHANNELS), has_layers=False),
    WeightLocation("unembedding", (D.RESIDUAL_STREAM_CHANNELS, D.VOCAB_SIZE), has_layers=False),
    WeightLocation("layer_norm_gain.pre_attn", (D.RESIDUAL_STREAM_CHANNELS,)),
    WeightLocation("layer_norm_bias.pre_attn", (D.RESIDUAL_STREAM_CHANNELS,)),
    WeightLocation("attn.to_query", (D.ATTN_HEADS, D.RESIDUAL_STREAM_CHANNELS, D.QUERY_AND_KEY_CHANNELS)),
    WeightLocation("attn.to_key", (D.KV_HEADS, D.RESIDUAL_STREAM_CHANNELS, D.QUERY_AND_KEY_CHANNELS)),
    WeightLocation("attn.to_value", (D.KV_HEADS, D.RESIDUAL_STREAM_CHANNELS, D.VALUE_CHANNELS)),
    WeightLocation("attn.to_residual", (D.ATTN_HEADS, D.VALUE_CHANNELS, D.RESIDUAL_STREAM_CHANNELS)),
    WeightLocation("attn.query_bias", (D.ATTN_HEADS, D.QUERY_AND_KEY_CHANNELS)),
    WeightLocation("attn.key_bias", (D.KV_HEADS, D.QUERY_AND_KEY_CHANNELS)),
    WeightLocation("attn.value_bias", (D.KV_HEADS, D.VALUE_CHANNELS)),
    WeightLocation("attn.residual_bias", (D.RESIDUAL_STREAM_CHANNELS,)),
    WeightLocation("layer_norm_gain.pre_mlp", (D.RESIDUAL_STREAM_CHANNELS,)),
    WeightLocation("layer_norm_bias.pre_mlp", (D.RESIDUAL_STREAM_CHANNELS,)),
    WeightLocation("mlp.to_hidden", (D.RESIDUAL_STREAM_CHANNELS, D.MLP_ACTS)),
    WeightLocation("mlp.to_gate", (D.RESIDUAL_STREAM_CHANNELS, D.MLP_ACTS)),
    WeightLocation("mlp.hidden_bias", (D.MLP_ACTS,)),
    WeightLocation("mlp.gate_bias", (D.MLP_ACTS,)),
    WeightLocation("mlp.to_residual", (D.MLP_ACTS, D.RESIDUAL_STREAM_CHANNELS)),
    WeightLocation("mlp.residual_bias", (D.RESIDUAL_STREAM_CHANNELS,)),
    WeightLocation("layer_norm_gain.post_attn", (D.RESIDUAL_STREAM_CHANNELS,)),
    WeightLocation("layer_norm_gain.post_mlp", (D.RESIDUAL_STREAM_CHANNELS,)),
    WeightLocation("layer_norm_gain.query", (D.ATTN_HEADS, D.QUERY_AND_KEY_CHANNELS)),
    WeightLocation("layer_norm_gain.key", (D.KV_HEADS, D.QUERY_AND_KEY_CHANNELS)),
    WeightLocation("layer_norm_gain.final", (D.RESIDUAL_STREAM_CHANNELS,), has_layers=False),
    WeightLocation("layer_norm_bias.final", (D.RESIDUAL_STREAM_CHANNELS,), has_layers=False),
]

# A spliced sparse autoencoder's write to the residual stream per unit latent ('to_residual': the decoder
# row, mapped through W_out or W_O when it decodes into mlp.post_act or attn.v_out) and its decoder
# bias's write ('bias_to_residual'), one pair per latent node type.
AUTOENCODER_WEIGHT_PREFIXES = ("autoencoder", "mlp_autoencoder", "attention_autoencoder")
_WEIGHTS += [
    weight
    for prefix in AUTOENCODER_WEIGHT_PREFIXES
    for weight in (
        WeightLocation(f"{prefix}.to_residual", (D.AUTOENCODER_LATENTS, D.RESIDUAL_STREAM_CHANNELS)),
        WeightLocation(f"{prefix}.bias_to_residual", (D.RESIDUAL_STREAM_CHANNELS,)),
    )
]
# The encoder of an SAE on the residual stream, stored with `--input-weights all` for the edges into its
# latents (queries/support/55_autoencoder_reads.sql): where latent j fires, f_j = x' . to_latent[:, j] +
# latent_bias[j], x' the site's value (divided by its std + 1e-5 for an SAE that layer-normalises its input).
# Each SAE's conventions are folded in (ingest/sae/record.py): the decoder bias it subtracts first, a gated
# SAE's magnitude path, a TopK SAE's decoder-norm rescaling, and the centring of a normalised input.
AUTOENCODER_ENCODER_WEIGHTS: tuple[str, ...] = ("autoencoder.to_latent", "autoencoder.latent_bias")
_WEIGHTS += [
    WeightLocation("autoencoder.to_latent", (D.RESIDUAL_STREAM_CHANNELS, D.AUTOENCODER_LATENTS)),
    WeightLocation("autoencoder.latent_bias", (D.AUTOENCODER_LATENTS,)),
]

WEIGHTS: dict[str, WeightLocation] = {w.name: w for w in _WEIGHTS}

# Weights the derived views read, stored whole; the large input-side matrices stay out of the lake, and of
# the unembedding only the columns of target and distractor tokens are stored (ingest/model_rows.py). The
# first has a value in every column of `weights` (see fact_rows in ingest/worker.py for why that matters).
STORED_WEIGHTS: tuple[str, ...] = (
    "attn.to_residual",
    "attn.residual_bias",
    "mlp.to_residual",
    "mlp.residual_bias",
    "layer_norm_gain.pre_attn",
    "layer_norm_bias.pre_attn",
    "layer_norm_gain.pre_mlp",
    "layer_norm_bias.pre_mlp",
    "layer_norm_gain.final",
    "layer_norm_bias.final",
    "layer_norm_gain.post_attn",
    "layer_norm_gain.post_mlp",
)

# The input side (what a neuron or a head reads from the residual), stored with `actwh ingest
# --input-weights all` for the edge macros (queries/support/60_edges.sql): d_model x (2 d_mlp + heads'
# query, key and value channels) values a layer, the size of the rest of the model.
INPUT_WEIGHTS: tuple[str, ...] = (
    "mlp.to_hidden",
    "mlp.hidden_bias",
    "mlp.to_gate",
    "mlp.gate_bias",
    "attn.to_query",
    "attn.query_bias",
    "attn.to_key",
    "attn.key_bias",
    "attn.to_value",
    "attn.value_bias",
)


@dataclass(frozen=True)
class ModelShape:
    """The sizes a model gives the named dimensions."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_ctx: int

    def size(self, dim: Dimension, n_tokens: int = 0) -> int:
        return {
            D.SEQUENCE_TOKENS: n_tokens,
            D.ATTENDED_TO_SEQUENCE_TOKENS: n_tokens,
            D.MAX_CONTEXT_LENGTH: self.n_ctx,
            D.RESIDUAL_STREAM_CHANNELS: self.d_model,
            D.VOCAB_SIZE: self.vocab_size,
            D.ATTN_HEADS: self.n_heads,
            D.KV_HEADS: self.n_kv_heads,
            D.QUERY_AND_KEY_CHANNELS: self.d_head,
            D.VALUE_CHANNELS: self.d_head,
            D.MLP_ACTS: self.d_mlp,
            D.LAYERS: self.n_layers,
            D.SINGLETON: 1,
        }[dim]
