"""Rotary position embeddings: a query or key rotated by its token's position.

Angles are position x inverse frequency; a query or key rotates its first `rotary_dim` channels in
rotate-half pairs (channel i with i + rotary_dim/2) and leaves the rest as they are. The inverse
frequencies and the cos/sin multiplier are the ones transformers' own rotary embedding computes for
the checkpoint (ingest/families/rope.py), kept as the float32 values it computed: past position 500 an
inverse frequency one float32 step away moves an angle by 3e-5 rad, a visible error in q and k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rope:
    """A checkpoint's rotary embedding.

    kind and theta: transformers' `rope_type` and `rope_theta`, for the record; inv_freq: the
    (rotary_dim / 2) float32 inverse frequencies in radians per position, as Python floats (exact);
    attention_factor: cos and sin multiplied by it (YaRN's scaling, 1 elsewhere).
    """

    kind: str
    theta: float
    rotary_dim: int
    inv_freq: tuple[float, ...]
    attention_factor: float = 1.0

    def frequencies(self) -> torch.Tensor:
        """(rotary_dim / 2,) float32 inverse frequencies."""
        return torch.tensor(self.inv_freq, dtype=torch.float32)


def rotate(x: torch.Tensor, rope: Rope, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, tokens, heads, channels) by token position; channels past rotary_dim pass through."""
    angles = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)[None, :, None, :]
    cos, sin = angles.cos(), angles.sin()
    if rope.attention_factor != 1.0:
        cos, sin = cos * rope.attention_factor, sin * rope.attention_factor
    dim = rope.rotary_dim
    turned, passed = x[..., :dim], x[..., dim:]
    half = dim // 2
    rotated = torch.cat([-turned[..., half:], turned[..., :half]], dim=-1)
    out = turned * cos + rotated * sin
    return torch.cat([out, passed], dim=-1) if passed.shape[-1] else out
