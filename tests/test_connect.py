"""Opening a warehouse: a connection comes back ready for any call, and an older file is brought up to date."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from warehouse import db


def test_connect_leaves_no_unfinished_result(tmp_path: Path) -> None:
    """DuckDB refuses `append` and `sql` while an `execute` result is unread; opening must not leave one."""
    path = tmp_path / "w"
    db.connect(path).close()  # creates the schema
    rows = pa.table({"key": ["a"], "value": ["b"]})
    with db.connect(path) as con:  # an existing file: version and view checks run
        con.append("meta", rows.to_pandas())
        assert con.sql("SELECT value FROM meta WHERE key = 'a'").fetchall() == [("b",)]
    with db.connect(path, read_only=True) as con:
        assert con.sql("SELECT count(*) FROM meta WHERE key = 'a'").fetchall() == [(1,)]


def test_a_warehouse_from_an_actwh_without_a_view_gets_it_when_a_writer_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "older"
    ingest(path, [PromptInput("The capital of France is", " Paris", " London")], IngestOptions(model="gpt2-tiny"))
    view = "SELECT token, value FROM token_attribution ORDER BY token"
    with db.connect(path, read_only=True) as con:
        want = con.execute(view).fetchall()
    with db.connect(path) as con:  # as an actwh that had no token_attribution view would have left it
        con.execute("CREATE OR REPLACE VIEW scalars AS SELECT * FROM activations")
        con.execute("DROP VIEW token_attribution")
        con.execute("UPDATE meta SET value = 'older' WHERE key = 'views'")
    with db.connect(path, read_only=True) as con:
        assert not con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'token_attribution'").fetchall()[
            0
        ][0]

    db.connect(path).close()  # a writer opens it

    with db.connect(path, read_only=True) as con:
        assert con.execute(view).fetchall() == want
        assert con.execute("SELECT count(*) FROM scalars WHERE dst = 'token_attribution'").fetchall()[0][0] > 0
