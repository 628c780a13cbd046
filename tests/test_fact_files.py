"""Fact files written outside the commit (warehouse/fact_files.py) and registered inside it: a killed ingest
leaves neither a partial prompt nor a registered orphan, the catalog's statistics cover every value
whatever NULL patterns the rows mix, and a batch whose prompts are renumbered at commit is stored under
the new ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from warehouse import db, fact_files
from warehouse.facts import FACT_SCHEMA, constant_name
from warehouse.maintenance import statistics_problems
from warehouse.writer import Batch, LakeWriter

ROOT = Path(__file__).resolve().parent.parent
FIRST = [PromptInput("The capital of France is", " Paris", " London")]
KILLED = [PromptInput("Rome and Berlin are two cities"), PromptInput("One two three four")]
LATER = [PromptInput("A short one")]
RUN = {"model_id": 0, "objective": "pending", "locations": [], "software_version": "test", "device": "cpu",
       "dtype": "float32", "precision": "float32", "prepend_bos": False, "special_tokens": "special"}  # fmt: skip

# Runs an ingest of KILLED that dies (as SIGKILL: no rollback, no cleanup) once the batch's fact files are
# written and before its transaction begins ("written"), or once they are registered inside the open
# transaction, before its COMMIT ("registered").
_KILLED_INGEST = """
import os, sys
from pathlib import Path
from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from warehouse.writer import LakeWriter

stage, texts = sys.argv[2], sys.argv[3:]
if stage == "written":
    LakeWriter.append = lambda *args, **kwargs: os._exit(9)
else:
    register = LakeWriter._register_facts

    def registered_then_killed(*args):
        register(*args)
        os._exit(9)

    LakeWriter._register_facts = registered_then_killed
