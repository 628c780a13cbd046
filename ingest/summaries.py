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
its commit, and is adopted only once the commit succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch

from ingest.summary_tables import Group, example_table, summary_table
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


@dataclass(frozen=True)
class Best:
    """Every node's best values so far, best first, (N, c) with c <= K the same for all nodes: the highest
    values, or for the bottom side the lowest negated; where they are; whether they are stored yet."""

    value: torch.Tensor
    prompt_id: torch.Tensor
    token: torch.Tensor
    token2: torch.Tensor
    stored: torch.Tensor

    def threshold(self) -> torch.Tensor | None:
        """(N,) the K-th best value of each node, once every node has K."""
        return self.value[:, -1] if self.value.shape[1] == EXAMPLES_K else None


@dataclass(frozen=True)
class _Candidates:
    """A batch's values of one side that may enter the best K (negated for the bottom side): (H, c) for
    the H nodes `nodes` (every node when None), best first, padded with -inf; and each entry's row into
    the batch's positions."""

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
    """One group's figures over the run's committed batches, and its best and worst K per node."""

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
        self.running: dict[tuple, Running] = {}  # replaced whole on each commit, never changed in place
        self.unflushed = 0  # tokens committed since the last flush

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
            values.sum(0, dtype=torch.float64),
            _total(blocks * blocks),
            _total(blocks.abs()),
            minima,
            maxima,
            n_rows - hist[_ZERO],
            torch.cat([hist[:_ZERO], hist[_ZERO : _ZERO + 2].sum(0, keepdim=True), hist[_ZERO + 2 :]]),
        )
        running = self.running.get(group.key)
        top = _candidates(real, running.top.threshold() if running else None, maxima, True)
        bottom = _candidates(real, running.bottom.threshold() if running else None, minima, False)
        return _Measured(group, figures, top, bottom, positions)


class BatchSummary:
    """One batch's measured summaries, handed to the writer with the batch (warehouse.summaries.SummaryFlush)."""

    def __init__(self, state: SummaryState, measured: list[_Measured], n_tokens: int, force: bool = False) -> None:
        self._state = state
        self._measured = measured
        self._tokens = n_tokens
        self._force = force
        self._pending: tuple[dict[tuple, Running], int] | None = None

    def rows(self, prompt_ids: np.ndarray) -> tuple[pa.Table, pa.Table] | None:
        state = self._state
        running = dict(state.running)
        for m in self._measured:
            ids = torch.tensor(prompt_ids, dtype=torch.int64, device=m.positions.device)
            where = m.positions
            before = running.get(m.group.key)
            running[m.group.key] = Running(
                m.group,
                m.figures if before is None else before.figures + m.figures,
                _fold(before.top if before else None, m.top, where, ids),
                _fold(before.bottom if before else None, m.bottom, where, ids),
            )
        unflushed = state.unflushed + self._tokens
        tables = None
        if running and (unflushed >= state.flush_tokens or self._force):
            # the run's last flush writes every node's K best whole: the writer drops the superseded ones
            tables = summary_table(running.values()), example_table(running.values(), every=self._force)
            running = {key: _all_stored(r) for key, r in running.items()}
            unflushed = 0
        self._pending = running, unflushed
        return tables

    def committed(self) -> None:
        if self._pending is not None:
            self._state.running, self._state.unflushed = self._pending
            self._pending = None


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


def _candidates(values: torch.Tensor, threshold: torch.Tensor | None, extreme: torch.Tensor, top: bool) -> _Candidates:
    """The values of (rows, N) `values` that may be among their node's K highest (`top`) or lowest: each
    node's min(K, rows) best while the run has fewer than K, else, in the nodes whose batch `extreme`
    (max or min) is beyond the run's K-th (`threshold`, negated for the lowest), their K best that are."""
    k = min(EXAMPLES_K, values.shape[0])
    if threshold is None:
        best, row = values.topk(k, dim=0, largest=top)
        return _Candidates(None, (best if top else -best).T.contiguous(), row.T.contiguous())
    hot = ((extreme > threshold) if top else (-extreme > threshold)).nonzero().squeeze(1)
    best, row = values.index_select(1, hot).topk(k, dim=0, largest=top)  # (k, hot nodes)
    signed = (best if top else -best).T
    beyond = threshold.index_select(0, hot)[:, None]
    return _Candidates(hot, torch.where(signed > beyond, signed, -torch.inf), row.T.contiguous())


def _fold(best: Best | None, found: _Candidates, positions: torch.Tensor, prompt_ids: torch.Tensor) -> Best:
    """`best` with a batch's candidates folded in: each node's K highest of both."""
    if best is not None and found.value.shape[0] == 0:
        return best
    where = positions[found.row]  # (H, c, 3)
    new = {
        "value": found.value,
        "prompt_id": prompt_ids[where[..., 0]],
        "token": where[..., 1],
        "token2": where[..., 2],
        "stored": torch.zeros_like(found.value, dtype=torch.bool),
    }
    if best is None:  # the batch gave every node the same number of values (the run had fewer than K)
        return Best(**new)
    nodes = found.nodes
    old = {name: getattr(best, name) if nodes is None else getattr(best, name)[nodes] for name in new}
    both = {name: torch.cat([old[name], matrix], dim=1) for name, matrix in new.items()}
    kept = both["value"].topk(min(EXAMPLES_K, both["value"].shape[1]), dim=1).indices
    merged = {name: matrix.gather(1, kept) for name, matrix in both.items()}
    if nodes is None:
        return Best(**merged)
    updated = {}
    for name, matrix in merged.items():  # a copy: the committed figures stay as they are until the commit
        whole = getattr(best, name).clone()
        whole[nodes] = matrix
        updated[name] = whole
    return Best(**updated)


def _all_stored(running: Running) -> Running:
    def stored(best: Best) -> Best:
        return replace(best, stored=torch.ones_like(best.stored))

    return replace(running, top=stored(running.top), bottom=stored(running.bottom))
