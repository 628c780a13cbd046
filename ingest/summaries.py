"""Per-node summaries of a batch, computed in torch where the batch was captured (on the GPU when the pass
ran there), before the tensors leave the device.

The values summarised are the values stored: rounded to bfloat16 first when the ingest stores bfloat16,
and for the act-times-grad dsts the float32 product of the stored forward and backward values, which is
what their views compute. Only real tokens count, and causal pairs (k <= q) of token-pair locations. The
rows a batch adds and the merge are defined in warehouse/summaries.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from warehouse.registry import LOCATIONS, ActivationLocation
from warehouse.summaries import EDGES, EXAMPLES_K, N_BINS

# Raw locations whose forward x backward product is a Tier-1 derived dst (the `act_times_grad` macro).
ACT_TIMES_GRAD = {"mlp.post_act": "mlp_act_times_grad", "attn.qk_probs": "unflattened_attn_act_times_grad"}
# logits are stored for a few vocabulary ids per prompt only: a summary of them would describe that choice.
NOT_SUMMARISED = frozenset({"logits"})


@dataclass
class _Parts:
    """Columns of the summary and example rows gathered over a batch, turned into tables at the end."""

    summaries: dict[str, list[np.ndarray]] = field(default_factory=dict)
    examples: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @staticmethod
    def add(into: dict[str, list[np.ndarray]], columns: dict[str, np.ndarray]) -> None:
        for name, values in columns.items():
            into.setdefault(name, []).append(values)


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
        return _table(parts.summaries, _SUMMARY_TYPES), _table(parts.examples, _EXAMPLE_TYPES)

    def _add_all(
        self,
        parts: _Parts,
        forward: dict[tuple[str, int | None], torch.Tensor],
        backward: dict[tuple[str, int | None], torch.Tensor],
        lengths: torch.Tensor,
        prompt_ids: np.ndarray,
    ) -> None:
        with torch.no_grad():
            for (name, layer), fw in sorted(forward.items(), key=_order):
                if name in NOT_SUMMARISED:
                    continue
                loc = LOCATIONS[name]
                stored_fw = self._stored(fw)
                self._summarise(parts, loc, loc.dst, "forward", layer, stored_fw, lengths, prompt_ids)
                bw = backward.get((name, layer))
                if bw is not None and name in ACT_TIMES_GRAD:
                    product = stored_fw * self._stored(bw)
                    self._summarise(parts, loc, ACT_TIMES_GRAD[name], "forward", layer, product, lengths, prompt_ids)
            for (name, layer), bw in sorted(backward.items(), key=_order):
                if name not in NOT_SUMMARISED:
                    loc = LOCATIONS[name]
                    self._summarise(parts, loc, loc.dst, "backward", layer, self._stored(bw), lengths, prompt_ids)

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
        layer: int | None,
        values: torch.Tensor,
        lengths: torch.Tensor,
        prompt_ids: np.ndarray,
    ) -> None:
        n_batch, n_tok = values.shape[:2]
        pairs = loc.n_token_axes == 2
        n_second = values.shape[2] if pairs else 1
        node_shape = values.shape[1 + loc.n_token_axes :]
        flat = values.reshape(n_batch, n_tok, n_second, -1)
        device = values.device
        token = torch.arange(n_tok, device=device)
        valid = (token[None, :] < lengths.to(device)[:, None])[:, :, None]
        if pairs:
            valid = valid & (torch.arange(n_second, device=device)[None, :] <= token[:, None])[None]
        else:
            valid = valid.expand(n_batch, n_tok, 1)
        head, node_index = _node_columns(loc, node_shape)
        for first in (True, False):
            chosen = valid & ((token == 0) if first else (token > 0))[None, :, None]
            where = chosen.nonzero()  # (rows, 3): batch, token, second token
            rows = flat[chosen]  # (rows, nodes)
            if rows.shape[0] == 0:
                continue
            key = (dst, pass_type, layer, first)
            names = _key_columns(dst, pass_type, layer, loc, head, node_index, first)
            parts.add(parts.summaries, {**names, **_moments(rows)})
            parts.add(parts.examples, self._candidates(key, rows, where, names, prompt_ids, pairs))

    def _candidates(
        self,
        key: tuple,
        rows: torch.Tensor,
        where: torch.Tensor,
        names: dict[str, np.ndarray],
        prompt_ids: np.ndarray,
        pairs: bool,
    ) -> dict[str, np.ndarray]:
        k = min(self.k, rows.shape[0])
        top = rows.topk(k, dim=0)
        bottom = rows.topk(k, dim=0, largest=False)
        best = self._best.get(key)
        if best is None:
            keep_top = torch.ones_like(top.values, dtype=torch.bool)
            keep_bottom = keep_top
            merged_top, merged_bottom = top.values, bottom.values
        else:
            high, low = best
            # Ties with the running K-th are kept: the K highest may be any of the tied rows.
            keep_top = top.values >= high[-1] if high.shape[0] >= self.k else torch.ones_like(top.values, dtype=torch.bool)
            keep_bottom = (
                bottom.values <= low[-1] if low.shape[0] >= self.k else torch.ones_like(top.values, dtype=torch.bool)
            )
            merged_top = torch.cat([high, top.values]).topk(min(self.k, high.shape[0] + k), dim=0).values
            merged_bottom = torch.cat([low, bottom.values]).topk(min(self.k, low.shape[0] + k), dim=0, largest=False).values
        self._best[key] = (merged_top, merged_bottom)
        out: dict[str, list[np.ndarray]] = {}
        for side, found, keep in (("top", top, keep_top), ("bottom", bottom, keep_bottom)):
            rank, node = keep.nonzero(as_tuple=True)
            at = where[found.indices[rank, node]].cpu().numpy()
            node_np = node.cpu().numpy()
            columns = {name: column[node_np] for name, column in names.items()}
            columns.update(
                side=np.full(node_np.size, side, dtype=object),
                prompt_id=prompt_ids[at[:, 0]].astype(np.int32),
                token=at[:, 1].astype(np.int16),
                token2=(at[:, 2] if pairs else np.full(node_np.size, -1)).astype(np.int16),
                value=found.values[rank, node].cpu().numpy().astype(np.float32),
            )
            for name, column in columns.items():
                out.setdefault(name, []).append(column)
        return {name: np.concatenate(columns) for name, columns in out.items()}


def _order(item: tuple[tuple[str, int | None], torch.Tensor]) -> tuple[str, int]:
    (name, layer), _ = item
    return name, -1 if layer is None else layer


def _node_columns(loc: ActivationLocation, node_shape: torch.Size) -> tuple[np.ndarray, np.ndarray]:
    """head and node_index of each flattened node, as the fact rows give them (-1: no head column)."""
    grid = np.indices(tuple(node_shape)).reshape(len(node_shape), -1)
    head = grid[loc.head_axis - loc.n_token_axes] if loc.head_axis is not None else np.full(grid.shape[1], -1)
    return head.astype(np.int16), grid[-1].astype(np.int32)


def _key_columns(
    dst: str,
    pass_type: str,
    layer: int | None,
    loc: ActivationLocation,
    head: np.ndarray,
    node_index: np.ndarray,
    first: bool,
) -> dict[str, np.ndarray]:
    n = node_index.size
    return {
        "dst": np.full(n, dst, dtype=object),
        "pass_type": np.full(n, pass_type, dtype=object),
        "layer": np.full(n, -1 if layer is None else layer, np.int16),
        "head": head,
        "node_type": np.full(n, loc.node_type.value, dtype=object),
        "node_index": node_index,
        "first_token": np.full(n, first),
    }


_BOUNDARIES: dict[torch.device, torch.Tensor] = {}


def _moments(rows: torch.Tensor) -> dict[str, np.ndarray]:
    """Count, sums, extremes, non-zeros and the fixed-edge histogram of each column of `rows` (rows, nodes)."""
    n_rows, n_nodes = rows.shape
    wide = rows.to(torch.float64)
    edges = _BOUNDARIES.get(rows.device)
    if edges is None:
        edges = _BOUNDARIES[rows.device] = torch.tensor(EDGES, dtype=torch.float32, device=rows.device)
    bins = torch.bucketize(rows, edges, right=True)
    offsets = torch.arange(n_nodes, device=rows.device) * N_BINS
    hist = torch.bincount((bins + offsets).reshape(-1), minlength=n_nodes * N_BINS).reshape(n_nodes, N_BINS)
    return {
        "n": np.full(n_nodes, n_rows, np.int64),
        "sum": wide.sum(0).cpu().numpy(),
        "sum_sq": (wide * wide).sum(0).cpu().numpy(),
        "sum_abs": wide.abs().sum(0).cpu().numpy(),
        "min": rows.amin(0).cpu().numpy(),
        "max": rows.amax(0).cpu().numpy(),
        "n_nonzero": (rows != 0).sum(0).cpu().numpy().astype(np.int64),
        "hist": hist.to(torch.int32).cpu().numpy(),
    }


_KEY_TYPES = {
    "dst": pa.string(),
    "pass_type": pa.string(),
    "layer": pa.int16(),
    "head": pa.int16(),
    "node_type": pa.string(),
    "node_index": pa.int32(),
    "first_token": pa.bool_(),
}
_SUMMARY_TYPES = {
    **_KEY_TYPES,
    "n": pa.int64(),
    "sum": pa.float64(),
    "sum_sq": pa.float64(),
    "sum_abs": pa.float64(),
    "min": pa.float32(),
    "max": pa.float32(),
    "n_nonzero": pa.int64(),
    "hist": pa.list_(pa.int32()),
}
_EXAMPLE_TYPES = {
    **_KEY_TYPES,
    "side": pa.string(),
    "prompt_id": pa.int32(),
    "token": pa.int16(),
    "token2": pa.int16(),
    "value": pa.float32(),
}


def _table(columns: dict[str, list[np.ndarray]], types: dict[str, pa.DataType]) -> pa.Table:
    arrays = {}
    for name, kind in types.items():
        values = np.concatenate(columns[name]) if columns.get(name) else np.zeros(0)
        if name == "hist":
            flat = pa.array(values.reshape(-1).astype(np.int32)) if values.size else pa.array([], pa.int32())
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, N_BINS).cast(kind)
        else:
            arrays[name] = pa.array(values, kind) if values.size else pa.array([], kind)
    return pa.table(arrays)
