"""Summaries merged across runs: runs of one model and capture settings share one set of summary rows.

Runs share their summaries when they have the same model (model_id), backward objective, stored locations
and layers, model-pass dtype, stored precision (float32 or bfloat16-rounded values), BOS and special-token
handling (the columns SETTINGS of `runs`), and summarise the same dsts (a run of an ingest before SAE
summaries, or whose SAE latents never fired, keeps its rows apart, so that the queries know which runs'
SAE rows to scan). Their rows are stored once, under one run_id of the pool (its holder: the first of its
runs to finish, or the smallest when `actwh compact` joins pools), and `summary_pools` lists every member
of a pool with the holder's id; a run outside it keeps its own rows.

The merge is exact: counts, non-zeros and histograms add (the bins are fixed, warehouse/summaries.py
EDGES), the minimum and maximum are those of the parts, and the examples kept are each node's EXAMPLES_K
highest and lowest of the union, ties broken as the queries order examples (prompt, token, token2), so a
pool holds what one run over the same prompts would. Sums, sums of squares and of absolute values add in
float64: equal to one run's up to float64 rounding (the additions are grouped differently).

It costs what the merged rows cost, not what the pool holds: each node's summary row keeps the value of its
K-th highest and lowest example (kth_top, kth_bottom; -inf and +inf while it has fewer, or in a warehouse
written before schema version 7), so only the merged examples that reach them are candidates; the pool's rows of
the nodes and sides that have candidates are read (a scan of the pool's examples, nothing rewritten), the
candidates that enter their node's best K are inserted, the pool rows they push out deleted, and the
summary rows of the merged nodes replaced.

The files stay few: every merge adds a file of entrants and marks rows of older files deleted, and a read of
the pool opens them all (after 100 one-prompt runs, `examples` took 1.56x its time after one). So when a
merge finds the pool's rows of a table in more than MAX_POOL_FILES data and delete files (by the catalog's
run_id range of each file), it rewrites the rows outside the largest file into one file in key order, in
that transaction (the largest too once a quarter of its rows are deleted): a cost of a few merges' rows, and
of the whole pool's now and then.

When: a run's end (writer.finish_run) merges its final running summaries, in that transaction, straight
into the pool of finished runs of the same settings, without storing them as its own rows first (`join_pool`);
`actwh compact` merges what is left (`merge_all`: runs killed midway, whose rows cover their prompts up to
summarised_through and may hold more than K examples per node, and pools of runs that finished side by
side on a shared catalog). A run still being written is never merged: its own flushes rewrite its rows. A
member's prompts past its summarised_through stay uncovered, and the queries scan them
(queries/summary_sql.py).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from warehouse import concurrency, db
from warehouse.lake import METADATA
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
# An example's place among its node's side, ascending from the best: the highest value first for 'top',
# the lowest first for 'bottom', ties in the queries' order.
PLACE = "CASE WHEN side = 'top' THEN -value ELSE value END"
ORDER = f"{PLACE}, prompt_id, token, token2"
_KEY = ", ".join(KEY)
_EXAMPLE = f"{_KEY}, side, prompt_id, token, token2"
# The runs holding summary rows, with the dsts they summarise (runs share a pool only with the same dsts).
_HELD = "held AS (SELECT run_id, list(DISTINCT dst ORDER BY dst) AS dsts FROM node_summaries GROUP BY run_id)"
# Data and delete files of one table that a pool's rows may spread over before a merge rewrites them.
MAX_POOL_FILES = 8


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


def join_pool(con: duckdb.DuckDBPyConnection, run_id: int, rows: tuple[pa.Table, pa.Table]) -> int | None:
    """Merge the ending run `run_id`'s final summaries `rows` (node_summaries and node_examples rows without
    run_id, each node's examples whole) into the pool of finished runs of its settings, inside the
    caller's transaction, dropping the rows its earlier flushes stored; returns the pool's holder, or None
    when there is no such pool (the caller then stores `rows` as the run's own)."""
    dsts = sorted(set(rows[0].column("dst").to_pylist()))
    holders = _holders(con, run_id, dsts)
    if not holders:
        return None
    concurrency.serialize(con)  # two writers merging into one pool: one commits, the other runs again
    for table in TABLES:  # what the run's earlier flushes stored (its own files: whole files dropped)
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
    target = _target(con, holders[0])
    con.register("joining_summaries", rows[0])
    con.register("joining_examples", rows[1])
    try:
        _merge_into(con, target, "joining_summaries", "joining_examples")
    finally:
        for name in ("joining_summaries", "joining_examples"):
            con.unregister(name)
    for other in holders[1:]:
        _merge_stored(con, target, other)
    _record(con, target, [run_id, *holders[1:]])
    for table in TABLES:
        if pool_files(con, table, target) > MAX_POOL_FILES:
            rewrite_pool(con, table, target)
    return target


def pool_files(con: duckdb.DuckDBPyConnection, table: str, pool: int) -> int:
    """Live data files of `table` whose run_id range (the catalog's file statistics) holds `pool`, and their
    delete files, as of the transaction's snapshot."""
    return int(
        con.execute(
            f"""SELECT count(*) + coalesce(sum(deletes), 0) FROM (
                    SELECT (SELECT count(*) FROM {METADATA}.ducklake_delete_file d
                            WHERE d.data_file_id = f.data_file_id AND d.end_snapshot IS NULL) AS deletes
                    FROM {METADATA}.ducklake_data_file f
                    JOIN {METADATA}.ducklake_table t ON t.table_id = f.table_id AND t.end_snapshot IS NULL
                    JOIN {METADATA}.ducklake_column c
                      ON c.table_id = f.table_id AND c.column_name = 'run_id' AND c.end_snapshot IS NULL
                    JOIN {METADATA}.ducklake_file_column_stats s
                      ON s.data_file_id = f.data_file_id AND s.table_id = f.table_id AND s.column_id = c.column_id
                    WHERE t.table_name = $table AND f.end_snapshot IS NULL
                      AND TRY_CAST(s.min_value AS INTEGER) <= $pool AND TRY_CAST(s.max_value AS INTEGER) >= $pool)""",
            {"table": table, "pool": pool},
        ).fetchall()[0][0]
    )


def rewrite_pool(con: duckdb.DuckDBPyConnection, table: str, pool: int) -> None:
    """The pool's rows of `table` outside its largest file deleted and inserted again as one file in key
    order, inside the caller's transaction; the largest file's rows too when a quarter or more of the rows
    it was written with are deleted (each merge deletes the examples it pushes out), so a pool of a large
    model (13 million examples for SmolLM2) is not rewritten whole every few runs for a few small files.
    A summary row's min and max are NULL only for a node with no rows: such rows go in an INSERT of their
    own, so that no Parquet row group is all NULL in a column with values elsewhere in its file (DuckLake
    1.5.5 records statistics that miss values then: maintenance.statistics_problems)."""
    files = con.execute(
        f"SELECT filename, count(*) AS n FROM {table} WHERE run_id = ? GROUP BY filename ORDER BY n DESC, filename",
        [pool],
    ).fetchall()
    where, params = "run_id = ?", [pool]
    if files:
        largest, live = files[0]
        written = con.execute(
            f"SELECT max(record_count) FROM {METADATA}.ducklake_data_file WHERE end_snapshot IS NULL AND path LIKE ?",
            ["%" + Path(largest).name],
        ).fetchall()[0][0]
        if written is not None and 4 * live > 3 * written:
            where, params = "run_id = ? AND filename <> ?", [pool, largest]
    con.execute(f"CREATE TEMP TABLE pool_rows AS SELECT * FROM {table} WHERE {where}", params)
    try:
        con.execute(f"DELETE FROM {table} WHERE {where}", params)
        order = _EXAMPLE if table == "node_examples" else _KEY
        parts = ("min IS NOT NULL", "min IS NULL") if table == "node_summaries" else ("true",)
        for part in parts:
            con.execute(f"INSERT INTO {table} SELECT * FROM temp.pool_rows WHERE {part} ORDER BY {order}")
    finally:
        con.execute("DROP TABLE IF EXISTS temp.pool_rows")


def merge_all(con: duckdb.DuckDBPyConnection) -> int:
    """Merge every group of finished runs of the same settings into one pool each (`actwh compact`),
    inside the caller's transaction; returns how many runs' rows moved into another's."""
    moved = 0
    for group in _sources(con):
        if len(group) > 1:
            concurrency.serialize(con)
            target = _target(con, group[0])
            for other in group[1:]:
                _merge_stored(con, target, other)
            _record(con, target, group[1:])
            moved += len(group) - 1
    return moved


def _sources(con: duckdb.DuckDBPyConnection) -> list[list[int]]:
    """The run_ids of finished runs holding summary rows (pool holders and runs with their own rows),
    grouped by settings and summarised dsts, each group in id order."""
    if not db.has_table(con, POOLS) or not db.has_table(con, "node_summaries"):
        return []
    settings = ", ".join(f"r.{c}" for c in SETTINGS)
    rows = con.execute(
        f"WITH {_HELD}"
        " SELECT list(r.run_id ORDER BY r.run_id) FROM runs r JOIN held USING (run_id)"
        # a pool's holder stands for its members, all finished
        f" WHERE r.summarised_through IS NOT NULL AND r.status <> 'running' GROUP BY {settings}, held.dsts"
    ).fetchall()
    return [sorted(int(x) for x in r[0]) for r in rows]


def _holders(con: duckdb.DuckDBPyConnection, run_id: int, dsts: list[str]) -> list[int]:
    """The finished runs other than `run_id` that hold summary rows of `run_id`'s settings and of the
    dsts `dsts`, in id order."""
    if not db.has_table(con, POOLS):
        return []
    same = " AND ".join(f"r.{c} IS NOT DISTINCT FROM me.{c}" for c in SETTINGS)
    rows = con.execute(
        f"WITH {_HELD}"
        " SELECT r.run_id FROM runs r JOIN held USING (run_id) JOIN runs me ON me.run_id = ?"
        f" WHERE r.run_id <> me.run_id AND r.summarised_through IS NOT NULL AND r.status <> 'running'"
        f" AND held.dsts = ?::VARCHAR[] AND {same} ORDER BY r.run_id",
        [run_id, dsts],
    ).fetchall()
    return [int(r[0]) for r in rows]


def _target(con: duckdb.DuckDBPyConnection, holder: int) -> int:
    """`holder`, its examples first cut to each node's best K where they may hold more: the rows of a run
    killed midway (marked interrupted), whose flushes appended examples that left its best K since,
    until a merge into them first makes them a pool's."""
    pooled = con.execute(f"SELECT count(*) FROM {POOLS} WHERE pool = ?", [holder]).fetchall()[0][0]
    status = con.execute("SELECT status FROM runs WHERE run_id = ?", [holder]).fetchall()[0][0]
    if not pooled and status == "interrupted":
        con.execute(
            f"DELETE FROM node_examples WHERE run_id = $run AND ({_EXAMPLE}) IN (SELECT {_EXAMPLE} FROM node_examples"
            f" WHERE run_id = $run QUALIFY row_number() OVER (PARTITION BY {_KEY}, side ORDER BY {ORDER}) > $k)",
            {"run": holder, "k": EXAMPLES_K},
        )
    return holder


def _merge_stored(con: duckdb.DuckDBPyConnection, target: int, source: int) -> None:
    """The rows stored under `source` merged into `target`'s, then dropped."""
    _merge_into(
        con,
        target,
        f"(SELECT * FROM node_summaries WHERE run_id = {int(source)})",
        f"(SELECT * FROM node_examples WHERE run_id = {int(source)})",
    )
    for table in TABLES:
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [source])


