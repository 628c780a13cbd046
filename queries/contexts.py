"""Example rows with the tokens around them: the context strings `examples` shows."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa


def with_context(
    con: duckdb.DuckDBPyConnection, hits: str, params: list[Any], descending: bool, context: int
) -> pa.Table:
    """The rows of `hits` (SQL giving prompt_id, token, token2, head, value; bound with `params`), ordered
    by value (highest first when `descending`), each with `context` tokens either side.

    `context_text` marks the activating token [[like this]] and, for attention nodes, the attended-to
    token <<like this>> when it falls inside the window. Windows are clipped at the sequence edges.
    """
    order = "DESC" if descending else "ASC"
    sql = (
        f"WITH hits AS ({hits})"
        " SELECT h.prompt_id, h.token, h.token2, h.head, h.value,"
        " coalesce(string_agg(t.text, '' ORDER BY t.position) FILTER (WHERE t.position < h.token), '')"
        " AS left_context,"
        " any_value(t.text) FILTER (WHERE t.position = h.token) AS token_text,"
        " coalesce(string_agg(t.text, '' ORDER BY t.position) FILTER (WHERE t.position > h.token), '')"
        " AS right_context,"
        " any_value(t.text) FILTER (WHERE t.position = h.token2) AS token2_text,"
        " string_agg(CASE WHEN t.position = h.token THEN '[[' || t.text || ']]'"
        " WHEN t.position = h.token2 THEN '<<' || t.text || '>>' ELSE t.text END, '' ORDER BY t.position)"
        " AS context_text"
        " FROM hits h JOIN tokens t ON t.prompt_id = h.prompt_id"
        " AND t.position BETWEEN h.token - ? AND h.token + ?"
        " GROUP BY h.prompt_id, h.token, h.token2, h.head, h.value"
        f" ORDER BY h.value {order}, h.prompt_id, h.token, h.token2"
    )
    return con.execute(sql, [*params, context, context]).to_arrow_table()
