"""Memory a prompt needs, estimated before the model runs, so a prompt too big for this machine is refused
with the reason instead of the process being killed by the operating system.

The estimate counts float32 tensors, each once: the captured locations (a token-pair location holds
tokens x tokens per head: the term that dominates long prompts; a captured forward value is the very
tensor autograd keeps, so it is not counted again), what else the backward pass keeps per layer (the
attention probabilities where they are not captured, the MLP's hidden activations, the residual-width
tensors of the attention), the logits and their log-softmax, and what is in flight at one moment (one
layer's attention scores, their masked copy and gradients; the logits' gradient). Fact rows themselves
stream to the writer in record batches of a bounded size (ingest/capture.py), so they add a constant.
Measured against the peak RSS a long SmolLM2 prompt adds to a loaded ingest in BENCHMARKS.md
(`python -m bench.memory`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.capture import ROWS_PER_BATCH, CaptureSpec
from ingest.model import ModelConfig
from warehouse.registry import LOCATIONS, Dimension, PassType
from warehouse.summaries import ACT_TIMES_GRAD, summarised_location

FLOAT = 4
# The running summaries' bytes per node and group (ingest/summaries.py): its figures (sums in float64, min,
# max, non-zeros, 24 histogram bins: 232 B) and its best and worst K values with their positions and the
# positions last flushed (800 B).
SUMMARY_BYTES = 232 + 800
# Bytes of one fact row as the writer hands it over (Arrow: ids, names dictionary-coded, both passes). The
# rows of a batch's per-token locations are in memory at once while it commits (measured: 1.8 MiB per
# SmolLM2 token of the default capture, its 70,000 rows a token); token-pair rows stream (ROWS_PER_BATCH).
FACT_ROW_BYTES = 27
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
    graph: int  # what else the forward keeps for the backward, and the logits
    transient: int  # what is in flight at the peak: one layer's attention scores and gradients, the logits'
    summaries: int = 0  # the run's running summaries (the same for every batch), when it keeps them
    rows: int = 0  # the batch's fact rows in flight to the commit, when it keeps them

    @property
    def held(self) -> int:
        """Bytes the writer holds of the batch once its pass is over: the captured tensors."""
        return sum(self.captured.values())

    @property
    def total(self) -> int:
        """Bytes the batch's pass needs at its peak."""
        return self.held + self.graph + self.transient + self.summaries + self.rows + _ROWS_IN_FLIGHT

    def largest(self) -> str:
        name, size = max(self.captured.items(), key=lambda item: item[1], default=("", 0))
        return f"{name} {size / 2**30:.1f} GB" if name else "the model pass"


def estimate(
    config: ModelConfig,
    spec: CaptureSpec,
    n_prompts: int,
    n_tokens: int,
    backward: bool,
    summaries: bool = True,
    facts: bool = True,
) -> Estimate:
    """Peak bytes for a padded batch of `n_prompts` prompts of `n_tokens` tokens (both passes when
    `backward`; the running summaries when `summaries`, the fact rows when `facts`). An upper-side
    estimate: tensors are counted whole (token-pair tensors as full squares)."""
    layer_list = range(config.n_layers) if spec.layers is None else spec.layers
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
    t, h, vocab = n_tokens, config.n_heads, config.vocab_size
    graph = 0
    if backward:
        # probabilities the softmax and the value mixing keep, where no capture holds them already
        probs_uncaptured = sum(
            1 for layer in range(config.n_layers) if not (layer in layer_list and _captures_probs(spec))
        )
        # hidden, gate pre-activation and its activation; normed input, q, k, v per head, mixed values
        per_layer = 3 * t * config.d_mlp + 8 * t * config.d_model
        graph = config.n_layers * per_layer + probs_uncaptured * h * t * t + 2 * t * vocab
    transient = n_prompts * FLOAT * (3 * h * t * t + 2 * t * vocab)
    graph *= n_prompts * FLOAT
    state = 0
    if summaries:
        # measured after the backward pass (the graph gone, the captured tensors and the logits not), one
        # location at a time: its chosen rows (causal pairs only) of every layer side by side, for each pass
        # and for the act-times-grad product
        measuring = max((_measuring(name, size, spec, backward) for name, size in captured.items()), default=0)
        transient = max(transient + graph, measuring + n_prompts * FLOAT * 2 * t * vocab) - graph
        state = _summary_nodes(config, spec, backward) * SUMMARY_BYTES
    rows = n_prompts * n_tokens * _rows_per_token(config, spec) * FACT_ROW_BYTES if facts else 0
    return Estimate(captured, graph, transient, state, rows)


def _rows_per_token(config: ModelConfig, spec: CaptureSpec) -> int:
    """Fact rows a token adds in the captured locations with one token axis (both passes share a row)."""
    layers = config.n_layers if spec.layers is None else len(spec.layers)
    total = 0
    for name in spec.passes:
        loc = LOCATIONS[name]
        if loc.n_token_axes != 1 or loc.shape[-1] == Dimension.VOCAB_SIZE:
            continue
        nodes = 1
        for dim in loc.shape[1:]:
            nodes *= config.shape.size(dim, 1)
        total += nodes * (layers if loc.has_layers else 1)
    return total


def _measuring(name: str, size: int, spec: CaptureSpec, backward: bool) -> int:
    """Bytes the summaries' measurement of one location holds at once, from its captured bytes `size`."""
    loc = LOCATIONS.get(name)
    if loc is None or not summarised_location(loc):
        return 0
    passes = [p for p in spec.passes[name] if p == PassType.FORWARD or backward]
    copies = len(passes) + (1 if name in ACT_TIMES_GRAD and len(passes) == 2 else 0)
    return size // max(len(passes), 1) * copies // loc.n_token_axes


def _summary_nodes(config: ModelConfig, spec: CaptureSpec, backward: bool) -> int:
    """How many (node, group) figures the running summaries keep: every node of every summarised location,
    layer and pass (and act-times-grad), its first token apart from the rest."""
    layers = config.n_layers if spec.layers is None else len(spec.layers)
    total = 0
    for name, passes in spec.passes.items():
        loc = LOCATIONS[name]
        if not summarised_location(loc):
            continue
        nodes = 1
        for dim in loc.shape[loc.n_token_axes :]:
            nodes *= config.shape.size(dim, 1)
        n_passes = sum(1 for p in passes if p == PassType.FORWARD or backward)
        n_passes += 1 if name in ACT_TIMES_GRAD and backward and len(passes) == 2 else 0
        total += 2 * nodes * n_passes * (layers if loc.has_layers else 1)
    return total


def _captures_probs(spec: CaptureSpec) -> bool:
    return PassType.FORWARD in spec.passes.get("attn.qk_probs", ())
