"""Opening a warehouse file: lock handling, schema creation, versioning and the derived views.

DuckDB lets one process hold a file read-write and then refuses every other open, read-only included.
Writers therefore hold the file only while they commit (see writer.py) and every open here retries a
lock error for a bounded time before failing with one line that says what to do.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import duckdb

from warehouse import registry

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_SQL = ROOT / "schema.sql"
DERIVED_DIR = ROOT / "queries" / "derived"

# Bump when schema.sql or the ENUM members change; `_migrate` must then know the way from the old one.
SCHEMA_VERSION = 1
# Files stay readable by DuckDB 1.4 clients (BI tools, npm and WebAssembly builds).
STORAGE_VERSION = "v1.4.0"
DEFAULT_WAIT_S = 30.0


class WarehouseError(Exception):
    """An error whose message is one line a user can act on."""


class DatabaseLocked(WarehouseError):
    pass


class NotAWarehouse(WarehouseError):
    pass


def derived_view_files() -> list[Path]:
    return sorted(DERIVED_DIR.glob("*.sql"))


def dst_names() -> list[str]:
    """Every dst value: raw locations first, then one per derived view file."""
    return [loc.dst for loc in registry.LOCATIONS.values()] + [p.stem for p in derived_view_files()]


def _sql_list(names: list[str]) -> str:
    return ", ".join("'" + n.replace("'", "''") + "'" for n in names)


def schema_script() -> str:
    script = SCHEMA_SQL.read_text()
    members = {
        "dst_names": dst_names(),
        "node_types": [n.value for n in registry.NodeType],
        "pass_types": [p.value for p in registry.PassType],
        "weight_names": list(registry.WEIGHTS),
    }
    for placeholder, names in members.items():
        script = script.replace("{" + placeholder + "}", _sql_list(names))
    return script


_LOCK_PATTERNS = ("Could not set lock", "Conflicting lock", "lock on file")


def _is_lock_error(exc: Exception) -> bool:
    return any(p in str(exc) for p in _LOCK_PATTERNS)


def connect(path: str | Path, read_only: bool = False, wait_s: float = DEFAULT_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Open a warehouse, retrying while another process holds it, and make sure its schema is current."""
    path = Path(path)
    if read_only and not path.exists():
        raise NotAWarehouse(f"{path} does not exist: ingest into it first (actwh ingest --db {path} ...)")
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        try:
            if read_only:
                con = duckdb.connect(str(path), read_only=True)
            else:
                con = duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_VERSION})
            break
        except duckdb.Error as exc:
            if _is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
                continue
            raise _translate(exc, path) from None
    try:
        if read_only:
            check_version(con, path)
        else:
            ensure_schema(con, path)
    except BaseException:
        con.close()
        raise
    return con


def _translate(exc: Exception, path: Path) -> WarehouseError:
    text = str(exc).splitlines()[0]
    if _is_lock_error(exc):
        holder = re.search(r"PID (\d+)", str(exc))
        who = f" (process {holder.group(1)})" if holder else ""
        return DatabaseLocked(
            f"{path} is in use by another process{who}: wait for it to finish or close it, then retry"
        )
    if "not a valid DuckDB database" in text or "Invalid Input" in text or "IO Error" in text:
        return NotAWarehouse(f"{path} is not a readable DuckDB warehouse ({text}): pass another --db path")
    if "version number" in text or "storage version" in text.lower():
        return NotAWarehouse(f"{path} was written by a newer DuckDB ({text}): upgrade duckdb")
    return WarehouseError(f"{path}: {text}")


def stored_version(con: duckdb.DuckDBPyConnection) -> int | None:
    has_meta = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchone()
    if not has_meta or not has_meta[0]:
        return None
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def check_version(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    version = stored_version(con)
    if version is None:
        has_tables = con.execute("SELECT count(*) FROM information_schema.tables").fetchone()
        if has_tables and has_tables[0]:
            raise NotAWarehouse(f"{path} is a DuckDB file but not an activation warehouse: pass another --db path")
        raise NotAWarehouse(f"{path} holds no warehouse yet: ingest into it first")
    if version > SCHEMA_VERSION:
        raise NotAWarehouse(
            f"{path} has schema version {version}, newer than this actwh's {SCHEMA_VERSION}: upgrade actwh"
        )
    if version < SCHEMA_VERSION:
        raise NotAWarehouse(
            f"{path} has schema version {version}; open it once for writing to migrate it to {SCHEMA_VERSION}"
            f" (actwh migrate --db {path})"
        )


def ensure_schema(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    version = stored_version(con)
    if version is None:
        has_tables = con.execute("SELECT count(*) FROM information_schema.tables").fetchone()
        if has_tables and has_tables[0]:
            raise NotAWarehouse(f"{path} is a DuckDB file but not an activation warehouse: pass another --db path")
        con.execute("BEGIN")
        con.execute(schema_script())
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        create_views(con)
        con.execute("COMMIT")
        return
    check_version_for_write(version, path)


def check_version_for_write(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise NotAWarehouse(
            f"{path} has schema version {version}, newer than this actwh's {SCHEMA_VERSION}: upgrade actwh"
        )
    if version < SCHEMA_VERSION:
        raise NotAWarehouse(f"{path} has schema version {version} and no migration to {SCHEMA_VERSION} exists")


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create every derived view, then the `scalars` union over raw rows and all of them.

    Views may read other views, so files are retried until every one binds (a dependency order without a
    second list to maintain).
    """
    pending = {p.stem: p.read_text() for p in derived_view_files()}
    while pending:
        progressed = False
        errors: dict[str, str] = {}
        for name, sql in list(pending.items()):
            try:
                con.execute(f"CREATE OR REPLACE VIEW {name} AS\n{sql}")
            except duckdb.Error as exc:
                errors[name] = str(exc).splitlines()[0]
                continue
            del pending[name]
            progressed = True
        if not progressed:
            raise WarehouseError(f"derived views do not bind: {errors}")
    union = "\nUNION ALL ".join(
        ["SELECT * FROM activations"] + [f"SELECT * FROM {p.stem}" for p in derived_view_files()]
    )
    con.execute(f"CREATE OR REPLACE VIEW scalars AS\n{union}")
