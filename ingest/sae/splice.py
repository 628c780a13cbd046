"""Splicing SAEs into the hooked pass, as the reference system does: at its site the model continues with
reconstruction + error, error = x - decode(latents), so its output is unchanged while the latents get
gradients.

Here the site's value passes on untouched (bitwise) and the splice only routes gradients: dL/dx is the
site's gradient g as without the SAE (the error's path), dL/dlatents = g . decoder rows (the
reconstruction's path; times the input's std for an SAE that layer-normalises its input, whose mean and
std per token are kept too) and dL/derror = g. The latents are computed from the site's value detached, so
the encoder adds no gradient path upstream: every other stored value and gradient is as without the SAE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ingest.capture import Recorder
from ingest.model import Hook
from ingest.sae.autoencoder import SparseAutoencoder


class _Splice(torch.autograd.Function):
    """Identity on the site's value; its gradient also flows, unchanged, to the reconstruction and error."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, site: torch.Tensor, *paths: torch.Tensor) -> torch.Tensor:
        ctx.n_paths = len(paths)  # type: ignore[attr-defined]
        return site.view_as(site)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (grad,) * (1 + ctx.n_paths)  # type: ignore[attr-defined]


def spliced(recorder: Recorder, saes: Sequence[SparseAutoencoder], store_error: bool) -> Hook:
    """A hook that records as `recorder` does and splices each SAE in at its site, keeping its latents
    (and its error unless `store_error` is False) in the recorder, gradients included."""
    by_site = {(sae.site.location, sae.site.layer): sae for sae in saes}

    def hook(name: str, layer: int | None, tensor: torch.Tensor) -> torch.Tensor:
        tensor = recorder(name, layer, tensor)
        sae = by_site.get((name, layer))
        if sae is None:
            return tensor
        flat = tensor.detach().reshape(*tensor.shape[:2], -1)
        latents = sae.encode(flat)
        track = tensor.requires_grad
        if track:
            latents.requires_grad_()
        recorder.keep(sae.site.latent, layer, latents)
        stats = sae.input_stats(flat)
        if stats is not None:
            for name, value in zip(sae.site.input_stats, stats, strict=True):
                recorder.keep(name, layer, value)
        paths = [sae.decode(latents, stats).reshape(tensor.shape)]
        if store_error:
            error = (flat - paths[0].detach().reshape(flat.shape)).reshape(tensor.shape)
            if track:
                error.requires_grad_()
            recorder.keep(sae.site.error, layer, error)
            paths.append(error)
        return _Splice.apply(tensor, *paths) if track else tensor

    return hook
