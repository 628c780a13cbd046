"""What to capture, the hook that keeps it, and the conversion of kept tensors to long Arrow tables."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ingest.errors import CaptureError
from ingest.model import ModelConfig
from warehouse.facts import FACT_SCHEMA, constant_int, constant_name, expand_axes, round_to_bfloat16
from warehouse.registry import DEFAULT_CAPTURE, LOCATIONS, ActivationLocation, PassType, locations_of

LOGITS_TOP_K = 20


@dataclass(frozen=True)
class CaptureSpec:
    """Locations with the passes to store, and the layers (None: all)."""

    passes: dict[str, tuple[PassType, ...]] = field(default_factory=lambda: dict(DEFAULT_CAPTURE))
    layers: frozenset[int] | None = None
    logits_top_k: int = LOGITS_TOP_K
    saes: tuple[Any, ...] = ()  # ingest.sae.SparseAutoencoder, spliced in at their sites (run_batch)
    sae_error: bool = True  # store each SAE's reconstruction error

    @classmethod
    def parse(cls, locations: list[str] | None, layers: list[int] | None, config: ModelConfig) -> CaptureSpec:
        """`locations` are names, each optionally suffixed ':forward' or ':backward' (default: both); None
        gives DEFAULT_CAPTURE less the locations this model does not have."""
        n_layers = config.n_layers
        present = set(locations_of(config))
        passes: dict[str, tuple[PassType, ...]] = {name: p for name, p in DEFAULT_CAPTURE.items() if name in present}
        if locations:
            passes = {}
            for item in locations:
                name, _, which = item.partition(":")
                if name not in LOCATIONS:
                    raise CaptureError(f"unknown location {name!r}: choose from {', '.join(LOCATIONS)}")
                loc = LOCATIONS[name]
                if loc.from_sae:
                    raise CaptureError(f"{name} is written by a sparse autoencoder: load one with --sae DIR")
                if which:
                    try:
                        wanted: tuple[PassType, ...] = (PassType(which),)
                    except ValueError:
                        raise CaptureError(f"unknown pass {which!r} in {item!r}: use forward or backward") from None
                else:
                    wanted = (PassType.FORWARD, PassType.BACKWARD) if loc.has_backward else (PassType.FORWARD,)
                if PassType.BACKWARD in wanted and not loc.has_backward:
                    raise CaptureError(f"{name} has no backward pass: store it as {name}:forward")
                passes[name] = tuple(dict.fromkeys(passes.get(name, ()) + wanted))
        if layers:
            bad = [layer for layer in layers if not 0 <= layer < n_layers]
            if bad:
                raise CaptureError(f"layer {bad[0]} is out of range: this model has layers 0..{n_layers - 1}")
        return cls(passes, frozenset(layers) if layers else None)

    def labels(self) -> list[str]:
        spliced = [name for sae in self.saes for name in (sae.site.latent, sae.site.error)[: 1 + self.sae_error]]
        stats = [name for sae in self.saes if sae.layer_norm_input for name in sae.site.input_stats]
        both = (PassType.FORWARD, PassType.BACKWARD)
        passes = {**self.passes, **dict.fromkeys(spliced, both), **dict.fromkeys(stats, (PassType.FORWARD,))}
        return [f"{name}:{p.value}" for name, ps in passes.items() for p in ps]

    def wants(self, name: str, layer: int | None, pass_type: PassType) -> bool:
        if pass_type not in self.passes.get(name, ()):
            return False
        return layer is None or self.layers is None or layer in self.layers


class Recorder:
    """The hook: keeps the forward value of wanted locations and retains gradients where wanted."""

    def __init__(self, spec: CaptureSpec, backward: bool) -> None:
        self.spec = spec
        self.backward = backward
        self.forward: dict[tuple[str, int | None], torch.Tensor] = {}
        self._grad_of: dict[tuple[str, int | None], torch.Tensor] = {}

    def __call__(self, name: str, layer: int | None, tensor: torch.Tensor) -> torch.Tensor:
        if self.spec.wants(name, layer, PassType.FORWARD):
            self.forward[(name, layer)] = tensor.detach()
        if self.backward and tensor.requires_grad and self.spec.wants(name, layer, PassType.BACKWARD):
            tensor.retain_grad()
            self._grad_of[(name, layer)] = tensor
        return tensor

    def keep(self, name: str, layer: int | None, tensor: torch.Tensor) -> None:
        """Keep `tensor` as the location's forward value, and its gradient when there is a backward pass,
        whatever the spec says (a spliced SAE's latents and error: their SAE asked for them)."""
        self.forward[(name, layer)] = tensor.detach()
        if self.backward and tensor.requires_grad:
            tensor.retain_grad()
            self._grad_of[(name, layer)] = tensor

    def live(self, name: str, layer: int | None) -> torch.Tensor:
        """The tensor kept for the gradient of `name` at `layer` (not detached); KeyError if none is."""
        return self._grad_of[(name, layer)]

    def gradients(self) -> dict[tuple[str, int | None], torch.Tensor]:
        """The kept gradients, after backward: 0 where the objective does not depend on the tensor (a node
        objective: every location after the node)."""
        return {key: t.grad if t.grad is not None else torch.zeros_like(t) for key, t in self._grad_of.items()}


# Rows per record batch handed to the writer: large enough that per-batch overhead vanishes, small enough
# that a 2000-token prompt's attention pattern streams through in bounded memory (~30 MB per batch).
ROWS_PER_BATCH = 1 << 20


def location_rows(
    loc: ActivationLocation,
    layer: int | None,
    forward: np.ndarray | None,
    backward: np.ndarray | None,
    lengths: np.ndarray,
    prompt_ids: np.ndarray,
    bfloat16: bool = False,
    skip_first: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Fact rows for one location and layer over a right-padded batch, both passes in each row.

    `forward` and `backward` are the location's (batch, tokens, ...) arrays (either may be None: that
    column is NULL). Real tokens only; token-pair locations keep causal pairs (k <= q) only. Rows come in
    (prompt, token, node) order, in record batches of about ROWS_PER_BATCH rows, so memory stays bounded
    whatever the prompt's length. `bfloat16` rounds values to bfloat16 precision (kept as float32).
    `skip_first` leaves out the first row, which `first_row` gives.
    """
    shape = (forward if forward is not None else backward).shape  # type: ignore[union-attr]
    n_tok_axes = loc.n_token_axes
    cells = int(np.prod(shape[1 + n_tok_axes :]))
    for b, n in enumerate(int(x) for x in lengths):
        per_token = cells * (n if n_tok_axes == 2 else 1)
        step = max(1, ROWS_PER_BATCH // max(per_token, 1))
        for t0 in range(0, n, step):
            t1 = min(n, t0 + step)
            rows = _token_range_rows(loc, layer, forward, backward, b, int(prompt_ids[b]), t0, t1, bfloat16)
            if skip_first and rows.num_rows:  # a sparse location's first rows may be empty
                rows, skip_first = rows.slice(1), False
            if rows.num_rows:
                yield rows


def first_row(
    loc: ActivationLocation,
    layer: int | None,
    forward: np.ndarray | None,
    backward: np.ndarray | None,
    lengths: np.ndarray,
    prompt_ids: np.ndarray,
    bfloat16: bool = False,
) -> pa.RecordBatch:
    """The first row `location_rows` yields (first prompt, first token, first element; for a sparse
    location the first non-zero one, none when all are zero)."""
    if loc.sparse:
        rows = location_rows(loc, layer, forward, backward, lengths, prompt_ids, bfloat16)
        return next(rows, pa.RecordBatch.from_pylist([], schema=FACT_SCHEMA)).slice(0, 1)
    return _token_range_rows(loc, layer, forward, backward, 0, int(prompt_ids[0]), 0, 1, bfloat16).slice(0, 1)


def _token_range_rows(
    loc: ActivationLocation,
    layer: int | None,
    forward: np.ndarray | None,
    backward: np.ndarray | None,
    b: int,
    prompt_id: int,
    t0: int,
    t1: int,
    bfloat16: bool,
) -> pa.RecordBatch:
    n_tok_axes = loc.n_token_axes
    if n_tok_axes == 2:
        q, k = np.nonzero(np.arange(t1)[None, :] <= np.arange(t0, t1)[:, None])
        selection = [q + t0, k]

        def cut(array: np.ndarray) -> np.ndarray:
            return array[b, t0:t1, :t1][q, k]
    else:
        selection = [np.arange(t0, t1)]

        def cut(array: np.ndarray) -> np.ndarray:
            return array[b, t0:t1]

    blocks = [None if a is None else cut(a) for a in (forward, backward)]
    block_shape = next(x for x in blocks if x is not None).shape
    lead, trail = expand_axes(selection, block_shape[1:])
    if loc.sparse and blocks[0] is not None:  # rows where the forward value is non-zero
        keep = blocks[0].reshape(-1) != 0
        lead, trail = [a[keep] for a in lead], [a[keep] for a in trail]
        blocks = [None if x is None else x.reshape(-1)[keep] for x in blocks]
    n = lead[0].size
    head_axis = loc.head_axis
    values = [
        pa.nulls(n, pa.float32())
        if x is None
        else pa.array(round_to_bfloat16(x.reshape(-1)) if bfloat16 else x.reshape(-1).astype(np.float32, copy=False))
        for x in blocks
    ]
    return pa.RecordBatch.from_arrays(
        [
            constant_int(prompt_id, n, pa.int32()),
            pa.array(lead[0].astype(np.int16)),
            pa.array(lead[1].astype(np.int16)) if n_tok_axes == 2 else pa.nulls(n, pa.int16()),
            constant_int(layer, n, pa.int16()),
            pa.array(trail[head_axis - n_tok_axes].astype(np.int16))
            if head_axis is not None
            else pa.nulls(n, pa.int16()),
            constant_name(loc.node_type.value, n),
            pa.array(trail[-1].astype(np.int32)),
            constant_name(loc.dst, n),
            *values,
        ],
        schema=FACT_SCHEMA,
    )


def logits_rows(
    last_logits: np.ndarray,
    last_token: np.ndarray,
    prompt_ids: np.ndarray,
    top_k: int,
    extra_ids: list[list[int]],
    bfloat16: bool = False,
) -> pa.RecordBatch:
    """The last token's top-k logits plus any extra ids (the target and distractor) per prompt."""
    chosen = []
    for row, extra in zip(last_logits, extra_ids, strict=True):
        top = np.argpartition(-row, top_k - 1)[:top_k] if top_k < row.size else np.arange(row.size)
        chosen.append(np.union1d(top, np.asarray(extra, dtype=np.int64)))
    counts = [ids.size for ids in chosen]
    ids = np.concatenate(chosen)
    n = ids.size
    loc = LOCATIONS["logits"]
    values = last_logits[np.repeat(np.arange(len(chosen)), counts), ids].astype(np.float32)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.repeat(prompt_ids, counts).astype(np.int32)),
            pa.array(np.repeat(last_token, counts).astype(np.int16)),
            pa.nulls(n, pa.int16()),
            pa.nulls(n, pa.int16()),
            pa.nulls(n, pa.int16()),
            constant_name(loc.node_type.value, n),
            pa.array(ids.astype(np.int32)),
            constant_name(loc.dst, n),
            pa.array(round_to_bfloat16(values) if bfloat16 else values),
            pa.nulls(n, pa.float32()),
        ],
        schema=FACT_SCHEMA,
    )


def check_storable(config: ModelConfig, spec: CaptureSpec) -> None:
    """Refuse locations this model does not have."""
    for name in spec.passes:
        switch = LOCATIONS[name].only_with
        if switch and not getattr(config, switch):
            raise CaptureError(f"location {name} does not exist in this model (it has no {switch.replace('_', ' ')})")
