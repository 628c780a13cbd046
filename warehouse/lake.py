"""Where a warehouse lives and how a DuckDB connection reaches it.

A warehouse is a DuckLake: a catalog database plus the Parquet files it lists. On one machine `--db
PATH` names a folder holding both (`PATH/catalog.sqlite`, `PATH/data/`), so moving or copying the folder
keeps it working (the data path is given at every attach, never taken from the catalog). The catalog is
configuration (`LakeConfig`): a PostgreSQL catalog with data on shared storage is another value of it,
not another code path.

A shared warehouse is named by its catalog, `--db 'postgres:dbname=NAME host=HOST port=PORT user=USER'`
(the libpq keyword form DuckLake takes after `ducklake:`; a password is best left to ~/.pgpass or
PGPASSWORD), and its data path (a folder every worker mounts, or `s3://bucket/prefix/` with DuckDB's
httpfs) is given once, when the warehouse is created: DuckLake keeps it in the catalog, where every later
reader and writer finds it. Many processes may write it at once (warehouse/concurrency.py).

The DuckLake, SQLite and PostgreSQL extensions are loaded by path from their PyPI wheels
(`duckdb-extension-ducklake`, `duckdb-extension-sqlite-scanner`, `duckdb-extension-postgres-scanner`, built
for the pinned DuckDB), with DuckDB's signature check on and automatic installation and loading off, so
nothing is ever downloaded. An online user on another DuckDB version gets the same with DuckDB's own
`INSTALL ducklake; INSTALL sqlite; INSTALL postgres;` once: then the extensions load by name.
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb

ALIAS = "actwh"
# The schema where DuckDB shows the attached lake's catalog tables (ducklake_data_file, ...).
METADATA = f"__ducklake_metadata_{ALIAS}"
CATALOG_FILE = "catalog.sqlite"
DATA_DIR = "data"
# DuckDB's own Parquet writer settings for the lake, kept in its catalog: zstd and format version 2
# (BYTE_STREAM_SPLIT and delta encodings) store a float32 activation in about 3 bytes (STORAGE.md).
LAKE_OPTIONS = {"parquet_compression": "zstd", "parquet_version": "2"}
# Tables whose every insert is a Parquet file, never rows inlined in the catalog (DuckLake inlines an
# insert of up to 10 rows): their writers open each transaction with a small primer file (see the note
# above _null_runs in warehouse/writer.py), which inlining would take out of the files.
FILE_ONLY_TABLES = ("facts", "weights", "weight_vectors", "direction_factors")
# Rows per Parquet row group of tables with wide rows: a weight_vectors row holds d_model floats, and at
# DuckDB's default 122,880 rows a row group held 280 MB, which a scan for a few layers' vectors read whole on
# one thread; 2,048 (the least DuckDB writes) lets the row groups' layer ranges skip the rest.
ROW_GROUP_ROWS = {"weight_vectors": 2048}

POSTGRES_PREFIX = "postgres:"

_SQLITE = ("sqlite_scanner", "duckdb_extension_sqlite_scanner")
_POSTGRES = ("postgres_scanner", "duckdb_extension_postgres_scanner")
_DUCKLAKE = ("ducklake", "duckdb_extension_ducklake")
_SAFE_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_unsigned_extensions": False,
    # an in-memory connection would spill large sorts and aggregates into ./.tmp of the caller's folder
    "temp_directory": str(Path(tempfile.gettempdir()) / "actwh-duckdb"),
}


class LakeError(Exception):
    """A problem reaching the lake, in one line a user can act on."""


def is_catalog_spec(db: str | Path) -> bool:
    """Whether a --db value names a shared catalog (`postgres:...`) rather than a warehouse folder."""
    return str(db).startswith(POSTGRES_PREFIX)


@dataclass(frozen=True)
class LakeConfig:
    """One warehouse: its DuckLake catalog (`sqlite:<file>` or `postgres:<libpq keywords>`), the folder or
    URL its Parquet files live in (None: the one the catalog holds), and, for a warehouse folder, the folder."""

    catalog: str
    data_path: str | None
    root: Path | None

    @classmethod
    def from_path(cls, path: str | Path) -> LakeConfig:
        root = Path(path).expanduser().resolve()
        return cls(f"sqlite:{root / CATALOG_FILE}", str(root / DATA_DIR) + "/", root)

    @classmethod
    def shared(cls, catalog: str, data_path: str | Path | None = None) -> LakeConfig:
        """A PostgreSQL catalog; `data_path` a folder (made absolute) or an object-store URL such as s3://."""
        if not catalog.removeprefix(POSTGRES_PREFIX).strip():
            raise LakeError(f"{catalog!r} names no database: use 'postgres:dbname=NAME host=HOST port=PORT'")
        if "'" in catalog or (data_path is not None and "'" in str(data_path)):
            raise LakeError("a catalog or data path with a single quote cannot be attached: remove the quote")
        if data_path is not None and "://" not in str(data_path):
            data_path = str(Path(data_path).expanduser().resolve())
        folder = None if data_path is None else str(data_path).rstrip("/") + "/"
        return cls(catalog, folder, None)

    @property
    def is_shared(self) -> bool:
        """Whether many processes may write the lake at once (a catalog on a database server)."""
        return self.catalog.startswith(POSTGRES_PREFIX)

    @property
    def label(self) -> str:
        """How messages name the warehouse: its folder, or its catalog."""
        return str(self.root) if self.root is not None else self.catalog

    @property
    def exists(self) -> bool:
        """For a warehouse folder, whether its catalog file exists (a shared catalog answers at attach)."""
        return self.root is not None and (self.root / CATALOG_FILE).is_file()


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


