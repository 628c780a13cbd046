"""Rotary position embeddings: the kinds of frequency scaling checkpoints use, computed as float32.

Angles are position x inverse frequency; a query or key rotates its first `rotary_dim` channels in
rotate-half pairs (channel i with i + rotary_dim/2) and leaves the rest as they are. The inverse
frequencies are computed in float32 step by step from their definitions: past position 500 an
inverse frequency one float32 step away moves an angle by 3e-5 rad, a visible error in q and k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class Rope:
    """A rotary embedding's settings, in Hugging Face's terms (`rope_parameters`).

    kind: 'default' (theta^(-2i/d)); 'linear' (frequencies divided by `factor`); 'llama3' (low
    frequencies divided by `factor`, high ones kept, a smooth blend between, bounded by
    `original_max_position_embeddings / low_freq_factor` and `/ high_freq_factor` wavelengths);
    'yarn' (a ramp between interpolated and original frequencies over the dimensions whose rotation
    counts at the original context lie between beta_slow and beta_fast, cos and sin times
    `attention_factor`).
    """

    theta: float
    rotary_dim: int
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float = 1.0


def inverse_frequencies(rope: Rope) -> torch.Tensor:
    """(rotary_dim / 2,) float32 inverse frequencies, radians per position."""
    dim = rope.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    base = rope.theta**exponents
    inv_freq = 1.0 / base
    if rope.kind == "default":
        return inv_freq
    if rope.kind == "linear":
        return inv_freq / rope.factor
    if rope.kind == "llama3":
        return _llama3(inv_freq, rope)
    if rope.kind == "yarn":
        return _yarn(base, rope)
    raise ValueError(f"unknown rope kind {rope.kind!r}")


def _llama3(inv_freq: torch.Tensor, rope: Rope) -> torch.Tensor:
    context = rope.original_max_position_embeddings
    long_wavelength = context / rope.low_freq_factor  # longer than this: divided by factor
    short_wavelength = context / rope.high_freq_factor  # shorter than this: kept
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > long_wavelength, inv_freq / rope.factor, inv_freq)
    blend = (context / wavelength - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    blended = (1 - blend) * scaled / rope.factor + blend * scaled
    between = ~(wavelength < short_wavelength) * ~(wavelength > long_wavelength)
    return torch.where(between, blended, scaled)


def _yarn(base: torch.Tensor, rope: Rope) -> torch.Tensor:
    dim, theta, context = rope.rotary_dim, rope.theta, rope.original_max_position_embeddings

    def dimension_of(rotations: float) -> float:
        """The (fractional) dimension whose frequency turns `rotations` times over the original context."""
        return dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dimension_of(rope.beta_fast), dimension_of(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: original frequency (fast dimensions), 0: interpolated
    original = 1.0 / base
    interpolated = 1.0 / (rope.factor * base)
    return interpolated * (1 - keep) + original * keep


def yarn_attention_factor(factor: float, mscale: float | None, mscale_all_dim: float | None) -> float:
    """YaRN's default cos/sin multiplier: 0.1 ln(factor) + 1, or a ratio of two such terms with mscales."""

    def term(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if mscale and mscale_all_dim:
        return term(factor, mscale) / term(factor, mscale_all_dim)
    return term(factor)


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
