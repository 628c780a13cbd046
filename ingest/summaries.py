"""Per-node summaries of a batch, computed in torch where the batch was captured (on the GPU when the pass
ran there), before the tensors leave the device.

The values summarised are the values stored: rounded to bfloat16 first when the ingest stores bfloat16,
and for the act-times-grad dsts the float32 product of the stored forward and backward values, which is
what their views compute. Only real tokens count, and causal pairs (k <= q) of token-pair locations. The
rows a batch adds and the merge are defined in warehouse/summaries.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from warehouse.facts import constant_name
from warehouse.registry import LOCATIONS, ActivationLocation
from warehouse.summaries import ACT_TIMES_GRAD, EDGES, EXAMPLES_K, N_BINS, summarised_location


@dataclass
class _Parts:
    """The batch's summary and example rows, one Arrow table per (dst, pass, first_token) chunk."""

    summaries: list[pa.Table] = field(default_factory=list)
    examples: list[pa.Table] = field(default_factory=list)


class SummaryState:
    """The running K-th highest and lowest value of every node seen so far in this run (per dst, pass,
    layer and first_token group): a batch's example candidates are only the values that reach them, so
    the stored candidates always hold every node's K highest and lowest values, at a cost that falls
    as the run goes on (about K (1 + ln batches) rows per node and side in all)."""

    def __init__(self, bfloat16: bool, k: int = EXAMPLES_K) -> None:
        self.bfloat16 = bfloat16
        self.k = k
        self._best: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def batch_tables(
        self,
        forward: dict[tuple[str, int | None], torch.Tensor],
        backward: dict[tuple[str, int | None], torch.Tensor],
        lengths: torch.Tensor,
        prompt_ids: np.ndarray,
    ) -> tuple[pa.Table, pa.Table]:
        """The batch's summary and example rows (see warehouse/schema.sql), from its captured tensors
        (batch, tokens, ...) right-padded to `lengths`."""
        parts = _Parts()
        saved = dict(self._best)  # a batch that fails (out of memory, say) is retried: leave no trace of it
        try:
            self._add_all(parts, forward, backward, lengths, prompt_ids)
        except BaseException:
            self._best = saved
            raise
        return _concat(parts.summaries, SUMMARY_SCHEMA), _concat(parts.examples, EXAMPLE_SCHEMA)

    def _add_all(
        self,
        parts: _Parts,
        forward: dict[tuple[str, int | None], torch.Tensor],
        backward: dict[tuple[str, int | None], torch.Tensor],
        lengths: torch.Tensor,
        prompt_ids: np.ndarray,
    ) -> None:
        # One computation per location and pass, every layer at once (a call per layer cost more than the
        # arithmetic): the layers become one more node axis.
        with torch.no_grad():
            for name in sorted({name for name, _ in [*forward, *backward] if summarised_location(LOCATIONS[name])}):
                loc = LOCATIONS[name]
                stacked = {}
                for pass_type, tensors in (("forward", forward), ("backward", backward)):
                    layers = sorted((layer for n, layer in tensors if n == name), key=lambda x: -1 if x is None else x)
                    if layers:
                        values = torch.stack([self._stored(tensors[(name, layer)]) for layer in layers], dim=-1)
                        stacked[pass_type] = (layers, values)
                        self._summarise(parts, loc, loc.dst, pass_type, layers, values, lengths, prompt_ids)
                if name in ACT_TIMES_GRAD and len(stacked) == 2 and stacked["forward"][0] == stacked["backward"][0]:
                    layers, values = stacked["forward"]
                    product = values * stacked["backward"][1]
                    self._summarise(parts, loc, ACT_TIMES_GRAD[name], "forward", layers, product, lengths, prompt_ids)

    def _stored(self, tensor: torch.Tensor) -> torch.Tensor:
        values = tensor.detach().to(torch.float32)
        # torch's float32 -> bfloat16 conversion rounds to nearest even, as warehouse.facts.round_to_bfloat16
        return values.to(torch.bfloat16).to(torch.float32) if self.bfloat16 else values

    def _summarise(
        self,
        parts: _Parts,
        loc: ActivationLocation,
        dst: str,
        pass_type: str,
        layers: list[int | None],
        values: torch.Tensor,
        lengths: torch.Tensor,
        prompt_ids: np.ndarray,
    ) -> None:
        """Summary and example rows of `values` (batch, tokens, [tokens,] node axes..., layer)."""
        n_batch, n_tok = values.shape[:2]
        pairs = loc.n_token_axes == 2
        n_second = values.shape[2] if pairs else 1
        node_shape = values.shape[1 + loc.n_token_axes : -1]
        device = values.device
        # nodes first, so that each node's values are one contiguous row to sort
        by_node = values.reshape(n_batch * n_tok * n_second, -1).T
        token = torch.arange(n_tok, device=device)
        valid = (token[None, :] < lengths.to(device)[:, None])[:, :, None]
        if pairs:
            valid = valid & (torch.arange(n_second, device=device)[None, :] <= token[:, None])[None]
        else:
            valid = valid.expand(n_batch, n_tok, 1)
        head, node_index = _node_columns(loc, node_shape)
        n_layers = len(layers)
        layer = np.tile(np.array([-1 if x is None else x for x in layers], np.int16), node_index.size)
        head, node_index = np.repeat(head, n_layers), np.repeat(node_index, n_layers)
        for first in (True, False):
            chosen = valid & ((token == 0) if first else (token > 0))[None, :, None]
            where = chosen.reshape(-1).nonzero().squeeze(1)
            if where.numel() == 0:
                continue
            chunk = by_node.index_select(1, where)  # (nodes, rows)
            k = min(self.k, chunk.shape[1])
            top, top_at = chunk.topk(k, dim=1)  # highest first
            bottom, bottom_at = chunk.topk(k, dim=1, largest=False)  # lowest first
            keys = _key_columns(dst, pass_type, layer, loc, head, node_index, first)
            parts.summaries.append(_summary_table(keys, chunk, top[:, 0], bottom[:, 0]))
            positions = np.stack(np.unravel_index(where.cpu().numpy(), (n_batch, n_tok, n_second)), axis=1)
            key = (dst, pass_type, tuple(layers), first)
            example = self._candidates(key, top, top_at, bottom, bottom_at, positions, prompt_ids, pairs)
            parts.examples.append(_example_table(keys, *example))

    def _candidates(
        self,
        key: tuple,
        top: torch.Tensor,
        top_at: torch.Tensor,
        bottom: torch.Tensor,
        bottom_at: torch.Tensor,
        positions: np.ndarray,
        prompt_ids: np.ndarray,
        pairs: bool,
    ) -> tuple[np.ndarray, ...]:
        """(node, side, prompt_id, token, token2, value) columns of the batch's example candidates: its K
        highest and lowest values of each node (`top`/`bottom` (nodes, k), highest/lowest first, `*_at`
        their rows) that reach the run's running K-th highest or lowest."""
        k = top.shape[1]
        best = self._best.get(key)
        keep_top = keep_bottom = torch.ones_like(top, dtype=torch.bool)
        if best is not None:
            high, low = best
            # Ties with the running K-th are kept: the K highest may be any of the tied rows.
            if high.shape[1] >= self.k:
                keep_top = top >= high[:, -1:]
                keep_bottom = bottom <= low[:, -1:]
            top_merged = torch.cat([high, top], dim=1).topk(min(self.k, high.shape[1] + k), dim=1).values
            bottom_merged = torch.cat([low, bottom], dim=1).topk(min(self.k, low.shape[1] + k), dim=1, largest=False)
            self._best[key] = (top_merged, bottom_merged.values)
        else:  # a copy: a view would keep the whole sorted batch alive for the rest of the run
            self._best[key] = (top, bottom.clone())
        columns = []
        for side, values, at, keep in ((0, top, top_at, keep_top), (1, bottom, bottom_at, keep_bottom)):
            node, rank = keep.nonzero(as_tuple=True)
            where = positions[at[node, rank].cpu().numpy()]
            columns.append((node.cpu().numpy(), np.full(node.numel(), side, np.int8), where, values[node, rank]))
        node = np.concatenate([c[0] for c in columns])
        side = np.concatenate([c[1] for c in columns])
        where = np.concatenate([c[2] for c in columns])
        value = torch.cat([c[3] for c in columns]).cpu().numpy()
        token2 = where[:, 2] if pairs else np.full(node.size, -1)
        return node, side, prompt_ids[where[:, 0]].astype(np.int32), where[:, 1], token2, value


