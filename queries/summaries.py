"""Dataset-scale questions answered from the per-node summaries (warehouse/summaries.py): rankings of
nodes across prompts, one node's distribution, and its top examples, at a cost that does not grow with
the number of stored prompts.

First tokens: `skip_first` N leaves out each prompt's first N tokens. The default, 1, leaves out
position 0: in most models the first token is an attention sink whose activations are far larger than
any other token's (on the demo warehouse 573 of the 1000 largest |mlp_post_act| sit there), so rankings,
statistics and examples that keep it describe that token rather than the text (SAE training and
dashboards skip it for the same reason). The summaries keep position 0 apart, so N = 0 and N = 1 both
come from them. N > 1, and dsts without summaries (derived views other than the act-times-grad ones,
logits, or a lake ingested before summaries), are answered by a scan of the stored rows instead, which
is exact but grows with the dataset; the result's notes say so. Prompts the summaries do not cover yet
(runs.summarised_through: a run being written, the last batches of a killed one, a run stored without
summaries) are scanned and merged with them, and a note says how many. Finished runs of one model and
capture settings share one set of summary rows (warehouse/summary_merge.py), so the cost does not grow
with the number of runs either; a question about one run of such a pool is answered by a scan of that
run's rows, and its note says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from queries.absence import explain_empty
from queries.contexts import with_context
from queries.notes import with_notes
from queries.stored_facts import sample_note
from queries.summary_sql import NODE, merge_rows, scan_filter, scan_sql, stored_rows, summary_filter, uncovered
from warehouse import db, registry
from warehouse.summaries import ACT_TIMES_GRAD, EDGES, EXAMPLES_K, N_BINS, summarised
from warehouse.summary_merge import pool_members

DEFAULT_SKIP_FIRST = 1
RANK_BY = {
    "mean": "total / n",
    "sum": "total",
    "max": "max",
    "abs-mean": "abs_total / n",
    "density": "n_nonzero / n",
}


@dataclass
class NodeSummary:
    """One node's distribution across the dataset, from its summaries."""

    summary: pa.Table  # one row: count, mean, std, min, max, frac_nonzero
    histogram: pa.Table  # bin_low, bin_high, count over the fixed edges (warehouse/summaries.py EDGES)


@dataclass
class _Merged:
    """SQL giving one merged row per node (model_id, layer, head, node_type, node_index, n, total,
    total_sq, abs_total, min, max, n_nonzero, hist), layer and head -1 where the dst has none."""

    sql: str
    params: list[Any]
    note: str | None


