"""The SQL of the summary queries (queries/summaries.py): node_summaries rows merged per node, the scan of
stored rows in the same shape, and the prompts the summaries do not cover yet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from warehouse.summaries import EDGES, N_BINS, written_by_sae
from warehouse.summary_merge import FIGURES, merged_hist, rows_run

NODE = ("model_id", "layer", "head", "node_type", "node_index")
# merge_rows' names for the merged sums (the stored columns' names are SQL functions)
_TOTALS = {"sum": "total", "sum_sq": "total_sq", "sum_abs": "abs_total"}


@dataclass
class Tail:
    """The stored prompts the summaries do not cover yet (of one run, or all), and how to scan only them."""

    prompts: int
    join: str = ""
    params: list[Any] = field(default_factory=list)
    without_facts: int = 0  # of those, prompts stored without facts (--store summaries): nothing to scan

    @property
    def note(self) -> str | None:
        if not self.prompts:
            return None
        note = (
            f"also scanned {self.prompts} prompt(s) the per-node summaries do not cover (stored without"
            " summaries, or not summarised yet): that part's cost grows with them"
        )
        if self.without_facts:
            note += (
                f"; {self.without_facts} of them, stored without facts (--store summaries), are not counted until"
                " their run's next flush of summaries"
            )
        return note


def uncovered(con: duckdb.DuckDBPyConnection, run_id: int | None, dst: str) -> Tail:
    """The prompts whose `dst` rows the summaries do not cover: those past each run's summarised_through,
    and for a dst an SAE writes, every prompt of a run with no summary rows of it (an ingest before SAE
    summaries, or a run whose latents never fired in the summarised prompts: nothing to scan then)."""
    scope, params = (" AND p.run_id = ?", [run_id]) if run_id is not None else ("", [])
    bound, bound_params = "coalesce(r.summarised_through, -1)", []
    if written_by_sae(dst):  # a pool's members have rows of the dst when its holder has
        holds = f"{rows_run(con)} IN (SELECT run_id FROM node_summaries WHERE dst = ?)"
        bound = f"CASE WHEN {holds} THEN {bound} ELSE -1 END"
        bound_params = [dst]
    count, first, without_facts = con.execute(
        "SELECT count(*), min(p.prompt_id), count(*) FILTER (WHERE NOT coalesce(p.facts_stored, true))"
        " FROM prompts p JOIN runs r USING (run_id)"
        f" WHERE p.prompt_id > {bound}{scope}",
        [*bound_params, *params],
    ).fetchall()[0]
    if not count:
        return Tail(0)
    # the constant bound lets the lake skip the files of covered prompts by their statistics
    join = (
        "JOIN prompts p ON p.prompt_id = s.prompt_id JOIN runs r ON r.run_id = p.run_id"
        f" AND p.prompt_id > {bound} AND s.prompt_id >= ?"
    )
    return Tail(int(count), join, [*bound_params, int(first)], int(without_facts))


def scan_sql(
    src: str,
    skip_first: int,
    layer: int | None,
    node_index: int | None,
    head: int | None,
    run_id: int | None,
    join: str,
    join_params: list[Any],
    histogram: bool,
) -> tuple[str, list[Any]]:
    """Rows in node_summaries' shape (one per node) aggregated from the stored rows of `src`; only those of
    uncovered prompts with a Tail's `join` (else every prompt's). Parameters: `src`'s, then these."""
    where, params = scan_filter(skip_first, layer, node_index, head, run_id)
    bins = " ".join(f"WHEN value < {edge!r} THEN {i}" for i, edge in enumerate(EDGES))
    hist = ", ".join(f"count(*) FILTER (WHERE bin = {i})::INTEGER" for i in range(N_BINS)) if histogram else ""
    sql = (
        f"SELECT {', '.join(NODE)}, count(value)::BIGINT AS n, sum(value::DOUBLE) AS sum,"
        " sum(value::DOUBLE * value) AS sum_sq, sum(abs(value::DOUBLE)) AS sum_abs, min(value) AS min,"
        f" max(value) AS max, count(*) FILTER (WHERE value <> 0) AS n_nonzero, list_value({hist}) AS hist"
        f" FROM (SELECT *, CASE {bins} ELSE {len(EDGES)} END AS bin FROM ({stored_rows(src, join)}))"
        f" WHERE true{where} GROUP BY {', '.join(NODE)}"
    )
    return sql, [*join_params, *params]


def stored_rows(src: str, join: str) -> str:
    """The rows of `src` with their prompt's model and run, layer, head and token2 -1 where NULL; only those
    of uncovered prompts with a Tail's `join`."""
    return (
        "SELECT p.model_id, coalesce(s.layer, -1) AS layer, coalesce(s.head, -1) AS head, s.node_type,"
        " s.node_index, s.token, coalesce(s.token2, -1) AS token2, p.run_id, s.prompt_id, s.value"
        f" FROM ({src}) s {join or 'JOIN prompts p ON p.prompt_id = s.prompt_id'}"
    )


def merge_rows(rows: str, histogram: bool) -> str:
    """One merged row per node of `rows` (node_summaries' columns with model_id): model_id, layer, head,
    node_type, node_index, n, total, total_sq, abs_total, min, max, n_nonzero, hist. Without `histogram`
    its hist is an empty list (adding 24 bins per node is most of a ranking's time)."""
    key = ", ".join(NODE)
    figures = ", ".join(f"{expr} AS {_TOTALS.get(name, name)}" for name, expr in FIGURES.items())
    hist = merged_hist() if histogram else "list_value()"
    return f"SELECT {key}, {figures}, {hist} AS hist FROM ({rows}) GROUP BY {key}"


def summary_filter(
    dst: str,
    pass_type: str,
    skip_first: int,
    layer: int | None,
    node_index: int | None,
    head: int | None,
    run_id: int | None,
) -> tuple[str, list[Any]]:
    where, params = " AND dst = ? AND pass_type = ?", [dst, pass_type]
    if skip_first:
        where += " AND NOT first_token"
    if layer is not None or node_index is not None:  # one node: a dst without layers is stored at -1
        where += " AND layer = ?"
        params.append(-1 if layer is None else layer)
    return node_and_run(where, params, node_index, head, run_id)


def scan_filter(
    skip_first: int, layer: int | None, node_index: int | None, head: int | None, run_id: int | None
) -> tuple[str, list[Any]]:
    where, params = " AND token >= ?", [skip_first]
    if layer is not None or node_index is not None:
        where += " AND layer = ?"
        params.append(-1 if layer is None else layer)
    return node_and_run(where, params, node_index, head, run_id)


def node_and_run(
    where: str, params: list[Any], node_index: int | None, head: int | None, run_id: int | None
) -> tuple[str, list[Any]]:
    if node_index is not None:
        where += " AND node_index = ?"
        params.append(node_index)
    if head is not None:
        where += " AND head = ?"
        params.append(head)
    if run_id is not None:
        where += " AND run_id = ?"
        params.append(run_id)
    return where, params
