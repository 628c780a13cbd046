"""Fact rows as Parquet files, written outside the commit by a pool of threads.

The writer (warehouse/writer.py) hands a batch's fact rows to `FilePool.write`, which cuts them into
files and spreads the files over its threads; the commit then only registers the finished files with
`ducklake_add_data_files`, in the transaction that stores the batch's prompts, tokens and summaries, so
the commit no longer holds the data (and a shared catalog's conflict window is the registration alone).
pyarrow writes each file (zstd, BYTE_STREAM_SPLIT on the two value columns: STORAGE.md measured
this layout smallest and fastest; PARQUET_OPTIONS) into the facts table's own folder, where DuckLake records a path
relative to the table, so a moved warehouse stays readable.

Statistics: DuckLake takes each file's column ranges from its Parquet footer, and 1.5.5 keeps table
ranges that miss stored values in two cases (measured, for its own INSERT and for registered files
alike): a file whose column is NULL in some row groups and valued in others, and a transaction whose
first file of a table is all NULL in a column that has no range yet. So every file holds one pattern of
NULL columns (`null_runs`) in every row group, a record batch of mixed patterns is a file of one row
group, and the rows a batch starts with (the worker's primer: one row per location and layer, a value in
every column that has any) are a file of their own, registered first.

A file written but never registered (a commit that failed, an ingest killed before its commit) is an
orphan: the writer deletes those of its own failed commits, and DuckLake's orphan cleanup deletes those
of a killed ingest (warehouse/writer.py, at the next open of a folder; `actwh compact` on a shared catalog).
Memory is bounded: each thread takes record batches from a queue of QUEUE_DEPTH.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Rows per file: a batch's rows of one NULL pattern are cut into files of about this many, so that the
# threads share even the largest location; ~30 MB of Arrow rows, ~10 MB on disk for float32 values.
ROWS_PER_FILE = 1 << 22
# Rows per Parquet row group: its min/max let a reader skip other dsts and layers (DuckDB cuts ~122,880).
ROWS_PER_ROW_GROUP = 1 << 17
# Record batches waiting per thread (each up to ~1 M rows, ~30 MB: ingest/capture.py ROWS_PER_BATCH).
QUEUE_DEPTH = 2
# zstd, BYTE_STREAM_SPLIT on the values, dictionaries on the repetitive key columns only (a dictionary on
# the values more than doubles their size), delta on node_index. zstd level 4 on SmolLM2's default capture:
# 3.585 bytes per float32 value at level 3's CPU (level 3: 3.630, 5: 3.578, 6: 3.580; BENCHMARKS.md).
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 4,
    "use_dictionary": ["prompt_id", "token", "token2", "layer", "head", "node_type", "dst"],
    "column_encoding": {
        "node_index": "DELTA_BINARY_PACKED",
        "forward": "BYTE_STREAM_SPLIT",
        "backward": "BYTE_STREAM_SPLIT",
    },
    "write_statistics": True,
}


def default_threads() -> int:
    """Writer threads when none are asked for: every core but the one the model pass drives."""
    return max(1, (os.cpu_count() or 1) - 1)


def table_folder(con: duckdb.DuckDBPyConnection, catalog: str, table: str) -> Path | None:
    """The folder DuckLake keeps `table`'s files in (files written there are recorded relative to it),
    or None when the lake's data path is a URL (s3://...), which pyarrow here does not write."""
    data_path = con.execute(f"SELECT data_path FROM ducklake_settings('{catalog}')").fetchall()[0][0]
    if "://" in data_path:
        return None
    schema_path, schema_relative, table_path, table_relative = con.execute(
        f"""SELECT s.path, s.path_is_relative, t.path, t.path_is_relative
            FROM __ducklake_metadata_{catalog}.ducklake_table t
            JOIN __ducklake_metadata_{catalog}.ducklake_schema s USING (schema_id)
            WHERE t.table_name = ? AND t.end_snapshot IS NULL AND s.end_snapshot IS NULL""",
        [table],
    ).fetchall()[0]
    schema_folder = Path(data_path) / schema_path if schema_relative else Path(schema_path)
    return schema_folder / table_path if table_relative else Path(table_path)


@dataclass
class Written:
    """Files of one batch's fact rows, in the order they must be registered, and their rows."""

    paths: list[Path]
    rows: int

    def delete(self, keep: Iterable[Path] = ()) -> None:
        """Remove the files (but those in `keep`): they were never registered, or a rewrite replaced them."""
        kept = set(keep)
        for path in self.paths:
            if path not in kept:
                path.unlink(missing_ok=True)