def new_connection(postgres: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the DuckLake extension and the SQLite one, or the PostgreSQL one
    for a shared catalog, loaded (signed, no downloads)."""
    con = duckdb.connect(config=dict(_SAFE_CONFIG))
    # DuckDB draws a progress bar on stdout for queries over 2 s: it would land inside a program's output
    con.execute("SET enable_progress_bar = false")
    for name, module in (_POSTGRES if postgres else _SQLITE, _DUCKLAKE):
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
    """Attach the lake as `actwh` and make it the default catalog, so tables and views read unqualified.

    A data path given for a shared catalog overrides the stored one for this connection (a worker that
    mounts the shared folder elsewhere); DuckLake stores the one given when it creates the catalog.
    """
    if not read_only and config.data_path is not None and "://" not in config.data_path:
        Path(config.data_path).mkdir(parents=True, exist_ok=True)
    if not read_only and config.root is not None and not config.exists:
        _new_sqlite_catalog(config)
    options = [] if config.data_path is None else [f"DATA_PATH '{config.data_path}'", "OVERRIDE_DATA_PATH true"]
    if read_only:
        options.append("READ_ONLY")
    listed = f" ({', '.join(options)})" if options else ""
    statement = f"ATTACH 'ducklake:{config.catalog}' AS {ALIAS}{listed}"
    if config.data_path is not None and "://" in config.data_path:
        _load_object_store(con, config.data_path)
    try:
        con.execute(statement)
    except duckdb.Error as exc:
        remote = re.search(r"Data path (\S+) requires the extension httpfs", str(exc))
        if remote is None:
            raise
        _load_object_store(con, remote.group(1))  # the data path the catalog holds is a URL
        con.execute(statement)
    con.execute(f"USE {ALIAS}")


def _load_object_store(con: duckdb.DuckDBPyConnection, data_path: str) -> None:
    """DuckDB's httpfs extension, for a lake whose data path is a URL (s3://...); its credentials come from
    a DuckDB secret (`CREATE PERSISTENT SECRET ... (TYPE s3, ...)`, stored in ~/.duckdb). Untested here:
    these machines are offline."""
    path = _extension_file("duckdb_extension_httpfs", "httpfs")
    try:
        con.execute(f"LOAD '{path}'" if path else "LOAD httpfs")
    except duckdb.Error:
        raise LakeError(
            f"the data path {data_path} needs DuckDB's httpfs extension: pip install "
            f"duckdb-extension-httpfs=={duckdb.__version__} (or, online, run INSTALL httpfs in DuckDB)"
        ) from None


def set_options(con: duckdb.DuckDBPyConnection) -> None:
    for key, value in LAKE_OPTIONS.items():
        con.execute(f"CALL {ALIAS}.set_option('{key}', '{value}')")


def insert_by_nulls(con: duckdb.DuckDBPyConnection, table: str, query: str, columns: list[str], order: str) -> None:
    """`query`'s rows into `table`: a primer (the first row of each pattern of NULL `columns`), then one
    INSERT per pattern, each in `order` (the note above null_runs in warehouse/fact_files.py says why)."""
    is_null = ", ".join(f'"{c}" IS NULL' for c in columns)
    ranked = f"SELECT *, row_number() OVER (PARTITION BY {is_null} ORDER BY {order}) AS primer_rank FROM ({query})"
    insert = f"INSERT INTO {table} BY NAME SELECT * EXCLUDE (primer_rank) FROM ({ranked})"
    con.execute(f"{insert} WHERE primer_rank = 1")
    for pattern in con.execute(f"SELECT DISTINCT {is_null} FROM ({query})").fetchall():
        tests = (f'"{c}" IS {"NULL" if null else "NOT NULL"}' for c, null in zip(columns, pattern, strict=True))
        con.execute(f"{insert} WHERE primer_rank > 1 AND {' AND '.join(tests)} ORDER BY {order}")


def set_table_options(con: duckdb.DuckDBPyConnection) -> None:
    """Turn inlining off for FILE_ONLY_TABLES and set ROW_GROUP_ROWS where not yet (a lake created before
    these options gets them from its next read-write open); writes nothing when every table has them. They
    hold for files written after them."""
    options = [("data_inlining_row_limit", table, 0) for table in FILE_ONLY_TABLES]
    options += [("parquet_row_group_size", table, rows) for table, rows in ROW_GROUP_ROWS.items()]
    done = con.execute(
        f"SELECT option_name, scope_entry, value FROM ducklake_options('{ALIAS}') WHERE scope = 'TABLE'"
    ).fetchall()
    for option, table, value in options:
        if (option, f"main.{table}", str(value)) not in done:
            con.execute(f"CALL {ALIAS}.set_option('{option}', {value}, table_name => '{table}')")
