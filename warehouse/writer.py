"""The writer: appends batches of whole prompts atomically.

One ingest at a time holds an advisory lock beside the file (released by the OS even on SIGKILL); the
DuckDB file itself is opened only for the length of one commit, so readers can query committed prompts
between batches. A batch's prompt records, tokens and activation rows go in one transaction: a reader,
or a restart after a crash, sees all of a prompt or none of it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from warehouse import db
from warehouse.facts import FACT_SCHEMA


@dataclass
class Batch:
    """Whole prompts ready to commit: Arrow tables in the shapes of `prompts`, `tokens`, `activations`."""

    prompts: pa.Table
    tokens: pa.Table
    activations: list[pa.Table] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return sum(t.num_rows for t in self.activations)


class IngestLocked(db.WarehouseError):
    pass


class DiskFull(db.WarehouseError):
    """The disk filled during a write: DuckDB rolled the batch back, so rerunning resumes cleanly."""


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, duckdb.Error) and any(p in str(exc) for p in ("No space left on device", "disk is full"))


class DuckDBWriter:
    """The single-file implementation of the writer interface (append whole prompts; say what is committed)."""

    def __init__(self, path: str | Path, wait: bool = False, wait_s: float = db.DEFAULT_WAIT_S) -> None:
        self.path = Path(path)
        self.wait_s = wait_s
        self._lock_file = self._acquire_ingest_lock(wait)
        try:
            self._mark_interrupted()
        except BaseException:
            self.close()
            raise

    def _mark_interrupted(self) -> None:
        """Runs left 'running' belong to a process that died (we hold the lock, so none is alive)."""
        with self.connection() as con:
            con.execute(
                "UPDATE runs SET status = 'interrupted', message = 'the ingest process stopped before finishing',"
                " n_prompts = (SELECT count(*) FROM prompts WHERE prompts.run_id = runs.run_id)"
                " WHERE status = 'running'"
            )

    def _acquire_ingest_lock(self, wait: bool) -> Any:
        if not self.path.parent.is_dir():
            raise db.WarehouseError(f"{self.path.parent} is not a directory: create it or pass another --db path")
        lock_path = self.path.with_name(self.path.name + ".ingest.lock")
        handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole ingest
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise IngestLocked(
                f"another ingest (pid {holder}) is writing to {self.path}: wait for it to finish, "
                "or pass --wait to queue behind it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> DuckDBWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file, open for one unit of work; a full disk becomes DiskFull wherever DuckDB notices it."""
        try:
            con = db.connect(self.path, wait_s=self.wait_s)
            try:
                yield con
            finally:
                con.close()
        except (duckdb.Error, OSError) as exc:
            if _is_disk_full(exc):
                raise DiskFull(
                    f"the disk holding {self.path} is full: free space and rerun the same command "
                    "(committed prompts are kept and skipped)"
                ) from None
            raise

    def next_id(self, table: str, column: str) -> int:
        with self.connection() as con:
            return _next_id(con, table, column)

    def committed_keys(self, model_id: int) -> set[str]:
        with self.connection() as con:
            rows = con.execute("SELECT prompt_key FROM prompts WHERE model_id = ?", [model_id]).fetchall()
        return {r[0] for r in rows}

    def register_model(
        self, name: str, checkpoint_hash: str, fields: dict[str, Any], weights: Iterator[pa.Table], vocab: pa.Table
    ) -> int:
        """The model's id, storing its row, weight tables and vocabulary the first time it is seen."""
        with self.connection() as con:
            known = con.execute(
                "SELECT model_id FROM models WHERE name = ? AND checkpoint_hash = ?", [name, checkpoint_hash]
            ).fetchall()
            if known:
                return int(known[0][0])
            model_id = _next_id(con, "models", "model_id")
            con.execute("BEGIN")
            try:
                columns = ["model_id", "name", "checkpoint_hash", *fields]
                marks = ", ".join("?" for _ in columns)
                con.execute(
                    f"INSERT INTO models ({', '.join(columns)}) VALUES ({marks})",
                    [model_id, name, checkpoint_hash, *fields.values()],
                )
                for table in weights:
                    con.register("weight_rows", table)
                    con.execute("INSERT INTO weights BY NAME SELECT ? AS model_id, * FROM weight_rows", [model_id])
                con.register("vocab_rows", vocab)
                con.execute("INSERT INTO vocab SELECT ?, token_id, text FROM vocab_rows", [model_id])
                db.materialize_factors(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return model_id

    def start_run(self, **fields: Any) -> int:
        with self.connection() as con:
            run_id = _next_id(con, "runs", "run_id")
            columns = ["run_id", "started_at", "status", *fields]
            values = [run_id, _now(), "running", *fields.values()]
            marks = ", ".join("?" for _ in columns)
            con.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({marks})", values)
        return run_id

    def finish_run(
        self, run_id: int, status: str, skipped: list[dict[str, Any]], message: str | None, objective: str
    ) -> None:
        with self.connection() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished_at = ?, skipped = ?, message = ?, objective = ?,"
                " n_prompts = (SELECT count(*) FROM prompts WHERE prompts.run_id = runs.run_id)"
                " WHERE run_id = ?",
                [status, _now(), json.dumps(skipped), message, objective, run_id],
            )

    def append(self, batch: Batch) -> float:
        """Commit one batch in one transaction; returns the seconds the file was held."""
        start = time.perf_counter()
        facts = pa.concat_tables([t.cast(FACT_SCHEMA) for t in batch.activations]) if batch.activations else None
        with self.connection() as con:
            con.execute("BEGIN")
            try:
                con.register("batch_prompts", batch.prompts)
                con.execute("INSERT INTO prompts BY NAME SELECT * FROM batch_prompts")
                con.register("batch_tokens", batch.tokens)
                con.execute("INSERT INTO tokens BY NAME SELECT * FROM batch_tokens")
                if facts is not None:
                    con.register("batch_facts", facts)
                    con.execute("INSERT INTO activations SELECT * FROM batch_facts")
                db.materialize_factors(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return time.perf_counter() - start


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _next_id(con: duckdb.DuckDBPyConnection, table: str, column: str) -> int:
    """One past the largest id in use (0 for an empty table), read inside the caller's connection."""
    return int(con.execute(f"SELECT coalesce(max({column}), -1) + 1 FROM {table}").fetchall()[0][0])
