"""Lakes of earlier schema versions: refused read-only with the command that upgrades it, upgraded by the
first read-write open, and then read and extended like a new one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries import Warehouse
from queries.notes import notes
from warehouse import db, lake


def _rewrite(path: Path, statements: list[str], version: int) -> None:
    """Run `statements` on the lake and record schema version `version`, in one transaction."""
    con = db.connect(path)
    try:
        con.execute("BEGIN")
        for statement in statements:
            con.execute(statement)
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(version)])
        con.execute("COMMIT")
    finally:
        con.close()


# Versions before 5 named a token's index in `tokens` `position`.
_POSITION = "ALTER TABLE tokens RENAME COLUMN token TO position"


def _as_version_2(path: Path) -> None:
    """Take away what versions 3 to 5 added: token bytes, the SAE and summary tables, summarised_through,
    the `token` column name."""
    drops = [f"DROP TABLE {table}" for table in ("saes", "node_summaries", "node_examples")]
    columns = [f"ALTER TABLE {table} DROP COLUMN bytes" for table in ("tokens", "vocab")]
    _rewrite(path, [*drops, *columns, "ALTER TABLE runs DROP COLUMN summarised_through", _POSITION], 2)


def test_a_version_2_lake_is_upgraded_by_the_first_read_write_open(tmp_path: Path) -> None:
    path = tmp_path / "old"
    options = IngestOptions(model="gpt2-tiny", progress=False)
    ingest(path, [PromptInput("An older warehouse")], options)
    _as_version_2(path)

    with pytest.raises(
        db.NotAWarehouse, match=f"schema version 2, older than this actwh's {db.SCHEMA_VERSION}: `actwh compact"
    ):
        Warehouse(path)

    report = ingest(path, [PromptInput("A newer prompt with ünïcode")], options)
    assert report.stored == 1
    warehouse = Warehouse(path)
    assert warehouse.sql("SELECT value FROM meta WHERE key = 'schema_version'", output="rows") == [
        (str(db.SCHEMA_VERSION),)
    ]
    rows = warehouse.sql("SELECT p.text, t.bytes IS NULL FROM tokens t JOIN prompts p USING (prompt_id)", output="rows")
    assert {text for text, _ in rows} == {"An older warehouse", "A newer prompt with ünïcode"}
    assert all(missing == (text == "An older warehouse") for text, missing in rows), "bytes of the new tokens only"
    for table in ("saes", "node_summaries", "node_examples"):
        warehouse.sql(f"SELECT count(*) FROM {table}")
    ranked = warehouse.rank_nodes("mlp_post_act", k=3)
    assert ranked.num_rows == 3


def _as_version_3(path: Path) -> None:
    """Version 3's summaries: segment and level columns, and no summarised_through (every run that has
    summary rows was summarised in each batch's transaction)."""
    added = [
        f"ALTER TABLE {table} ADD COLUMN {column}"
        for table in ("node_summaries", "node_examples")
        for column in ("segment INTEGER DEFAULT 0", "level SMALLINT DEFAULT 99")
    ]
    _rewrite(path, [*added, "ALTER TABLE runs DROP COLUMN summarised_through", _POSITION], 3)


