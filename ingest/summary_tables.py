"""The node keys of a summarised group, and the running summaries as rows of `node_summaries` and
`node_examples` (warehouse/schema.sql), without run_id."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from warehouse.facts import constant_name
from warehouse.registry import ActivationLocation
from warehouse.summaries import EXAMPLES_K, N_BINS

if TYPE_CHECKING:
    from ingest.summaries import Best, Running

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
        ("kth_top", pa.float32()),
        ("kth_bottom", pa.float32()),
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


@dataclass(frozen=True)
class Group:
    """The nodes of one (dst, pass, layers, first_token) group, in the order of the measured columns:
    layer by layer, and within a layer the location's nodes flattened (head, then node)."""

    dst: str
    pass_type: str
    node_type: str
    layers: tuple[int | None, ...]
    first: bool
    layer: np.ndarray  # (N,) int16, -1 for a dst without layers
    head: np.ndarray  # (N,) int16, -1 for a dst without heads
    node_index: np.ndarray  # (N,) int32

    @classmethod
    def of(
        cls,
        loc: ActivationLocation,
        dst: str,
        pass_type: str,
        layers: list[int | None],
        node_shape: torch.Size,
        first: bool,
    ) -> Group:
        grid = np.indices(tuple(node_shape)).reshape(len(node_shape), -1)
        head = grid[loc.head_axis - loc.n_token_axes] if loc.head_axis is not None else np.full(grid.shape[1], -1)
        per_layer = grid.shape[1]
        layer = np.repeat(np.array([-1 if x is None else x for x in layers], np.int16), per_layer)
        return cls(
            dst,
            pass_type,
            loc.node_type.value,
            tuple(layers),
            first,
            layer,
            np.tile(head.astype(np.int16), len(layers)),
            np.tile(grid[-1].astype(np.int32), len(layers)),
        )

    @property
    def key(self) -> tuple:
        return self.dst, self.pass_type, self.layers, self.first

    @property
    def size(self) -> int:
        return int(self.node_index.size)

    def columns(self, nodes: np.ndarray | None = None) -> dict[str, Any]:
        """The node-key columns (every node, or the nodes at positions `nodes`), names dictionary-encoded."""
        pick = (lambda a: a) if nodes is None else (lambda a: a[nodes])
        n = self.size if nodes is None else int(nodes.size)
        return {
            "dst": constant_name(self.dst, n),
            "pass_type": constant_name(self.pass_type, n),
            "layer": pa.array(pick(self.layer)),
            "head": pa.array(pick(self.head)),
            "node_type": constant_name(self.node_type, n),
            "node_index": pa.array(pick(self.node_index)),
            "first_token": pa.array(np.full(n, self.first)),
        }


def summary_table(running: Iterable[Running]) -> pa.Table:
    """One row per node of every group that has values: the run's figures so far (a sparse location's
    node without any stored row has none)."""
    parts = []
    for r in running:
        f, n_nodes = r.figures, r.group.size
        n = torch.as_tensor(f.n, dtype=torch.int64).expand(n_nodes).cpu().numpy()
        hist = pa.array(f.hist.T.contiguous().reshape(-1).to(torch.int32).cpu().numpy())
        table = pa.table(
            {
                **r.group.columns(),
                "n": pa.array(n),
                "sum": pa.array(f.sum.cpu().numpy()),
                "sum_sq": pa.array(f.sum_sq.cpu().numpy()),
                "sum_abs": pa.array(f.sum_abs.cpu().numpy()),
                "min": pa.array(f.min.cpu().numpy()),
                "max": pa.array(f.max.cpu().numpy()),
                "n_nonzero": pa.array(f.n_nonzero.to(torch.int64).cpu().numpy()),
                "hist": pa.FixedSizeListArray.from_arrays(hist, N_BINS).cast(pa.list_(pa.int32())),
                "kth_top": _kth(r.top, 1),
                "kth_bottom": _kth(r.bottom, -1),
            },
            schema=SUMMARY_SCHEMA,
        )
        parts.append(table if n.all() else table.filter(pa.array(n > 0)))
    return pa.concat_tables(parts) if parts else SUMMARY_SCHEMA.empty_table()


def _kth(best: Best, sign: int) -> pa.Array:
    """(N,) each node's K-th best value (`sign` -1: the bottom side's, stored negated); -inf (+inf for the
    bottom) while it has fewer than K, as a sparse node's missing ones are."""
    if best.value.shape[1] < EXAMPLES_K:
        return pa.array(np.full(best.value.shape[0], -sign * np.inf, np.float32))
    return pa.array(sign * best.value[:, EXAMPLES_K - 1].cpu().numpy(), pa.float32())


def example_table(running: Iterable[Running], every: bool = False) -> pa.Table:
    """The best and worst K values of every node that are not stored yet (`every`: all of them), with
    where they are."""
    parts = [_side(r, side, best, every) for r in running for side, best in ((0, r.top), (1, r.bottom))]
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else EXAMPLE_SCHEMA.empty_table()


def _side(running: Running, side: int, best: Best, every: bool) -> pa.Table:
    new = torch.isfinite(best.value)  # -inf: a sparse node's place kept while it has fewer than K rows
    if not every and best.flushed is not None:  # the positions the last flush did not store
        new &= ~(best.where[:, :, None] == best.flushed[:, None, :]).any(2)
    node, column = new.nonzero(as_tuple=True)
    value = best.value[node, column]
    prompt_id, token, token2 = unpack_where(best.where[node, column])
    nodes = node.cpu().numpy()
    return pa.table(
        {
            **running.group.columns(nodes),
            "side": pa.DictionaryArray.from_arrays(pa.array(np.full(nodes.size, side, np.int8)), _SIDES),
            "prompt_id": pa.array(prompt_id.cpu().numpy().astype(np.int32)),
            "token": pa.array(token.cpu().numpy().astype(np.int16)),
            "token2": pa.array(token2.cpu().numpy().astype(np.int16)),
            "value": pa.array((value if side == 0 else -value).cpu().numpy().astype(np.float32)),
        },
        schema=EXAMPLE_SCHEMA,
    )


def pack_where(prompt_id: Any, token: Any, token2: Any) -> Any:
    """An example's (prompt_id, token, token2 or -1) in one int64 (tensors, arrays or, compiled, integers),
    so the running best K move one matrix for where they are: the id in the high 32 bits, the token and
    token2 + 1 in 16 bits each (the tables' int32 and int16 columns bound them)."""
    return (prompt_id << 32) | (token << 16) | (token2 + 1)


def unpack_where(where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt_id, token, token2) of pack_where's codes."""
    return where >> 32, (where >> 16) & 0xFFFF, (where & 0xFFFF) - 1
