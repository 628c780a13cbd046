"""One node across the dataset by a scan of every stored row: its top examples in context
(`top_examples`) and its distribution with quantiles and equal bins (`node_stats`). The per-node
summaries answer the same questions at a cost that does not grow with the dataset (queries/summaries.py);
these are exact for any dst and any first-token cut. `NodeScans` adds them to the Warehouse."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from queries.absence import explain_empty
from queries.contexts import with_context
from queries.notes import with_notes
from queries.stored_facts import sample_note
from warehouse import db

QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


@dataclass
class NodeStats:
    """Distribution of one node's values across the dataset."""

    summary: pa.Table  # one row: count, mean, std, min, max, frac_nonzero, p01 ... p99
    histogram: pa.Table  # bin_low, bin_high, count


class NodeScans:
    """Warehouse's scans of one node (a mixin: it uses the Warehouse's `_connection`, `_run`, `_source` and
    `_hits`)."""

    def _node_filter(
        self, layer: int | None, node_index: int, head: int | None, run_id: int | None, skip_first: int = 0
    ) -> tuple[str, list[Any]]:
        where = " AND layer IS NOT DISTINCT FROM ? AND node_index = ?"
        params: list[Any] = [layer, node_index]
        if head is not None:
            where += " AND head = ?"
            params.append(head)
        if run_id is not None:
            where += " AND prompt_id IN (SELECT prompt_id FROM prompts WHERE run_id = ?)"
            params.append(run_id)
        if skip_first:
            where += " AND token >= ?"
            params.append(skip_first)
        return where, params

    def top_examples(
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
        skip_first: int = 0,
    ) -> pa.Table:
        """The k highest (or lowest) values of one node across all prompts, with `context` tokens each side,
        by a scan of every stored row (`examples` answers from the per-node summaries).

        `context_text` marks the activating token [[like this]] and, for attention nodes, the attended-to
        token <<like this>> when it falls inside the window. Windows are clipped at the sequence edges.
        Contexts decode the window's concatenated token bytes, so a character split across tokens reads
        whole; markers sit between characters (queries/contexts.py, warehouse/token_text.py).
        `skip_first` leaves out the rows of each prompt's first N tokens.
        """
        if k < 1 or context < 0 or skip_first < 0:
            raise db.WarehouseError("k must be at least 1, context and skip_first at least 0")
        with self._connection() as con:
            hits, params, note = self._hits(con, dst, layer, node_index, k, head, run_id, pass_type, bottom, skip_first)
            table = with_context(con, hits, params, context)
            if not table.num_rows:
                explain_empty(con, dst, pass_type, layer, run_id=run_id)
            sample = sample_note(con, run_id)
        return with_notes(table, [n for n in (note, sample) if n])

    def node_stats(
        self,
        dst: str,
        layer: int | None,
        node_index: int,
        head: int | None = None,
        run_id: int | None = None,
        pass_type: str = "forward",
        bins: int = 20,
        skip_first: int = 0,
    ) -> NodeStats:
        """Count, mean, spread, fraction non-zero, quantiles and a histogram of `bins` equal bins between
        min and max, of one node over every token (but each prompt's first `skip_first`), by a scan of
        every stored row (`node_summary` answers from the per-node summaries)."""
        if bins < 1 or skip_first < 0:
            raise db.WarehouseError("bins must be at least 1 and skip_first at least 0")
        with self._connection() as con:
            src = self._source(con, dst, pass_type)
            where, params = self._node_filter(layer, node_index, head, run_id, skip_first)
            values = f"SELECT value FROM ({src.sql}) WHERE true{where}"
            all_params = [*src.params, *params]
            quantile_cols = ", ".join(
                f"quantile_cont(value, {q}) AS p{round(q * 100):02d}"
                for q in QUANTILES  # fixed literals
            )
            summary = self._run(
                con,
                f"SELECT count(*) AS count, avg(value) AS mean, stddev_samp(value) AS std, min(value) AS min,"
                f" max(value) AS max, avg(CASE WHEN value <> 0 THEN 1.0 ELSE 0.0 END) AS frac_nonzero,"
                f" {quantile_cols} FROM ({values})",
                all_params,
            )
            if not summary["count"][0].as_py():
                explain_empty(con, dst, pass_type, layer, run_id=run_id)
            low, high = summary["min"][0].as_py(), summary["max"][0].as_py()
            counts = [0] * bins
            if low is not None:
                width = (high - low) / bins if high > low else 1.0
                rows = con.sql(
                    f"SELECT least(greatest(floor((value - ?) / ?)::INTEGER, 0), ?) AS bin, count(*)"
                    f" FROM ({values}) GROUP BY bin",
                    params=[low, width, bins - 1, *all_params],
                ).fetchall()
                for b, n in rows:
                    counts[int(b)] = int(n)
            else:
                width = math.nan
            sample = sample_note(con, run_id)
        edges = [low + i * width if low is not None else None for i in range(bins + 1)]
        histogram = pa.table(
            {
                "bin_low": pa.array(edges[:-1], pa.float64()),
                "bin_high": pa.array(edges[1:], pa.float64()),
                "count": pa.array(counts, pa.int64()),
            }
        )
        return NodeStats(with_notes(summary, [n for n in (src.note, sample) if n]), histogram)
