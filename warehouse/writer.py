"""The writer: appends batches of whole prompts to the lake atomically.

On a warehouse folder one ingest at a time holds an advisory lock beside the catalog (released by the OS
even on SIGKILL); on a shared catalog many writers commit side by side (warehouse/concurrency.py). A
batch's prompt records, tokens, fact rows and run progress commit in one DuckLake transaction: a reader,
or a restart after a crash, sees all of a prompt or none of it. Fact rows stream from the worker as
Arrow record batches to a pool of threads that write them as Parquet files before the transaction
begins (warehouse/fact_files.py, with the NULL-pattern rules that keep DuckLake's statistics true), and
the transaction registers the files; memory does not depend on how many rows a batch yields. Readers
attach the lake read-only and keep querying committed snapshots meanwhile.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from warehouse import concurrency, db, fact_files, interrupts, summaries
from warehouse.facts import FACT_SCHEMA
from warehouse.lake import ALIAS
from warehouse.summary_merge import join_pool

LOCK_FILE = "ingest.lock"
T = TypeVar("T")
ModelRows = Callable[[], Iterable[pa.Table]]
TaggedRows = Callable[[duckdb.DuckDBPyConnection], Iterable[tuple[str, pa.Table]]]
# Tables holding per-model rows (a model_id column first): weights, vocabulary and weight-only factors.
MODEL_TABLES = ("weights", "weight_vectors", "vocab", "mlp_out_norms", "direction_factors", "saes")


@dataclass
class Batch:
    """Whole prompts ready to commit: `prompts` and `tokens` as Arrow tables in their tables' shapes, the
    fact rows as a stream of record batches in FACT_SCHEMA (consumed once, by the commit), and rows the
    batch adds to model-level tables (MODEL_TABLES; the factors of a new target token, say), each
    without its model_id column."""

    prompts: pa.Table
    tokens: pa.Table
    facts: Iterable[pa.RecordBatch]
    model_rows: list[tuple[str, pa.Table]] = field(default_factory=list)
    # The batch's per-node summaries (warehouse/summaries.py); None when the ingest computes none.
    summaries: summaries.SummaryFlush | None = None


@dataclass
class Appended:
    """What one committed batch stored: prompts, their tokens, and fact rows (duplicates left out)."""

    prompts: int = 0
    tokens: int = 0
    rows: int = 0


class IngestLocked(db.WarehouseError):
    pass


class DiskFull(db.WarehouseError):
    """The disk filled during a write: the transaction was rolled back, so rerunning resumes cleanly."""


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, duckdb.Error) and any(p in str(exc) for p in ("No space left on device", "disk is full"))


class LakeWriter:
    """The DuckLake implementation of the writer interface (append whole prompts; say what is committed)."""

    def __init__(
        self,
        path: str | Path,
        wait: bool = False,
        data_path: str | Path | None = None,
        writer_threads: int | None = None,
    ) -> None:
        """Open `path` (a warehouse folder, or a shared catalog with `data_path`, see db.config_for) for writing;
        `writer_threads` write fact files (None: fact_files.default_threads)."""
        self._pool: fact_files.FilePool | None = None
        self._pool_checked = False
        self._rewritten: list[fact_files.Written] = []  # files an append_retrying rewrote (renumbered ids)
        self.registered: fact_files.Written | None = None  # the files the last append's transaction registered
        self.writer_threads = writer_threads if writer_threads is not None else fact_files.default_threads()
        if self.writer_threads < 1:
            raise db.WarehouseError(f"--writer-threads must be 1 or more, not {self.writer_threads}")
        config = db.config_for(path, data_path)
        self.path: str | Path = path if config.is_shared else Path(path)
        self.shared = config.is_shared
        self.conflicts_retried = 0  # commits lost to another writer and run again
        self._lock_file: Any = None
        if config.root is not None:
            if not config.root.parent.is_dir():
                raise db.WarehouseError(f"{config.root.parent} is not a directory: create it or pass another --db path")
            if config.root.exists() and not config.root.is_dir():
                raise db.WarehouseError(f"{self.path} is not a folder: pass another --db path")
            config.root.mkdir(exist_ok=True)
            self._lock_file = self._acquire_ingest_lock(config.root / LOCK_FILE, wait)
        self.con: duckdb.DuckDBPyConnection | None = None
        self._unsummarised: set[int] = set()  # runs whose summaries were dropped (see _add_summaries)
        try:
            with self._translate_disk_full():
                self.con = db.connect(path, data_path=data_path)
                self._retrying(self._recover)
        except BaseException:
            self.close()
            raise

    def _recover(self) -> None:
        """Runs left 'running' whose process died are marked interrupted. On a folder every one is (we hold
        the lock, so none is alive), and the Parquet files its uncommitted transaction wrote are orphans,
        removed with DuckLake's own cleanup; on a shared catalog only runs whose owner is gone (another
        worker's uncommitted files are in flight there: `actwh compact` removes orphans a day old)."""
        with self.transaction() as con:
            running = con.execute("SELECT run_id, message FROM runs WHERE status = 'running'").fetchall()
            gone = [run_id for run_id, message in running if not self.shared or concurrency.owner_is_gone(message)]
            if gone:
                concurrency.serialize(con)
                # prompts kept without facts (--store summaries) that no flush of summaries covers hold
                # nothing of their values: dropped, so that the rerun stores them again
                for table in ("tokens", "prompts"):
                    con.execute(
                        f"DELETE FROM {table} WHERE prompt_id IN (SELECT p.prompt_id FROM prompts p JOIN runs r"
                        " USING (run_id) WHERE list_contains(?, r.run_id) AND NOT coalesce(p.facts_stored, true)"
                        " AND p.prompt_id > coalesce(r.summarised_through, -1))",
                        [gone],
                    )
                con.execute(
                    "UPDATE runs SET status = 'interrupted', message = 'the ingest process stopped before finishing',"
                    " n_prompts = (SELECT count(*) FROM prompts WHERE prompts.run_id = runs.run_id)"
                    " WHERE status = 'running' AND list_contains(?, run_id)",
                    [gone],
                )
        if not self.shared:
            self._con.execute("CALL ducklake_delete_orphaned_files(current_database(), cleanup_all => true)")

    def _retrying(self, work: Callable[[], T]) -> T:
        """`work` (whole transactions) run again while it loses commit conflicts to other writers."""

        def attempt() -> T:
            # what the writer remembers of committed batches must not count a transaction rolled back
            saved = set(self._unsummarised)
            try:
                return work()
            except BaseException:
                self._unsummarised = saved
                raise

        def counted() -> None:
            self.conflicts_retried += 1

        return concurrency.retry_conflicts(attempt, counted)

    def _acquire_ingest_lock(self, lock_path: Path, wait: bool) -> Any:
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

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:
        if self.con is None:
            raise db.WarehouseError(f"the writer of {self.path} is closed")
        return self.con

    def close(self) -> None:
        with interrupts.deferred():  # a lock left held would block this process's next ingest
            self._close()

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self.con is not None:
            self.con.close()
            self.con = None
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> LakeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _translate_disk_full(self) -> Iterator[None]:
        try:
            yield
        except (duckdb.Error, OSError) as exc:
            if _is_disk_full(exc):
                raise DiskFull(
                    f"the disk holding {self.path} is full: free space and rerun the same command "
                    "(committed prompts are kept and skipped)"
                ) from None
            raise

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One atomic unit of work; rolled back on any error (a full disk becomes DiskFull)."""
        con = self._con
        with self._translate_disk_full():
            con.execute("BEGIN")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                # A failed COMMIT has already ended the transaction: its error is the one to report. Not cut
                # short by Ctrl-C: the connection must come out of the transaction to record the run's end.
                with interrupts.deferred(), suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise

    def next_id(self, table: str, column: str) -> int:
        return _next_id(self._con, table, column)

    def committed_keys(self, model_id: int) -> set[str]:
        rows = self._con.execute("SELECT prompt_key FROM prompts WHERE model_id = ?", [model_id]).fetchall()
        return {r[0] for r in rows}

    def register_model(
        self, name: str, checkpoint_hash: str, fields: dict[str, Any], rows: dict[str, ModelRows]
    ) -> int:
        """The model's id, storing its row and its MODEL_TABLES rows the first time it is seen. `rows` gives,
        by table, a function returning that table's rows (without model_id) as a stream of parts: called
        again when the commit loses a conflict and the model is still not stored."""
        return self._retrying(lambda: self._register_model(name, checkpoint_hash, fields, rows))

    def _register_model(
        self, name: str, checkpoint_hash: str, fields: dict[str, Any], rows: dict[str, ModelRows]
    ) -> int:
        with self.transaction() as con:
            known = con.execute(
                "SELECT model_id FROM models WHERE name = ? AND checkpoint_hash = ?", [name, checkpoint_hash]
            ).fetchall()
            if known:
                return int(known[0][0])
            concurrency.serialize(con)
            model_id = _next_id(con, "models", "model_id")
            columns = ["model_id", "name", "checkpoint_hash", *fields]
            marks = ", ".join("?" for _ in columns)
            con.execute(
                f"INSERT INTO models ({', '.join(columns)}) VALUES ({marks})",
                [model_id, name, checkpoint_hash, *fields.values()],
            )
            for table, parts in rows.items():
                _insert_model_rows(con, table, model_id, parts())
        return model_id

    def add_model_rows(self, model_id: int, rows: TaggedRows) -> None:
        """Store rows of MODEL_TABLES for a registered model in one transaction: all of them or none. `rows`
        is given the transaction's connection (to read what is stored and number new rows after it) and
        returns (table, rows without model_id) pairs; it is called again when the commit loses a conflict
        to another writer. Errors it raises roll the transaction back and propagate."""

        def add() -> None:
            with self.transaction() as con:
                tagged = list(rows(con))
                if tagged:
                    concurrency.serialize(con)
                    _insert_tagged_rows(con, model_id, tagged)

        self._retrying(add)

    def known_tokens(self, model_id: int) -> set[int]:
        """Tokens whose direction factors (and unembedding column) the lake already holds for the model."""
        rows = self._con.execute(
            "SELECT DISTINCT token_id FROM direction_factors WHERE model_id = ?", [model_id]
        ).fetchall()
        return {int(r[0]) for r in rows}

    def start_run(self, **fields: Any) -> int:
        """A new run, 'running' and owned by this process (concurrency.owner), and its id."""
        return self._retrying(lambda: self._start_run(fields))

    def _start_run(self, fields: dict[str, Any]) -> int:
        with self.transaction() as con:
            concurrency.serialize(con)
            run_id = _next_id(con, "runs", "run_id")
            columns = ["run_id", "started_at", "status", "n_prompts", "message", *fields]
            values = [run_id, _now(), "running", 0, concurrency.owner(), *fields.values()]
            marks = ", ".join("?" for _ in columns)
            con.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({marks})", values)
        return run_id

    def finish_run(
        self,
        run_id: int,
        status: str,
        skipped: list[dict[str, Any]],
        message: str | None,
        objective: str,
        last_summaries: summaries.SummaryFlush | None = None,
    ) -> None:
        """Record how the run ended, with the flush of its running summaries (`last_summaries`). Call it
        once nothing else uses the writer: a transaction left open (an interrupt that landed between its
        BEGIN and the block that rolls it back) is rolled back first, so that the run's end is recorded."""
        with suppress(duckdb.TransactionException):  # none open: the usual case
            self._con.execute("ROLLBACK")

        def update() -> None:
            with self.transaction() as con:
                con.execute(
                    "UPDATE runs SET status = ?, finished_at = ?, skipped = ?, message = ?, objective = ?,"
                    " n_prompts = (SELECT count(*) FROM prompts WHERE prompts.run_id = runs.run_id)"
                    " WHERE run_id = ?",
                    [status, _now(), json.dumps(skipped), message, objective, run_id],
                )
                if last_summaries is not None and run_id not in self._unsummarised:
                    tables = last_summaries.rows(np.empty(0, np.int64))
                    if tables is not None:
                        # into the pool of finished runs of its settings, else stored as the run's own rows
                        if join_pool(con, run_id, tables) is None:
                            _store_summaries(con, run_id, tables, whole=True)
                        else:
                            _mark_summarised(con, run_id)

        self._retrying(update)
        if last_summaries is not None:
            last_summaries.committed()

    def append(
        self, batch: Batch, run_id: int, unique: bool = True, files: fact_files.Written | None = None
    ) -> Appended:
        """Commit one batch and the run's progress in one transaction; returns what it stored. The batch's
        fact rows are registered from `files`, written before the transaction began (`append_retrying`), or
        else inserted from `batch.facts` by DuckDB (a lake on object storage). The batch's prompt ids are
        provisional: the commit numbers its prompts after the largest stored id and, when `unique` on a
        shared catalog, leaves out prompts whose key is already stored (concurrency.claim); files whose ids
        that changes are rewritten, and `self.registered` names the files the transaction registers.
        Raises a DuckDB error that concurrency.is_conflict recognises when another writer won the commit:
        `append_retrying` runs it again."""
        stored = Appended()
        self.registered = None
        with self.transaction() as con:
            # on a folder the lock admits one writer, whose resume already left out stored prompts
            renumbering = concurrency.claim(
                con, batch.prompts, unique and self.shared, files is not None and self.shared
            )
            if renumbering.kept:
                prompts, tokens = renumbering.apply(batch.prompts), renumbering.apply(batch.tokens)
                stored.prompts, stored.tokens = prompts.num_rows, tokens.num_rows
                with _registered(con, batch_prompts=prompts, batch_tokens=tokens):
                    con.execute("INSERT INTO prompts BY NAME SELECT * FROM batch_prompts")
                    con.execute("INSERT INTO tokens BY NAME SELECT * FROM batch_tokens")
                if files is not None:
                    stored.rows = self._register_facts(con, files, renumbering)
                else:
                    stored.rows = _insert_facts(con, renumbering.stream(batch.facts))
            con.execute(
                "UPDATE runs SET n_prompts = (SELECT count(*) FROM prompts WHERE prompts.run_id = ?) WHERE run_id = ?",
                [run_id, run_id],
            )
            model_id = int(batch.prompts["model_id"][0].as_py()) if batch.prompts.num_rows else None
            fresh = [
                (table, concurrency.fresh_model_rows(con, table, model_id, rows)) for table, rows in batch.model_rows
            ]
            _insert_tagged_rows(con, model_id, [(table, rows) for table, rows in fresh if rows.num_rows])
            if batch.summaries is not None and renumbering.kept:
                self._add_summaries(con, run_id, batch, renumbering)
        if batch.summaries is not None:
            batch.summaries.committed()
        return stored

    def _register_facts(
        self, con: duckdb.DuckDBPyConnection, files: fact_files.Written, renumbering: concurrency.Renumbering
    ) -> int:
        """Register the batch's fact files inside the commit, primer first; files whose prompts were
        renumbered or left out are rewritten first (only when another writer stored prompts meanwhile)."""
        if not renumbering.identity:
            files = self._facts_pool().rewrite(files, renumbering.stream(fact_files.read(files)))
            self._rewritten.append(files)
        self.registered = files
        for path in files.paths:
            con.execute(f"CALL ducklake_add_data_files('{ALIAS}', 'facts', ?)", [str(path)])
        return files.rows

    def _add_summaries(
        self, con: duckdb.DuckDBPyConnection, run_id: int, batch: Batch, renumbering: concurrency.Renumbering
    ) -> None:
        """Fold the batch into the run's running summaries, storing them when a flush is due, inside its
        commit. A batch that lost some of its prompts to another writer (a shard run twice) was measured
        with them: the run keeps no summaries from then on, and the queries scan it, saying so
        (queries/summaries.py)."""
        assert batch.summaries is not None
        if run_id in self._unsummarised or renumbering.kept < batch.prompts.num_rows:
            if not all(batch.prompts["facts_stored"].to_pylist()):
                raise db.WarehouseError(
                    f"another writer stored some of this batch's prompts meanwhile, so run {run_id}'s summaries"
                    " can no longer be exact, and its prompts without facts (--store summaries) would keep"
                    " nothing: give each worker prompts of its own (--shard I/N)"
                )
            if run_id not in self._unsummarised:
                self._unsummarised.add(run_id)
                for table in summaries.TABLES:
                    con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
                con.execute("UPDATE runs SET summarised_through = NULL WHERE run_id = ?", [run_id])
            return
        prompt_ids = renumbering.apply(batch.prompts)["prompt_id"].to_numpy()
        tables = batch.summaries.rows(prompt_ids)
        if tables is not None:
            _store_summaries(con, run_id, tables)

    def append_retrying(self, make_batch: Callable[[], Batch], run_id: int, unique: bool = True) -> Appended:
        """`append` of the batch `make_batch` builds, committed again while the commit loses to another
        writer's. Its fact rows are written to files once, before any transaction (fact_files.py); files
        that no committed transaction registered are deleted however it ends."""
        pool = self._facts_pool()
        if pool is None:  # rows inserted by DuckDB inside each try: built again for each
            return self._retrying(lambda: self.append(make_batch(), run_id, unique))
        batch = make_batch()
        if self.shared:  # other writers number prompts meanwhile: the files get ids reserved for them
            batch = self._reserved(batch)
        with self._translate_disk_full():  # the files are written before any transaction
            written = pool.write(batch.facts)
        self._rewritten = []
        committed: fact_files.Written | None = None
        try:
            stored = self._retrying(lambda: self.append(batch, run_id, unique, written))
            committed = self.registered
        finally:
            keep = committed.paths if committed is not None else []
            for files in [written, *self._rewritten]:
                files.delete(keep)
        return stored

    def _reserved(self, batch: Batch) -> Batch:
        """The batch under prompt ids reserved for it (concurrency.reserve_prompt_ids), which its commit keeps."""

        def reserve() -> int:
            with self.transaction() as con:
                return concurrency.reserve_prompt_ids(con, batch.prompts.num_rows)

        provisional = batch.prompts.column("prompt_id").to_numpy().astype(np.int64)
        ids = concurrency.Renumbering(provisional, np.ones(len(provisional), bool), self._retrying(reserve))
        renumbered = ids.stream(batch.facts)
        return replace(batch, prompts=ids.apply(batch.prompts), tokens=ids.apply(batch.tokens), facts=renumbered)

    def _facts_pool(self) -> fact_files.FilePool | None:
        """The threads writing fact files, started on first use; None when the lake's data path is a URL."""
        if self._pool is None and not self._pool_checked:
            self._pool_checked = True
            folder = fact_files.table_folder(self._con, ALIAS, "facts")
            if folder is not None:
                self._pool = fact_files.FilePool(folder, self.writer_threads)
        return self._pool