class SummaryQueries:
    """Methods of queries.api.Warehouse that read the summaries (a mixin: it uses the Warehouse's
    `_connection`, `_source` and `_check_dst`)."""

    def rank_nodes(
        self,
        dst: str,
        by: str = "mean",
        k: int = 20,
        layer: int | None = None,
        run: int | None = None,
        skip_first: int = DEFAULT_SKIP_FIRST,
        pass_type: str = "forward",
    ) -> pa.Table:
        """The k nodes of `dst` with the highest `by` across every stored prompt (of run `run`, at layer
        `layer`), one row per node: model_id, layer, head, node_type, node_index, count, mean, sum, min,
        max, abs_mean, density (fraction non-zero) and value (the ranked figure). Tokens before
        `skip_first` in each prompt are left out. Raises one-line errors for an unknown dst or `by`, k < 1,
        a layer no stored model has, and a run that does not exist."""
        if by not in RANK_BY:
            raise db.WarehouseError(f"unknown --by {by!r}: use one of {', '.join(RANK_BY)}")
        _check_k(k)
        with self._connection() as con:  # type: ignore[attr-defined]
            merged = self._merged(con, dst, pass_type, skip_first, layer, None, None, run, histogram=False)
            sql = (
                f"WITH merged AS ({merged.sql}), figures AS (SELECT model_id, nullif(layer, -1) AS layer,"
                " nullif(head, -1) AS head, node_type, node_index, n AS count, total / n AS mean, total AS sum,"
                " min, max, abs_total / n AS abs_mean, n_nonzero / n AS density,"
                f" ({RANK_BY[by]})::DOUBLE AS value FROM merged WHERE n > 0)"
                f" SELECT * FROM figures ORDER BY value DESC, {', '.join(NODE)} LIMIT ?"
            )
            table = _fetch(con, sql, [*merged.params, k])
            if not table.num_rows:
                explain_empty(con, dst, pass_type, layer, run_id=run)
        return _noted(table, merged.note)

    def node_summary(
        self,
        dst: str,
        layer: int | None,
        node_index: int,
        head: int | None = None,
        run_id: int | None = None,
        pass_type: str = "forward",
        skip_first: int = DEFAULT_SKIP_FIRST,
    ) -> NodeSummary:
        """Count, mean, std (sample), min, max and fraction non-zero of one node over every stored token
        but each prompt's first `skip_first`, and its histogram over the fixed power-of-ten edges."""
        with self._connection() as con:  # type: ignore[attr-defined]
            merged = self._merged(con, dst, pass_type, skip_first, layer, node_index, head, run_id)
            _check_node(con, dst, layer, node_index)
            rows = _fetch(
                con,
                f"SELECT sum(n)::BIGINT AS n, sum(total) AS total, sum(total_sq) AS total_sq, min(min) AS min,"
                f" max(max) AS max, sum(n_nonzero)::BIGINT AS n_nonzero,"
                f" list_value({', '.join(f'sum(hist[{i}])::BIGINT' for i in range(1, N_BINS + 1))}) AS hist"
                f" FROM ({merged.sql})",
                merged.params,
            ).to_pylist()[0]
            if not rows["n"]:
                explain_empty(con, dst, pass_type, layer, run_id=run_id)
        n = rows["n"] or 0
        mean = rows["total"] / n if n else None
        std = math.sqrt(max(rows["total_sq"] - n * mean * mean, 0.0) / (n - 1)) if n > 1 and mean is not None else None
        summary = pa.table(
            {
                "count": pa.array([n], pa.int64()),
                "mean": pa.array([mean], pa.float64()),
                "std": pa.array([std], pa.float64()),
                "min": pa.array([rows["min"]], pa.float64()),
                "max": pa.array([rows["max"]], pa.float64()),
                "frac_nonzero": pa.array([rows["n_nonzero"] / n if n else None], pa.float64()),
            }
        )
        counts = rows["hist"] if n else [0] * N_BINS
        bounds = [-math.inf, *EDGES, math.inf]
        histogram = pa.table(
            {
                "bin_low": pa.array(bounds[:-1], pa.float64()),
                "bin_high": pa.array(bounds[1:], pa.float64()),
                "count": pa.array([int(c or 0) for c in counts], pa.int64()),
            }
        )
        return NodeSummary(_noted(summary, merged.note), histogram)

    def examples(
        self,
        dst: str,
        layer: int | None,
        node_index: int,
        k: int = 10,
        context: int = 5,
        head: int | None = None,
        run_id: int | None = None,
        pass_type: str = "forward",
        bottom: bool = False,
        skip_first: int = DEFAULT_SKIP_FIRST,
    ) -> pa.Table:
        """The k highest (or lowest) values of one node across all prompts, leaving out each prompt's first
        `skip_first` tokens, with `context` tokens either side, from the examples the summaries keep (up
        to EXAMPLES_K; a larger k, N > 1 or a dst without summaries is answered by a scan)."""
        _check_k(k)
        if context < 0:
            raise db.WarehouseError("context must be at least 0")
        with self._connection() as con:  # type: ignore[attr-defined]
            use = self._use_summaries(con, dst, pass_type, skip_first, layer, run_id)
            _check_node(con, dst, layer, node_index)
            if use is not None or k > EXAMPLES_K:
                note = use or f"answered by a scan: the summaries keep the {EXAMPLES_K} highest and lowest per node"
                return _noted(
                    self.top_examples(  # type: ignore[attr-defined]
                        dst, layer, node_index, k, context, head, run_id, pass_type, bottom, skip_first
                    ),
                    note,
                )
            where, params = summary_filter(dst, pass_type, skip_first, layer, node_index, head, run_id)
            rows = f"SELECT prompt_id, token, token2, head, value FROM node_examples WHERE side = ?{where}"
            params = ["bottom" if bottom else "top", *params]
            tail = uncovered(con, run_id, dst)
            if tail.prompts:
                src = self._source(con, dst, pass_type)  # type: ignore[attr-defined]
                scan_where, scan_params = scan_filter(skip_first, layer, node_index, head, run_id)
                rows += (
                    " UNION ALL SELECT prompt_id, token, token2, head, value"
                    f" FROM ({stored_rows(src.sql, tail.join)}) WHERE true{scan_where}"
                )
                params += [*src.params, *tail.params, *scan_params]
            order = f"value {'ASC' if bottom else 'DESC'}, prompt_id, token, token2, head"
            hits = (
                f"SELECT row_number() OVER (ORDER BY {order}) AS rank, * FROM (SELECT prompt_id, token, nullif(token2,"
                f" -1) AS token2, nullif(head, -1) AS head, value FROM ({rows}) ORDER BY {order} LIMIT ?)"
            )
            table = with_context(con, hits, [*params, k], context)
            if not table.num_rows:
                explain_empty(con, dst, pass_type, layer, run_id=run_id)
            return _noted(table, tail.note)

    # -- where the figures come from -----------------------------------------------------------------

    def _use_summaries(
        self,
        con: duckdb.DuckDBPyConnection,
        dst: str,
        pass_type: str,
        skip_first: int,
        layer: int | None,
        run_id: int | None,
    ) -> str | None:
        """None when the summaries answer; else the note saying why a scan does. Checks the input first."""
        self._check_dst(con, dst)  # type: ignore[attr-defined]
        if pass_type not in ("forward", "backward"):
            raise db.WarehouseError(f"unknown pass type {pass_type!r}: use forward or backward")
        if skip_first < 0:
            raise db.WarehouseError(f"--skip-first must be 0 or more, not {skip_first}")
        _check_run(con, run_id)
        _check_layer(con, dst, layer)
        _check_latents(con, dst)
        if not summarised(dst):
            return f"answered by a scan: {dst} has no per-node summaries (its cost grows with the dataset)"
        if skip_first > 1:
            return "answered by a scan: the summaries keep position 0 apart, not later first tokens"
        if not (db.has_table(con, "node_summaries") and db.has_table(con, "node_examples")):
            return "answered by a scan: this warehouse was ingested before per-node summaries"
        if run_id is not None:
            pool = pool_members(con, run_id)
            if pool:
                return (
                    f"answered by a scan: run {run_id}'s summaries are merged with those of runs"
                    f" {', '.join(str(r) for r in pool if r != run_id)} (same model and capture settings)"
                )
        return None

    def _merged(
        self,
        con: duckdb.DuckDBPyConnection,
        dst: str,
        pass_type: str,
        skip_first: int,
        layer: int | None,
        node_index: int | None,
        head: int | None,
        run_id: int | None,
        histogram: bool = True,
    ) -> _Merged:
        """Merged rows; without `histogram` their hist is an empty list (adding 24 bins per node is most of
        a ranking's time)."""
        note = self._use_summaries(con, dst, pass_type, skip_first, layer, run_id)
        key = ", ".join(NODE)

        def scanned(join: str = "", join_params: tuple[Any, ...] = ()) -> tuple[str, list[Any]]:
            src = self._source(con, dst, pass_type)  # type: ignore[attr-defined]
            sql, params = scan_sql(
                src.sql, skip_first, layer, node_index, head, run_id, join, [*join_params], histogram
            )
            return sql, [*src.params, *params]

        if note is not None:
            scan, params = scanned()
            sample = sample_note(con, run_id)  # a scan reads only the prompts stored with facts
            return _Merged(merge_rows(scan, histogram), params, f"{note}; {sample}" if sample else note)
        where, params = summary_filter(dst, pass_type, skip_first, layer, node_index, head, run_id)
        rows = (
            f"SELECT {key}, n, sum, sum_sq, sum_abs, min, max, n_nonzero, hist FROM node_summaries"
            f" JOIN runs USING (run_id) WHERE true{where}"
        )
        tail = uncovered(con, run_id, dst)
        if tail.prompts:  # only then the stored rows' source (its dst check is a query)
            scan, scan_params = scanned(tail.join, tuple(tail.params))
            rows += f" UNION ALL {scan}"
            params += scan_params
        return _Merged(merge_rows(rows, histogram), params, tail.note)


