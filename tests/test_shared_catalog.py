"""A warehouse on a PostgreSQL catalog (`--db 'postgres:...' --data-path DIR`) answers every command, the
API, a derived view and the BI dialect exactly as a warehouse folder holding the same ingest does; its
file list comes from the catalog; the mistakes a user can make with it get one line each."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli import main
from queries import Warehouse
from queries.notes import notes
from warehouse import db
from warehouse.writer import LakeWriter

PROMPTS = ["--prompt", "The capital of France is", "--prompt", "One two three four five", "--prompt", "Rome and"]
TARGET = ["--target", " Paris", "--distractor", " London"]
VIEW = "SELECT prompt_id, token, layer, node_index, value FROM mlp_act_times_grad ORDER BY ALL"
FIELDS = {"family": "gpt2", "n_layers": 1, "d_model": 2, "n_heads": 1, "n_kv_heads": 1, "d_head": 2, "d_mlp": 4,
          "vocab_size": 4, "n_ctx": 8, "norm": "layernorm", "config": "{}"}  # fmt: skip
RUN = {"model_id": 7, "objective": "pending", "locations": [], "software_version": "test", "device": "cpu",
       "dtype": "float32", "precision": "float32", "prepend_bos": False, "special_tokens": "special"}  # fmt: skip


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _rows(db_arg: str, sql: str) -> list[tuple]:
    with db.connect(db_arg, read_only=True) as con:
        return con.execute(sql).fetchall()


def _ingest(db_arg: str, *extra: str) -> None:
    _invoke("ingest", "--db", db_arg, "--model", "gpt2-tiny", "--quiet", *PROMPTS, *TARGET, *extra)


@pytest.mark.slow
def test_a_postgres_catalog_warehouse_answers_as_a_folder_does(pg_catalog: str, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    _ingest(str(folder))
    _ingest(pg_catalog, "--data-path", str(tmp_path / "shared"))
    local, shared = Warehouse(folder), Warehouse(pg_catalog)

    assert shared.sql(VIEW).num_rows > 0
    assert shared.sql(VIEW).equals(local.sql(VIEW))
    assert shared.top_nodes(0, "act_times_grad", 5).equals(local.top_nodes(0, "act_times_grad", 5))
    for command in (["sql", "--format", "csv", "--", VIEW], ["top", "--prompt-id", "1", "-k", "3"]):
        assert _invoke(command[0], "--db", pg_catalog, *command[1:]) == _invoke(
            command[0], "--db", str(folder), *command[1:]
        )
    counts = "== rows per dst"  # the sections above it hold the runs' times
    assert _invoke("info", "--db", pg_catalog).split(counts)[1] == _invoke("info", "--db", str(folder)).split(counts)[1]
    with shared.engine().connect() as bi:
        assert (
            bi.exec_driver_sql("SELECT count(*) FROM mlp_act_times_grad").scalar()
            == local.sql("SELECT count(*) AS n FROM mlp_act_times_grad").column("n")[0].as_py()
        )

    # The data went to the data path, and the catalog lists exactly the files holding the facts.
    files = shared.parquet_files("facts")
    assert files and all(f.startswith(str(tmp_path / "shared")) for f in files)
    assert (
        sum(pq.read_metadata(f).num_rows for f in files)
        == shared.sql("SELECT count(*) AS n FROM facts")["n"][0].as_py()
    )
    assert _invoke("files", "--db", pg_catalog).split() == files

    # Rerunning stores nothing new; compaction keeps every answer.
    _ingest(pg_catalog)
    assert shared.sql("SELECT count(*) AS n FROM prompts")["n"][0].as_py() == 3
    before = shared.sql(VIEW)
    assert "data files before" in _invoke("compact", "--db", pg_catalog)
    assert shared.sql(VIEW).equals(before)
    assert len(shared.parquet_files("prompts")) >= 1  # compaction moved the inlined prompt rows into a file


def test_shared_catalog_mistakes_get_one_line(pg_catalog: str, tmp_path: Path) -> None:
    runner = CliRunner()

    def error(*args: str) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        return lines[0]

    assert "holds no warehouse yet" in error("info", "--db", pg_catalog)
    assert "--data-path" in error("ingest", "--db", pg_catalog, "--model", "gpt2-tiny", "--prompt", "Hi")
    folder = str(tmp_path / "w")
    assert "remove --data-path" in error("ingest", "--db", folder, "--data-path", folder, "--prompt", "Hi")
    assert "--workers needs" in error("ingest", "--db", folder, "--workers", "2", "--prompt", "Hi")
    unreachable = pg_catalog.replace("dbname=", "dbname=missing_")
    assert "cannot reach the catalog" in error("info", "--db", unreachable)
    with pytest.raises(db.WarehouseError, match="compact"):
        _ingest(pg_catalog, "--data-path", str(tmp_path / "shared"))
        Warehouse(pg_catalog).parquet_files("prompts")  # three prompts inlined in the catalog


def test_a_model_registration_that_loses_a_conflict_is_stored_whole(pg_catalog: str, tmp_path: Path) -> None:
    """The model's rows are streamed into its commit; when another writer commits first, the registration
    runs again and streams them again, rather than storing the model without them."""
    with LakeWriter(pg_catalog, data_path=tmp_path / "shared") as first, LakeWriter(pg_catalog) as second:
        calls = []

        def vocab() -> list[pa.Table]:
            calls.append(len(calls))
            if len(calls) == 1:
                second.start_run(**RUN)  # commits while the registration's transaction is open
            return [_vocab(0, 1)]

        model_id = first.register_model("m", "hash", FIELDS, {"vocab": vocab})
        assert len(calls) == 2 and first.conflicts_retried == 1
    assert _rows(pg_catalog, "SELECT model_id, count(*) FROM vocab GROUP BY ALL") == [(model_id, 2)]
    assert _rows(pg_catalog, "SELECT count(*) FROM models") == [(1,)]


def test_model_rows_added_after_registration_are_decided_again_after_a_lost_conflict(
    pg_catalog: str, tmp_path: Path
) -> None:
    """add_model_rows (an SAE's rows) decides what to add inside its commit; when another writer commits
    rows first, the decision runs again and sees them, so each row is stored once."""
    with LakeWriter(pg_catalog, data_path=tmp_path / "shared") as first, LakeWriter(pg_catalog) as second:
        model_id = first.register_model("m", "hash", FIELDS, {"vocab": lambda: [_vocab(0, 1)]})
        calls = []

        def missing(con: duckdb.DuckDBPyConnection) -> list[tuple[str, pa.Table]]:
            calls.append(len(calls))
            stored = {r[0] for r in con.execute("SELECT token_id FROM vocab").fetchall()}
            if len(calls) == 1:  # another writer adds token 2 after this transaction read what is stored
                second.add_model_rows(model_id, lambda _: [("vocab", _vocab(2))])
            return [("vocab", _vocab(*sorted({2, 3} - stored)))]

        first.add_model_rows(model_id, missing)
        assert len(calls) == 2 and first.conflicts_retried == 1
    assert _rows(pg_catalog, "SELECT token_id FROM vocab ORDER BY 1") == [(0,), (1,), (2,), (3,)]


def _vocab(*ids: int) -> pa.Table:
    return pa.table({"token_id": pa.array(ids, pa.int32()), "text": [str(i) for i in ids]})


def test_a_batch_that_loses_prompts_to_another_writer_leaves_its_run_to_a_scan(
    pg_catalog: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's summaries count every prompt it captured; when the commit leaves out one another writer
    stored first (a shard run twice: here the resume check is made to see nothing), its run keeps no
    summaries and the ranking is answered by a scan of what is stored, each prompt once."""
    _invoke("ingest", "--db", pg_catalog, "--data-path", str(tmp_path / "shared"), "--model", "gpt2-tiny",
            "--quiet", *PROMPTS[:4], *TARGET)  # fmt: skip
    monkeypatch.setattr(LakeWriter, "committed_keys", lambda self, model_id: set())
    _ingest(pg_catalog)  # its batch holds the two stored prompts and a new one
    shared = Warehouse(pg_catalog)
    assert shared.sql("SELECT count(*) AS n FROM prompts")["n"].to_pylist() == [3]
    assert shared.sql("SELECT DISTINCT run_id FROM node_summaries")["run_id"].to_pylist() == [0]
    ranked = shared.rank_nodes("mlp_post_act", by="sum", k=3, skip_first=1)
    assert any("scanned 1 prompt(s) the per-node summaries do not cover" in n for n in notes(ranked))
    oracle = shared.sql(
        "SELECT sum(value::DOUBLE) AS v FROM activations WHERE dst = 'mlp_post_act' AND pass_type = 'forward'"
        " AND token >= 1 GROUP BY layer, node_index ORDER BY v DESC LIMIT 3"
    )
    assert ranked["value"].to_pylist() == pytest.approx(oracle["v"].to_pylist(), rel=1e-9)
