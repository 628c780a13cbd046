"""Printing Arrow results for people (an aligned table) and for machines (CSV, JSON lines, Parquet).

`stream` writes a result as its record batches arrive, so memory stays bounded by one batch whatever the
result's size; the table format, meant for a terminal, shows the first rows and counts the rest.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from warehouse import db

FORMATS = ("table", "csv", "json")
# Parquet is binary: it goes to a file, never to the terminal.
FILE_FORMATS = (*FORMATS, "parquet")


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bytes):
        return _blob_text(value)
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


# Rows the table format shows before it only counts the rest.
TABLE_ROWS = 1000


def stream(reader: pa.RecordBatchReader, fmt: str, output: str | Path | None = None) -> int:
    """Write every row of `reader` in `fmt` to `output` (stdout when None) as batches arrive; returns the
    row count. Raises ValueError for parquet without a file or an unknown format."""
    if fmt == "parquet":
        if output is None:
            raise ValueError("--format parquet writes a file: add --output PATH")
        rows = 0
        with pq.ParquetWriter(str(output), reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FILE_FORMATS)}")
    reader = _text_blobs(reader)
    with _sink(output) as out:
        if fmt == "table":
            return _stream_table(reader, out)
        rows = 0
        if fmt == "csv":
            _check_flat(reader.schema)
            with pacsv.CSVWriter(out, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
            return rows
        for batch in reader:
            out.write("".join(json.dumps(row, default=_json_default) + "\n" for row in batch.to_pylist()).encode())
            rows += batch.num_rows
        return rows


def _blob_text(value: bytes) -> str:
    """A BLOB as text: ASCII bytes as they are, the others as \\xNN escapes (--format parquet keeps the bytes)."""
    return value.decode("ascii", errors="backslashreplace")


def _json_default(value: object) -> str:
    return _blob_text(value) if isinstance(value, bytes) else str(value)


def _text_blobs(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """`reader` with its binary columns as text (_blob_text): CSV and the terminal take text only."""
    blobs = [i for i, f in enumerate(reader.schema) if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if not blobs:
        return reader
    schema = reader.schema
    for i in blobs:
        schema = schema.set(i, schema.field(i).with_type(pa.string()))

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            columns = list(batch.columns)
            for i in blobs:
                columns[i] = pa.array(
                    [None if v is None else _blob_text(v) for v in columns[i].to_pylist()], pa.string()
                )
            yield pa.RecordBatch.from_arrays(columns, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def _check_flat(schema: pa.Schema) -> None:
    """CSV holds one value per cell: refuse nested columns in one line before anything is written."""
    nested = [f for f in schema if pa.types.is_nested(f.type)]
    if nested:
        raise db.WarehouseError(
            f"column {nested[0].name!r} is {nested[0].type}, which CSV cannot hold: use --format json or parquet"
        )


def _stream_table(reader: pa.RecordBatchReader, out: BinaryIO) -> int:
    shown: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader:
        if rows < TABLE_ROWS:
            shown.append(batch.slice(0, TABLE_ROWS - rows))
        rows += batch.num_rows
    head = pa.Table.from_batches(shown, schema=reader.schema)
    text = render(head, "table")
    if rows > head.num_rows:
        more = rows - head.num_rows
        text = text.rsplit("(", 1)[0] + (
            f"(first {head.num_rows} of {rows} rows, {more} more: --format csv, json or parquet gives all)\n"
        )
    out.write(text.encode())
    return rows


class _sink:
    """The binary file to write to: `output`, or stdout's buffer (left open)."""

    def __init__(self, output: str | Path | None) -> None:
        self._file = open(output, "wb") if output is not None else None  # noqa: SIM115 - closed on exit

    def __enter__(self) -> BinaryIO:
        return self._file if self._file is not None else sys.stdout.buffer

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        else:
            sys.stdout.buffer.flush()
