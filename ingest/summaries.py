"""Per-node summaries, measured in torch where the batch was captured (on the GPU when the pass ran
there) and kept as running figures of the run until the writer flushes them (warehouse/summaries.py).

The values summarised are the values stored: rounded to bfloat16 first when the ingest stores bfloat16,
and for the act-times-grad dsts the float32 product of the stored forward and backward values, which is
what their views compute. Only real tokens count, and causal pairs (k <= q) of token-pair locations.

A batch is measured in a few passes over its values, nodes along the columns: the sum in float64, sums
of squares and absolute values in float32 over blocks of 8 rows then float64, min, max, a histogram bin
per value read from tables indexed by the value's top 16 bits (zeros in a bin of their own, which counts
the non-zeros), and the values beyond the run's running K-th highest or lowest (each node's K best while
the run has fewer than K). Folding a batch into the running figures happens on the writer's thread inside
its commit: the best K are updated in place, with the rows they replaced kept until the commit succeeds
(and put back if it does not); the model's thread reads only the K-th values published at each commit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from ingest.summary_tables import Group, example_table, pack_where, summary_table
from warehouse import summaries
from warehouse.registry import LOCATIONS, ActivationLocation
from warehouse.summaries import ACT_TIMES_GRAD, EDGES, EXAMPLES_K, N_BINS, summarised_location

# Rows of squares and absolute values summed in float32 before the float64 total: terms of one sign, so the
# relative error stays under that of 8 additions (8 x 2^-24); the signed sum is taken in float64 throughout.
_BLOCK = 8


@dataclass(frozen=True)
class Figures:
    """One group's count (the same for every node), and per node (N,): sums, sum of squares and of
    absolute values (float64), min and max (float32), non-zeros, and the histogram (N_BINS, N)."""

    n: int
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


@dataclass
class Best:
    """Every node's best values so far, best first, (N, c) with c <= K the same for all nodes: the highest
    values, or for the bottom side the lowest negated, and where they are (summary_tables.pack_where); and
    where the ones the last flush stored were (None: no flush yet). Changed in place by the writer's thread
    only (BatchSummary.rows)."""

    value: torch.Tensor
    where: torch.Tensor
    flushed: torch.Tensor | None = None

    def threshold(self) -> torch.Tensor | None:
        """(N,) the K-th best value of each node (a copy), once every node has K."""
        return self.value[:, -1].clone() if self.value.shape[1] == EXAMPLES_K else None


@dataclass(frozen=True)
class _Candidates:
    """A batch's values of one side that may enter the best K (negated for the bottom side): (H, c) for
    the H nodes `nodes` (every node when None), padded with -inf; and each entry's row into the batch's
    positions."""

    nodes: torch.Tensor | None
    value: torch.Tensor
    row: torch.Tensor


@dataclass(frozen=True)
class _Measured:
    """One group of one batch: its figures, candidates, and the (batch index, token, token2) of its rows."""

    group: Group
    figures: Figures
    top: _Candidates
    bottom: _Candidates
    positions: torch.Tensor


@dataclass(frozen=True)
class Running:
    """One group's figures over the run's batches folded so far, and its best and worst K per node."""

    group: Group
    figures: Figures
    top: Best
    bottom: Best


class SummaryState:
    """The running summaries of one ingest run (one per worker). `measure` runs on the model's thread;
    the writer's thread folds each measured batch in as it commits (BatchSummary)."""

    def __init__(self, bfloat16: bool) -> None:
        self.bfloat16 = bfloat16
        self.flush_tokens = summaries.FLUSH_TOKENS
        self.running: dict[tuple, Running] = {}  # the writer's thread's: committed, or a commit in progress
        self.unflushed = 0  # tokens committed since the last flush
        # the model's thread's view: each group's K-th best and worst, as of the last commit (replaced whole)
        self.thresholds: dict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self._undo: _Undo | None = None  # what the commit in progress changed

    def measure(
        self,
        forward: dict[tuple[str, int | None], torch.Tensor],
        backward: dict[tuple[str, int | None], torch.Tensor],
        lengths: torch.Tensor,
    ) -> BatchSummary:
        """The batch's figures and example candidates, from its captured tensors (batch, tokens, ...)
        right-padded to `lengths`."""
        measured: list[_Measured] = []
        with torch.no_grad():
            names = {name for name, _ in [*forward, *backward] if summarised_location(LOCATIONS[name])}
            for name in sorted(names):
                loc = LOCATIONS[name]
                for first in (True, False):
                    measured += self._measure_location(loc, forward, backward, lengths, first)
        return BatchSummary(self, measured, int(lengths.sum()))

    def final(self) -> BatchSummary:
        """The run's last flush: its figures, and every node's K best and worst examples whole (the run is
        ending; the writer replaces the examples flushed before, some superseded since)."""
        return BatchSummary(self, [], 0, force=True)

    def _measure_location(
        self,
        loc: ActivationLocation,
        forward: dict[tuple[str, int | None], torch.Tensor],
        backward: dict[tuple[str, int | None], torch.Tensor],
        lengths: torch.Tensor,
        first: bool,
    ) -> list[_Measured]:
        measured, gathered = [], {}
        passes = []
        for pass_type, tensors in (("forward", forward), ("backward", backward)):
            layers = sorted((layer for n, layer in tensors if n == loc.name), key=lambda x: -1 if x is None else x)
            if layers:
                passes.append((pass_type, tensors, layers))
        sample = passes[0][1][(loc.name, passes[0][2][0])]
        # the same rows in every layer and pass: chosen once per location
        where, positions = _rows(loc, sample.shape, lengths.to(sample.device), first)
        if where.numel() == 0:
            return []
        n_grid = int(np.prod(sample.shape[: 1 + loc.n_token_axes]))
        node_shape = sample.shape[1 + loc.n_token_axes :]
        for pass_type, tensors, layers in passes:
            values = self._gather([tensors[(loc.name, layer)] for layer in layers], n_grid, where)
            gathered[pass_type] = (layers, values)
            group = Group.of(loc, loc.dst, pass_type, layers, node_shape, first)
            measured.append(self._measure(group, values, where.numel(), positions, self.bfloat16))
            if pass_type == "backward" and loc.name in ACT_TIMES_GRAD and gathered.get("forward", ([],))[0] == layers:
                product = gathered["forward"][1] * values  # the view's forward * backward, in float32
                group = Group.of(loc, ACT_TIMES_GRAD[loc.name], "forward", layers, node_shape, first)
                measured.append(self._measure(group, product, where.numel(), positions, False))
        return measured

    def _gather(self, tensors: list[torch.Tensor], n_grid: int, where: torch.Tensor) -> torch.Tensor:
        """(rows rounded up to _BLOCK, layers x nodes) float32: the chosen rows of every layer side by side
        (each tensor seen as (n_grid, nodes)), as stored (rounded to bfloat16 when the ingest stores
        bfloat16); the extra rows are zeros."""
        n_rows = where.numel()
        flat = [t.detach().reshape(n_grid, -1) for t in tensors]
        n_nodes = flat[0].shape[1]
        out = torch.empty((-(-n_rows // _BLOCK) * _BLOCK, len(flat) * n_nodes), device=where.device)
        out[n_rows:] = 0
        for i, part in enumerate(flat):
            out[:n_rows, i * n_nodes : (i + 1) * n_nodes] = part.index_select(0, where)
        if self.bfloat16:  # torch rounds to nearest even, as warehouse.facts.round_to_bfloat16
            out[:n_rows] = out[:n_rows].to(torch.bfloat16)
        return out

    def _measure(
        self, group: Group, values: torch.Tensor, n_rows: int, positions: torch.Tensor, in_bfloat16: bool
    ) -> _Measured:
        """`in_bfloat16`: every value is a bfloat16 (the stored values, not their products)."""
        real = values[:n_rows]
        blocks = values.view(-1, _BLOCK, values.shape[1])
        hist = _histogram(real, in_bfloat16)  # with zeros in a bin of their own, merged below
        minima, maxima = real.amin(0), real.amax(0)
        figures = Figures(
            n_rows,
            _sum64(values),
            _total(blocks * blocks),
            _total(blocks.abs()),
            minima,
            maxima,
            n_rows - hist[_ZERO],
            torch.cat([hist[:_ZERO], hist[_ZERO : _ZERO + 2].sum(0, keepdim=True), hist[_ZERO + 2 :]]),
        )
        top_threshold, bottom_threshold = self.thresholds.get(group.key, (None, None))
        top = _candidates(real, top_threshold, True)
        bottom = _candidates(real, bottom_threshold, False)
        return _Measured(group, figures, top, bottom, positions)

    def rollback(self) -> None:
        """Undo what a commit that did not succeed folded in (nothing when none is in progress)."""
        if self._undo is not None:
            self._undo.restore(self.running)
            self._undo = None


class BatchSummary:
    """One batch's measured summaries, handed to the writer with the batch (warehouse.summaries.SummaryFlush)."""

    def __init__(self, state: SummaryState, measured: list[_Measured], n_tokens: int, force: bool = False) -> None:
        self._state = state
        self._measured = measured
        self._tokens = n_tokens
        self._force = force
        self._unflushed: int | None = None  # the state's after this commit

    def rows(self, prompt_ids: np.ndarray) -> tuple[pa.Table, pa.Table] | None:
        state = self._state
        state.rollback()  # a commit that failed (or this one, run again after a conflict)
        running, undo = state.running, _Undo()
        state._undo = undo
        for m in self._measured:
            ids = torch.tensor(prompt_ids, dtype=torch.int64, device=m.positions.device)
            where = m.positions
            before = running.get(m.group.key)
            undo.entries.setdefault(m.group.key, before)
            running[m.group.key] = Running(
                m.group,
                m.figures if before is None else before.figures + m.figures,
                _fold(before.top if before else None, m.top, where, ids, undo),
                _fold(before.bottom if before else None, m.bottom, where, ids, undo),
            )
        unflushed = state.unflushed + self._tokens
        tables = None
        if running and (unflushed >= state.flush_tokens or self._force):
            # the run's last flush writes every node's K best whole: the writer drops the superseded ones
            tables = summary_table(running.values()), example_table(running.values(), every=self._force)
            for r in running.values():
                for best in (r.top, r.bottom):
                    undo.flushed.append((best, best.flushed))
                    best.flushed = best.where.clone()
            unflushed = 0
        self._unflushed = unflushed
        return tables

    def committed(self) -> None:
        state = self._state
        if self._unflushed is None or state._undo is None:
            return
        thresholds = dict(state.thresholds)
        for key in state._undo.entries:
            r = state.running[key]
            thresholds[key] = r.top.threshold(), r.bottom.threshold()
        state.thresholds, state.unflushed, state._undo = thresholds, self._unflushed, None
        self._unflushed = None


class _Undo:
    """What one commit changed in the running summaries, to put back if it does not succeed: each group's
    Running before it (None: new), the rows of best K it overwrote, and what a flush marked stored."""

    def __init__(self) -> None:
        self.entries: dict[tuple, Running | None] = {}
        self.rows: list[tuple[Best, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.flushed: list[tuple[Best, torch.Tensor | None]] = []

    def restore(self, running: dict[tuple, Running]) -> None:
        for best, flushed in reversed(self.flushed):
            best.flushed = flushed
        for best, nodes, value, where in reversed(self.rows):
            best.value.index_copy_(0, nodes, value)
            best.where.index_copy_(0, nodes, where)
        for key, before in self.entries.items():
            if before is None:
                del running[key]
            else:
                running[key] = before


def _rows(
    loc: ActivationLocation, shape: torch.Size, lengths: torch.Tensor, first: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the summarised rows in the (batch x tokens [x tokens]) grid of a location, position 0
    (`first`) or the later ones, and each row's (batch index, token, token2 or -1)."""
    n_tok = shape[1]
    n_second = shape[2] if loc.n_token_axes == 2 else 1
    device = lengths.device
    token = torch.arange(n_tok, device=device)
    valid = (token[None, :] < lengths[:, None]) & ((token == 0) if first else (token > 0))[None, :]
    valid = valid[:, :, None]
    if loc.n_token_axes == 2:
        valid = valid & (torch.arange(n_second, device=device)[None, None, :] <= token[None, :, None])
    where = valid.reshape(-1).nonzero().squeeze(1)
    second = where % n_second if loc.n_token_axes == 2 else torch.full_like(where, -1)
    positions = torch.stack([where // (n_tok * n_second), (where // n_second) % n_tok, second], dim=1)
    return where, positions


def _sum64(values: torch.Tensor) -> torch.Tensor:
    """(N,) float64 column sums of (rows, N) float32 `values`."""
    if values.device.type == "cpu":  # torch widens element by element here, 8x NumPy's time (BENCHMARKS.md)
        return torch.from_numpy(np.add.reduce(values.numpy(), axis=0, dtype=np.float64))
    return values.sum(0, dtype=torch.float64)


def _total(blocks: torch.Tensor) -> torch.Tensor:
    """(N,) float64 column sums of (blocks, _BLOCK, N) non-negative values."""
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


def _candidates(values: torch.Tensor, threshold: torch.Tensor | None, top: bool) -> _Candidates:
    """The values of (rows, N) `values` that may be among their node's K highest (`top`) or lowest: each
    node's min(K, rows) best while the run has fewer than K, else the values beyond the run's K-th
    (`threshold`, negated for the lowest), in the nodes that have any."""
    if threshold is None:
        best, row = values.topk(min(EXAMPLES_K, values.shape[0]), dim=0, largest=top)
        return _Candidates(None, (best if top else -best).T.contiguous(), row.T.contiguous())
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
    return _Candidates(nodes, value, rows)


def _fold(
    best: Best | None, found: _Candidates, positions: torch.Tensor, prompt_ids: torch.Tensor, undo: _Undo
) -> Best:
    """`best` with a batch's candidates folded in: each node's K highest of both. A new Best while nodes
    have fewer than K; after that `best` itself, its changed rows first saved in `undo`."""
    if best is not None and found.value.shape[0] == 0:
        return best
    at = positions[found.row]  # (H, c, 3)
    where = pack_where(prompt_ids[at[..., 0]], at[..., 1], at[..., 2])
    if best is None:  # the batch gave every node the same number of values (the run had fewer than K)
        return Best(found.value, where)
    nodes = found.nodes
    old_value = best.value if nodes is None else best.value.index_select(0, nodes)
    old_where = best.where if nodes is None else best.where.index_select(0, nodes)
    value = torch.cat([old_value, found.value], dim=1)
    value, kept = value.topk(min(EXAMPLES_K, value.shape[1]), dim=1)
    where = torch.cat([old_where, where], dim=1).gather(1, kept)
    if nodes is None:
        return Best(value, where, best.flushed)
    undo.rows.append((best, nodes, old_value, old_where))  # every node has K (there is a threshold): shapes stay
    best.value.index_copy_(0, nodes, value)
    best.where.index_copy_(0, nodes, where)
    return best
