"""Printing Arrow results for people (an aligned table) and for machines (CSV, JSON lines, Parquet)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = ("table", "csv", "json")
# Parquet is binary: it goes to a file, never to the terminal.
FILE_FORMATS = (*FORMATS, "parquet")


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    # token text may hold newlines and tabs: show them escaped so rows stay one line each
    return str(value).replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def render(table: pa.Table, fmt: str = "table") -> str:
    if fmt == "csv":
        out = io.BytesIO()
        pacsv.write_csv(table, out)
        return out.getvalue().decode()
    if fmt == "json":
        return "".join(json.dumps(row, default=str) + "\n" for row in table.to_pylist())
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    header = table.column_names
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"


def write(table: pa.Table, fmt: str, output: str | Path | None) -> str | None:
    """Write `table` to `output` in `fmt`, or return the text for the terminal when there is no file."""
    if fmt == "parquet":
        if output is None:
            raise ValueError("--format parquet writes a file: add --output PATH")
        pq.write_table(table, str(output))
        return None
    text = render(table, fmt)
    if output is None:
        return text
    Path(output).write_text(text)
    return None
