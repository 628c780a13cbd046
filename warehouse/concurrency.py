"""Many writers on one lake: what makes their commits exactly-once without a coordinator.

DuckLake lets transactions that only insert into a table commit side by side, and fails a commit whose
changes conflict with one committed since it began (retrying on its own where the changes are compatible).
Every actwh write that allocates ids or must not repeat another's rows (a batch of prompts, a run, a
model) therefore starts by updating one row, `meta.commit_serial`: two such transactions that overlap in
time conflict, and the later one fails at COMMIT instead of committing stale decisions. Inside that
transaction the writer reads what is committed and decides:

- prompt ids: one past the largest stored or reserved, so they never collide across writers (a batch is
  captured under provisional ids and renumbered on its way in, `claim`); a writer that writes its fact
  files before its commit first reserves the batch's ids (`reserve_prompt_ids`, a short transaction of
  its own), so that its files already hold the ids the commit keeps;
- duplicates: prompts whose key is already stored (another worker on the same shard, a rerun racing the
  run it replaces), and factor rows of a token already stored, are left out;

and a failed commit is retried whole with a fresh batch (`retry_conflicts`), which then sees the winner's
rows. On one machine the ingest lock already admits a single writer; the same statements run there and
never conflict.

A run's owner (host and process id) is kept in its `message` while it runs, so that a writer opening the
lake marks a 'running' run interrupted only when its process is gone (`owner_is_gone`), never a live
worker's; a run owned by another machine is left for a writer on that machine.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import duckdb
import numpy as np
import pyarrow as pa

SERIAL_KEY = "commit_serial"
RESERVED_KEY = "prompt_ids_reserved"  # meta: one past the largest prompt id a writer has reserved
OWNER_PREFIX = "running in "
# Whole-transaction retries before giving up; with DuckLake's own retries inside each, this is far more
# than 8 writers committing every second need (BENCHMARKS.md).
MAX_ATTEMPTS = 200
_RETRIABLE = (
    "Transaction conflict",
    "maximum retry count",
    "for conflict resolution",
    # PostgreSQL aborting one of two catalog transactions DuckLake runs at repeatable read
    "could not serialize access",
    "deadlock detected",
    "Current transaction is aborted",
)
T = TypeVar("T")


def is_conflict(exc: BaseException) -> bool:
    """Whether a failed commit lost to another writer (a rerun of the whole transaction succeeds)."""
    return isinstance(exc, duckdb.Error) and any(text in str(exc) for text in _RETRIABLE)


def retry_conflicts(work: Callable[[], T], on_retry: Callable[[], None] | None = None) -> T:
    """Run `work` (one whole transaction, rolled back on failure) until it commits without a conflict,
    sleeping a random, growing pause between tries; other errors, and the last conflict, propagate."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            return work()
        except duckdb.Error as exc:
            if not is_conflict(exc) or attempt == MAX_ATTEMPTS - 1:
                raise
        if on_retry is not None:
            on_retry()
        time.sleep(random.uniform(0, min(1.0, 0.01 * 2 ** min(attempt, 7))))
    raise AssertionError("unreachable")


def ensure_serial(con: duckdb.DuckDBPyConnection) -> None:
    """Give a lake created before many-writer support its serial row (inside the caller's transaction)."""
    if not con.execute("SELECT count(*) FROM meta WHERE key = ?", [SERIAL_KEY]).fetchall()[0][0]:
        con.execute("INSERT INTO meta VALUES (?, '0')", [SERIAL_KEY])


def serialize(con: duckdb.DuckDBPyConnection) -> None:
    """Make the caller's transaction conflict with every other writer's that overlaps it."""
    con.execute(
        "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS VARCHAR) WHERE key = ?",
        [SERIAL_KEY],
    )


def stored_keys(con: duckdb.DuckDBPyConnection, keys: pa.Array) -> set[str]:
    con.register("claim_keys", pa.table({"prompt_key": keys}))
    try:
        rows = con.execute("SELECT DISTINCT prompt_key FROM prompts SEMI JOIN claim_keys USING (prompt_key)")
        return {r[0] for r in rows.fetchall()}
    finally:
        con.unregister("claim_keys")


