"""Summaries merged across runs: runs of one model and capture settings share one set of summary rows.

Runs share their summaries when they have the same model (model_id), backward objective, stored locations
and layers, model-pass dtype, stored precision (float32 or bfloat16-rounded values), BOS and special-token
handling (the columns SETTINGS of `runs`), and summarise the same dsts (a run of an ingest before SAE
summaries, or whose SAE latents never fired, keeps its rows apart, so that the queries know which runs'
SAE rows to scan). Their rows are stored once, under the smallest run_id of the pool (its holder), and
`summary_pools` lists every member of a pool with the holder's id; a run outside it keeps its own rows.

The merge is exact: counts, non-zeros and histograms add (the bins are fixed, warehouse/summaries.py
EDGES), the minimum and maximum are those of the parts, and the examples kept are each node's EXAMPLES_K
highest and lowest of the union, ties broken as the queries order examples (prompt, token, token2), so a
pool holds what one run over the same prompts would. Sums, sums of squares and of absolute values add in
float64: equal to one run's up to float64 rounding (the additions are grouped differently).

When: a run's last flush (writer.finish_run) merges it, in the same transaction, into the pool of finished
runs of the same settings, so many small runs keep one set of rows and the queries read one; `actwh
compact` merges what is left (runs killed midway, whose summaries cover their prompts up to
summarised_through, and pools of runs that finished side by side on a shared catalog). A run still being
written is never merged: its own flushes rewrite its rows. A member's prompts past its summarised_through
stay uncovered, and the queries scan them (queries/summary_sql.py).
"""

from __future__ import annotations

import duckdb

from warehouse import concurrency, db
from warehouse.summaries import EXAMPLES_K, N_BINS, TABLES

# The columns of `runs` that must be equal for two runs to share their summaries.
SETTINGS = ("model_id", "objective", "locations", "layers", "dtype", "precision", "prepend_bos", "special_tokens")
POOLS = "summary_pools"
KEY = ("dst", "pass_type", "layer", "head", "node_type", "node_index", "first_token")
# Each figure of node_summaries merged over rows of one node: an aggregate of the stored columns.
FIGURES = {
    "n": "sum(n)::BIGINT",
    "sum": "sum(sum)",
    "sum_sq": "sum(sum_sq)",
    "sum_abs": "sum(sum_abs)",
    "min": "min(min)",
    "max": "max(max)",
    "n_nonzero": "sum(n_nonzero)::BIGINT",
}


def merged_hist(cast: str = "BIGINT") -> str:
    """The aggregate adding rows' histograms bin by bin (a list of N_BINS counts)."""
    return f"list_value({', '.join(f'sum(hist[{i}])::{cast}' for i in range(1, N_BINS + 1))})"


def rows_run(con: duckdb.DuckDBPyConnection, run: str = "r.run_id") -> str:
    """SQL of the run_id under which the summary rows of the run `run` (a column) are stored: its pool's
    holder, or the run itself."""
    if not db.has_table(con, POOLS):
        return run
    return f"coalesce((SELECT pool FROM {POOLS} WHERE {POOLS}.run_id = {run}), {run})"


def pool_members(con: duckdb.DuckDBPyConnection, run_id: int) -> list[int]:
    """The runs whose summaries are stored merged with those of `run_id` (itself included); [] when its
    rows are its own."""
    if not db.has_table(con, POOLS):
        return []
    rows = con.execute(
        f"SELECT run_id FROM {POOLS} WHERE pool = (SELECT pool FROM {POOLS} WHERE run_id = ?) ORDER BY run_id",
        [run_id],
    ).fetchall()
    return [int(r[0]) for r in rows]


def merge_run(con: duckdb.DuckDBPyConnection, run_id: int) -> int | None:
    """Merge the finished run `run_id`'s rows into the pool of finished runs of its settings, inside the
    caller's transaction; returns the pool's holder (None: no such run, the rows stay the run's own)."""
    sources = _sources(con, f"AND (r.run_id = {int(run_id)} OR r.status <> 'running')")
    group = next((g for g in sources if run_id in g), [])
    if len(group) < 2:
        return None
    _merge(con, group)
    return group[0]


