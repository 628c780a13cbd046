"""Token contexts of a node's examples: the text around each hit, decoded from the tokens' bytes, and the
node's value at every position of the window (what `actwh examples --plot` shades). `ExampleWindows` adds
`example_windows` to the Warehouse.

Both functions take the hits as SQL: a query yielding (rank, prompt_id, token, token2, head, value), one
row per example, rank 1 the one shown first. The context text decodes the concatenated bytes of the
window, so a character split across tokens reads whole (warehouse/token_text.py); tokens converted from
a single-file warehouse, which kept no bytes, fall back to the UTF-8 of their text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from queries.streaming import QueryError
from warehouse import db
from warehouse.token_text import window

_HIT_COLUMNS = "h.prompt_id, h.token, h.token2, h.head, h.value"


def _run(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any]) -> pa.Table:
    try:
        return con.sql(query, params=list(params)).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from exc


def with_context(con: duckdb.DuckDBPyConnection, hits_sql: str, params: Sequence[Any], context: int) -> pa.Table:
    """The hits with `context` tokens each side: prompt_id, token, token2, head, value, left_context,
    token_text, right_context, token2_text, context_text (the hit [[marked]], the attended-to token
    <<marked>> when inside the window). Windows are clipped at the sequence edges."""
    sql = (
        f"WITH h AS ({hits_sql})"
        f" SELECT h.rank, {_HIT_COLUMNS},"
        " any_value(t.text) FILTER (WHERE t.token = h.token) AS token_text,"
        " any_value(t.text) FILTER (WHERE t.token = h.token2) AS token2_text,"
        " list(t.token ORDER BY t.token) AS positions,"
        " list(coalesce(t.bytes, encode(t.text)) ORDER BY t.token) AS pieces"
        " FROM h JOIN tokens t ON t.prompt_id = h.prompt_id AND t.token BETWEEN h.token - ? AND h.token + ?"
        " GROUP BY ALL ORDER BY h.rank"
    )
    found = _run(con, sql, [*params, context, context])
    windows = []
    for positions, pieces, token, token2 in zip(
        *(found[c].to_pylist() for c in ("positions", "pieces", "token", "token2")), strict=True
    ):
        key = positions.index(token2) if token2 in positions else None
        windows.append(window(pieces, positions.index(token), key))
    return pa.table(
        {
            **{c: found[c] for c in ("prompt_id", "token", "token2", "head", "value")},
            "left_context": pa.array([w.left for w in windows], pa.string()),
            "token_text": found["token_text"],
            "right_context": pa.array([w.right for w in windows], pa.string()),
            "token2_text": found["token2_text"],
            "context_text": pa.array([w.text for w in windows], pa.string()),
        }
    )


def window_values(
    con: duckdb.DuckDBPyConnection,
    hits_sql: str,
    hit_params: Sequence[Any],
    values_sql: str,
    value_params: Sequence[Any],
    context: int,
) -> pa.Table:
    """One row per token of each hit's window: example (1 = first hit), prompt_id, hit_token, position,
    token_text, is_hit, value.

    `values_sql` yields the node's rows (prompt_id, token, token2, head, value). value is the node's value
    at that position: at token = position for a per-token dst; for a token-pair dst (the hit has a
    token2), the pair (hit token, position), so the strip shows where the hit's query token attends.
    NULL where no row is stored (positions after the query token of a pair).
    """
    sql = (
        f"WITH h AS ({hits_sql}),"
        f" v AS (SELECT prompt_id, token, token2, head, value FROM ({values_sql})"
        " WHERE prompt_id IN (SELECT prompt_id FROM h))"
        " SELECT h.rank AS example, h.prompt_id, h.token AS hit_token, t.token AS position, t.text AS token_text,"
        " t.token = h.token AS is_hit, v.value"
        " FROM h JOIN tokens t ON t.prompt_id = h.prompt_id AND t.token BETWEEN h.token - ? AND h.token + ?"
        " LEFT JOIN v ON v.prompt_id = h.prompt_id AND v.head IS NOT DISTINCT FROM h.head AND CASE"
        " WHEN h.token2 IS NULL THEN v.token = t.token AND v.token2 IS NULL"
        " ELSE v.token = h.token AND v.token2 = t.token END"
        " ORDER BY h.rank, t.token"
    )
    return _run(con, sql, [*hit_params, *value_params, context, context])


class ExampleWindows:
    """Warehouse's questions about a node's examples in context (a mixin: it uses the Warehouse's
    `_connection`, `_source` and `_node_filter`)."""

    def example_windows(
        self,
        dst: str,
        layer: int | None,
        node_index: int,
        k: int = 10,
        context: int = 5,
        head: int | None = None,
        run_id: int | None = None,
        pass_type: str = "forward",
        bottom: bool = False,
        skip_first: int = 0,
    ) -> pa.Table:
        """The examples of `top_examples` (same arguments) as one row per token of each window: example
        (1 = the first example), prompt_id, hit_token, position, token_text, is_hit, and the node's value
        there (for a token-pair dst, of the pair (hit token, position)): what `actwh examples --plot` draws.
        Raises WarehouseError for k < 1, context < 0, or a dst the file cannot answer.
        """
        if k < 1 or context < 0:
            raise db.WarehouseError("k must be at least 1 and context at least 0")
        with self._connection() as con:
            hits, hit_params, _ = self._hits(
                con, dst, layer, node_index, k, head, run_id, pass_type, bottom, skip_first
            )
            values = self._source(con, dst, pass_type)
            where, params = self._node_filter(layer, node_index, head, run_id)
            values_sql = f"SELECT * FROM ({values.sql}) WHERE true{where}"
            return window_values(con, hits, hit_params, values_sql, [*values.params, *params], context)

    def _hits(
        self,
        con: duckdb.DuckDBPyConnection,
        dst: str,
        layer: int | None,
        node_index: int,
        k: int,
        head: int | None,
        run_id: int | None,
        pass_type: str,
        bottom: bool,
        skip_first: int = 0,
    ) -> tuple[str, list[Any], str | None]:
        """SQL and parameters for the k highest (lowest) values of one node (rank, prompt_id, token, token2,
        head, value), and the source's note; rows of each prompt's first `skip_first` tokens left out."""
        src = self._source(con, dst, pass_type)
        where, params = self._node_filter(layer, node_index, head, run_id, skip_first)
        order = f"value {'ASC' if bottom else 'DESC'}, prompt_id, token, token2, head"
        sql = (
            f"SELECT row_number() OVER (ORDER BY {order}) AS rank, * FROM (SELECT prompt_id, token, token2, head,"
            f" value FROM ({src.sql}) WHERE true{where} ORDER BY {order} LIMIT ?)"
        )
        return sql, [*src.params, *params, k], src.note
