"""Query results as a stream of Arrow record batches, for results too large to hold in memory.

DuckDB produces the batches as the reader is consumed, so memory holds about one batch (plus what the
query itself needs: a sort or a hash aggregate still holds its input) whatever the result's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa

from warehouse import db

# Rows per record batch: about one batch is in memory at a time (a few MB for the long format).
BATCH_ROWS = 65_536


class QueryError(db.WarehouseError):
    """A query DuckDB refused, at its start or mid-stream; the message is DuckDB's first line."""


def _failed(exc: BaseException) -> QueryError:
    return QueryError(f"query failed: {(str(exc).splitlines() or [type(exc).__name__])[0]}")


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except (duckdb.Error, pa.ArrowException, OSError) as exc:  # DuckDB errors mid-stream reach Arrow as OSError
        raise _failed(exc) from exc


@contextmanager
def reader(
    con: duckdb.DuckDBPyConnection,
    query: str,
    params: Sequence[Any] | dict[str, Any] | None = None,
    batch_size: int = BATCH_ROWS,
) -> Iterator[pa.RecordBatchReader]:
    """A RecordBatchReader over `query`'s rows (bound `params`, `?` or `$name`), batches of at most
    `batch_size` rows, valid inside the `with` block on the open connection `con`. Raises QueryError
    (one line) for SQL DuckDB refuses, when the query starts or while batches are read; ValueError for
    batch_size < 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    try:
        source = con.execute(query, params).to_arrow_reader(batch_size)
    except duckdb.Error as exc:
        raise _failed(exc) from exc
    stream = pa.RecordBatchReader.from_batches(source.schema, _batches(source))
    try:
        yield stream
    finally:
        stream.close()
        source.close()