@dataclass
class _File:
    path: Path
    rows: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class FilePool:
    """Threads that write fact files into one folder; `write` is called by one thread at a time."""

    def __init__(self, folder: Path, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"writer threads must be at least 1, not {threads}")
        self.folder = folder
        self._queues: list[queue.Queue[tuple[_File | None, pa.RecordBatch | None]]] = [
            queue.Queue(QUEUE_DEPTH) for _ in range(threads)
        ]
        self._threads = [
            threading.Thread(target=_serve, args=(q,), name=f"actwh-parquet-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    def write(self, batches: Iterable[pa.RecordBatch]) -> Written:
        """Every batch into files (one NULL pattern each, at most about ROWS_PER_FILE rows), returned once
        all are complete. On any error, from `batches` or a file, the files are deleted and it is raised."""
        self.folder.mkdir(parents=True, exist_ok=True)
        files: list[_File] = []
        turn = itertools.cycle(self._queues)
        current: tuple[_File, queue.Queue] | None = None
        failed = True
        try:
            for run in null_runs(batches):
                for batch in run:
                    if current is None or current[0].rows >= ROWS_PER_FILE:
                        if current is not None:
                            current[1].put((current[0], None))
                        current = (_File(self.folder / f"{uuid.uuid4().hex}.parquet"), next(turn))
                        files.append(current[0])
                    current[0].rows += batch.num_rows
                    current[1].put((current[0], batch))
                if current is not None:
                    current[1].put((current[0], None))
                    current = None
            failed = False
        finally:
            if current is not None:  # the stream raised mid-file: close it so that its thread lets it go
                current[1].put((current[0], None))
            for file in files:
                file.done.wait()
            errors = [file.error for file in files if file.error is not None]
            written = Written([file.path for file in files], sum(file.rows for file in files))
            if failed or errors:
                written.delete()
        if errors:
            raise errors[0]
        return written

    def rewrite(self, written: Written, rows: Iterable[pa.RecordBatch] | None = None) -> Written:
        """New files holding `rows` (by default the rows of `written`'s files, read back in order)."""
        return self.write(read(written) if rows is None else rows)

    def close(self) -> None:
        for q in self._queues:
            q.put((None, None))
        for thread in self._threads:
            thread.join()


def read(written: Written) -> Iterator[pa.RecordBatch]:
    """The rows of `written`'s files, file by file."""
    for path in written.paths:
        yield from pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_ROW_GROUP)


def _serve(jobs: queue.Queue[tuple[_File | None, pa.RecordBatch | None]]) -> None:
    """A writer thread: each file's record batches in turn, then None to close it; (None, None) to stop.
    Rows are gathered into whole row groups of ROWS_PER_ROW_GROUP (written batch by batch, every small
    batch would be a row group of its own, and compress worse)."""
    writer: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    while True:
        file, batch = jobs.get()
        if file is None:
            return
        try:
            if batch is not None and file.error is None:
                if writer is None:
                    writer = pq.ParquetWriter(file.path, batch.schema, **PARQUET_OPTIONS)
                if null_pattern(batch) is None:
                    # a batch of mixed NULL patterns (the primer) is a file of its own in one row group: cut
                    # into several, a column could be all NULL in some of them only
                    writer.write_batch(batch, row_group_size=max(batch.num_rows, 1))
                else:
                    pending.append(batch)
                    pending = _write_row_groups(writer, pending, whole_only=True)
            elif batch is None and writer is not None:
                _write_row_groups(writer, pending, whole_only=False)
                done, writer, pending = writer, None, []
                done.close()
        except BaseException as exc:  # reported by `write`, on the thread that asked for the file
            file.error = exc
            if writer is not None:
                with suppress(Exception):
                    writer.close()
                writer, pending = None, []
        if batch is None:
            file.done.set()


def _write_row_groups(
    writer: pq.ParquetWriter, batches: list[pa.RecordBatch], whole_only: bool
) -> list[pa.RecordBatch]:
    """Write `batches` as row groups of ROWS_PER_ROW_GROUP (`whole_only`: only full ones); returns the rows
    left over, as batches."""
    rows = sum(batch.num_rows for batch in batches)
    size = ROWS_PER_ROW_GROUP
    n = rows - rows % size if whole_only else rows
    if n == 0:
        return batches
    table = pa.Table.from_batches(batches)
    writer.write_table(table.slice(0, n), row_group_size=size)
    return table.slice(n).combine_chunks().to_batches() if n < rows else []


# DuckLake 1.5.5's table statistics leave out stored values, and queries then answer wrongly without an
# error, in two cases (measured for its INSERT and for ducklake_add_data_files; tests/test_lake.py):
# - a Parquet file whose column is NULL in some of its row groups and not in others gets no min/max, and
#   the next commit's table range for the column starts again from that commit's files;
# - while a table has no range for a column yet, a transaction whose first file of that table is all
#   NULL in the column loses the ranges of its later files too.
# So each transaction writes a primer first (one row group, a value in every column that has any; a file,
# not rows inlined in the catalog: see lake.FILE_ONLY_TABLES), then one file per pattern of NULL columns,
# each column wholly NULL or wholly valued in every row group.


def null_runs(batches: Iterable[pa.RecordBatch]) -> Iterator[Iterator[pa.RecordBatch]]:
    """Consecutive record batches grouped into runs of one pattern of NULL columns, each to be its own
    files; a batch of mixed patterns (the worker's primer) is a run of its own. Lazy: consume each run in
    turn."""
    keyed = ((null_pattern(batch) or object(), batch) for batch in batches)  # object(): equals no other key
    for _, run in itertools.groupby(keyed, key=lambda pair: pair[0]):
        yield (batch for _, batch in run)


def null_pattern(batch: pa.RecordBatch | pa.Table) -> tuple[bool, ...] | None:
    """Which columns are NULL (in every row); None when a column is NULL in some rows only."""
    if any(0 < column.null_count < batch.num_rows for column in batch.columns):
        return None
    return tuple(column.null_count > 0 for column in batch.columns)


def primed_parts(rows: pa.Table) -> list[pa.Table]:
    """`rows` as a primer (the first row of each pattern of NULL columns) and then one part per pattern;
    the table itself when it has one pattern."""
    if null_pattern(rows) is not None:
        return [rows]
    codes = np.zeros(rows.num_rows, np.int64)
    for i, column in enumerate(rows.columns):
        codes |= column.is_null().to_numpy(zero_copy_only=False).astype(np.int64) << i
    patterns, first = np.unique(codes, return_index=True)
    rest = np.ones(rows.num_rows, bool)
    rest[first] = False
    parts = [rows.filter(pa.array((codes == code) & rest)) for code in patterns]
    return [rows.take(np.sort(first)), *(part for part in parts if part.num_rows)]
