"""The lake itself: catalog statistics that the planner can trust, bfloat16 precision, a warehouse folder
that keeps working when moved, compaction, conversion of a single-file warehouse, a killed writer's files
cleaned up without a partial prompt ever showing, and a failed commit's own error reported."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from warehouse import db
from warehouse.convert import convert
from warehouse.facts import round_to_bfloat16
from warehouse.maintenance import compact, live_data_files, statistics_problems
from warehouse.registry import PRE_NORM_LOCATIONS
from warehouse.writer import LakeWriter

PROMPTS = [
    PromptInput("The capital of France is", " Paris", " London"),
    PromptInput("One two three four five six seven eight nine ten eleven", " twelve"),
    PromptInput("Rome and Berlin"),
]
ALL = PRE_NORM_LOCATIONS
# Eight prompts of about 110 tokens: one batch of them fills several Parquet row groups.
_WORDS = ("red", "green", "blue", "north", "south", "east", "west", "one", "two", "three", "cat", "dog", "bird")
LONG_PROMPTS = [PromptInput(" ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(110))) for i in range(8)]


def _options(**kwargs: object) -> IngestOptions:
    return IngestOptions(model="gpt2-tiny", progress=False, **kwargs)  # type: ignore[arg-type]


def _rows(path: Path, sql: str) -> list[tuple]:
    with db.connect(path, read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs whose files differ in which columns are NULL: default capture, every location, forward only."""
    path = tmp_path_factory.mktemp("lake") / "mixed"
    ingest(path, PROMPTS[:1], _options(locations=["mlp.post_act:forward"]))  # no token2, head or backward
    ingest(path, PROMPTS, _options())
    ingest(path, PROMPTS[1:], _options(locations=ALL, batch_size=1, unembedding="all"))
    ingest(path, [PromptInput("Short one")], _options(backward=False))
    return path