def _store_summaries(
    con: duckdb.DuckDBPyConnection, run_id: int, tables: tuple[pa.Table, pa.Table], whole: bool = False
) -> None:
    """Replace the run's summary rows, add its new example rows (`whole`: replace them too, the run's last
    flush), and mark every stored prompt of the run as summarised, inside the caller's transaction (the
    run's rows are in files of their own: the DELETE drops whole files)."""
    for table in summaries.TABLES if whole else summaries.TABLES[:1]:
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
    for table, rows in zip(summaries.TABLES, tables, strict=True):
        if rows.num_rows:
            with _registered(con, summary_rows=rows):
                con.execute(f"INSERT INTO {table} BY NAME SELECT ? AS run_id, * FROM summary_rows", [run_id])
    _mark_summarised(con, run_id)


def _mark_summarised(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    """Every stored prompt of the run counts as summarised (runs.summarised_through)."""
    con.execute(
        "UPDATE runs SET summarised_through = (SELECT max(prompt_id) FROM prompts WHERE run_id = ?) WHERE run_id = ?",
        [run_id, run_id],
    )


def _insert_facts(con: duckdb.DuckDBPyConnection, facts: Iterable[pa.RecordBatch]) -> int:
    """Fact rows inserted by DuckDB's own Parquet writer, one INSERT per run of one NULL pattern (see
    fact_files.null_runs); returns how many."""
    rows = 0

    def counted(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for part in batches:
            rows += part.num_rows
            yield part

    for run in fact_files.null_runs(counted(facts)):
        with _registered(con, batch_facts=pa.RecordBatchReader.from_batches(FACT_SCHEMA, run)):
            con.execute("INSERT INTO facts SELECT * FROM batch_facts")
    return rows


def _insert_tagged_rows(con: duckdb.DuckDBPyConnection, model_id: int | None, rows: list[tuple[str, pa.Table]]) -> None:
    """(table, rows) pairs of MODEL_TABLES, each table's parts together (one INSERT per NULL pattern)."""
    for table in dict.fromkeys(table for table, _ in rows):
        _insert_model_rows(con, table, model_id, (part for t, part in rows if t == table))


def _insert_model_rows(
    con: duckdb.DuckDBPyConnection, table: str, model_id: int | None, parts: Iterable[pa.Table]
) -> None:
    """Every part (of one schema) as one INSERT per run of one NULL pattern, streamed: an INSERT per part
    wrote a file per weight tensor (242 for SmolLM2), and every query of the table opened them all."""
    if table not in MODEL_TABLES:
        raise ValueError(f"{table} is not a per-model table ({', '.join(MODEL_TABLES)})")
    batches = (batch for part in parts for piece in fact_files.primed_parts(part) for batch in piece.to_batches())
    first = next(batches, None)
    if first is None:
        return
    for run in fact_files.null_runs(itertools.chain([first], batches)):
        with _registered(con, model_rows=pa.RecordBatchReader.from_batches(first.schema, run)):
            con.execute(f"INSERT INTO {table} BY NAME SELECT ? AS model_id, * FROM model_rows", [model_id])


@contextmanager
def _registered(con: duckdb.DuckDBPyConnection, **relations: Any) -> Iterator[None]:
    """Arrow data visible to SQL under the given names for the length of the block."""
    for name, data in relations.items():
        con.register(name, data)
    try:
        yield
    finally:
        for name in relations:
            con.unregister(name)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _next_id(con: duckdb.DuckDBPyConnection, table: str, column: str) -> int:
    """One past the largest id in use (0 for an empty table), read inside the caller's connection."""
    return int(con.execute(f"SELECT coalesce(max({column}), -1) + 1 FROM {table}").fetchall()[0][0])
