"""Bad input: each case exits with the right status and says what happened in one line, no traceback.

Exit 2: the whole command cannot proceed (nothing is written). Exit 3: some prompts were skipped, each
with a `warning:` line naming its line number, and the others were stored. Most cases run the CLI
in-process (a subprocess costs a torch import, about 1.5 s, each), with any uncaught exception or Python
warning counted as extra stderr lines; a few run as real subprocesses to show what a user sees.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import cli
from ingest import worker
from warehouse import db, fact_files, lake

ROOT = Path(__file__).resolve().parent.parent
LONG_PROMPT = ("one two three four five six seven eight nine ten " * 20).strip()  # 200 tokens; context is 128


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def actwh(*args: str | Path) -> Result:
    """The CLI in-process; an escaped exception becomes a traceback on stderr, as it would for a user."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli.main, [str(a) for a in args])
    stderr = result.stderr + "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return Result(result.exit_code, result.stdout, stderr)


def actwh_process(*args: str | Path) -> Result:
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    return Result(done.returncode, done.stdout, done.stderr)


def ingest(db_path: Path, *args: str | Path) -> Result:
    return actwh("ingest", "--db", db_path, "--quiet", *args)


def tiny(db_path: Path, *args: str | Path) -> Result:
    return ingest(db_path, "--model", "gpt2-tiny", *args)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """Exit 2 and exactly one `error:` line on stderr that contains every fragment."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_skipped(result: Result, skipped: dict[int, str], stored: int) -> None:
    """Exit 3, one `warning: skipped line N: ...` per bad line, and the rest stored."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(skipped), result.stderr
    for line, (number, fragment) in zip(lines, sorted(skipped.items()), strict=True):
        assert line.startswith(f"warning: skipped line {number}: "), line
        assert fragment in line, line
    assert f"stored {stored} prompts" in result.stdout
    assert f"{len(skipped)} skipped" in result.stdout


