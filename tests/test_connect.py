"""A connection from `db.connect` comes back ready for any call, on a new file and on an existing one."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from warehouse import db


def test_connect_leaves_no_unfinished_result(tmp_path: Path) -> None:
    """DuckDB refuses `append` and `sql` while an `execute` result is unread; opening must not leave one."""
    path = tmp_path / "w.duckdb"
    db.connect(path).close()  # creates the schema
    rows = pa.table({"key": ["a"], "value": ["b"]})
    with db.connect(path) as con:  # an existing file: version and view checks run
        con.append("meta", rows.to_pandas())
        assert con.sql("SELECT value FROM meta WHERE key = 'a'").fetchall() == [("b",)]
    with db.connect(path, read_only=True) as con:
        assert con.sql("SELECT count(*) FROM meta WHERE key = 'a'").fetchall() == [(1,)]
