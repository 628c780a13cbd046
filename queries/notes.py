"""Caveats attached to a query result (a fallback used, a column left NULL), kept in its Arrow metadata."""

from __future__ import annotations

import json

import pyarrow as pa

NOTES_KEY = b"actwh.notes"


def notes(table: pa.Table) -> list[str]:
    """The caveats an API call attached to its result (missing columns, fallbacks used)."""
    meta = table.schema.metadata or {}
    return json.loads(meta[NOTES_KEY]) if NOTES_KEY in meta else []


def with_notes(table: pa.Table, messages: list[str]) -> pa.Table:
    """`table` with `messages` added to its notes."""
    if not messages:
        return table
    meta = dict(table.schema.metadata or {})
    meta[NOTES_KEY] = json.dumps([*notes(table), *messages]).encode()
    return table.replace_schema_metadata(meta)
