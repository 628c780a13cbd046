"""One batch's per-node figures and example candidates, measured where the batch was captured: compiled
on the CPU (ingest/summary_kernels.py), torch ops elsewhere (the GPU), the same figures either way.

A batch is measured over its values with nodes along the columns: the sum in float64, sums of squares
and absolute values (torch: float32 over blocks of 8 rows then float64; compiled: float64), min, max, a
histogram bin per value read from tables indexed by the value's top 16 bits (zeros in a bin of their
own, which counts the non-zeros), and the values beyond the run's running K-th highest or lowest (each
node's K best while the run has fewer than K).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ingest import summary_kernels as kernels
from warehouse.summaries import EDGES, EXAMPLES_K, N_BINS

# Rows of squares and absolute values summed in float32 before the float64 total: terms of one sign, so the
# relative error stays under that of 8 additions (8 x 2^-24); the signed sum is taken in float64 throughout.
BLOCK = 8
# On the CPU the figures, candidates and insertions run compiled (ingest/summary_kernels.py); elsewhere, or
# with this off (the tests compare both), the torch code below.
COMPILED = True


@dataclass(frozen=True)
class Figures:
    """One group's count (the same for every node; per node (N,) for a sparse location's), and per node
    (N,): sums, sum of squares and of absolute values (float64), min and max (float32), non-zeros, and the
    histogram (N_BINS, N)."""

    n: int | torch.Tensor
    sum: torch.Tensor
    sum_sq: torch.Tensor
    sum_abs: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    n_nonzero: torch.Tensor
    hist: torch.Tensor

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            self.n + other.n,
            self.sum + other.sum,
            self.sum_sq + other.sum_sq,
            self.sum_abs + other.sum_abs,
            torch.minimum(self.min, other.min),
            torch.maximum(self.max, other.max),
            self.n_nonzero + other.n_nonzero,
            self.hist + other.hist,
        )


@dataclass(frozen=True)
class Candidates:
    """A batch's values of one side that may enter the best K (negated for the bottom side): (H, c) for
    the H nodes `nodes` (every node when None), padded with -inf; and each entry's row into the batch's
    positions."""

    nodes: torch.Tensor | None
    value: torch.Tensor
    row: torch.Tensor


def measure(
    values: torch.Tensor,
    n_rows: int,
    thresholds: tuple[torch.Tensor | None, torch.Tensor | None],
    in_bfloat16: bool,
    stored: torch.Tensor | None = None,
) -> tuple[Figures, Candidates, Candidates]:
    """The figures of the first `n_rows` rows of (rows rounded up to BLOCK, N) float32 `values` (the rest
    zeros), and their top and bottom candidates beyond `thresholds` (each node's running K-th highest and
    lowest negated, None while the run has fewer than K). `in_bfloat16`: every value is a bfloat16.
    `stored` (the same shape, bool): the values that have rows (a sparse location's); the others count
    nowhere, and each node's n is its own."""
    compiled = values.device.type == "cpu" and COMPILED
    if stored is not None:  # zeros add nothing to the sums; their count and extremes are taken out below
        values = torch.where(stored, values, 0.0)
    figures = _figures_compiled(values, n_rows) if compiled else _figures_torch(values, n_rows, in_bfloat16)
    top, bottom = values, values
    if stored is not None:
        figures = _stored_only(figures, stored[:n_rows], values[:n_rows])
        top, bottom = torch.where(stored, values, -torch.inf), torch.where(stored, values, torch.inf)
    sides = []
    for side, threshold, is_top in ((top, thresholds[0], True), (bottom, thresholds[1], False)):
        if threshold is None:
            sides.append(_candidates(side[:n_rows], None, is_top))
        elif compiled:  # the bottom side's threshold is negated
            limit, extreme = (threshold, figures.max) if is_top else (-threshold, figures.min)
            found = kernels.beyond(side.numpy(), n_rows, limit.numpy(), is_top, extreme.numpy())
            sides.append(Candidates(*(torch.from_numpy(a) for a in found)))
        else:
            sides.append(_candidates(side[:n_rows], threshold, is_top))
    return figures, sides[0], sides[1]


def _figures_torch(values: torch.Tensor, n_rows: int, in_bfloat16: bool) -> Figures:
    """A batch's figures in torch ops (a pass per figure), wherever `values` are."""
    real = values[:n_rows]
    blocks = values.view(-1, BLOCK, values.shape[1])
    sums = (
        values.sum(0, dtype=torch.float64),
        _total(blocks * blocks),
        _total(blocks.abs()),
        real.amin(0),
        real.amax(0),
    )
    return _figures(n_rows, *sums, hist=_histogram(real, in_bfloat16))


def _figures_compiled(values: torch.Tensor, n_rows: int) -> Figures:
    """A batch's figures on the CPU in one compiled pass (ingest/summary_kernels.py)."""
    base, step, _ = _bin_tables(values.device)
    *sums, hist = kernels.figures(values.numpy(), n_rows, base.numpy(), step.numpy(), N_BINS + 1, kernels.COLUMNS)
    return _figures(n_rows, *(torch.from_numpy(a) for a in sums), hist=torch.from_numpy(hist).T.to(torch.int64))


def _stored_only(figures: Figures, stored: torch.Tensor, values: torch.Tensor) -> Figures:
    """`figures` of (rows, N) `values` (zero where not `stored`) over the stored values alone."""
    n = stored.sum(0)
    hist = figures.hist.clone()
    hist[_ZERO] -= stored.shape[0] - n  # the zeros' bin, [0, 1e-5) once merged
    low = torch.where(stored, values, torch.inf).amin(0)
    high = torch.where(stored, values, -torch.inf).amax(0)
    return replace(figures, n=n, min=low, max=high, hist=hist)


def _figures(n_rows: int, *sums: torch.Tensor, hist: torch.Tensor) -> Figures:
    """Figures from the column sums, minima and maxima, and the (N_BINS + 1, N) histogram over
    _SPLIT_EDGES (zeros in a bin of their own: merged back into their bin of EDGES)."""
    merged = torch.cat([hist[:_ZERO], hist[_ZERO : _ZERO + 2].sum(0, keepdim=True), hist[_ZERO + 2 :]])
    return Figures(n_rows, *sums, n_rows - hist[_ZERO], merged)


def _total(blocks: torch.Tensor) -> torch.Tensor:
    """(N,) float64 column sums of (blocks, BLOCK, N) non-negative values."""
    return blocks.sum(1).sum(0, dtype=torch.float64)


# Bins as EDGES gives them, but with the bin [0, 1e-5) split at the smallest positive float32, so that
# the zeros (and only they) fall in a bin of their own, _ZERO: their count is n - n_nonzero.
_SPLIT_EDGES = (
    *EDGES[: EDGES.index(0.0) + 1],
    float(np.nextafter(np.float32(0), np.float32(1))),
    *EDGES[EDGES.index(0.0) + 1 :],
)
_ZERO = EDGES.index(0.0) + 1
_BIN_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _bin_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indexed by a float32's top 16 bits: the bin (of _SPLIT_EDGES) of the lowest value with those bits,
    the smallest float32 that is a bin further (+inf: none has those bits), and the bin of the value
    whose low 16 bits are zero (every value stored in bfloat16). Each top-16-bit range holds at most one
    edge: the edges are a power of ten apart, or the range is [0, 2^-133). Exact against the edges as
    doubles (EDGES' documented definition)."""
    tables = _BIN_TABLES.get(device)
    if tables is None:
        high = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
        with np.errstate(invalid="ignore"):  # the NaN patterns: their bin does not matter
            ends = np.stack([high.view(np.float32), (high | np.uint32(0xFFFF)).view(np.float32)]).astype(np.float64)
        low, top = ends.min(0), ends.max(0)
        edges = np.asarray(_SPLIT_EDGES, np.float64)
        base = np.searchsorted(edges, low, side="right")
        inside = (edges[None, :] > low[:, None]) & (edges[None, :] <= top[:, None])
        edge = edges[inside.argmax(1)]
        step = edge.astype(np.float32)  # the smallest float32 >= the edge: rounded up where float32 rounds down
        step = np.where(step.astype(np.float64) < edge, np.nextafter(step, np.float32(np.inf)), step)
        step = np.where(inside.any(1), step, np.float32(np.inf)).astype(np.float32)
        exact = base + (high.view(np.float32) >= step)
        tables = _BIN_TABLES[device] = (
            torch.as_tensor(base, dtype=torch.int64, device=device),
            torch.as_tensor(step, device=device),
            torch.as_tensor(exact, dtype=torch.int64, device=device),
        )
    return tables


def _histogram(values: torch.Tensor, in_bfloat16: bool) -> torch.Tensor:
    """(N_BINS + 1, N) int64 counts of (rows, N) float32 `values` over _SPLIT_EDGES, two table lookups
    per value (a binary search per value, torch.bucketize, cost three times as much)."""
    base, step, exact = _bin_tables(values.device)
    high = values.view(torch.uint16)[:, 1::2].to(torch.int32).reshape(-1)  # the top halves (little-endian)
    if in_bfloat16:
        bins = exact.index_select(0, high)
    else:
        bins = base.index_select(0, high) + (values.reshape(-1) >= step.index_select(0, high))
    hist = torch.zeros((N_BINS + 1, values.shape[1]), dtype=torch.int64, device=values.device)
    one = torch.ones((), dtype=torch.int64, device=values.device)
    return hist.scatter_add_(0, bins.view(values.shape), one.expand(values.shape))


def _candidates(values: torch.Tensor, threshold: torch.Tensor | None, top: bool) -> Candidates:
    """The values of (rows, N) `values` that may be among their node's K highest (`top`) or lowest: each
    node's min(K, rows) best while the run has fewer than K, else the values beyond the run's K-th
    (`threshold`, negated for the lowest), in the nodes that have any."""
    if threshold is None:
        # a stable sort, not topk: of equal values the earliest rows are kept, as the queries order them
        best, row = (
            part[: min(EXAMPLES_K, values.shape[0])] for part in values.sort(dim=0, descending=top, stable=True)
        )
        return Candidates(None, (best if top else -best).T.contiguous(), row.T.contiguous())
    # one comparison per value: past the first batches few values beat their node's K-th
    row, node = (values > threshold if top else values < -threshold).nonzero(as_tuple=True)
    node, order = node.sort(stable=True)
    row = row[order]
    nodes, counts = torch.unique_consecutive(node, return_counts=True)
    width = int(counts.max()) if counts.numel() else 0
    which = torch.repeat_interleave(torch.arange(nodes.numel(), device=values.device), counts)
    slot = torch.arange(node.numel(), device=values.device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    value = torch.full((nodes.numel(), width), -torch.inf, device=values.device)
    found = values[row, node]
    value[which, slot] = found if top else -found
    rows = torch.zeros((nodes.numel(), width), dtype=torch.int64, device=values.device)
    rows[which, slot] = row
    return Candidates(nodes, value, rows)
