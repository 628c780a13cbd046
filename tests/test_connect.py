"""Opening a warehouse: a connection comes back ready for any call, and an older file is brought up to date."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
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


def test_a_file_from_an_actwh_without_a_dst_grows_its_enum_and_gets_the_view(tmp_path: Path) -> None:
    """A derived view added since a file was written needs a dst ENUM member the file lacks."""
    path = tmp_path / "older.duckdb"
    ingest(path, [PromptInput("The capital of France is", " Paris", " London")], IngestOptions(model="gpt2-tiny"))
    view = "SELECT token, value FROM token_attribution ORDER BY token"
    counts = "SELECT dst, pass_type, node_type, count(*), sum(value) FROM activations GROUP BY ALL ORDER BY ALL"
    with db.connect(path, read_only=True) as con:
        want_view, want_counts = con.execute(view).fetchall(), con.execute(counts).fetchall()
    with db.connect(path) as con:  # as an actwh that had no token_attribution view would have left it
        older = db._sql_list([m for m in db.dst_names() if m != "token_attribution"])
        con.execute("DROP VIEW scalars")
        con.execute("DROP VIEW token_attribution")
        for new, old in (("dst_older", "dst_name"), ("dst_name", "dst_older")):
            con.execute(f"CREATE TYPE {new} AS ENUM ({older})")
            con.execute(f"ALTER TABLE activations ALTER COLUMN dst SET DATA TYPE {new}")
            con.execute(f"DROP TYPE {old}")
        con.execute("UPDATE meta SET value = 'older' WHERE key = 'views'")
    with db.connect(path, read_only=True) as con:
        assert "token_attribution" not in con.execute("SELECT enum_range(NULL::dst_name)").fetchall()[0][0]

    db.connect(path).close()  # a writer opens it

    with db.connect(path, read_only=True) as con:
        assert con.execute("SELECT enum_range(NULL::dst_name)").fetchall()[0][0][-1] == "token_attribution"
        assert con.execute(view).fetchall() == want_view
        assert con.execute(counts).fetchall() == want_counts
        assert con.execute("SELECT count(*) FROM scalars WHERE dst = 'token_attribution'").fetchall()[0][0] > 0
