"""The Parquet files behind a table, for engines that read them directly (Spark, Trino, DuckDB elsewhere).

The list comes from the catalog (DuckLake's `ducklake_list_files`) at the current snapshot, never from a
glob of the data folder: after a compaction the merged-away files stay on disk until cleaned up, and an
in-flight ingest's files are there before they are committed, so a glob counts rows twice or reads
uncommitted ones. A reader of the files alone sees only what is in them: rows DuckLake keeps in the
catalog (small inserts) and deletion files are not applied, so a table holding either is refused with
the command that moves them into plain files (`actwh compact`).
"""

from __future__ import annotations

import duckdb

from warehouse import db
from warehouse.lake import ALIAS

_METADATA = f"__ducklake_metadata_{ALIAS}"


def parquet_files(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """Paths (or URLs) of the data files holding every row of `table` at the snapshot `con` reads.

    Raises WarehouseError (one line) for a table that is not in the lake, or whose rows are not all in
    plain Parquet files (some kept in the catalog, or deleted through deletion files)."""
    query = "SELECT table_name FROM duckdb_tables() WHERE database_name = ?"
    tables = {r[0] for r in con.execute(query, [ALIAS]).fetchall()}
    if table not in tables:
        raise db.WarehouseError(f"no table {table!r} in the warehouse: one of {', '.join(sorted(tables))}")
    listed = con.execute(f"SELECT data_file, delete_file FROM ducklake_list_files('{ALIAS}', ?)", [table]).fetchall()
    in_files = con.execute(
        f"""SELECT coalesce(sum(f.record_count), 0) FROM {_METADATA}.ducklake_data_file f
            JOIN {_METADATA}.ducklake_table t USING (table_id)
            WHERE t.table_name = ? AND t.end_snapshot IS NULL AND f.end_snapshot IS NULL""",
        [table],
    ).fetchall()[0][0]
    rows = con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]
    deletions = sum(1 for _, delete_file in listed if delete_file is not None)
    if deletions or rows != in_files:
        raise db.WarehouseError(
            f"{table} has rows outside plain Parquet files ({rows - in_files} kept in the catalog, {deletions} "
            "files with deletions): run `actwh compact --db ...` first, then list its files again"
        )
    return [data_file for data_file, _ in listed]