def prompt_texts(db_path: Path) -> list[str]:
    con = db.connect(db_path, read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT text FROM prompts ORDER BY prompt_id").fetchall()]
    finally:
        con.close()


@pytest.fixture(scope="module")
def warehouse_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real warehouse; tests copy it before changing anything."""
    path = tmp_path_factory.mktemp("wh") / "base"
    result = tiny(path, "--prompt", "The cat sat on the mat")
    assert result.returncode == 0, result.stderr
    return path


# --- the model ---------------------------------------------------------------------------------------


def test_unknown_model(tmp_path: Path) -> None:
    result = actwh_process("ingest", "--db", tmp_path / "w.duckdb", "--model", "no-such-model", "--prompt", "Hi there")
    line = assert_one_line_error(result)
    assert "unknown model 'no-such-model'" in line and "gpt2-tiny" in line
    assert not (tmp_path / "w.duckdb").exists()


def _gpt2_config(path: Path) -> None:
    config = {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "n_positions": 16, "vocab_size": 50257}
    (path / "config.json").write_text(json.dumps(config))


def test_checkpoint_dir_with_config_but_no_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _gpt2_config(ckpt)
    assert_one_line_error(
        ingest(tmp_path / "w.duckdb", "--model", ckpt, "--prompt", "Hi there"),
        str(ckpt),
        "no weights: expected one of model.safetensors",
    )


def test_checkpoint_with_corrupt_safetensors(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _gpt2_config(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"this is not a safetensors file")
    line = assert_one_line_error(
        ingest(tmp_path / "w.duckdb", "--model", ckpt, "--prompt", "Hi there"), "cannot read the checkpoint"
    )
    assert "SafetensorError" in line
    assert not (tmp_path / "w.duckdb").exists()


def test_checkpoint_with_corrupt_pytorch_bin(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _gpt2_config(ckpt)
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04 truncated pickle")
    result = actwh_process("ingest", "--db", tmp_path / "w.duckdb", "--model", ckpt, "--prompt", "Hi there")
    line = assert_one_line_error(result, "cannot read the checkpoint", "UnpicklingError")
    assert "weights_only" not in line  # torch's advice to load untrusted pickles is not passed on


def test_llama_checkpoint_without_tokenizer(tmp_path: Path) -> None:
    """A Hugging Face llama directory loads, but only GGUF files carry a llama tokenizer we can read."""
    ckpt = tmp_path / "llama"
    ckpt.mkdir()
    d, mlp, vocab = 8, 16, 32
    config = {
        "model_type": "llama",
        "num_hidden_layers": 1,
        "hidden_size": d,
        "num_attention_heads": 2,
        "intermediate_size": mlp,
        "vocab_size": vocab,
        "max_position_embeddings": 16,
        "tie_word_embeddings": True,
    }
    (ckpt / "config.json").write_text(json.dumps(config))
    tensors = {
        "model.embed_tokens.weight": torch.zeros(vocab, d),
        "model.norm.weight": torch.ones(d),
        "model.layers.0.input_layernorm.weight": torch.ones(d),
        "model.layers.0.post_attention_layernorm.weight": torch.ones(d),
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(d, d),
        "model.layers.0.self_attn.k_proj.weight": torch.zeros(d, d),
        "model.layers.0.self_attn.v_proj.weight": torch.zeros(d, d),
        "model.layers.0.self_attn.o_proj.weight": torch.zeros(d, d),
        "model.layers.0.mlp.gate_proj.weight": torch.zeros(mlp, d),
        "model.layers.0.mlp.up_proj.weight": torch.zeros(mlp, d),
        "model.layers.0.mlp.down_proj.weight": torch.zeros(d, mlp),
    }
    save_file(tensors, str(ckpt / "model.safetensors"))
    assert_one_line_error(ingest(tmp_path / "w.duckdb", "--model", ckpt, "--prompt", "Hi there"), "no tokenizer")


# --- prompts -----------------------------------------------------------------------------------------


def test_empty_prompt_on_the_command_line(tmp_path: Path) -> None:
    assert_one_line_error(tiny(tmp_path / "w.duckdb", "--prompt", ""), "--prompt is empty")


@pytest.mark.parametrize(
    ("lines", "skipped", "kept"),
    [
        ('{"prompt": "The cat sat"}\n{"prompt": ""}\n{"prompt": "The dog ran"}\n', {2: "empty prompt"}, "The dog ran"),
        (
            '{"prompt": "The cat sat"}\n\n{"prompt": "The dog\n{"prompt": "A bird flew"}\n',
            {3: "malformed JSON"},
            "A bird flew",
        ),
    ],
    ids=["empty prompt", "malformed line"],
)
def test_bad_jsonl_line_is_skipped_with_its_line_number(
    tmp_path: Path, lines: str, skipped: dict[int, str], kept: str
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(lines)
    result = tiny(tmp_path / "w.duckdb", "--prompts", prompts)
    assert_skipped(result, skipped, stored=2)
    assert prompt_texts(tmp_path / "w.duckdb") == ["The cat sat", kept]


def test_command_line_target_not_one_token_shows_its_pieces(tmp_path: Path) -> None:
    result = tiny(tmp_path / "w.duckdb", "--prompt", "The capital of France is", "--target", " Paris is")
    assert_one_line_error(result, "--target ' Paris is' is 2 tokens", "[' Paris', ' is']")
    assert not (tmp_path / "w.duckdb").exists()


def test_command_line_distractor_not_one_token(tmp_path: Path) -> None:
    result = tiny(tmp_path / "w.duckdb", "--prompt", "The capital", "--target", " Paris", "--distractor", " New York")
    assert_one_line_error(result, "--distractor ' New York' is 2 tokens", "[' New', ' York']")


def test_jsonl_target_not_one_token_skips_that_line(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "The capital of France is", "target": " Paris"},
        {"prompt": "The capital of Italy is", "target": " Rome city"},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = tiny(tmp_path / "w.duckdb", "--prompts", prompts)
    assert_skipped(result, {2: "target ' Rome city' is 2 tokens [' Rome', ' city']"}, stored=1)


def test_lines_that_are_not_text_are_skipped_and_the_others_stored(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 on one line, JSON fields that are not text, a field the format does not
    have: each such line is skipped with its number and the reason, the lines before and after it stored.
    A byte-order mark (at the file's start, or where files were joined) and Windows line ends are not part
    of a prompt; a --prompt holding bytes that are not UTF-8 is skipped like a bad line."""
    lines = [
        "\ufeffThe cat sat\r\n".encode(),
        b"\xff\xfe bad line\r\n",
        b"The dog ran\n",
        b'{"prompt": "A bird \\ud83d flew"}\n',
        b'{"prompt": "A fish swam", "target": 5}\n',
        b'{"prompt": "A cow grazed", "label": 1}\n',
        "Caf\xe9 au lait\n".encode("latin-1"),
        b'{"prompt": "Na\\u00efve \\u00e9t\\u00e9"}\n',
        '\ufeff{"prompt": "A joined file"}'.encode(),
    ]
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"".join(lines))
    path = tmp_path / "w"
    result = tiny(path, "--no-backward", "--prompt", "Bad \udcff arg", "--prompts", prompts)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [
        "warning: skipped 'Bad \\udcff arg': prompt text: not UTF-8 (byte 0xff at character 5): give UTF-8 text",
        "warning: skipped line 2: not UTF-8 (byte 0xff at character 1): save the file as UTF-8",
        "warning: skipped line 4: field 'prompt': a lone surrogate U+D83D at character 8, half of a character: "
        "escape whole characters",
        "warning: skipped line 5: field 'target' is int, not a string",
        "warning: skipped line 6: unknown field 'label': a JSON line takes prompt, target, distractor",
        "warning: skipped line 7: not UTF-8 (byte 0xe9 at character 4): save the file as UTF-8",
    ]
    assert "stored 4 prompts" in result.stdout and "6 skipped" in result.stdout
    assert prompt_texts(path) == ["The cat sat", "The dog ran", "Na\xefve \xe9t\xe9", "A joined file"]
    con = db.connect(path, read_only=True)
    status, skipped = con.execute("SELECT status, skipped FROM runs").fetchall()[0]
    con.close()
    assert status == "completed"
    assert [(s["line"], s["prompt"][:6]) for s in json.loads(skipped)] == [
        (None, "Bad \\u"),
        (2, "\\udcff"),
        (4, '{"prom'),
        (5, '{"prom'),
        (6, '{"prom'),
        (7, "Caf\\ud"),
    ]


