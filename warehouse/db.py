"""Opening a warehouse file: lock handling, schema creation, versioning and the derived views.

DuckDB lets one process hold a file read-write and then refuses every other open, read-only included.
Writers therefore hold the file only while they commit (see writer.py) and every open here retries a
lock error for a bounded time before failing with one line that says what to do. Opens queue through a
small lock file beside the database, so a writer that reopens the moment it closes cannot starve readers
(who would otherwise lose every race for the file) and a stream of readers cannot starve the writer.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from warehouse import registry

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_SQL = ROOT / "schema.sql"
DERIVED_DIR = ROOT / "queries" / "derived"
SUPPORT_DIR = ROOT / "queries" / "support"
DASHBOARD_DIR = ROOT / "queries" / "dashboards"

# Bump when schema.sql's tables change, and add the step to MIGRATIONS below. New ENUM members (a new
# derived view's dst, a new location) need no bump: grow_enums adds them when a writer opens the file.
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


def enum_members() -> dict[str, list[str]]:
    """Each ENUM type of schema.sql with the members this actwh writes and reads."""
    return {
        "dst_name": dst_names(),
        "node_type_name": [n.value for n in registry.NodeType],
        "pass_type_name": [p.value for p in registry.PassType],
        "weight_name": list(registry.WEIGHTS),
    }


def schema_script() -> str:
    script = SCHEMA_SQL.read_text()
    for type_name, names in enum_members().items():
        script = script.replace("{" + type_name + "}", _sql_list(names))
    return script


_LOCK_PATTERNS = ("Could not set lock", "Conflicting lock", "lock on file")


def _is_lock_error(exc: Exception) -> bool:
    return any(p in str(exc) for p in _LOCK_PATTERNS)


@contextmanager
def _turn(path: Path, deadline: float) -> Iterator[None]:
    """Hold the file's queue while opening it: the holder waits for the file, everyone else for the holder.

    The queue is held only for the open, not the work, so a writer committing leaves it free for the next
    reader, which then gets the file as soon as that commit closes. Without a writable directory, or once
    the deadline passes, the open goes ahead unqueued (and fails with the usual lock message if it must).
    """
    try:
        handle = open(path.with_name(path.name + ".open.lock"), "a+")  # noqa: SIM115 - closed below
    except OSError:
        yield
        return
    with handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
        yield  # closing the handle releases the queue


def connect(path: str | Path, read_only: bool = False, wait_s: float = DEFAULT_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Open a warehouse, retrying while another process holds it, and make sure its schema is current."""
    path = Path(path)
    if read_only and not path.exists():
        raise NotAWarehouse(f"{path} does not exist: ingest into it first (actwh ingest --db {path} ...)")
    deadline = time.monotonic() + wait_s
    with _turn(path, deadline):
        con = _open_when_free(path, read_only, deadline)
    try:
        if read_only:
            check_version(con, path)
        else:
            ensure_schema(con, path)
    except BaseException:
        con.close()
        raise
    return con


def _open_when_free(path: Path, read_only: bool, deadline: float) -> duckdb.DuckDBPyConnection:
    delay = 0.002
    while True:
        try:
            if read_only:
                return duckdb.connect(str(path), read_only=True)
            return duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_VERSION})
        except duckdb.Error as exc:
            if _is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            raise _translate(exc, path) from None


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
    """The file's schema version, None when it has no `meta` table (a new file or not a warehouse).

    Results are fetched whole: DuckDB refuses `con.sql` while an `execute` result is still open.
    """
    has_meta = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchall()
    if not has_meta[0][0]:
        return None
    rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    return int(rows[0][0]) if rows else None


