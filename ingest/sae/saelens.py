"""SAELens directories: cfg.json + sae_weights.safetensors (SAELens 6 configs, and the older ones that name
the hook `hook_point` / `hook_name` at the top and the activation `activation_fn` / `activation_fn_str`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from ingest.errors import SAEError
from ingest.sae.autoencoder import take

WEIGHTS_FILE = "sae_weights.safetensors"
# normalize_activations values that are the identity at inference ('expected_average_only_in' is folded
# into the weights when the SAE is saved for inference)
_IDENTITY_NORMALISATIONS = (None, "none", "expected_average_only_in")


def read(directory: Path, cfg: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(hook name, SparseAutoencoder fields) of one SAELens SAE; SAEError names a field not implemented."""
    where = f"{directory / 'cfg.json'}"
    metadata = cfg.get("metadata") or {}
    hook_name = metadata.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    if activation == "topk" and architecture == "standard":
        architecture = "topk"
    elif activation not in ("relu", "topk"):
        raise SAEError(f"{where}: activation_fn {activation!r} is not implemented (relu and topk are)")
    if architecture not in ("standard", "jumprelu", "topk", "gated"):
        raise SAEError(
            f"{where}: architecture {architecture!r} is not implemented (standard, jumprelu, topk, gated are)"
        )
    normalisation = cfg.get("normalize_activations")
    if normalisation not in _IDENTITY_NORMALISATIONS:
        raise SAEError(
            f"{where}: normalize_activations {normalisation!r} is not implemented (none and "
            "expected_average_only_in are)"
        )
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in ("none", "hook_z", None):
        raise SAEError(f"{where}: reshape_activations {reshape!r} is not implemented (none and hook_z are)")
    for field in ("hook_head_index", "finetuning_scaling_factor"):
        if cfg.get(field) not in (None, False):
            raise SAEError(f"{where}: {field} {cfg[field]!r} is not implemented (only null)")
    tensors = load_file(str(directory / WEIGHTS_FILE))
    if "scaling_factor" in tensors:
        raise SAEError(f"{directory / WEIGHTS_FILE}: tensor scaling_factor (fine-tuning scale) is not implemented")
    fields: dict[str, Any] = {
        "architecture": architecture,
        "w_enc": take(tensors, "W_enc", directory / WEIGHTS_FILE),
        "w_dec": take(tensors, "W_dec", directory / WEIGHTS_FILE),
        "b_dec": take(tensors, "b_dec", directory / WEIGHTS_FILE),
        "subtract_decoder_bias": bool(cfg.get("apply_b_dec_to_input", True)),
    }
    if architecture == "gated":
        fields |= {
            name: take(tensors, key, directory / WEIGHTS_FILE)
            for name, key in (("b_enc", "b_gate"), ("b_mag", "b_mag"))
        }
        fields["r_mag"] = take(tensors, "r_mag", directory / WEIGHTS_FILE)
    else:
        fields["b_enc"] = take(tensors, "b_enc", directory / WEIGHTS_FILE)
    if architecture == "jumprelu":
        fields["threshold"] = take(tensors, "threshold", directory / WEIGHTS_FILE)
    if architecture == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if not isinstance(k, int) or k < 1:
            raise SAEError(f"{where}: topk needs a positive integer k, found {k!r}")
        fields["k"] = k
        fields["rescale_by_decoder_norm"] = bool(cfg.get("rescale_acts_by_decoder_norm", False))
    elif cfg.get("rescale_acts_by_decoder_norm"):
        raise SAEError(f"{where}: rescale_acts_by_decoder_norm with architecture {architecture!r} is not implemented")
    return hook_name, fields
