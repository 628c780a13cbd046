"""Where a sparse autoencoder reads: hook-point names (TransformerLens and Hugging Face module paths)
mapped onto the registry's locations, and what its latents and error are stored as there."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.errors import SAEError
from ingest.model import ModelConfig

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

# TransformerLens hook names (blocks.L.<suffix>) -> registry location at layer L
_TRANSFORMER_LENS = {
    "hook_resid_mid": "resid.post_attn",
    "hook_resid_post": "resid.post_mlp",
    "hook_mlp_out": "resid.delta_mlp",
    "hook_attn_out": "resid.delta_attn",
    "attn.hook_z": "attn.v_out",
    "mlp.hook_post": "mlp.post_act",
}
# Hugging Face module paths (the module's output) -> registry location at that block
_HF_MODULES = {
    "": "resid.post_mlp",
    "mlp": "resid.delta_mlp",
    "self_attn": "resid.delta_attn",
    "attn": "resid.delta_attn",
}
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

    def width(self, config: ModelConfig) -> int:
        """The number of values per token the site holds: the SAE's d_in."""
        if self.location == "mlp.post_act":
            return config.d_mlp
        if self.location == "attn.v_out":
            return config.n_heads * config.d_head
        return config.d_model


def site_of(hook_name: str, config: ModelConfig) -> Site:
    """The site a hook point names; SAEError (one line) for one actwh does not map or this model lacks."""
    layer, location = _parse(hook_name)
    if layer >= config.n_layers:
        raise SAEError(
            f"hook point {hook_name!r} reads layer {layer}, but the model has layers 0..{config.n_layers - 1}"
        )
    if location == "resid.post_attn" and config.parallel_residual:
        raise SAEError(
            f"hook point {hook_name!r}: this model runs attention and MLP in parallel, so it has no residual "
            "between them"
        )
    if location == "resid_pre":
        return Site(hook_name, "resid.post_emb", None) if layer == 0 else Site(hook_name, "resid.post_mlp", layer - 1)
    return Site(hook_name, location, layer)


def _parse(hook_name: str) -> tuple[int, str]:
    if match := _TL_NAME.fullmatch(hook_name):
        suffix = match.group(2)
        return int(match.group(1)), "resid_pre" if suffix == "hook_resid_pre" else _TRANSFORMER_LENS[suffix]
    if match := _HF_NAME.fullmatch(hook_name):
        return int(match.group(1)), _HF_MODULES[match.group(2) or ""]
    known = ", ".join(f"blocks.L.{s}" for s in ("hook_resid_pre", *_TRANSFORMER_LENS))
    raise SAEError(
        f"unknown hook point {hook_name!r}: actwh splices SAEs at {known}, or the Hugging Face modules layers.L, "
        "layers.L.mlp, layers.L.self_attn"
    )