ingest(Path(sys.argv[1]), [PromptInput(t) for t in texts], IngestOptions(model="gpt2-tiny", progress=False))
"""


def _options() -> IngestOptions:
    return IngestOptions(model="gpt2-tiny", progress=False)


def _rows(path: Path, sql: str) -> list[tuple]:
    with db.connect(path, read_only=True) as con:
        return con.execute(sql).fetchall()


def _on_disk(path: Path) -> set[Path]:
    return set((path / "data" / "main" / "facts").glob("*.parquet"))


def _listed(path: Path) -> set[Path]:
    return {Path(f) for (f,) in _rows(path, "SELECT data_file FROM ducklake_list_files('actwh', 'facts')")}


def _consistent(path: Path) -> None:
    """Every listed file exists, and every fact row belongs to a stored prompt."""
    assert all(f.exists() for f in _listed(path))
    assert _rows(path, "SELECT count(*) FROM facts ANTI JOIN prompts USING (prompt_id)") == [(0,)]


@pytest.mark.parametrize("stage", ["written", "registered"])
def test_a_killed_ingest_leaves_no_partial_prompt_and_no_orphan(tmp_path: Path, stage: str) -> None:
    path = tmp_path / "lake"
    ingest(path, FIRST, _options())
    files, facts = _on_disk(path), _rows(path, "SELECT count(*) FROM facts")
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_INGEST, str(path), stage, *(p.text for p in KILLED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 9, done.stderr
    orphans = _on_disk(path) - files
    assert orphans, "the killed ingest wrote no fact file: nothing to clean"
    assert not orphans & _listed(path), "a file of the uncommitted batch is registered"
    assert _rows(path, "SELECT text FROM prompts") == [(FIRST[0].text,)]
    assert _rows(path, "SELECT count(*) FROM facts") == facts
    _consistent(path)
    ingest(path, LATER, _options())  # the next writer removes the orphans
    assert not any(f.exists() for f in orphans)
    assert _on_disk(path) == _listed(path)
    ingest(path, KILLED, _options())  # and a rerun stores the killed batch whole
    _consistent(path)
    alone = tmp_path / "alone"
    ingest(alone, KILLED, _options())
    query = (
        "SELECT p.text, f.* EXCLUDE (prompt_id) FROM facts f JOIN prompts p USING (prompt_id)"
        " WHERE p.text IN ({}) ORDER BY ALL"
    ).format(", ".join(f"'{p.text}'" for p in KILLED))
    assert _rows(path, query) == _rows(alone, query)


def _batch(rng: np.random.Generator, run_id: int, first_id: int, n_prompts: int, shift: float, token2: bool) -> Batch:
    """Prompts with fact rows of random NULL patterns (token2, head, layer, forward, backward each NULL
    in some rows; token2 in every row unless `token2`), values around `shift`, streamed as the worker
    does: a primer (the first row of each pattern) and then the rest in record batches of random sizes,
    the first half grouped by pattern, the second shuffled so that batches mix patterns."""
    ids = np.arange(first_id, first_id + n_prompts)
    prompts = pa.table(
        {
            "prompt_id": pa.array(ids, pa.int32()),
            "run_id": pa.array([run_id] * n_prompts, pa.int32()),
            "model_id": pa.array([0] * n_prompts, pa.int32()),
            "prompt_key": [f"key-{i}" for i in ids],
            "text": [f"prompt {i}" for i in ids],
            "n_tokens": pa.array([1] * n_prompts, pa.int32()),
        }
    )
    tokens = pa.table(
        {
            "prompt_id": pa.array(ids, pa.int32()),
            "token": pa.array([0] * n_prompts, pa.int16()),
            "token_id": pa.array([1] * n_prompts, pa.int32()),
            "text": ["a"] * n_prompts,
        }
    )
    n = 3000 * n_prompts
    nulls = rng.random((5, n)) < np.array([[1.0 if not token2 else 0.5], [0.4], [0.2], [0.1], [0.5]])

    def column(values: np.ndarray, null: np.ndarray, type_: pa.DataType) -> pa.Array:
        return pa.array(values.astype(type_.to_pandas_dtype()), type_, mask=null)

    table = pa.Table.from_batches(
        [
            pa.RecordBatch.from_arrays(
                [
                    pa.array(np.repeat(ids, 3000).astype(np.int32)),
                    pa.array(rng.integers(0, 100, n).astype(np.int16)),
                    column(rng.integers(0, 100, n) + int(shift), nulls[0], pa.int16()),
                    column(rng.integers(0, 30, n) - int(shift), nulls[1], pa.int16()),
                    column(rng.integers(0, 9, n) + int(shift), nulls[2], pa.int16()),
                    constant_name("mlp_neuron", n),
                    pa.array(rng.integers(0, 500, n).astype(np.int32)),
                    constant_name("mlp_post_act", n),
                    column(rng.normal(shift, 1.0, n), nulls[3], pa.float32()),
                    column(rng.normal(-shift, 1.0, n), nulls[4], pa.float32()),
                ],
                schema=FACT_SCHEMA,
            )
        ]
    )
    primer, *parts = fact_files.primed_parts(table)
    rest = pa.concat_tables(parts)
    half = rest.num_rows // 2
    rest = pa.concat_tables([rest.slice(0, half), rest.slice(half).take(rng.permutation(rest.num_rows - half))])
    cuts = np.sort(rng.choice(np.arange(1, rest.num_rows), 12, replace=False))
    pieces = [rest.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, rest.num_rows], strict=True)]
    facts = [*primer.to_batches(), *(batch for piece in pieces for batch in piece.combine_chunks().to_batches())]
    return Batch(prompts, tokens, facts)


def test_statistics_equal_a_scan_after_writes_mixing_null_patterns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four commits of rows whose NULL patterns mix within and across record batches, the first with no
    token2 at all, into files of many row groups (shrunk to 200 rows, files to 4000): the catalog's ranges
    cover every stored value, and every row is stored."""
    monkeypatch.setattr(fact_files, "ROWS_PER_ROW_GROUP", 200)
    monkeypatch.setattr(fact_files, "ROWS_PER_FILE", 4000)
    rng = np.random.default_rng(5)
    path = tmp_path / "lake"
    written = 0
    with LakeWriter(path, writer_threads=2) as writer:
        run_id = writer.start_run(**RUN)
        for number, shift in enumerate([0.0, 50.0, -80.0, 120.0]):
            batch = _batch(rng, run_id, number * 2, 2, shift, token2=number > 0)
            written += sum(b.num_rows for b in batch.facts)  # type: ignore[union-attr]
            stored = writer.append_retrying(lambda batch=batch: batch, run_id)
            assert stored.rows == sum(b.num_rows for b in batch.facts)  # type: ignore[union-attr]
    groups = [pq.ParquetFile(f).metadata.num_row_groups for f in _listed(path)]
    assert max(groups) > 1, "no file of several row groups: the test exercises nothing"
    assert _rows(path, "SELECT count(*) FROM facts") == [(written,)]
    with db.connect(path, read_only=True) as con:
        assert statistics_problems(con) == []


def test_a_batch_renumbered_at_commit_is_stored_under_its_new_ids(tmp_path: Path) -> None:
    """Provisional prompt ids that the commit renumbers (another writer took them, here: ids past the
    stored ones) are rewritten into new files; only the registered files stay on disk."""
    rng = np.random.default_rng(1)
    path = tmp_path / "lake"
    with LakeWriter(path, writer_threads=1) as writer:
        run_id = writer.start_run(**RUN)
        batch = _batch(rng, run_id, 40, 2, 10.0, token2=True)
        want = pa.Table.from_batches(batch.facts).column("forward").to_numpy(zero_copy_only=False)  # type: ignore[arg-type]
        writer.append_retrying(lambda: batch, run_id)
    assert _rows(path, "SELECT prompt_id, text FROM prompts ORDER BY 1") == [(0, "prompt 40"), (1, "prompt 41")]
    assert _rows(path, "SELECT DISTINCT prompt_id FROM facts ORDER BY 1") == [(0,), (1,)]
    got = np.array([r[0] for r in _rows(path, "SELECT forward FROM facts")], dtype=np.float64)
    assert np.array_equal(np.sort(got), np.sort(want.astype(np.float64)), equal_nan=True)
    assert _on_disk(path) == _listed(path)
    _consistent(path)
