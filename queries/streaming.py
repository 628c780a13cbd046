"""Query results as a stream of Arrow record batches, for results too large to hold in memory.

DuckDB produces the batches as the reader is consumed, so memory holds about one batch (plus what the
query itself needs: a sort or a hash aggregate still holds its input) whatever the result's size.

DuckDB 1.5.5's streaming result stalls for ever, using no CPU, when its buffer (streaming_buffer_size, about
1 MB) fills while more than one of the query's pipelines is unfinished (duckdb/duckdb#22215): a UNION whose
branches join or aggregate, feeding the result, such as edges_into and edges_from
(queries/support/69_edge_dispatch.sql). Such a query is streamed through a MATERIALIZED CTE (`streamable`),
which finishes every pipeline before the result is read; the CTE spills to temp_directory past memory_limit,
so memory stays bounded by it (not by one batch, as for other queries).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from warehouse import db

# Rows per record batch: about one batch is in memory at a time (a few MB for the long format).
BATCH_ROWS = 65_536


class QueryError(db.WarehouseError):
    """A query DuckDB refused, at its start or mid-stream; the message is DuckDB's first line."""


# Operators that emit only once everything under them has finished: at the top of a plan, the result is read
# from one pipeline, the last, and DuckDB's streaming result cannot stall.
_FINISHING = {"ORDER_BY", "TOP_N", "HASH_GROUP_BY", "PERFECT_HASH_GROUP_BY", "UNGROUPED_AGGREGATE", "WINDOW", "LIMIT"}
# How a query may start for it to stand as a CTE's body (SHOW, DESCRIBE and PRAGMA also plan as SELECT)
_QUERY_STARTS = ("select", "with", "from", "values", "(")


class _Executes(Protocol):
    """A DuckDB connection, or a DB-API cursor on one (SQLAlchemy's, queries/bi.py)."""

    def execute(self, query: str, parameters: Any = ...) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def _breaks(name: str) -> bool:
    """Whether an operator ends a pipeline of its own below it (a join's build, an aggregate, a sort, a CTE)."""
    return name in _FINISHING or name == "CTE" or "JOIN" in name or name == "CROSS_PRODUCT"


def _stalls(plan: dict[str, Any]) -> bool:
    """Whether a plan (EXPLAIN (FORMAT JSON)'s root) can stall a streaming result: a UNION one of whose
    branches holds a pipeline breaker (so that its branches are several pipelines with dependencies), under a
    top that does not finish its input first (projections and filters pass rows on as they come). A UNION of
    plain scans, such as the `activations` view, streams."""
    top = plan
    while top["name"] in ("PROJECTION", "FILTER") and top.get("children"):
        top = top["children"][0]
    if top["name"] in _FINISHING:
        return False
    return any(
        node["name"] == "UNION" and any(_breaks(n["name"]) for n in _below(node)) for node in [plan, *_below(plan)]
    )


def _below(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for child in node.get("children", []):
        yield child
        yield from _below(child)


def streamable(con: _Executes, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> str:
    """`query`, or, where its plan could stall DuckDB's streaming result (module docstring), the same rows as
    `WITH actwh_result AS MATERIALIZED (query) SELECT * FROM actwh_result`: their order is not kept, which
    is only defined under an ORDER BY, and a top ORDER BY finishes the pipelines itself (left as it is).
    Duplicate output names get DuckDB's suffixes (`x`, `x_1`) in a wrapped query. Anything EXPLAIN refuses is
    returned as it is, for its execution to report."""
    text = query.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text.lower().startswith(_QUERY_STARTS):
        return query
    try:
        con.execute(f"EXPLAIN (FORMAT JSON) {text}", params)
        plans = json.loads(con.fetchall()[0][1])
    except (duckdb.Error, IndexError, ValueError):
        return query
    if len(plans) != 1 or not _stalls(plans[0]):
        return query
    # a line break before the closing parenthesis, so a trailing `--` comment cannot swallow it
    return f"WITH actwh_result AS MATERIALIZED (\n{text}\n) SELECT * FROM actwh_result"


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
        source = con.execute(streamable(con, query, params), params).to_arrow_reader(batch_size)
    except duckdb.Error as exc:
        raise _failed(exc) from exc
    stream = pa.RecordBatchReader.from_batches(source.schema, _batches(source))
    try:
        yield stream
    finally:
        stream.close()
        source.close()
