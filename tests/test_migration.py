"""A lake of the previous schema version: refused read-only with the command that upgrades it, upgraded by
the first read-write open, and then read and extended like a new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries import Warehouse
from warehouse import db


def _as_version_2(path: Path) -> None:
    """Take away what version 3 added: token bytes, the SAE and summary tables; record version 2."""
    con = db.connect(path)
    try:
        con.execute("BEGIN")
        for table in ("saes", "node_summaries", "node_examples"):
            con.execute(f"DROP TABLE {table}")
        for table in ("tokens", "vocab"):
            con.execute(f"ALTER TABLE {table} DROP COLUMN bytes")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        con.execute("COMMIT")
    finally:
        con.close()


def test_a_version_2_lake_is_upgraded_by_the_first_read_write_open(tmp_path: Path) -> None:
    path = tmp_path / "old"
    options = IngestOptions(model="gpt2-tiny", progress=False)
    ingest(path, [PromptInput("An older warehouse")], options)
    _as_version_2(path)

    with pytest.raises(db.NotAWarehouse, match="schema version 2, older than this actwh's 3: `actwh compact"):
        Warehouse(path)

    report = ingest(path, [PromptInput("A newer prompt with ünïcode")], options)
    assert report.stored == 1
    warehouse = Warehouse(path)
    assert warehouse.sql("SELECT value FROM meta WHERE key = 'schema_version'", output="rows") == [("3",)]
    rows = warehouse.sql("SELECT p.text, t.bytes IS NULL FROM tokens t JOIN prompts p USING (prompt_id)", output="rows")
    assert {text for text, _ in rows} == {"An older warehouse", "A newer prompt with ünïcode"}
    assert all(missing == (text == "An older warehouse") for text, missing in rows), "bytes of the new tokens only"
    for table in ("saes", "node_summaries", "node_examples"):
        warehouse.sql(f"SELECT count(*) FROM {table}")
    ranked = warehouse.rank_nodes("mlp_post_act", k=3)
    assert ranked.num_rows == 3
