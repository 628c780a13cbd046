"""Per-node summaries, measured where the batch was captured (ingest/summary_batch.py; on the GPU when the
pass ran there) and kept as running figures of the run until the writer flushes them (warehouse/summaries.py).

The values summarised are the values stored: rounded to bfloat16 first when the ingest stores bfloat16,
and for the act-times-grad dsts the float32 product of the stored forward and backward values, which is
what their views compute. Only real tokens count, and causal pairs (k <= q) of token-pair locations.

Folding a batch into the running figures happens on the writer's thread inside
its commit: the best K are updated in place, with the rows they replaced kept until the commit succeeds
(and put back if it does not); the model's thread reads only the K-th values published at each commit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from ingest import summary_batch
from ingest import summary_kernels as kernels
from ingest.summary_tables import Group, example_table, pack_where, summary_table
from warehouse import summaries
from warehouse.registry import LOCATIONS, ActivationLocation
from warehouse.summaries import ACT_TIMES_GRAD, EXAMPLES_K, summarised_location


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
class _Measured:
    """One group of one batch: its figures, candidates, and the (batch index, token, token2) of its rows."""

    group: Group
    figures: summary_batch.Figures
    top: summary_batch.Candidates
    bottom: summary_batch.Candidates
    positions: torch.Tensor


@dataclass(frozen=True)
class Running:
    """One group's figures over the run's batches folded so far, and its best and worst K per node."""

    group: Group
    figures: summary_batch.Figures
    top: Best
    bottom: Best


class SummaryState:
    """The running summaries of one ingest run (one per worker). `measure` runs on the model's thread;
    the writer's thread folds each measured batch in as it commits (BatchSummary)."""

    def __init__(self, bfloat16: bool) -> None:
        self.bfloat16 = bfloat16
        self.flush_tokens = summaries.FLUSH_TOKENS
        self.flush_seconds = summaries.FLUSH_SECONDS
        self.flushed_at = time.monotonic()  # the last flush's commit (the run's start before the first)
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
        measured: list[_Measured] = []
        gathered: dict[tuple, torch.Tensor] = {}
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
        stored: dict[tuple, torch.Tensor] = {}  # a sparse location's rows: where its forward value is non-zero
        for pass_type, tensors, layers in passes:
            # an SAE's width is its own: each layer a group of its own
            for part in [[layer] for layer in layers] if loc.from_sae else [layers]:
                node_shape = tensors[(loc.name, part[0])].shape[1 + loc.n_token_axes :]
                values = self._gather([tensors[(loc.name, layer)] for layer in part], n_grid, where)
                if loc.sparse and pass_type == "forward":
                    stored[tuple(part)] = values != 0  # before rounding, as the writer chooses the rows
                if self.bfloat16:  # torch rounds to nearest even, as warehouse.facts.round_to_bfloat16
                    values = values.to(torch.bfloat16).to(torch.float32)
                mask = stored.get(tuple(part))
                gathered[pass_type, tuple(part)] = values
                group = Group.of(loc, loc.dst, pass_type, part, node_shape, first)
                measured.append(self._measure(group, values, where.numel(), positions, self.bfloat16, mask))
                forward_values = gathered.get(("forward", tuple(part)))
                if pass_type == "backward" and loc.name in ACT_TIMES_GRAD and forward_values is not None:
                    product = forward_values * values  # the view's forward * backward, in float32
                    group = Group.of(loc, ACT_TIMES_GRAD[loc.name], "forward", part, node_shape, first)
                    measured.append(self._measure(group, product, where.numel(), positions, False, mask))
        return measured

    def _gather(self, tensors: list[torch.Tensor], n_grid: int, where: torch.Tensor) -> torch.Tensor:
        """(rows rounded up to summary_batch.BLOCK, layers x nodes) float32: the chosen rows of every layer
        side by side (each tensor seen as (n_grid, nodes)); the extra rows are zeros."""
        n_rows = where.numel()
        flat = [t.detach().reshape(n_grid, -1) for t in tensors]
        n_nodes = flat[0].shape[1]
        out = torch.empty(
            (-(-n_rows // summary_batch.BLOCK) * summary_batch.BLOCK, len(flat) * n_nodes), device=where.device
        )
        out[n_rows:] = 0
        for i, part in enumerate(flat):
            out[:n_rows, i * n_nodes : (i + 1) * n_nodes] = part.index_select(0, where)
        return out

    def _measure(
        self,
        group: Group,
        values: torch.Tensor,
        n_rows: int,
        positions: torch.Tensor,
        in_bfloat16: bool,
        stored: torch.Tensor | None,
    ) -> _Measured:
        """`in_bfloat16`: every value is a bfloat16 (the stored values, not their products). `stored`:
        which values have rows (a sparse location's), None: all."""
        thresholds = self.thresholds.get(group.key, (None, None))
        figures, top, bottom = summary_batch.measure(values, n_rows, thresholds, in_bfloat16, stored)
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
        self._flushed_at: float | None = None  # when this commit flushed, if it does

    def rows(self, prompt_ids: np.ndarray) -> tuple[pa.Table, pa.Table] | None:
        state = self._state
        state.rollback()  # a commit that failed (or this one, run again after a conflict)
        running, undo = state.running, _Undo()
        state._undo = undo
        ids = torch.tensor(prompt_ids, dtype=torch.int64)  # a copy: the ids may be a read-only array
        for m in self._measured:
            ids = ids.to(m.positions.device)  # every group's positions are on the batch's device: moved once
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
        due = unflushed >= state.flush_tokens and time.monotonic() - state.flushed_at >= state.flush_seconds
        if running and (due or self._force):
            # the run's last flush writes every node's K best whole: the writer drops the superseded ones
            tables = summary_table(running.values()), example_table(running.values(), every=self._force)
            for r in running.values():
                for best in (r.top, r.bottom):
                    undo.flushed.append((best, best.flushed))
                    best.flushed = best.where.clone()
            unflushed = 0
            self._flushed_at = time.monotonic()
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
        if self._flushed_at is not None:
            state.flushed_at = self._flushed_at
        self._unflushed = self._flushed_at = None


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


def _fold(
    best: Best | None, found: summary_batch.Candidates, positions: torch.Tensor, prompt_ids: torch.Tensor, undo: _Undo
) -> Best:
    """`best` with a batch's candidates folded in: each node's K highest of both. A new Best while nodes
    have fewer than K; after that `best` itself, its changed rows first saved in `undo`."""
    if best is not None and found.value.shape[0] == 0:
        return best
    nodes = found.nodes
    if best is not None and nodes is not None:  # every node has K (there is a threshold): shapes stay
        return _fold_in_place(best, nodes, found, positions, prompt_ids, undo)
    where = _where(found, positions, prompt_ids)
    if best is None:  # the batch gave every node the same number of values (the run had fewer than K)
        return Best(found.value, where)
    value, kept = _best_first(torch.cat([best.value, found.value], dim=1))
    return Best(value, torch.cat([best.where, where], dim=1).gather(1, kept), best.flushed)


def _fold_in_place(
    best: Best,
    nodes: torch.Tensor,
    found: summary_batch.Candidates,
    positions: torch.Tensor,
    prompt_ids: torch.Tensor,
    undo: _Undo,
) -> Best:
    """The rows `nodes` of `best` changed in place, what they held saved in `undo`."""
    if best.value.device.type == "cpu" and summary_batch.COMPILED:
        old_value = torch.empty((nodes.numel(), EXAMPLES_K), dtype=best.value.dtype)
        old_where = torch.empty((nodes.numel(), EXAMPLES_K), dtype=best.where.dtype)
        arrays = (best.value, best.where, nodes, found.value, found.row, positions, prompt_ids, old_value, old_where)
        kernels.insert(*(a.numpy() for a in arrays))
    else:
        old_value, old_where = best.value.index_select(0, nodes), best.where.index_select(0, nodes)
        where = _where(found, positions, prompt_ids)
        value, kept = _best_first(torch.cat([old_value, found.value], dim=1))
        best.value.index_copy_(0, nodes, value)
        best.where.index_copy_(0, nodes, torch.cat([old_where, where], dim=1).gather(1, kept))
    undo.rows.append((best, nodes, old_value, old_where))
    return best


def _where(found: summary_batch.Candidates, positions: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
    """(H, c) pack_where codes of the candidates' rows: their prompt's id, token and token2."""
    at = positions[found.row]  # (H, c, 3)
    return pack_where(prompt_ids[at[..., 0]], at[..., 1], at[..., 2])


def _best_first(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (rows, <= K) highest of each row of `values` and their columns. Of equal values the leftmost is
    kept, as the compiled insertion does: the running best sit left of a batch's candidates, and these
    are in row order, so ties keep the earliest positions, as the queries order examples."""
    value, kept = values.sort(dim=1, descending=True, stable=True)
    return value[:, :EXAMPLES_K], kept[:, :EXAMPLES_K]