def _node_columns(loc: ActivationLocation, node_shape: torch.Size) -> tuple[np.ndarray, np.ndarray]:
    """head and node_index of each flattened node, as the fact rows give them (-1: no head column)."""
    grid = np.indices(tuple(node_shape)).reshape(len(node_shape), -1)
    head = grid[loc.head_axis - loc.n_token_axes] if loc.head_axis is not None else np.full(grid.shape[1], -1)
    return head.astype(np.int16), grid[-1].astype(np.int32)


_NAME = pa.dictionary(pa.int8(), pa.string())
_KEY_FIELDS = [
    ("dst", _NAME),
    ("pass_type", _NAME),
    ("layer", pa.int16()),
    ("head", pa.int16()),
    ("node_type", _NAME),
    ("node_index", pa.int32()),
    ("first_token", pa.bool_()),
]
SUMMARY_SCHEMA = pa.schema(
    [
        *_KEY_FIELDS,
        ("n", pa.int64()),
        ("sum", pa.float64()),
        ("sum_sq", pa.float64()),
        ("sum_abs", pa.float64()),
        ("min", pa.float32()),
        ("max", pa.float32()),
        ("n_nonzero", pa.int64()),
        ("hist", pa.list_(pa.int32())),
    ]
)
EXAMPLE_SCHEMA = pa.schema(
    [
        *_KEY_FIELDS,
        ("side", _NAME),
        ("prompt_id", pa.int32()),
        ("token", pa.int16()),
        ("token2", pa.int16()),
        ("value", pa.float32()),
    ]
)
_SIDES = pa.array(["top", "bottom"])


