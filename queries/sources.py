"""Where the rows of a dst come from, and the checks on a dst name: `DstSources` gives the Warehouse
`dsts()` and the relation every question reads (`activations` for a raw dst, the dst's own view for a
derived one). The names that reach SQL text here are dst names checked against the registry and the
file's catalog.
"""

from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from warehouse import db, registry

# The columns that name one node at one token (or token pair) of a prompt.
NODE_KEY = ("node_type", "layer", "token", "token2", "head", "node_index")


class UnknownDst(db.WarehouseError):
    """A dst name that is neither a registry location nor a derived view."""


class DstNotAvailable(db.WarehouseError):
    """A known dst this warehouse file cannot answer (view missing, or its inputs not stored)."""


def check_name(dst: str) -> None:
    known = db.dst_names()
    if not isinstance(dst, str) or dst not in known:
        close = difflib.get_close_matches(str(dst), known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (Warehouse.dsts() lists them)"
        raise UnknownDst(f"unknown dst {dst!r}{hint}")


def checked_pass_type(pass_type: str) -> str:
    valid = [p.value for p in registry.PassType]
    if pass_type not in valid:
        raise db.WarehouseError(f"unknown pass type {pass_type!r}: use one of {', '.join(valid)}")
    return pass_type


@dataclass
class Source:
    """SQL for the rows of one dst, (prompt_id, token, token2, layer, head, node_type, node_index, value)."""

    sql: str
    params: list[Any]
    note: str | None = None


_VIEWS: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, set[str]] = weakref.WeakKeyDictionary()


class DstSources:
    """Warehouse's dst names and the relation of each (a mixin: it uses the Warehouse's `_connection`)."""

    @staticmethod
    def _views(con: duckdb.DuckDBPyConnection) -> set[str]:
        """The lake's view names, listed once per connection (a call's): the node table asks for eight dsts,
        7 ms a listing."""
        views = _VIEWS.get(con)
        if views is None:
            views = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
            _VIEWS[con] = views
        return views

    def dsts(self) -> pa.Table:
        """Every dst this actwh knows, whether it is raw or derived, and whether this file can answer it."""
        with self._connection() as con:
            views = self._views(con)
            stored = {r[0] for r in con.sql("SELECT DISTINCT dst::VARCHAR FROM activations").fetchall()}
        raw = set(registry.LOCATION_BY_DST)
        names = db.dst_names()
        return pa.table(
            {
                "dst": names,
                "kind": ["raw" if n in raw else "derived" for n in names],
                "available": [(n in stored) if n in raw else (n in views) for n in names],
            }
        )

    def _check_dst(self, con: duckdb.DuckDBPyConnection, dst: str) -> str:
        """'raw' or 'derived'; raises a one-line error for a name this file cannot answer."""
        check_name(dst)
        if dst in registry.LOCATION_BY_DST:
            return "raw"
        if dst not in self._views(con):
            raise DstNotAvailable(f"this warehouse file has no view for the derived dst {dst!r} (the file predates it)")
        return "derived"

    def _source(
        self, con: duckdb.DuckDBPyConnection, dst: str, pass_type: str = "forward", prompt_id: int | None = None
    ) -> Source:
        """Where the rows of `dst` come from: `activations` for a raw dst, else the dst's own view."""
        pass_type = checked_pass_type(pass_type)
        scope = " AND prompt_id = ?" if prompt_id is not None else ""
        scope_params = [prompt_id] if prompt_id is not None else []
        columns = "prompt_id, token, token2, layer, head, node_type::VARCHAR AS node_type, node_index, value"
        self._check_dst(con, dst)
        # The dst's own relation rather than `scalars` (its union): the same rows, without planning all
        # ~30 branches per query (80 ms against 2 ms measured). The view name is a checked dst name.
        relation = "activations" if dst in registry.LOCATION_BY_DST else f'"{dst}"'
        sql = f"SELECT {columns} FROM {relation} WHERE dst = ? AND pass_type = ?{scope}"
        return Source(sql, [dst, pass_type, *scope_params])
