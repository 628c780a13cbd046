"""A lake attached once and read through many connections: `AttachedLake.cursor()` gives each caller a
connection of its own (a DuckDB cursor of one instance) without loading the extensions and attaching again.

Opening a connection (`db.connect`) loads two DuckDB extensions, each signature-checked at every LOAD (about
0.1 s apiece here), and attaches the lake (0.05 s): 0.25-0.3 s that every API call and every dashboard
query paid. A cursor shares the instance's attached lake, and DuckLake reads the latest snapshot at each of
its transactions, so a cursor still sees every commit made before its query (tests/test_api.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb

from warehouse import db, interrupts, lake


class AttachedLake:
    """The lake at `path` (a warehouse folder or a shared catalog), attached on the first `cursor()` call.

    Raises what `db.connect` raises (NotAWarehouse, WarehouseError, one line) from the call that attaches."""

    def __init__(self, path: str | Path, read_only: bool = True) -> None:
        self.path = path
        self.read_only = read_only
        self._instance: duckdb.DuckDBPyConnection | None = None
        self._attached: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the attached lake, its tables and views unqualified, cancelled on Ctrl-C
        (interrupts.cancel_on_interrupt); the caller closes it."""
        with self._lock:
            identity = self._catalog_identity()
            if self._instance is not None and identity != self._attached:
                self._instance.close()  # the folder's catalog was replaced (a new lake at this path)
                self._instance = None
            if self._instance is None:
                self._instance = db.connect(self.path, read_only=self.read_only)
                self._attached = identity
            con = self._instance.cursor()
        try:
            con.execute(f"USE {lake.ALIAS}")
        except BaseException:
            con.close()
            raise
        interrupts.cancel_on_interrupt(con)
        return con

    def close(self) -> None:
        """Detach the lake (the next `cursor()` attaches it again); cursors still open are closed with it."""
        with self._lock:
            if self._instance is not None:
                self._instance.close()
                self._instance = None

    def _catalog_identity(self) -> tuple[int, int] | None:
        """The catalog file's (device, inode) for a warehouse folder, None for a shared catalog or none there.
        An attached SQLite catalog keeps reading the file it opened: a lake deleted and made anew at the same
        path would otherwise be answered from the old catalog (its prompts and runs are rows inlined there)."""
        if lake.is_catalog_spec(self.path):
            return None
        try:
            stat = (Path(self.path) / lake.CATALOG_FILE).stat()
        except OSError:
            return None
        return stat.st_dev, stat.st_ino