def _check_k(k: int) -> None:
    if k < 1:
        raise db.WarehouseError(f"k must be at least 1, not {k}")


def _check_run(con: duckdb.DuckDBPyConnection, run_id: int | None) -> None:
    if run_id is None:
        return
    if not con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
        known = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
        raise db.WarehouseError(f"no run {run_id} in this warehouse (runs: {', '.join(map(str, known)) or 'none'})")


def _check_layer(con: duckdb.DuckDBPyConnection, dst: str, layer: int | None) -> None:
    if layer is None:
        return
    loc = registry.LOCATION_BY_DST.get(dst)
    if loc is not None and not loc.has_layers:
        raise db.WarehouseError(f"{dst} has no layers: leave out --layer")
    n_layers = con.execute("SELECT max(n_layers) FROM models").fetchall()[0][0]
    if n_layers is None or not 0 <= layer < n_layers:
        span = f"0..{n_layers - 1}" if n_layers else "none: nothing is stored yet"
        raise db.WarehouseError(f"layer {layer} does not exist in the stored models (layers {span})")


def _check_latents(con: duckdb.DuckDBPyConnection, dst: str) -> None:
    """An SAE's latents are only where an SAE of the warehouse writes them: else say so, not an empty answer."""
    loc = registry.LOCATION_BY_DST.get(dst)
    if loc is None or not loc.sparse or not db.has_table(con, "saes"):
        return
    if not con.execute("SELECT count(*) FROM saes WHERE latent_dst = ?", [dst]).fetchall()[0][0]:
        raise db.WarehouseError(f"this warehouse stores no {dst}: no SAE of it writes them (ingest with --sae)")