def test_a_prompt_file_saved_as_utf16_is_refused_before_anything_runs(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("The cat sat\nThe dog ran\n", encoding="utf-16")
    line = assert_one_line_error(tiny(tmp_path / "w", "--prompts", prompts), "is UTF-16 text", "iconv -f UTF-16")
    assert str(prompts) in line
    assert not (tmp_path / "w").exists()


def test_a_target_that_is_not_text_is_refused_in_one_line(tmp_path: Path) -> None:
    result = tiny(tmp_path / "w", "--prompt", "The capital of France is", "--target", " Par\udce9s")
    assert_one_line_error(result, "--target ' Par\\udce9s': not UTF-8 (byte 0xe9 at character 5)")
    assert not (tmp_path / "w").exists()


def test_prompt_longer_than_context_is_skipped_and_the_others_stored(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"The cat sat\n{LONG_PROMPT}\nThe dog ran\n")
    result = tiny(tmp_path / "w.duckdb", "--prompts", prompts)
    assert_skipped(result, {2: "prompt is 200 tokens, longer than the model's context of 128"}, stored=2)
    assert "--truncate" in result.stderr
    assert prompt_texts(tmp_path / "w.duckdb") == ["The cat sat", "The dog ran"]
    con = db.connect(tmp_path / "w.duckdb", read_only=True)
    skipped = json.loads(con.execute("SELECT skipped FROM runs").fetchall()[0][0])
    con.close()
    assert [s["line"] for s in skipped] == [2]


def test_truncate_stores_the_long_prompt_cut_to_the_context(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"The cat sat\n{LONG_PROMPT}\n")
    result = tiny(tmp_path / "w.duckdb", "--prompts", prompts, "--truncate", "--no-backward")
    assert result.returncode == 0, result.stderr
    con = db.connect(tmp_path / "w.duckdb", read_only=True)
    rows = con.execute(
        "SELECT n_tokens, (SELECT max(token) FROM activations a WHERE a.prompt_id = p.prompt_id)"
        " FROM prompts p ORDER BY prompt_id"
    ).fetchall()
    con.close()
    assert rows == [(3, 2), (128, 127)]


# --- capture settings --------------------------------------------------------------------------------


def test_unknown_location(tmp_path: Path) -> None:
    result = tiny(tmp_path / "w.duckdb", "--prompt", "Hi there", "--locations", "mlp.post_act,mlp.bogus")
    assert_one_line_error(result, "unknown location 'mlp.bogus'", "mlp.post_act")
    assert not (tmp_path / "w.duckdb").exists()


def test_layer_out_of_range(tmp_path: Path) -> None:
    result = tiny(tmp_path / "w.duckdb", "--prompt", "Hi there", "--layers", "0,2")
    assert_one_line_error(result, "layer 2 is out of range", "layers 0..1")


# --- the database file -------------------------------------------------------------------------------


def test_text_file_as_db_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n")
    result = actwh_process("ingest", "--db", path, "--model", "gpt2-tiny", "--prompt", "Hi there")
    assert_one_line_error(result, str(path), "is a file, not a warehouse folder")
    assert path.read_text() == "not a database\n"
    assert_one_line_error(actwh("sql", "--db", path, "SELECT 1"), "is a file, not a warehouse folder")


def test_duckdb_file_that_is_not_a_warehouse(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE sales (amount INTEGER)")
    con.close()
    assert_one_line_error(tiny(path, "--prompt", "Hi there"), "is a DuckDB database but not a warehouse")
    con = duckdb.connect(str(path), read_only=True)
    tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    con.close()
    assert tables == ["sales"]
    assert_one_line_error(actwh("info", "--db", path), "is a DuckDB database but not a warehouse")


def _set_version(path: Path, version: int) -> None:
    con = lake.new_connection()
    lake.attach(con, lake.LakeConfig.from_path(path), read_only=False)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(version)])
    con.close()


