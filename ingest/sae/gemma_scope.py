"""Gemma Scope: a params.npz of W_enc [d_model, d_sae], W_dec [d_sae, d_model], b_enc, b_dec and
threshold; JumpReLU, no decoder-bias subtraction. The file names no site: it is read off the release's
folder names (gemma-scope-*-res|mlp|att .../layer_L/...) unless the --sae value gives a hook point."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ingest.errors import SAEError
from ingest.sae.autoencoder import take

WEIGHTS_FILE = "params.npz"
# release kind -> TransformerLens hook suffix of the site (residual after the block, MLP output, attention z)
_RELEASE_SITES = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}


def read(directory: Path, hook_given: bool) -> tuple[str | None, dict[str, Any]]:
    """(hook name read off the path, None when `hook_given`; SparseAutoencoder fields)."""
    path = directory / WEIGHTS_FILE
    with np.load(path) as archive:
        tensors = {key: archive[key] for key in archive.files}
    fields = {
        "architecture": "jumprelu",
        "w_enc": take(tensors, "W_enc", path),
        "b_enc": take(tensors, "b_enc", path),
        "w_dec": take(tensors, "W_dec", path),
        "b_dec": take(tensors, "b_dec", path),
        "threshold": take(tensors, "threshold", path),
        "subtract_decoder_bias": False,
    }
    return None if hook_given else _hook_from_path(directory.resolve()), fields


def _hook_from_path(directory: Path) -> str | None:
    parts = [p.lower() for p in directory.parts]
    layers = [int(m.group(1)) for p in parts if (m := re.fullmatch(r"layer_(\d+)", p))]
    kinds = [m.group(1) for p in parts if (m := re.search(r"gemma-scope.*-(res|mlp|att)(?:-|$)", p))]
    if len(layers) != 1 or len(kinds) != 1:
        raise SAEError(
            f"{directory / WEIGHTS_FILE}: a Gemma Scope file names no site and its folders do not give one "
            "(gemma-scope-*-res|mlp|att/layer_L/...): pass --sae DIR@HOOK, e.g. DIR@blocks.6.hook_resid_post"
        )
    return f"blocks.{layers[0]}.{_RELEASE_SITES[kinds[0]]}"