def _has_tables(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables").fetchall()[0][0])


def _newer(version: int, path: Path) -> NotAWarehouse:
    return NotAWarehouse(
        f"{path} has schema version {version}, newer than this actwh's {SCHEMA_VERSION}: upgrade actwh to open it"
    )


def check_version(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """For read-only opens, which cannot migrate: refuse any version but the current one, saying why."""
    version = stored_version(con)
    if version is None:
        if _has_tables(con):
            raise NotAWarehouse(f"{path} is a DuckDB file but not an activation warehouse: pass another --db path")
        raise NotAWarehouse(f"{path} holds no warehouse yet: ingest into it first")
    if version > SCHEMA_VERSION:
        raise _newer(version, path)
    if version < SCHEMA_VERSION:
        raise NotAWarehouse(
            f"{path} has schema version {version}, older than this actwh's {SCHEMA_VERSION}: migrate it with "
            f"`actwh migrate --db {path}` (any ingest into it also migrates it)"
        )


def ensure_schema(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """For read-write opens: create the schema in a new file, migrate an older one, refuse a newer one."""
    version = stored_version(con)
    if version is None:
        if _has_tables(con):
            raise NotAWarehouse(f"{path} is a DuckDB file but not an activation warehouse: pass another --db path")
        con.execute("BEGIN")
        con.execute(schema_script())
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        create_views(con)
        con.execute("COMMIT")
        return
    if version > SCHEMA_VERSION:
        raise _newer(version, path)
    if version < SCHEMA_VERSION:
        migrate(con, path, version)
    elif stored_views(con) != views_fingerprint():
        con.execute("BEGIN")
        grow_enums(con)
        create_views(con)
        con.execute("COMMIT")


@functools.cache
def views_fingerprint() -> str:
    """A hash of every view and macro file and of the ENUM members: a writer that finds another in the file
    grows the ENUMs and rebuilds the views, so a file always answers with the SQL of the actwh that last
    wrote it. Computed once per process: the
    writer opens the file for every commit, and the files do not change under a running actwh."""
    digest = hashlib.sha256(repr(enum_members()).encode())
    for path in sorted([*SUPPORT_DIR.glob("*.sql"), *DERIVED_DIR.glob("*.sql"), *DASHBOARD_DIR.glob("*.sql")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stored_views(con: duckdb.DuckDBPyConnection) -> str | None:
    rows = con.execute("SELECT value FROM meta WHERE key = 'views'").fetchall()  # fetched whole: see above
    return str(rows[0][0]) if rows else None


# MIGRATIONS[v] brings a file from schema version v to v + 1. It runs inside migrate()'s transaction, so
# a failed or interrupted migration leaves the file at its old version. `schema_script()` is idempotent
# for tables (CREATE ... IF NOT EXISTS), so a step that only adds tables can be `_reapply_schema`; changed
# columns need explicit ALTER statements (ENUM members grow by themselves: grow_enums).
Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: dict[int, Migration] = {}


def _reapply_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(schema_script())


def migrate(con: duckdb.DuckDBPyConnection, path: Path, version: int) -> None:
    """Apply every step from `version` to SCHEMA_VERSION in one transaction, then rebuild the views."""
    missing = [v for v in range(version, SCHEMA_VERSION) if v not in MIGRATIONS]
    if missing:
        raise NotAWarehouse(
            f"{path} has schema version {version} and this actwh has no migration from version {missing[0]} "
            f"to {missing[0] + 1}: open it with an older actwh, or ingest into a new --db"
        )
    con.execute("BEGIN")
    try:
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](con)
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])
        grow_enums(con)
        create_views(con)
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise WarehouseError(
            f"migrating {path} from schema version {version} to {SCHEMA_VERSION} failed, file unchanged: "
            + str(exc).splitlines()[0]
        ) from None
    except BaseException:
        con.execute("ROLLBACK")
        raise


def grow_enums(con: duckdb.DuckDBPyConnection) -> None:
    """Add to a file's ENUM types the members this actwh has and it lacks (a new derived view's dst, say).

    DuckDB cannot add members to an ENUM, so each column of a grown type moves to a new type holding every
    member, stored ones first, and back to the re-created type: two rewrites of the column, once, inside
    the caller's transaction. Views and macros that name the type are re-created by the caller.
    """
    for type_name, wanted in enum_members().items():
        stored: list[str] = con.execute(f"SELECT enum_range(NULL::{type_name})").fetchall()[0][0]
        missing = [name for name in wanted if name not in stored]
        if not missing:
            continue
        members = _sql_list([*stored, *missing])
        columns = con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE data_type = typeof(NULL::" + type_name + ")"
        ).fetchall()
        for new, old in ((f"{type_name}__next", type_name), (type_name, f"{type_name}__next")):
            con.execute(f"CREATE TYPE {new} AS ENUM ({members})")
            for table, column in columns:
                con.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET DATA TYPE {new}")
            con.execute(f"DROP TYPE {old}")


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the support macros, every derived view, `scalars` (raw rows and all derived views), and
    the dashboard views (queries/dashboards/*.sql, read through `scalars` by BI tools).

    Support files (queries/support/*.sql, in name order) hold whole statements; derived files hold one
    view's SELECT each, created after every view whose name they mention (views may read views; the
    SQL itself is the dependency list).
    """
    for path in sorted(SUPPORT_DIR.glob("*.sql")):
        con.execute(path.read_text())
    bodies = {p.stem: p.read_text() for p in derived_view_files()}
    needs = {
        name: {other for other in bodies if other != name and re.search(rf"\b{other}\b", sql)}
        for name, sql in bodies.items()
    }
    created: set[str] = set()
    while len(created) < len(bodies):
        ready = sorted(name for name in bodies if name not in created and needs[name] <= created)
        if not ready:
            raise WarehouseError(f"derived views depend on each other in a cycle: {sorted(set(bodies) - created)}")
        for name in ready:
            con.execute(f"CREATE OR REPLACE VIEW {name} AS\n{bodies[name]}")
            created.add(name)
    union = "\nUNION ALL ".join(
        ["SELECT * FROM activations"] + [f"SELECT * FROM {p.stem}" for p in derived_view_files()]
    )
    con.execute(f"CREATE OR REPLACE VIEW scalars AS\n{union}")
    for path in sorted(DASHBOARD_DIR.glob("*.sql")):
        con.execute(f"CREATE OR REPLACE VIEW {path.stem} AS\n{path.read_text()}")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('views', ?)", [views_fingerprint()])


def materialize_factors(con: duckdb.DuckDBPyConnection) -> None:
    """Fill the weight-only factor tables for models and target/distractor tokens that lack them.

    Run inside the writer's transaction, so a committed prompt always has its factors.
    """
    missing_models = con.execute(
        "SELECT model_id FROM models WHERE model_id NOT IN (SELECT DISTINCT model_id FROM mlp_out_norms)"
    ).fetchall()
    for (model_id,) in missing_models:
        con.execute("INSERT INTO mlp_out_norms SELECT * FROM mlp_out_norms_for(?)", [model_id])
    missing_tokens = con.execute(
        """SELECT DISTINCT model_id, token_id FROM (
               SELECT model_id, target_id AS token_id FROM prompts
               UNION ALL SELECT model_id, distractor_id FROM prompts)
           WHERE token_id IS NOT NULL
             AND (model_id, token_id) NOT IN (SELECT DISTINCT model_id, token_id FROM direction_factors)"""
    ).fetchall()
    for model_id, token_id in missing_tokens:
        con.execute(
            "INSERT INTO direction_factors SELECT * FROM direction_factors_for(?) WHERE model_id = ?",
            [token_id, model_id],
        )