def merge_all(con: duckdb.DuckDBPyConnection) -> int:
    """Merge every group of finished runs of the same settings into one pool each (`actwh compact`),
    inside the caller's transaction; returns how many runs' rows moved into another's."""
    moved = 0
    for group in _sources(con, "AND r.status <> 'running'"):
        if len(group) > 1:
            _merge(con, group)
            moved += len(group) - 1
    return moved


def _sources(con: duckdb.DuckDBPyConnection, which: str) -> list[list[int]]:
    """The run_ids holding summary rows (pool holders and runs with their own rows), grouped by settings
    and summarised dsts, each group in id order; `which` restricts the runs (SQL on `r`)."""
    if not db.has_table(con, POOLS) or not db.has_table(con, "node_summaries"):
        return []
    settings = ", ".join(f"r.{c}" for c in SETTINGS)
    rows = con.execute(
        f"WITH holders AS (SELECT DISTINCT run_id FROM node_summaries),"
        f" dsts AS (SELECT run_id, list(DISTINCT dst ORDER BY dst) AS dsts FROM node_summaries GROUP BY run_id)"
        f" SELECT list(r.run_id ORDER BY r.run_id) FROM runs r JOIN holders h USING (run_id) JOIN dsts USING (run_id)"
        f" WHERE r.summarised_through IS NOT NULL {which}"
        # a pool's holder stands for its members, all finished
        f" GROUP BY {settings}, dsts.dsts"
    ).fetchall()
    return [sorted(int(x) for x in r[0]) for r in rows]


def _merge(con: duckdb.DuckDBPyConnection, sources: list[int]) -> None:
    """The rows of `sources` (run_ids holding rows, of the same settings) replaced by their merge, stored
    under the smallest; every member of their pools joins its pool."""
    holder = sources[0]
    concurrency.serialize(con)  # two writers merging into one pool: one commits, the other runs again
    key = ", ".join(KEY)
    figures = ", ".join(f"{expr} AS {name}" for name, expr in FIGURES.items())
    merged = {
        "node_summaries": (
            f"SELECT {key}, {figures}, {merged_hist('INTEGER')} AS hist FROM node_summaries"
            f" WHERE list_contains($sources, run_id) GROUP BY {key}"
        ),
        # each side's K best, in the queries' order (highest first for 'top', lowest first for 'bottom')
        "node_examples": (
            f"SELECT * EXCLUDE (run_id) FROM node_examples WHERE list_contains($sources, run_id)"
            f" QUALIFY row_number() OVER (PARTITION BY {key}, side ORDER BY"
            " CASE WHEN side = 'top' THEN -value ELSE value END, prompt_id, token, token2) <= $k"
        ),
    }
    for table in TABLES:
        con.execute(f"CREATE OR REPLACE TEMP TABLE merged_rows AS {merged[table]}", _params(merged[table], sources))
        con.execute(f"DELETE FROM {table} WHERE list_contains(?, run_id)", [sources])
        con.execute(f"INSERT INTO {table} BY NAME SELECT ? AS run_id, * FROM temp.merged_rows", [holder])
        con.execute("DROP TABLE temp.merged_rows")
    con.execute(f"UPDATE {POOLS} SET pool = ? WHERE list_contains(?, pool)", [holder, sources])
    con.execute(
        f"INSERT INTO {POOLS} SELECT run_id, ? AS pool FROM unnest(?::INTEGER[]) t(run_id)"
        f" WHERE run_id NOT IN (SELECT run_id FROM {POOLS})",
        [holder, sources],
    )


def _params(sql: str, sources: list[int]) -> dict[str, object]:
    params: dict[str, object] = {"sources": sources}
    if "$k" in sql:
        params["k"] = EXAMPLES_K
    return params