def _check_node(con: duckdb.DuckDBPyConnection, dst: str, layer: int | None, node_index: int) -> None:
    """One node's questions need its layer, and a node the summaries know of where they hold the dst's
    nodes (an SAE's latents that never fired have no rows: any index is let through)."""
    loc = registry.LOCATION_BY_DST.get(dst)
    # a derived dst's layers are its view's: the summarised ones (act x grad) have them, others may not (loss)
    layered = loc.has_layers if loc is not None else dst in ACT_TIMES_GRAD.values()
    if layer is None and layered:
        raise db.WarehouseError(f"{dst} has layers: give --layer")
    if node_index < 0:
        raise db.WarehouseError(f"--node must be 0 or more, not {node_index}")
    if loc is None or loc.sparse or not db.has_table(con, "node_summaries"):
        return
    last = con.execute(
        "SELECT max(node_index) FROM node_summaries WHERE dst = ? AND layer = ?", [dst, -1 if layer is None else layer]
    ).fetchall()[0][0]
    if last is not None and node_index > last:
        where = "" if layer is None else f" at layer {layer}"
        raise db.WarehouseError(f"{dst} has no node {node_index}{where}: its nodes are 0..{last}")


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pa.Table:
    try:
        return con.execute(sql, params).to_arrow_table()
    except duckdb.Error as exc:
        raise db.WarehouseError(f"query failed: {str(exc).splitlines()[0]}") from exc


def _noted(table: pa.Table, note: str | None) -> pa.Table:
    return with_notes(table, [note] if note else [])
