"""Where a sparse autoencoder reads: hook-point names (TransformerLens and Hugging Face module paths)
mapped onto the registry's locations, and what its latents and error are stored as there."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.errors import SAEError
from ingest.model import ModelConfig
from warehouse.hook_names import BLOCK_SUFFIXES
from warehouse.registry import LOCATIONS

# registry location read -> (latent location, error location, weight prefix of its residual writes)
_KINDS: dict[str, tuple[str, str, str]] = {
    "resid.post_emb": ("online_autoencoder_latent", "online_autoencoder_error", "autoencoder"),
    "resid.post_attn": ("online_autoencoder_latent", "online_autoencoder_error", "autoencoder"),
    "resid.post_mlp": ("online_autoencoder_latent", "online_autoencoder_error", "autoencoder"),
    "mlp.post_act": ("online_mlp_autoencoder_latent", "online_mlp_autoencoder_error", "mlp_autoencoder"),
    "resid.delta_mlp": ("online_mlp_autoencoder_latent", "online_residual_mlp_autoencoder_error", "mlp_autoencoder"),
    "resid.delta_attn": (
        "online_attention_autoencoder_latent",
        "online_residual_attention_autoencoder_error",
        "attention_autoencoder",
    ),
    "attn.v_out": (
        "online_attention_autoencoder_latent",
        "online_attention_autoencoder_error",
        "attention_autoencoder",
    ),
}

# TransformerLens hook names (blocks.L.<suffix>) -> registry location at layer L, for the sites SAEs read
_TRANSFORMER_LENS = {suffix: location for suffix, location in BLOCK_SUFFIXES.items() if location in _KINDS}
# Hugging Face module paths (the module's output) -> registry location at that block
_HF_MODULES = {
    "": "resid.post_mlp",
    "mlp": "resid.delta_mlp",
    "self_attn": "resid.delta_attn",
    "attn": "resid.delta_attn",
}
# The reference system's names of the sites (registry location names, their dsts as in its
# DerivedScalarType, e.g. mlp_post_act / MLP_POST_ACT): they name no layer, which comes with them.
_REFERENCE_SITES = [name for name in _KINDS if name != "resid.post_emb"]  # its autoencoders read no embedding
_REFERENCE_DSTS = [LOCATIONS[name].dst for name in _REFERENCE_SITES]
_REFERENCE_NAMES = {alias: name for name in _REFERENCE_SITES for alias in (name, LOCATIONS[name].dst)}
_TL_NAME = re.compile(r"blocks\.(\d+)\.(hook_resid_pre|" + "|".join(re.escape(k) for k in _TRANSFORMER_LENS) + r")")
_HF_NAME = re.compile(r"(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?")


@dataclass(frozen=True)
class Site:
    """Where an SAE reads and what it writes: `location` (a registry name) at `layer` (None: no layer)."""

    hook_name: str
    location: str
    layer: int | None

    @property
    def latent(self) -> str:
        return _KINDS[self.location][0]

    @property
    def error(self) -> str:
        return _KINDS[self.location][1]

    @property
    def weight_prefix(self) -> str:
        return _KINDS[self.location][2]

    @property
    def input_stats(self) -> tuple[str, str]:
        """The locations of the input's mean and std, stored for an SAE that layer-normalises its input."""
        return self.latent.replace("_latent", "_input_mean"), self.latent.replace("_latent", "_input_std")

    def width(self, config: ModelConfig) -> int:
        """The number of values per token the site holds: the SAE's d_in."""
        if self.location == "mlp.post_act":
            return config.d_mlp
        if self.location == "attn.v_out":
            return config.n_heads * config.d_head
        return config.d_model


def site_of(hook_name: str, config: ModelConfig, layer_given: int | None = None) -> Site:
    """The site a hook point names, at `layer_given` for a reference-system location name (which names no
    layer); SAEError (one line) for one actwh does not map, this model lacks, or a layer that is missing or
    contradicts the hook point's."""
    layer, location = _parse(hook_name, layer_given)
    if layer >= config.n_layers:
        raise SAEError(
            f"hook point {hook_name!r} reads layer {layer}, but the model has layers 0..{config.n_layers - 1}"
        )
    if location == "resid.post_attn" and config.parallel_residual:
        raise SAEError(
            f"hook point {hook_name!r}: this model runs attention and MLP in parallel, so it has no residual "
            "between them"
        )
    if config.post_block_norms and location not in ("resid_pre", "resid.post_attn", "resid.post_mlp"):
        # A block's output is normed before it joins the residual here: the views do not model an SAE's
        # writes through that norm, and module outputs (layers.L.mlp) differ from the residual deltas.
        raise SAEError(
            f"hook point {hook_name!r}: this model norms each block's output before the residual, and actwh "
            "splices SAEs on its residual stream only (hook_resid_pre, hook_resid_mid, hook_resid_post)"
        )
    if location == "resid_pre":
        return Site(hook_name, "resid.post_emb", None) if layer == 0 else Site(hook_name, "resid.post_mlp", layer - 1)
    return Site(hook_name, location, layer)


def hook_layer(hook_name: str) -> int | None:
    """The block a TransformerLens or Hugging Face hook name reads; None for a reference-system location
    name (which names no layer); SAEError for a name actwh does not map."""
    return None if _reference(hook_name) else _parse(hook_name, None)[0]


def _reference(hook_name: str) -> str | None:
    return _REFERENCE_NAMES.get(hook_name) or _REFERENCE_NAMES.get(hook_name.lower())


def _parse(hook_name: str, layer_given: int | None) -> tuple[int, str]:
    if location := _reference(hook_name):
        if layer_given is None:
            raise SAEError(
                f"hook point {hook_name!r} names no layer (a file named L.pt gives one): give one, e.g. "
                "blocks.L.hook_resid_post"
            )
        return layer_given, location
    if match := _TL_NAME.fullmatch(hook_name):
        suffix = match.group(2)
        layer, location = int(match.group(1)), "resid_pre" if suffix == "hook_resid_pre" else _TRANSFORMER_LENS[suffix]
    elif match := _HF_NAME.fullmatch(hook_name):
        layer, location = int(match.group(1)), _HF_MODULES[match.group(2) or ""]
    else:
        known = ", ".join(f"blocks.L.{s}" for s in ("hook_resid_pre", *_TRANSFORMER_LENS))
        raise SAEError(
            f"unknown hook point {hook_name!r}: actwh splices SAEs at {known}, the Hugging Face modules layers.L, "
            f"layers.L.mlp, layers.L.self_attn, or (for a file that gives the layer) {', '.join(_REFERENCE_DSTS)} or "
            "their registry names"
        )
    if layer_given is not None and layer_given != layer:
        raise SAEError(f"hook point {hook_name!r} reads layer {layer}, but the SAE's file is for layer {layer_given}")
    return layer, location
