"""EleutherAI sparsify directories: one per hook point (named after the module, e.g. layers.6), holding
cfg.json + sae.safetensors with encoder.weight [num_latents, d_in], encoder.bias, W_dec [num_latents, d_in]
and b_dec. Encode: relu((x - b_dec) W^T + b), the k largest kept; decode: f W_dec + b_dec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from ingest.errors import SAEError
from ingest.sae.autoencoder import take

WEIGHTS_FILE = "sae.safetensors"


def read(directory: Path, cfg: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(hook point = the directory's name, SparseAutoencoder fields); SAEError for what is not implemented."""
    where = f"{directory / 'cfg.json'}"
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SAEError(f"{where}: activation {activation!r} is not implemented (topk is)")
    for field in ("transcode", "skip_connection"):
        if cfg.get(field):
            raise SAEError(f"{where}: {field} {cfg[field]!r} is not implemented (only false)")
    k = cfg.get("k")
    if not isinstance(k, int) or k < 1:
        raise SAEError(f"{where}: k must be a positive integer, found {k!r}")
    tensors = load_file(str(directory / WEIGHTS_FILE))
    if "W_skip" in tensors:
        raise SAEError(f"{directory / WEIGHTS_FILE}: tensor W_skip (skip connection) is not implemented")
    encoder = take(tensors, "encoder.weight", directory / WEIGHTS_FILE)
    fields = {
        "architecture": "topk",
        "k": k,
        "w_enc": encoder.T.contiguous(),
        "b_enc": take(tensors, "encoder.bias", directory / WEIGHTS_FILE),
        "w_dec": take(tensors, "W_dec", directory / WEIGHTS_FILE),
        "b_dec": take(tensors, "b_dec", directory / WEIGHTS_FILE),
        "subtract_decoder_bias": True,
    }
    n_latents = cfg.get("num_latents") or 0
    if n_latents and n_latents != encoder.shape[0]:
        raise SAEError(f"{where}: num_latents {n_latents} but encoder.weight has {encoder.shape[0]} rows")
    return directory.name, fields
