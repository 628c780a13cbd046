"""Keeping a lake small and fast: compaction and cleanup, with DuckLake's own functions.

An ingest writes at least one Parquet file per committed batch; over millions of tokens that is many
small files. `compact` merges the per-node summaries of finished runs of the same settings that are still
apart (warehouse/summary_merge.py: a run killed midway, runs that finished side by side), merges adjacent
small files of each table (the summary tables' files that merges deleted rows from rewritten first), moves
rows DuckLake inlined in the catalog into Parquet, expires the snapshots older than the newest one and
deletes the files no snapshot needs any more. Readers attached
meanwhile keep their snapshot until they finish; a query that starts on an expired snapshot during the
cleanup may need to be rerun.

On a shared catalog `compact` runs while workers ingest: each step is one DuckLake transaction, run
again when it loses a conflict to a worker's commit (and the worker's commit likewise), so no row is lost
or stored twice; files of transactions that never committed (a killed worker's) are deleted once they are
a day old, since younger ones may belong to a commit still in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import duckdb
import numpy as np

from warehouse import concurrency, db, summaries, summary_merge
from warehouse.lake import ALIAS, METADATA


def live_data_files(con: duckdb.DuckDBPyConnection) -> int:
    """Data files the current snapshot reads."""
    return int(
        con.execute(f"SELECT count(*) FROM {METADATA}.ducklake_data_file WHERE end_snapshot IS NULL").fetchall()[0][0]
    )


def compact(path: str | Path) -> tuple[int, int]:
    """Merge and clean up the lake at `path` (a folder or a shared catalog); returns its live data-file
    count before and after."""
    con = db.connect(path)

    def call(statement: str | Callable[[duckdb.DuckDBPyConnection], object]) -> None:
        def step() -> None:
            nonlocal con
            try:
                if isinstance(statement, str):
                    con.execute(statement)
                else:
                    statement(con)
            except duckdb.Error:
                # A step that lost to a worker's commit can leave the connection's transaction aborted
                # (DuckLake's catalog transaction in PostgreSQL was): the next try starts on a new one.
                con.close()
                con = db.connect(path)
                raise

        concurrency.retry_conflicts(step)

    try:
        before = live_data_files(con)
        call(_merge_summaries)
        call(f"CALL ducklake_flush_inlined_data('{ALIAS}')")
        for table in summaries.TABLES:  # each merge deletes a few rows from the pool's files: rewritten whole
            call(f"CALL ducklake_rewrite_data_files('{ALIAS}', '{table}', delete_threshold => 0.0)")
        call(f"CALL ducklake_merge_adjacent_files('{ALIAS}')")
        # A merged file can join row groups of different NULL patterns, which DuckLake 1.5.5 records with
        # statistics that miss values (see statistics_problems): keep the older snapshots then, so that
        # the data stays readable as it was, and say so.
        problems = statistics_problems(con)
        if problems:
            raise db.WarehouseError(
                f"compacting {path} left catalog statistics that miss stored values ({problems[0]}); old "
                "snapshots were kept: query them with AT (VERSION => ...) and report this"
            )
        call(f"CALL ducklake_expire_snapshots('{ALIAS}', older_than => now())")
        call(f"CALL ducklake_cleanup_old_files('{ALIAS}', cleanup_all => true)")
        if db.config_for(path).is_shared:
            call(f"CALL ducklake_delete_orphaned_files('{ALIAS}', older_than => now() - INTERVAL 1 DAY)")
        return before, live_data_files(con)
    finally:
        con.close()


def _merge_summaries(con: duckdb.DuckDBPyConnection) -> None:
    """Finished runs of one model and capture settings merged into one pool of summaries (summary_merge.py),
    in one transaction."""
    con.execute("BEGIN")
    try:
        summary_merge.merge_all(con)
    except BaseException:
        with suppress(duckdb.Error):  # a failed COMMIT has already ended the transaction
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def statistics_problems(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Columns whose catalog statistics disagree with their data, one line each (empty: all agree).

    The planner trusts DuckLake's table-level min/max (min and max answered from them, perfect-hash
    aggregates, filter pruning), so a range that misses stored values gives wrong answers without an
    error. DuckLake 1.5.5 records such a range after a file with a Parquet row group all NULL in a column
    that has values elsewhere in the file; the writers keep each file's columns wholly NULL or wholly
    valued (warehouse/writer.py _null_runs), and the tests hold every column to this check. The data's
    own range is computed with the optimizer off: otherwise it too would be read from the statistics.
    """
    # One snapshot for the statistics and the data: a writer committing between the reads would otherwise
    # show values newer than the statistics read.
    con.execute("BEGIN TRANSACTION")
    try:
        problems = _statistics_problems(con)
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return problems


def _statistics_problems(con: duckdb.DuckDBPyConnection) -> list[str]:
    problems = []
    columns = con.execute(
        f"""SELECT t.table_name, c.column_name, c.column_type, s.min_value, s.max_value
            FROM {METADATA}.ducklake_table_column_stats s
            JOIN {METADATA}.ducklake_table t USING (table_id)
            JOIN {METADATA}.ducklake_column c ON c.table_id = s.table_id AND c.column_id = s.column_id
            WHERE t.end_snapshot IS NULL AND c.end_snapshot IS NULL AND c.parent_column IS NULL
              AND c.column_type IN ('int8', 'int16', 'int32', 'int64', 'float32', 'float64')"""
    ).fetchall()
    for table, column, column_type, low, high in columns:
        con.execute("PRAGMA disable_optimizer")
        try:
            actual_low, actual_high = con.execute(f'SELECT min("{column}"), max("{column}") FROM "{table}"').fetchone()
        finally:
            con.execute("PRAGMA enable_optimizer")
        if actual_low is None:
            continue
        # Float statistics are stored at the column's precision; compare at that precision.
        as_stored = np.float32 if column_type == "float32" else float
        if (
            low is None
            or high is None
            or as_stored(low) > as_stored(actual_low)
            or as_stored(high) < as_stored(actual_high)
        ):
            problems.append(
                f"{table}.{column}: statistics say [{low}, {high}], data holds [{actual_low}, {actual_high}]"
            )
    return problems