def _merge_into(con: duckdb.DuckDBPyConnection, target: int, summaries: str, examples: str) -> None:
    """Merge summary rows `summaries` and example rows `examples` (relations in the tables' shape, run_id
    aside; examples at least each node's best K) into those stored under `target`."""
    params = {"target": target, "k": EXAMPLES_K}
    steps = (
        # the pool's summary rows, with each node's K-th highest and lowest example
        "CREATE TEMP TABLE merge_pool AS SELECT * EXCLUDE (run_id) FROM node_summaries WHERE run_id = $target",
        f"CREATE TEMP TABLE merge_in AS SELECT {_KEY}, {', '.join(FIGURES)}, hist FROM {summaries}",
        # the examples that may enter their node's best K: those at or beyond its K-th
        f"CREATE TEMP TABLE merge_candidates AS SELECT {_EXAMPLE}, e.value FROM {examples} e"
        f" LEFT JOIN temp.merge_pool t USING ({_KEY}) WHERE"
        " CASE WHEN side = 'top' THEN e.value >= t.kth_top ELSE e.value <= t.kth_bottom END IS NOT false",
        f"CREATE TEMP TABLE merge_leads AS SELECT {_KEY}, side, min({PLACE}) AS lead FROM temp.merge_candidates"
        " GROUP BY ALL",
        # of the pool's examples of those nodes and sides: how many come before every candidate, and the others
        f"CREATE TEMP TABLE merge_pooled AS SELECT {_KEY}, side, count(*) FILTER ({PLACE} < lead) AS ahead,"
        f" list({{'prompt_id': prompt_id, 'token': token, 'token2': token2, 'value': value}})"
        f" FILTER ({PLACE} >= lead) AS rest FROM node_examples JOIN temp.merge_leads USING ({_KEY}, side)"
        " WHERE run_id = $target GROUP BY ALL",
        # each contender's place in the union: after the pool's examples ahead of every candidate
        f"CREATE TEMP TABLE merge_ranked AS SELECT *, ahead + row_number() OVER (PARTITION BY {_KEY}, side"
        f" ORDER BY {ORDER}) AS place FROM (SELECT {_KEY}, side, ahead, unnest(rest, recursive := true), true AS pooled"
        " FROM temp.merge_pooled UNION ALL BY NAME SELECT c.*, coalesce(p.ahead, 0) AS ahead, false AS pooled"
        f" FROM temp.merge_candidates c LEFT JOIN temp.merge_pooled p USING ({_KEY}, side))",
        f"DELETE FROM node_examples WHERE run_id = $target AND ({_EXAMPLE}) IN"
        f" (SELECT {_EXAMPLE} FROM temp.merge_ranked WHERE pooled AND place > $k)",
        f"INSERT INTO node_examples BY NAME SELECT $target AS run_id, {_EXAMPLE}, value FROM temp.merge_ranked"
        " WHERE NOT pooled AND place <= $k",
        # the merged nodes' summary rows, their K-th examples as they are now
        f"CREATE TEMP TABLE merge_out AS SELECT {_KEY}, {', '.join(f'{e} AS {n}' for n, e in FIGURES.items())},"
        f" {merged_hist('INTEGER')} AS hist FROM (SELECT * FROM temp.merge_pool SEMI JOIN temp.merge_in"
        f" USING ({_KEY}) UNION ALL BY NAME SELECT * FROM temp.merge_in) GROUP BY {_KEY}",
        f"CREATE TEMP TABLE merge_kth AS SELECT {_KEY}, max(value) FILTER (side = 'top' AND place = $k) AS top,"
        f" max(value) FILTER (side = 'bottom' AND place = $k) AS bottom FROM temp.merge_ranked GROUP BY {_KEY}",
        f"DELETE FROM node_summaries WHERE run_id = $target AND ({_KEY}) IN (SELECT {_KEY} FROM temp.merge_in)",
        "INSERT INTO node_summaries BY NAME SELECT $target AS run_id, o.*,"
        " coalesce(k.top, p.kth_top, '-inf') AS kth_top, coalesce(k.bottom, p.kth_bottom, 'inf') AS kth_bottom"
        f" FROM temp.merge_out o LEFT JOIN temp.merge_kth k"
        f" USING ({_KEY}) LEFT JOIN temp.merge_pool p USING ({_KEY})",
    )
    try:
        for sql in steps:
            con.execute(sql, {name: value for name, value in params.items() if f"${name}" in sql})
    finally:
        for table in ("pool", "in", "candidates", "leads", "pooled", "ranked", "out", "kth"):
            con.execute(f"DROP TABLE IF EXISTS temp.merge_{table}")


def _record(con: duckdb.DuckDBPyConnection, holder: int, joined: list[int]) -> None:
    """`summary_pools`: the runs `joined` (and the members of pools they held) are now `holder`'s."""
    sources = [holder, *joined]
    con.execute(f"UPDATE {POOLS} SET pool = ? WHERE list_contains(?, pool)", [holder, sources])
    con.execute(
        f"INSERT INTO {POOLS} SELECT run_id, ? AS pool FROM unnest(?::INTEGER[]) t(run_id)"
        f" WHERE run_id NOT IN (SELECT run_id FROM {POOLS})",
        [holder, sources],
    )
