"""Memory a prompt needs, estimated before the model runs, so a prompt too big for this machine is refused
with the reason instead of the process being killed by the operating system.

The estimate counts float32 tensors: the captured locations (a token-pair location holds tokens x tokens
per head: the term that dominates long prompts), the autograd graph the backward pass keeps (attention
scores and probabilities, MLP and residual activations per layer) and the logits. Fact rows themselves
stream to the writer in record batches of a bounded size (ingest/capture.py), so they add a constant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.capture import ROWS_PER_BATCH, CaptureSpec
from ingest.model import ModelConfig
from warehouse.registry import LOCATIONS, Dimension, PassType

FLOAT = 4
# Bytes per fact row in flight (Arrow columns, and DuckDB's copy while it writes): twice the stream's batch.
_ROWS_IN_FLIGHT = 2 * ROWS_PER_BATCH * 40
_UNITS = {"": 1, "b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}


def parse_size(text: str) -> int:
    """'4GB', '512MB', '1.5 GiB' -> bytes; raises ValueError with the accepted forms."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)\s*", text.lower())
    if not match:
        raise ValueError(f"cannot read {text!r} as a size: write it like 4GB or 512MB")
    return int(float(match.group(1)) * _UNITS[match.group(2).replace("i", "")])


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping); None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class Estimate:
    """Bytes one batch of prompts needs, by part."""

    captured: dict[str, int]  # location -> bytes of its kept tensors (every layer and pass)
    graph: int  # what the forward keeps for the backward, and the logits

    @property
    def total(self) -> int:
        return sum(self.captured.values()) + self.graph + _ROWS_IN_FLIGHT

    def largest(self) -> str:
        name, size = max(self.captured.items(), key=lambda item: item[1], default=("", 0))
        return f"{name} {size / 2**30:.1f} GB" if name else "the model pass"


def estimate(config: ModelConfig, spec: CaptureSpec, n_prompts: int, n_tokens: int, backward: bool) -> Estimate:
    """Peak bytes for a padded batch of `n_prompts` prompts of `n_tokens` tokens (both passes when
    `backward`). An upper-side estimate: tensors are counted whole (token-pair tensors as full squares)."""
    shape = config.shape
    layers = config.n_layers if spec.layers is None else len(spec.layers)
    captured: dict[str, int] = {}
    for name, passes in spec.passes.items():
        loc = LOCATIONS[name]
        per_prompt = 1
        for dim in loc.shape:
            per_prompt *= shape.size(dim, n_tokens)
        if loc.shape[-1] == Dimension.VOCAB_SIZE:
            per_prompt = loc.n_token_axes * shape.vocab_size  # logits: the last token's row is kept
        n_passes = sum(1 for p in passes if p == PassType.FORWARD or backward)
        captured[name] = n_prompts * per_prompt * n_passes * FLOAT * (layers if loc.has_layers else 1)
    for sae in spec.saes:  # latents, their gradient and the encoder's pre-activations; the error and its gradient
        captured[f"SAE {sae.site.hook_name}"] = n_prompts * n_tokens * FLOAT * (3 * sae.d_sae + 2 * sae.d_in)
    t, h = n_tokens, config.n_heads
    per_layer = 2 * h * t * t + 4 * t * config.d_mlp + 8 * t * config.d_model
    graph = n_prompts * FLOAT * (config.n_layers * per_layer + 3 * t * config.vocab_size)
    return Estimate(captured, graph * (2 if backward else 1))