def test_a_version_3_lake_keeps_its_summaries_through_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "v3"
    ingest(
        path,
        [PromptInput("Summarised before"), PromptInput("the upgrade")],
        IngestOptions(model="gpt2-tiny", progress=False),
    )
    ingest(
        path,
        [PromptInput("Stored without summaries")],
        IngestOptions(model="gpt2-tiny", progress=False, store=("facts",)),
    )
    before = Warehouse(path).rank_nodes("mlp_post_act", by="sum", k=5, run=0)
    _as_version_3(path)
    with pytest.raises(db.NotAWarehouse, match=f"schema version 3, older than this actwh's {db.SCHEMA_VERSION}"):
        Warehouse(path)

    # in bfloat16, so that its summaries are not merged with run 0's (other capture settings)
    ingest(
        path, [PromptInput("After the upgrade")], IngestOptions(model="gpt2-tiny", progress=False, precision="bfloat16")
    )
    warehouse = Warehouse(path)
    covered = warehouse.sql("SELECT run_id, summarised_through FROM runs ORDER BY run_id", output="rows")
    assert covered == [(0, 1), (1, None), (2, 3)], "the run with summary rows is covered, the one without is not"
    columns = warehouse.sql(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'node_summaries'", output="rows"
    )
    assert ("segment",) not in columns and ("level",) not in columns
    again = warehouse.rank_nodes("mlp_post_act", by="sum", k=5, run=0)
    assert before.num_rows == 5
    assert again["value"].to_pylist() == pytest.approx(before["value"].to_pylist(), rel=1e-12)
    assert not notes(again), "run 0 is answered from its summaries alone"
    assert any(
        "scanned 1 prompt(s) the per-node summaries do not cover" in n
        for n in notes(warehouse.rank_nodes("mlp_post_act", k=3))
    )


def test_a_version_4_lake_names_the_token_column_as_activations_do_after_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "v4"
    options = IngestOptions(model="gpt2-tiny", progress=False)
    ingest(path, [PromptInput("Tokens keyed by position")], options)
    _rewrite(path, [_POSITION], 4)
    with pytest.raises(db.NotAWarehouse, match=f"schema version 4, older than this actwh's {db.SCHEMA_VERSION}"):
        Warehouse(path)

    ingest(path, [PromptInput("Tokens keyed by token")], options)
    warehouse = Warehouse(path)
    columns = warehouse.sql(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'tokens' ORDER BY column_index", output="rows"
    )
    assert [c for (c,) in columns][:3] == ["prompt_id", "token", "token_id"]
    joined = warehouse.sql(
        "SELECT p.text, string_agg(t.text, '' ORDER BY t.token) FROM tokens t JOIN prompts p USING (prompt_id)"
        " GROUP BY p.text ORDER BY p.text",
        output="rows",
    )
    assert joined == [
        ("Tokens keyed by position", "Tokens keyed by position"),
        ("Tokens keyed by token", "Tokens keyed by token"),
    ]
    facts = warehouse.sql(
        "SELECT count(*) FROM activations a JOIN tokens t USING (prompt_id, token) WHERE a.dst = 'mlp_post_act'",
        output="rows",
    )
    stored = warehouse.sql("SELECT count(*) FROM activations WHERE dst = 'mlp_post_act'", output="rows")
    assert facts == stored and stored[0][0] > 0, "every fact row finds its token by the shared name"


def test_a_version_6_pool_keeps_each_nodes_best_examples_after_the_upgrade(tmp_path: Path) -> None:
    """Version 6 kept no K-th example values: upgraded, they read as unknown, so every example of the next
    run's nodes is a candidate, and the pool still holds each node's K best of every value, in the
    queries' order (SQL ranking the fact rows)."""
    from tests.test_summaries import ROWS, _prompts
    from warehouse.summaries import EXAMPLES_K

    path = tmp_path / "v6"
    options = IngestOptions(model="gpt2-tiny", progress=False)
    prompts = _prompts(3, 2)
    for prompt in prompts[:2]:
        ingest(path, [prompt], options)
    _rewrite(path, [f"ALTER TABLE node_summaries DROP COLUMN {c}" for c in ("kth_top", "kth_bottom")], 6)
    with pytest.raises(db.NotAWarehouse, match=f"schema version 6, older than this actwh's {db.SCHEMA_VERSION}"):
        Warehouse(path)

    ingest(path, prompts[2:], options)
    warehouse = Warehouse(path)
    assert warehouse.sql("SELECT run_id, pool FROM summary_pools ORDER BY 1", output="rows") == [(0, 0), (1, 0), (2, 0)]
    example = "dst, pass_type, layer, head, node_type, node_index, first_token, side, prompt_id, token, token2, value"
    best = warehouse.sql(
        f"SELECT {example} FROM (SELECT *, unnest(['top', 'bottom']) AS side FROM ({ROWS})) QUALIFY row_number()"
        " OVER (PARTITION BY dst, pass_type, layer, head, node_type, node_index, first_token, side ORDER BY"
        f" CASE WHEN side = 'top' THEN -value ELSE value END, prompt_id, token, token2) <= {EXAMPLES_K}",
        output="rows",
    )
    kept = warehouse.sql(f"SELECT {example} FROM node_examples", output="rows")
    assert sorted(kept) == sorted(best)


