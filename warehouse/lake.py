"""Where a warehouse lives and how a DuckDB connection reaches it.

A warehouse is a DuckLake: a catalog database plus the Parquet files it lists. On one machine `--db
PATH` names a folder holding both (`PATH/catalog.sqlite`, `PATH/data/`), so moving or copying the folder
keeps it working (the data path is given at every attach, never taken from the catalog). The catalog is
configuration (`LakeConfig`): a PostgreSQL catalog with data on shared storage is another value of it,
not another code path.

The DuckLake and SQLite extensions are loaded by path from their PyPI wheels (`duckdb-extension-ducklake`,
`duckdb-extension-sqlite-scanner`, built for the pinned DuckDB), with DuckDB's signature check on and
automatic installation and loading off, so nothing is ever downloaded. An online user on another DuckDB
version gets the same with DuckDB's own `INSTALL ducklake; INSTALL sqlite;` once: then the extensions
load by name.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb

ALIAS = "actwh"
CATALOG_FILE = "catalog.sqlite"
DATA_DIR = "data"
# DuckDB's own Parquet writer settings for the lake, kept in its catalog: zstd and format version 2
# (BYTE_STREAM_SPLIT and delta encodings) store a float32 activation in about 3 bytes (STORAGE.md).
LAKE_OPTIONS = {"parquet_compression": "zstd", "parquet_version": "2"}
# Tables whose every insert is a Parquet file, never rows inlined in the catalog (DuckLake inlines an
# insert of up to 10 rows): their writers open each transaction with a small primer file (see the note
# above _null_runs in warehouse/writer.py), which inlining would take out of the files.
FILE_ONLY_TABLES = ("facts", "weights", "direction_factors")

_EXTENSIONS = (("sqlite_scanner", "duckdb_extension_sqlite_scanner"), ("ducklake", "duckdb_extension_ducklake"))
_SAFE_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_unsigned_extensions": False,
    # an in-memory connection would spill large sorts and aggregates into ./.tmp of the caller's folder
    "temp_directory": str(Path(tempfile.gettempdir()) / "actwh-duckdb"),
}


class LakeError(Exception):
    """A problem reaching the lake, in one line a user can act on."""


@dataclass(frozen=True)
class LakeConfig:
    """One warehouse: the DuckLake catalog (`sqlite:<file>` here) and the folder its Parquet files live in."""

    catalog: str
    data_path: str
    root: Path

    @classmethod
    def from_path(cls, path: str | Path) -> LakeConfig:
        root = Path(path).expanduser().resolve()
        return cls(f"sqlite:{root / CATALOG_FILE}", str(root / DATA_DIR) + "/", root)

    @property
    def exists(self) -> bool:
        return (self.root / CATALOG_FILE).is_file()


def _extension_file(module: str, name: str) -> str | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    wanted = f"v{duckdb.__version__}"
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "extensions" / wanted / f"{name}.duckdb_extension"
        if path.is_file():
            return str(path)
    return None


def new_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the DuckLake and SQLite extensions loaded (signed, no downloads)."""
    con = duckdb.connect(config=dict(_SAFE_CONFIG))
    # DuckDB draws a progress bar on stdout for queries over 2 s: it would land inside a program's output
    con.execute("SET enable_progress_bar = false")
    for name, module in _EXTENSIONS:
        path = _extension_file(module, name)
        try:
            con.execute(f"LOAD '{path}'" if path else f"LOAD {name}")
        except duckdb.Error:
            con.close()
            package = module.replace("_", "-")
            raise LakeError(
                f"the DuckDB extension {name} for duckdb {duckdb.__version__} is not installed: "
                f"pip install {package}=={duckdb.__version__} (or, online, run INSTALL {name.split('_')[0]} in DuckDB)"
            ) from None
    return con


def _new_sqlite_catalog(config: LakeConfig) -> None:
    """Create a new lake's SQLite catalog in WAL mode (stored in the file). In SQLite's default rollback
    journal a reader's open transaction (any query still running, a BI connection inside a transaction)
    holds a lock that makes a writer's COMMIT fail with "database is locked" after SQLite's busy timeout;
    in WAL mode readers keep their snapshot and the writer commits (measured: a 12 s read-only query made a
    concurrent ingest fail, and does not in WAL mode). WAL needs the catalog on a local file system."""
    path = config.catalog.removeprefix("sqlite:")
    catalog = sqlite3.connect(path)
    try:
        catalog.execute("PRAGMA journal_mode=WAL")
    finally:
        catalog.close()


def attach(con: duckdb.DuckDBPyConnection, config: LakeConfig, read_only: bool) -> None:
    """Attach the lake as `actwh` and make it the default catalog, so tables and views read unqualified."""
    if not read_only:
        (config.root / DATA_DIR).mkdir(parents=True, exist_ok=True)
        if config.catalog.startswith("sqlite:") and not config.exists:
            _new_sqlite_catalog(config)
    mode = ", READ_ONLY" if read_only else ""
    con.execute(
        f"ATTACH 'ducklake:{config.catalog}' AS {ALIAS} (DATA_PATH '{config.data_path}', OVERRIDE_DATA_PATH true{mode})"
    )
    con.execute(f"USE {ALIAS}")


def set_options(con: duckdb.DuckDBPyConnection) -> None:
    for key, value in LAKE_OPTIONS.items():
        con.execute(f"CALL {ALIAS}.set_option('{key}', '{value}')")


def set_table_options(con: duckdb.DuckDBPyConnection) -> None:
    """Turn inlining off for FILE_ONLY_TABLES where it is not yet (a lake created before this option gets
    it from its next read-write open); writes nothing when every table has it."""
    done = con.execute(
        f"SELECT scope_entry FROM ducklake_options('{ALIAS}')"
        " WHERE option_name = 'data_inlining_row_limit' AND scope = 'TABLE' AND value = '0'"
    ).fetchall()
    for table in FILE_ONLY_TABLES:
        if (f"main.{table}",) not in done:
            con.execute(f"CALL {ALIAS}.set_option('data_inlining_row_limit', 0, table_name => '{table}')")