def _key_columns(
    dst: str,
    pass_type: str,
    layer: np.ndarray,
    loc: ActivationLocation,
    head: np.ndarray,
    node_index: np.ndarray,
    first: bool,
) -> dict[str, Any]:
    """The node-key columns of one chunk (per node), as Arrow arrays; names dictionary-encoded."""
    n = node_index.size
    return {
        "dst": constant_name(dst, n),
        "pass_type": constant_name(pass_type, n),
        "layer": pa.array(layer),
        "head": pa.array(head),
        "node_type": constant_name(loc.node_type.value, n),
        "node_index": pa.array(node_index),
        "first_token": pa.array(np.full(n, first)),
    }


_EDGES: dict[torch.device, torch.Tensor] = {}


def _summary_table(keys: dict[str, Any], values: torch.Tensor, maxima: torch.Tensor, minima: torch.Tensor) -> pa.Table:
    """One summary row per node from its values (`values`, (nodes, rows)) and their extremes. Linear in the
    rows (a bucket per value, sums): sorting every node's values tripled a SmolLM2 ingest's time."""
    n_nodes, n_rows = values.shape
    edges = _EDGES.get(values.device)
    if edges is None:
        edges = _EDGES[values.device] = torch.tensor(EDGES, dtype=torch.float32, device=values.device)
    # bin j holds EDGES[j-1] <= x < EDGES[j] (the first bin everything below EDGES[0], the last the rest)
    bins = torch.bucketize(values, edges, right=True)
    hist = torch.zeros((n_nodes, N_BINS), dtype=torch.int32, device=values.device)
    hist.scatter_add_(1, bins, torch.ones_like(bins, dtype=torch.int32))
    zeros = (values == 0).sum(1)
    hist_flat = pa.array(hist.reshape(-1).cpu().numpy())
    return pa.table(
        {
            **keys,
            "n": pa.array(np.full(n_nodes, n_rows, np.int64)),
            "sum": pa.array(values.sum(1, dtype=torch.float64).cpu().numpy()),
            "sum_sq": pa.array((values * values).sum(1, dtype=torch.float64).cpu().numpy()),
            "sum_abs": pa.array(values.abs().sum(1, dtype=torch.float64).cpu().numpy()),
            "min": pa.array(minima.cpu().numpy()),
            "max": pa.array(maxima.cpu().numpy()),
            "n_nonzero": pa.array((n_rows - zeros).to(torch.int64).cpu().numpy()),
            "hist": pa.FixedSizeListArray.from_arrays(hist_flat, N_BINS).cast(pa.list_(pa.int32())),
        },
        schema=SUMMARY_SCHEMA,
    )


def _example_table(
    keys: dict[str, Any],
    node: np.ndarray,
    side: np.ndarray,
    prompt_id: np.ndarray,
    token: np.ndarray,
    token2: np.ndarray,
    value: np.ndarray,
) -> pa.Table:
    columns = {name: column.take(pa.array(node)) for name, column in keys.items()}
    return pa.table(
        {
            **columns,
            "side": pa.DictionaryArray.from_arrays(pa.array(side), _SIDES),
            "prompt_id": pa.array(prompt_id, pa.int32()),
            "token": pa.array(token.astype(np.int16)),
            "token2": pa.array(token2.astype(np.int16)),
            "value": pa.array(value.astype(np.float32, copy=False)),
        },
        schema=EXAMPLE_SCHEMA,
    )


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables) if tables else schema.empty_table()
