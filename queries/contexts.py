"""Token contexts of a node's examples: the text around each hit, decoded from the tokens' bytes, and the
node's value at every position of the window (what `actwh examples --plot` shades).

Both take the hits as SQL: a query yielding (rank, prompt_id, token, token2, head, value), one row per
example, rank 1 the one shown first. The context text decodes the concatenated bytes of the window, so a character
split across tokens reads whole (warehouse/token_text.py); tokens converted from a single-file warehouse,
which kept no bytes, fall back to the UTF-8 of their text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from warehouse import db
from warehouse.token_text import window

_HIT_COLUMNS = "h.prompt_id, h.token, h.token2, h.head, h.value"


def _run(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any]) -> pa.Table:
    try:
        return con.sql(query, params=list(params)).to_arrow_table()
    except duckdb.Error as exc:
        raise db.WarehouseError(f"query failed: {str(exc).splitlines()[0]}") from exc


def with_context(con: duckdb.DuckDBPyConnection, hits_sql: str, params: Sequence[Any], context: int) -> pa.Table:
    """The hits with `context` tokens each side: prompt_id, token, token2, head, value, left_context,
    token_text, right_context, token2_text, context_text (the hit [[marked]], the attended-to token
    <<marked>> when inside the window). Windows are clipped at the sequence edges."""
    sql = (
        f"WITH h AS ({hits_sql})"
        f" SELECT h.rank, {_HIT_COLUMNS},"
        " any_value(t.text) FILTER (WHERE t.position = h.token) AS token_text,"
        " any_value(t.text) FILTER (WHERE t.position = h.token2) AS token2_text,"
        " list(t.position ORDER BY t.position) AS positions,"
        " list(coalesce(t.bytes, encode(t.text)) ORDER BY t.position) AS pieces"
        " FROM h JOIN tokens t ON t.prompt_id = h.prompt_id AND t.position BETWEEN h.token - ? AND h.token + ?"
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
        " SELECT h.rank AS example, h.prompt_id, h.token AS hit_token, t.position, t.text AS token_text,"
        " t.position = h.token AS is_hit, v.value"
        " FROM h JOIN tokens t ON t.prompt_id = h.prompt_id AND t.position BETWEEN h.token - ? AND h.token + ?"
        " LEFT JOIN v ON v.prompt_id = h.prompt_id AND v.head IS NOT DISTINCT FROM h.head AND CASE"
        " WHEN h.token2 IS NULL THEN v.token = t.position AND v.token2 IS NULL"
        " ELSE v.token = h.token AND v.token2 = t.position END"
        " ORDER BY h.rank, t.position"
    )
    return _run(con, sql, [*hit_params, *value_params, context, context])