def _dense_from_long_rows(warehouse: Warehouse) -> dict[tuple, np.ndarray]:
    """Every residual-stream vector rebuilt from the `weights` long rows in numpy, keyed as weight_vectors:
    a writer's rows (to_residual) and a reader's columns (to_hidden, to_gate, to_query, to_key, to_value)."""
    rows = warehouse.sql(
        "SELECT location, layer, head, row_index, col_index, value FROM weights WHERE location LIKE '%.to_%'"
        " AND location NOT LIKE '%bias%'",
        output="rows",
    )
    vectors: dict[tuple, dict[int, float]] = {}
    for location, layer, head, row, col, value in rows:
        writer = location.endswith(".to_residual")
        key = (location, layer, head, row if writer else col)
        vectors.setdefault(key, {})[col if writer else row] = value
    return {key: np.array([v[c] for c in range(len(v))], np.float32) for key, v in vectors.items()}


def _stored_vectors(warehouse: Warehouse) -> dict[tuple, np.ndarray]:
    rows = warehouse.sql("SELECT location, layer, head, vector_index, vector FROM weight_vectors", output="rows")
    return {tuple(r[:4]): np.array(r[4], np.float32) for r in rows}


def test_a_version_7_lake_gets_the_weight_vectors_a_new_registration_writes(tmp_path: Path) -> None:
    """weight_vectors, as a registration writes them, hold exactly the long rows' writer rows and reader
    columns (ordered by residual channel); a version-7 lake (no such table) is refused read-only and, upgraded
    by the next ingest, builds the same vectors from its long rows."""
    path = tmp_path / "v7"
    # facts only: the summaries have nothing to do with the weights
    options = IngestOptions(model="gpt2-tiny", progress=False, input_weights="all", store=("facts",))
    ingest(path, [PromptInput("Vectors of the weights")], options)
    written = _stored_vectors(Warehouse(path))
    from_rows = _dense_from_long_rows(Warehouse(path))
    assert {location for location, *_ in written} == {
        "attn.to_residual", "mlp.to_residual", "mlp.to_hidden", "attn.to_query", "attn.to_key", "attn.to_value"
    }  # fmt: skip
    assert written.keys() == from_rows.keys()
    assert all(np.array_equal(written[k], from_rows[k]) for k in written)

    _rewrite(path, ["DROP TABLE weight_vectors"], 7)
    with pytest.raises(db.NotAWarehouse, match=f"schema version 7, older than this actwh's {db.SCHEMA_VERSION}"):
        Warehouse(path)
    ingest(path, [PromptInput("A prompt after the upgrade")], options)
    migrated = _stored_vectors(Warehouse(path))
    assert migrated.keys() == written.keys()
    assert all(np.array_equal(migrated[k], written[k]) for k in written)
    # the upgrade's vectors are written in small row groups too, as a new lake's (lake.ROW_GROUP_ROWS)
    with db.connect(path, read_only=True) as con:
        files = con.execute("SELECT data_file FROM ducklake_list_files('actwh', 'weight_vectors')").fetchall()
        options = con.execute(
            "SELECT value FROM ducklake_options('actwh') WHERE option_name = 'parquet_row_group_size'"
            " AND scope_entry = 'main.weight_vectors'"
        ).fetchall()
        sizes = [
            con.execute(f"SELECT max(row_group_num_rows) FROM parquet_metadata('{f}')").fetchall()[0][0]
            for (f,) in files
        ]
    assert (
        options == [(str(lake.ROW_GROUP_ROWS["weight_vectors"]),)]
        and max(sizes) <= lake.ROW_GROUP_ROWS["weight_vectors"]
    )
