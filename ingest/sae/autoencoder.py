"""One sparse autoencoder, whatever file it came from: its tensors in one layout and its encode/decode.

Layout (SAELens's): W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]. Encode:
x' = x - b_dec when `subtract_decoder_bias`, h = x' W_enc + b_enc, then by architecture
  standard  f = relu(h)
  jumprelu  f = relu(h) * [h > threshold]
  topk      f = relu of the k largest of h (h times the decoder row norms first when
            `rescale_by_decoder_norm`), zero elsewhere
  gated     f = [x' W_enc + b_gate > 0] * relu(x' (W_enc * exp(r_mag)) + b_mag)   (b_enc holds b_gate)
Decode: f D + b_dec with D the decoder rows (W_dec, each row divided by its norm when
`rescale_by_decoder_norm`).

An SAE with `layer_norm_input` (OpenAI's TopK autoencoders) reads x normalised per token,
(x - mean) / (std + 1e-5) with std the unbiased standard deviation over the channels, and its
reconstruction is un-normalised, r * std + mean: latent i then writes f_i * std * D_i at that token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ingest.errors import SAEError
from ingest.sae.sites import Site

ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")
LAYER_NORM_EPS = 1e-5  # added to the standard deviation (sparse_autoencoder's LN)


@dataclass(frozen=True)
class SparseAutoencoder:
    """A loaded SAE (float32 tensors) with where it reads and where it came from."""

    format: str  # 'saelens', 'sparsify', 'gemma_scope' or 'openai'
    architecture: str  # one of ARCHITECTURES
    site: Site
    path: str
    sha256: str  # of its weights file and config
    w_enc: torch.Tensor
    b_enc: torch.Tensor
    w_dec: torch.Tensor
    b_dec: torch.Tensor
    subtract_decoder_bias: bool
    threshold: torch.Tensor | None = None  # jumprelu
    k: int | None = None  # topk
    rescale_by_decoder_norm: bool = False  # topk
    b_mag: torch.Tensor | None = None  # gated
    r_mag: torch.Tensor | None = None  # gated
    layer_norm_input: bool = False  # openai TopK

    @property
    def d_in(self) -> int:
        return int(self.w_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.w_enc.shape[1])

    def to(self, device: torch.device) -> SparseAutoencoder:
        tensors = {
            name: getattr(self, name).to(device)
            for name in ("w_enc", "b_enc", "w_dec", "b_dec", "threshold", "b_mag", "r_mag")
            if getattr(self, name) is not None
        }
        return replace(self, **tensors)

    @property
    def decoder(self) -> torch.Tensor:
        """[d_sae, d_in]: what one unit of each latent adds to the reconstruction."""
        if self.rescale_by_decoder_norm:
            return self.w_dec / self.w_dec.norm(dim=-1, keepdim=True)
        return self.w_dec

    def input_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) [..., 1] of site values x [..., d_in] over the channels, std unbiased, when the SAE
        layer-normalises its input; None otherwise."""
        if not self.layer_norm_input:
            return None
        return x.mean(dim=-1, keepdim=True), x.std(dim=-1, keepdim=True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents [..., d_sae] of site values x [..., d_in]."""
        if stats := self.input_stats(x):
            mean, std = stats
            x = (x - mean) / (std + LAYER_NORM_EPS)
        centred = x - self.b_dec if self.subtract_decoder_bias else x
        pre = centred @ self.w_enc + self.b_enc
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            assert self.threshold is not None
            return torch.relu(pre) * (pre > self.threshold)
        if self.architecture == "topk":
            assert self.k is not None
            if self.rescale_by_decoder_norm:
                pre = pre * self.w_dec.norm(dim=-1)
            top = torch.topk(pre, self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        assert self.b_mag is not None and self.r_mag is not None
        magnitude = centred @ (self.w_enc * torch.exp(self.r_mag)) + self.b_mag
        return (pre > 0) * torch.relu(magnitude)

    def decode(self, latents: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The reconstruction [..., d_in] of latents [..., d_sae], un-normalised with `stats` (input_stats of
        the site values encoded: None unless the SAE layer-normalises its input)."""
        reconstruction = latents @ self.decoder + self.b_dec
        if self.layer_norm_input:
            assert stats is not None, "a layer-normalising SAE decodes with its input's stats"
            mean, std = stats
            return reconstruction * std + mean
        return reconstruction


def take(tensors: Mapping[str, Any], key: str, source: Path) -> torch.Tensor:
    """tensors[key] as a float32 torch tensor; SAEError naming the file and what it has when it is missing."""
    if key not in tensors:
        raise SAEError(f"{source} has no tensor {key!r} (it has {', '.join(sorted(tensors))})")
    return torch.as_tensor(tensors[key]).float()