@pytest.mark.parametrize(("version", "message"), [(999, "newer than this actwh's"), (1, "no migration from it")])
def test_other_schema_version_is_refused_and_left_alone(
    tmp_path: Path, warehouse_file: Path, version: int, message: str
) -> None:
    path = tmp_path / "other-version"
    shutil.copytree(warehouse_file, path)
    _set_version(path, version)
    assert_one_line_error(tiny(path, "--prompt", "Hi there"), f"schema version {version}", message)
    assert_one_line_error(actwh("sql", "--db", path, "SELECT 1"), f"schema version {version}")
    _set_version(path, db.SCHEMA_VERSION)
    assert prompt_texts(path) == ["The cat sat on the mat"]


def test_missing_db_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "w.duckdb"
    assert_one_line_error(tiny(path, "--prompt", "Hi there"), str(path.parent), "is not a directory")


# --- resources ---------------------------------------------------------------------------------------


class _DiskFillsUp:
    """A DuckDB connection whose commits of fact rows fail from the second batch on (a batch inserts its
    prompts first, then registers its fact files, or inserts its rows into a lake on a URL) the way DuckDB
    reports ENOSPC."""

    batches = 0

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self._con, self._path = con, path

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT INTO prompts"):
            _DiskFillsUp.batches += 1
        stores_facts = sql.startswith(("INSERT INTO facts", "CALL ducklake_add_data_files"))
        if stores_facts and _DiskFillsUp.batches >= 2:
            raise duckdb.IOException(f'IO Error: Could not write file "{self._path}.wal": No space left on device')
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


class _FileFillsUp(pq.ParquetWriter):
    """pyarrow's Parquet writer failing as it does on a full disk once the first batch is committed: the
    fact files of the next batch are written before its transaction."""

    def write_table(self, *args: Any, **kwargs: Any) -> None:
        self._check()
        super().write_table(*args, **kwargs)

    def write_batch(self, *args: Any, **kwargs: Any) -> None:
        self._check()
        super().write_batch(*args, **kwargs)

    @staticmethod
    def _check() -> None:
        if _DiskFillsUp.batches >= 1:
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")