def _planner_disagreements(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Fact columns for which queries the optimizer answers or prunes with catalog statistics (min and max,
    a perfect-hash GROUP BY) give other answers than a scan."""
    wrong = []
    for column in ("token2", "head", "layer", "backward", "forward"):
        queries = (
            f"SELECT min({column}), max({column}) FROM facts",
            f"SELECT {column}, count(*) FROM facts GROUP BY 1 ORDER BY 1",
        )
        optimized = [con.execute(q).fetchall() for q in queries]
        con.execute("PRAGMA disable_optimizer")
        scanned = [con.execute(q).fetchall() for q in queries]
        con.execute("PRAGMA enable_optimizer")
        if optimized != scanned:
            wrong.append(column)
    return wrong


def _row_groups(path: Path) -> list[int]:
    """Parquet row groups per data file of the lake's facts table."""
    files = _rows(path, "SELECT data_file FROM ducklake_list_files('actwh', 'facts')")
    return [pq.ParquetFile(f).metadata.num_row_groups for (f,) in files]


def test_catalog_statistics_cover_every_stored_value(mixed: Path) -> None:
    with db.connect(mixed, read_only=True) as con:
        assert statistics_problems(con) == []


def test_planner_answers_from_statistics_agree_with_a_scan(mixed: Path) -> None:
    with db.connect(mixed, read_only=True) as con:
        assert _planner_disagreements(con) == []


def test_statistics_stay_true_when_a_batch_spans_several_row_groups(tmp_path: Path) -> None:
    """The first ingest into a new lake stores one batch of long prompts, whose locations leave different
    columns NULL (token2 in all but the attention pattern, layer in the embedding), in files of several
    Parquet row groups (DuckDB cuts them where it likes, about every 122,880 rows); its primer is five rows
    (one per location and layer). A short ingest commits after it: the first batch's values must stay
    inside the catalog's ranges, whichever row groups and files happen to hold no token2."""
    path = tmp_path / "long"
    locations = ["resid.post_emb", "mlp.post_act", "attn.qk_probs"]
    ingest(path, LONG_PROMPTS, _options(locations=locations, batch_size=len(LONG_PROMPTS)))
    ingest(path, [PromptInput("Short one")], _options(locations=locations))
    assert max(_row_groups(path)) > 1, "no file of several row groups: the test exercises nothing"
    with db.connect(path, read_only=True) as con:
        assert statistics_problems(con) == []
        assert _planner_disagreements(con) == []


def test_bfloat16_precision_rounds_each_value_to_nearest_even(tmp_path: Path) -> None:
    full, half = tmp_path / "f32", tmp_path / "bf16"
    ingest(full, PROMPTS, _options())
    ingest(half, PROMPTS, _options(precision="bfloat16"))
    query = (
        "SELECT forward, backward FROM facts f JOIN prompts p USING (prompt_id)"
        " ORDER BY p.text, dst, layer, token, token2, head, node_index"
    )
    exact, rounded = np.array(_rows(full, query), dtype=np.float64), np.array(_rows(half, query), dtype=np.float64)
    assert exact.shape == rounded.shape and exact.size > 1000
    want = torch.from_numpy(exact.astype(np.float32)).to(torch.bfloat16).to(torch.float32).numpy()
    assert np.array_equal(rounded, want.astype(np.float64), equal_nan=True)
    assert not np.array_equal(rounded, exact, equal_nan=True)
    assert _rows(half, "SELECT DISTINCT precision FROM runs") == [("bfloat16",)]


def test_bfloat16_rounding_breaks_exact_ties_to_even_as_torch_does() -> None:
    """Values exactly halfway between two bfloat16 values (low half 0x8000) with even and odd upper halves,
    both signs, their neighbours one bit either side, zero, subnormals and the largest finite values (whose
    ties round to infinity): rounded bit for bit as torch converts float32 to bfloat16. The ingest's values
    above hold no exact tie."""
    upper = np.random.default_rng(0).integers(0, 0x7F80, size=2000, dtype=np.uint32)
    upper = np.concatenate([upper, [0, 1, 2, 0x7F7E, 0x7F7F]]).astype(np.uint32)
    low = np.array([0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF], np.uint32)
    bits = (upper[:, None] << np.uint32(16) | low[None, :]).reshape(-1)
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    assert {0, 1} <= set((upper & 1).tolist()), "ties of both parities"
    values = bits.view(np.float32)
    want = torch.from_numpy(values.copy()).to(torch.bfloat16).to(torch.float32).numpy()
    assert np.array_equal(round_to_bfloat16(values).view(np.uint32), want.view(np.uint32))


@pytest.mark.slow
def test_a_moved_warehouse_answers_the_same(mixed: Path, tmp_path: Path) -> None:
    query = "SELECT * FROM scalars ORDER BY ALL"
    want = _rows(mixed, query)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(mixed, moved)
    assert _rows(moved, query) == want


def test_compact_merges_files_and_changes_no_answer(mixed: Path, tmp_path: Path) -> None:
    path = tmp_path / "compacted"
    shutil.copytree(mixed, path)
    query = "SELECT * FROM activations ORDER BY ALL"
    want = _rows(path, query)
    before, after = compact(path)
    assert after < before
    assert _rows(path, query) == want
    with db.connect(path, read_only=True) as con:
        assert live_data_files(con) == after
        assert statistics_problems(con) == []
    parquet = {p.name for p in (path / "data").rglob("*.parquet")}
    listed = {Path(r[0]).name for r in _rows(path, "SELECT data_file FROM ducklake_list_files('actwh', 'facts')")}
    assert listed <= parquet


_KILLED_WRITER = """
import os, sys
import pyarrow as pa
from warehouse.writer import LakeWriter
writer = LakeWriter(sys.argv[1])
con = writer.con
con.execute("BEGIN")
con.execute("INSERT INTO prompts (prompt_id, run_id, model_id, prompt_key, text, n_tokens)"
            " VALUES (99, 0, 0, 'k', 'half-written', 3)")
con.execute("INSERT INTO facts SELECT 99, (i % 3)::SMALLINT, NULL, 0, NULL, 'mlp_neuron', i, 'mlp_post_act',"
            " i::FLOAT, NULL FROM range(300000) t(i)")
os._exit(9)  # as SIGKILL: no rollback, no cleanup
"""


def test_a_killed_writer_leaves_no_partial_prompt_and_its_files_are_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "killed"
    ingest(path, PROMPTS[:1], _options())
    files = {p for p in (path / "data").rglob("*.parquet")}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=root, capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    orphans = {p for p in (path / "data").rglob("*.parquet")} - files
    assert orphans, "the killed transaction wrote no file: nothing to clean"
    assert _rows(path, "SELECT count(*) FROM prompts WHERE prompt_id = 99") == [(0,)]
    assert _rows(path, "SELECT count(*) FROM facts WHERE prompt_id = 99") == [(0,)]
    ingest(path, PROMPTS[1:2], _options())  # the next writer cleans up
    assert not any(p.exists() for p in orphans)
    assert [r[0] for r in _rows(path, "SELECT text FROM prompts ORDER BY prompt_id")] == [
        PROMPTS[0].text,
        PROMPTS[1].text,
    ]


def test_a_failed_commit_reports_its_own_error(tmp_path: Path) -> None:
    """A COMMIT that fails has already ended the transaction: the writer raises the commit's error, not the
    'no transaction is active' of a rollback attempted after it."""
    path = tmp_path / "lake"
    with LakeWriter(path) as writer:
        other = db.connect(path)
        try:
            with pytest.raises(duckdb.Error) as failed, writer.transaction() as con:
                con.execute("DELETE FROM meta WHERE key = 'views'")
                other.execute("DELETE FROM meta WHERE key = 'views'")  # commits first: the writer's COMMIT fails
        finally:
            other.close()
    assert "Failed to commit" in str(failed.value), failed.value


_V1_SCHEMA = """
CREATE TYPE dst_name AS ENUM ('mlp_post_act', 'resid_post_emb', 'attn_v');
CREATE TYPE node_type_name AS ENUM ('mlp_neuron', 'residual_stream_channel', 'v_channel');
CREATE TYPE pass_type_name AS ENUM ('forward', 'backward');
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE models (model_id INTEGER, name VARCHAR, family VARCHAR, checkpoint_hash VARCHAR, n_layers INTEGER,
    d_model INTEGER, n_heads INTEGER, n_kv_heads INTEGER, d_head INTEGER, d_mlp INTEGER, vocab_size INTEGER,
    n_ctx INTEGER, norm VARCHAR, config JSON);
INSERT INTO models VALUES (0, 'm', 'gpt2', 'h', 1, 2, 1, 1, 2, 2, 10, 8, 'layernorm', NULL);
CREATE TABLE runs (run_id INTEGER, model_id INTEGER, objective VARCHAR, locations VARCHAR[], layers INTEGER[],
    software_version VARCHAR, device VARCHAR, dtype VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP,
    status VARCHAR, n_prompts INTEGER, skipped JSON, message VARCHAR);
INSERT INTO runs VALUES (0, 0, 'logit_diff', ['mlp.post_act:forward'], NULL, '0.1.0', 'cpu', 'float32',
    '2026-01-01', '2026-01-01', 'completed', 1, '[]', NULL);
CREATE TABLE prompts (prompt_id INTEGER, run_id INTEGER, model_id INTEGER, prompt_key VARCHAR, text VARCHAR,
    n_tokens INTEGER, target VARCHAR, distractor VARCHAR, target_id INTEGER, distractor_id INTEGER, objective DOUBLE);
INSERT INTO prompts VALUES (0, 0, 0, 'k', 'a b', 2, ' c', NULL, 3, NULL, 0.5);
CREATE TABLE tokens (prompt_id INTEGER, position SMALLINT, token_id INTEGER, text VARCHAR);
INSERT INTO tokens VALUES (0, 0, 1, 'a'), (0, 1, 2, ' b');
CREATE TABLE activations (prompt_id INTEGER, token SMALLINT, token2 SMALLINT, layer SMALLINT, head SMALLINT,
    node_type node_type_name, node_index INTEGER, dst dst_name, pass_type pass_type_name, value FLOAT);
INSERT INTO activations VALUES
    (0, 0, NULL, 0, NULL, 'mlp_neuron', 1, 'mlp_post_act', 'forward', 1.5),
    (0, 0, NULL, 0, NULL, 'mlp_neuron', 1, 'mlp_post_act', 'backward', -2.0),
    (0, 1, NULL, NULL, NULL, 'residual_stream_channel', 0, 'resid_post_emb', 'forward', 0.25),
    (0, 1, NULL, 0, 0, 'v_channel', 1, 'attn_v', 'forward', 3.0);
CREATE TABLE weights (model_id INTEGER, location VARCHAR, layer SMALLINT, head SMALLINT, row_index INTEGER,
    col_index INTEGER, value FLOAT);
INSERT INTO weights VALUES (0, 'mlp.to_residual', 0, NULL, 1, 0, 0.5);
CREATE TABLE vocab (model_id INTEGER, token_id INTEGER, text VARCHAR);
CREATE TABLE mlp_out_norms (model_id INTEGER, layer SMALLINT, node_index INTEGER, value FLOAT);
CREATE TABLE direction_factors (model_id INTEGER, token_id INTEGER, kind VARCHAR, layer SMALLINT, head SMALLINT,
    node_index INTEGER, value DOUBLE);
"""


def test_a_single_file_warehouse_is_refused_with_the_command_that_converts_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    old = tmp_path / "old.duckdb"
    with duckdb.connect(str(old)) as con:
        con.execute(_V1_SCHEMA)
    with pytest.raises(db.NotAWarehouse, match=r"actwh convert .*old.duckdb --db .*old`"):
        db.connect(old, read_only=True)
    result = CliRunner().invoke(main, ["convert", str(old), "--db", str(tmp_path / "new")])
    assert result.exit_code == 0, result.output
    got = _rows(
        tmp_path / "new",
        "SELECT dst, token, layer, head, node_type, node_index, pass_type, value FROM activations ORDER BY ALL",
    )
    assert got == [
        ("attn_value", 1, 0, 0, "v_channel", 1, "forward", 3.0),
        ("mlp_post_act", 0, 0, None, "mlp_neuron", 1, "backward", -2.0),
        ("mlp_post_act", 0, 0, None, "mlp_neuron", 1, "forward", 1.5),
        ("resid_post_embedding", 1, None, None, "residual_stream_channel", 0, "forward", 0.25),
    ]
    assert _rows(tmp_path / "new", "SELECT text, objective FROM prompts") == [("a b", 0.5)]
    assert _rows(tmp_path / "new", "SELECT precision, status FROM runs") == [("float32", "completed")]
    # the edges read the write matrices' rows as vectors: built from the converted long rows
    vectors = "SELECT location, layer, head, vector_index, vector FROM weight_vectors"
    assert _rows(tmp_path / "new", vectors) == [("mlp.to_residual", 0, None, 1, [0.5])]
    again = CliRunner().invoke(main, ["convert", str(old), "--db", str(tmp_path / "new")])
    assert again.exit_code == 2 and "already holds a warehouse" in again.output


def test_a_converted_warehouse_of_several_row_groups_keeps_true_statistics(tmp_path: Path) -> None:
    """Converted facts, token2 set in a few rows and NULL in most, fill several Parquet row groups, and an
    ingest commits after the conversion: the converted values stay inside the catalog's ranges."""
    old, new = tmp_path / "big.duckdb", tmp_path / "new"
    with duckdb.connect(str(old)) as con:
        con.execute(_V1_SCHEMA)
        con.execute(
            "INSERT INTO activations SELECT 0, (i // 100)::SMALLINT, (i % 100)::SMALLINT, 0, 0, 'v_channel', 0,"
            " 'attn_v', 'forward', 1.0 FROM range(20000) t(i)"
        )
        con.execute(
            "INSERT INTO activations SELECT 0, (i // 1000)::SMALLINT, NULL, 0, NULL, 'mlp_neuron', i % 1000 + 2,"
            " 'mlp_post_act', 'forward', i::FLOAT FROM range(300000) t(i)"
        )
    convert(old, new)
    ingest(new, [PromptInput("Short one")], _options())
    assert max(_row_groups(new)) > 1, "no file of several row groups: the test exercises nothing"
    with db.connect(new, read_only=True) as con:
        assert statistics_problems(con) == []
        assert _planner_disagreements(con) == []