class Renumbering:
    """Provisional prompt ids to stored ones, dropping the prompts left out (see `claim`)."""

    def __init__(self, provisional: np.ndarray, keep: np.ndarray, first_id: int | None) -> None:
        """Kept prompts numbered from `first_id` in order, or (None) keeping their provisional ids."""
        order = np.argsort(provisional, kind="stable")
        self._old = provisional[order]
        self._keep = keep[order]
        self._new = np.full(len(provisional), -1, np.int64)
        kept = np.flatnonzero(keep)
        new = provisional[kept] if first_id is None else first_id + np.arange(len(kept))
        self._new[np.searchsorted(self._old, provisional[kept])] = new
        self.kept = int(len(kept))
        self.identity = bool(self._keep.all() and (self._new == self._old).all())

    def apply(self, rows: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
        """`rows` (a prompt_id column among others) with their prompts renumbered; rows of dropped ones removed."""
        if self.identity:
            return rows
        index = rows.schema.get_field_index("prompt_id")
        slot = np.searchsorted(self._old, rows.column(index).to_numpy())
        keep = self._keep[slot]
        ids = pa.array(self._new[slot].astype(np.int32))
        rows = rows.set_column(index, rows.schema.field(index), ids)
        return rows if keep.all() else rows.filter(pa.array(keep))

    def stream(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            renumbered = self.apply(batch)
            if renumbered.num_rows:
                yield renumbered


def claim(con: duckdb.DuckDBPyConnection, prompts: pa.Table, unique: bool, reserved: bool = False) -> Renumbering:
    """Inside the commit transaction: serialize it, leave out prompts already stored (when `unique`), and
    number the rest from one past the largest stored or reserved prompt id; `reserved` ids (taken with
    `reserve_prompt_ids`) are kept, unless one is stored (a reservation lost to a lake that forgot it)."""
    serialize(con)
    keys = prompts.column("prompt_key")
    stored = stored_keys(con, keys.combine_chunks()) if unique else set()
    keep = np.array([key not in stored for key in keys.to_pylist()], bool)
    provisional = prompts.column("prompt_id").to_numpy().astype(np.int64)
    if reserved:
        con.register("claim_ids", pa.table({"prompt_id": provisional.astype(np.int32)}))
        try:
            taken = con.execute("SELECT count(*) FROM prompts SEMI JOIN claim_ids USING (prompt_id)").fetchall()[0][0]
        finally:
            con.unregister("claim_ids")
        if not taken:
            return Renumbering(provisional, keep, None)
    return Renumbering(provisional, keep, _first_free_id(con))


def _first_free_id(con: duckdb.DuckDBPyConnection) -> int:
    """One past the largest prompt id stored or reserved."""
    stored = int(con.execute("SELECT coalesce(max(prompt_id), -1) + 1 FROM prompts").fetchall()[0][0])
    reserved = con.execute("SELECT value FROM meta WHERE key = ?", [RESERVED_KEY]).fetchall()
    return max(stored, int(reserved[0][0]) if reserved else 0)


def reserve_prompt_ids(con: duckdb.DuckDBPyConnection, n: int) -> int:
    """Inside the caller's transaction (its only work): serialize it and reserve `n` prompt ids no other
    writer takes; returns the first. Ids of a batch never committed are left unused."""
    serialize(con)
    first = _first_free_id(con)
    if con.execute("SELECT count(*) FROM meta WHERE key = ?", [RESERVED_KEY]).fetchall()[0][0]:
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [str(first + n), RESERVED_KEY])
    else:
        con.execute("INSERT INTO meta VALUES (?, ?)", [RESERVED_KEY, str(first + n)])
    return first


def fresh_model_rows(con: duckdb.DuckDBPyConnection, table: str, model_id: int | None, rows: pa.Table) -> pa.Table:
    """A batch's per-token factor rows less those of tokens another writer stored first: direction factors
    by token_id, unembedding columns (in weights) by col_index."""
    if table == "direction_factors":
        column, query = "token_id", "SELECT DISTINCT token_id FROM direction_factors WHERE model_id = ?"
    elif table == "weights":
        column = "col_index"
        query = "SELECT DISTINCT col_index FROM weights WHERE model_id = ? AND location = 'unembedding'"
    else:
        return rows
    stored = np.array([r[0] for r in con.execute(query, [model_id]).fetchall()], np.int64)
    if not len(stored):
        return rows
    values = rows.column(column).to_numpy(zero_copy_only=False)
    return rows.filter(pa.array(~np.isin(values, stored)))


def owner() -> str:
    """This process, as a running run's message names it."""
    return f"{OWNER_PREFIX}{socket.gethostname()} pid {os.getpid()}"


def owner_is_gone(message: str | None) -> bool:
    """Whether the process a running run's message names has ended. Only a process on this machine can be
    checked; a run with no owner (written by an actwh before this one) is gone, as the lock then showed."""
    if not message or not message.startswith(OWNER_PREFIX):
        return True
    host, _, pid = message.removeprefix(OWNER_PREFIX).rpartition(" pid ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