@pytest.mark.parametrize("where", ["commit", "fact file"])
def test_disk_full_during_a_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The ingest stops with one line, whether the disk fills as the batch's fact files are written or as
    its transaction commits; the failed batch rolled back, committed ones are kept and resumed."""
    real_connect, real_writer = db.connect, pq.ParquetWriter

    def connect(path: str | Path, **kwargs: Any) -> Any:
        return _DiskFillsUp(real_connect(path, **kwargs), Path(path))

    monkeypatch.setattr(_DiskFillsUp, "batches", 0)
    monkeypatch.setattr(db, "connect", connect)
    if where == "fact file":
        monkeypatch.setattr(fact_files.pq, "ParquetWriter", _FileFillsUp)
    path = tmp_path / "w.duckdb"
    args = ["--batch-size", "1", "--prompt", "The cat sat", "--prompt", "The dog ran", "--prompt", "A bird flew"]
    assert_one_line_error(tiny(path, *args), f"the disk holding {path} is full", "rerun the same command")
    monkeypatch.setattr(db, "connect", real_connect)
    monkeypatch.setattr(fact_files.pq, "ParquetWriter", real_writer)
    assert prompt_texts(path) == ["The cat sat"]
    result = tiny(path, *args)
    assert result.returncode == 0, result.stderr
    assert "stored 2 prompts" in result.stdout and "1 already stored" in result.stdout
    assert prompt_texts(path) == ["The cat sat", "The dog ran", "A bird flew"]


def test_a_prompt_too_big_for_the_memory_budget_is_skipped_before_the_model_runs(tmp_path: Path) -> None:
    """The estimate (captured tensors, autograd graph, logits) is checked before the pass: the prompt is
    skipped with the estimate and what to leave out, the others are stored."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("The cat sat\n" + " cat" * 120 + "\nThe dog ran\n")
    path = tmp_path / "w"
    result = tiny(path, "--prompts", prompts, "--max-memory", "150MB")
    assert_skipped(result, {2: "needs about 0.2 GB to capture"}, stored=2)
    assert "more than the 0.1 GB this ingest may use" in result.stderr and "--locations or --layers" in result.stderr
    assert prompt_texts(path) == ["The cat sat", "The dog ran"]
    assert_one_line_error(tiny(path, "--prompt", "Hi", "--max-memory", "lots"), "--max-memory", "4GB")


def test_out_of_memory_retries_smaller_batches_then_skips_the_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holding a too-big prompt is retried in halves; alone it is skipped, the rest are stored."""
    real_run_batch = worker.run_batch
    sizes: list[int] = []

    def run_batch(device, loaded, items, prompt_ids, spec, backward, *rest):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        if any("HUGE" in p.source.text for p in items):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_run_batch(device, loaded, items, prompt_ids, spec, backward, *rest)

    monkeypatch.setattr(worker, "run_batch", run_batch)
    prompts = tmp_path / "p.txt"
    texts = ["The cat sat", "A dog ran", "Birds fly", "HUGE prompt here", "Fish swim", "Cows moo"]
    prompts.write_text("\n".join(texts) + "\n")
    path = tmp_path / "w.duckdb"
    result = tiny(path, "--batch-size", "4", "--device", "cpu", "--prompts", prompts)
    assert_skipped(result, {4: "out of memory on cpu even alone (4 tokens)"}, stored=5)
    assert sizes == [4, 2, 2, 1, 1, 2]  # [1-4] -> [1,2] ok, [3,4] -> [3] ok, [4] skipped; then [5,6]
    assert prompt_texts(path) == [t for t in texts if "HUGE" not in t]
    con = db.connect(path, read_only=True)
    status, skipped, ids = con.execute(
        "SELECT status, skipped, (SELECT list(prompt_id ORDER BY prompt_id) FROM prompts) FROM runs"
    ).fetchall()[0]
    con.close()
    assert status == "completed" and json.loads(skipped)[0]["line"] == 4
    assert ids == list(range(5))  # no gaps left by the failed attempts
