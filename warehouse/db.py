"""Opening a warehouse: creating its lake, versioning its schema, installing the derived views.

Readers attach the lake READ_ONLY and see the last committed snapshot, whatever a writer is doing: no
lock to wait for, no retry loop. A writer attaches it read-write; DuckLake commits each transaction
atomically (files and catalog rows together).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from warehouse import concurrency, hook_names, interrupts, lake, registry, weights

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
SCHEMA_SQL = PACKAGE / "schema.sql"
QUERIES = ROOT / "queries"
DERIVED_DIR = QUERIES / "derived"
SUPPORT_DIR = QUERIES / "support"
DASHBOARD_DIR = QUERIES / "dashboards"

# Version 1 was a single DuckDB file (long rows, ENUM names); version 2 is the DuckLake; version 3 adds
# token bytes, SAEs and per-node summaries; version 4 keeps one summary row per run and node, rewritten
# as the ingest flushes, and each run's summarised_through; version 5 names tokens.token as the facts do;
# version 6 records what each run stored (runs.store, runs.facts_every) and whether each prompt's facts
# were (prompts.facts_stored), and the node a prompt's backward pass started from (prompts.objective_node).
# version 7 keeps each node's K-th highest and lowest example value in its summary row (node_summaries
# kth_top, kth_bottom), so that a merge reads only the examples that reach them (summary_merge.py).
# Version 8 adds weight_vectors: the residual-stream vectors of the read and write matrices as lists, which
# the edge macros dot with a direction instead of joining long rows.
# Bump when the lake's tables change, and add the step to MIGRATIONS below.
SCHEMA_VERSION = 8


def _summaries_per_run(con: duckdb.DuckDBPyConnection) -> None:
    """Version 3 to 4. A version-3 ingest wrote each batch's summaries in the batch's transaction, so a run
    with any summary row has summaries of all its prompts; the segment columns go (rows of one node from
    several segments still add up in every query)."""
    con.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS summarised_through INTEGER")
    if not has_table(con, "node_summaries"):  # a version-2 lake: schema.sql creates the tables
        return
    con.execute(
        "UPDATE runs SET summarised_through = (SELECT max(prompt_id) FROM prompts p WHERE p.run_id = runs.run_id)"
        " WHERE run_id IN (SELECT run_id FROM node_summaries)"
    )
    for table in ("node_summaries", "node_examples"):
        for column in ("segment", "level"):
            con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def _kth_examples(con: duckdb.DuckDBPyConnection) -> None:
    """Version 6 to 7. The stored rows' K-th examples are unknown: -inf and +inf, as while a node has fewer
    than K, so that every merged example of such a node is a candidate, and the merge records its K-th."""
    if has_table(con, "node_summaries"):  # else schema.sql creates it
        for column, unknown in (("kth_top", "-inf"), ("kth_bottom", "inf")):
            con.execute(f"ALTER TABLE node_summaries ADD COLUMN IF NOT EXISTS {column} FLOAT DEFAULT '{unknown}'")


def weight_vectors_from_rows(con: duckdb.DuckDBPyConnection) -> None:
    """Version 7 to 8 (and a converted warehouse's). weight_vectors from the stored long rows: each writer's
    rows and each reader's columns (weights.residual_axis) as lists ordered by residual channel, the NULL
    patterns apart (lake.insert_by_nulls)."""
    parts = []
    for name in registry.WEIGHTS:
        axis = weights.residual_axis(name)
        if axis is not None:
            vector, channel = ("row_index", "col_index") if axis == -1 else ("col_index", "row_index")
            parts.append(
                f"SELECT model_id, location, layer, head, {vector} AS vector_index, list(value ORDER BY {channel})"
                f" AS vector FROM weights WHERE location = '{name}' GROUP BY ALL"
            )
    # built once: the insert reads its rows once per NULL pattern
    con.execute(f"CREATE TEMP TABLE vectors_from_rows AS {' UNION ALL '.join(parts)}")
    try:
        lake.insert_by_nulls(
            con,
            "weight_vectors",
            "SELECT * FROM temp.vectors_from_rows",
            ["layer", "head"],
            "model_id, location, layer, head, vector_index",
        )
    finally:
        con.execute("DROP TABLE temp.vectors_from_rows")


# Each version's step to the next (SQL statements, or a function of the connection), run in one
# transaction by the first read-write open (schema.sql's CREATE TABLE IF NOT EXISTS adds the new tables).
MIGRATIONS: dict[int, tuple[str | Callable[[duckdb.DuckDBPyConnection], None], ...]] = {
    2: (
        "ALTER TABLE tokens ADD COLUMN IF NOT EXISTS bytes BLOB",
        "ALTER TABLE vocab ADD COLUMN IF NOT EXISTS bytes BLOB",
    ),
    3: (_summaries_per_run,),
    # tokens.position took the name every fact table and view gives the same index
    4: ("ALTER TABLE tokens RENAME COLUMN position TO token",),
    # what a run stored: every run before --store kept its facts, and its summaries unless summarised_through
    # stayed NULL (--no-summaries)
    5: (
        "ALTER TABLE prompts ADD COLUMN IF NOT EXISTS facts_stored BOOLEAN",
        "UPDATE prompts SET facts_stored = true",
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS store VARCHAR",
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS facts_every INTEGER",
        "UPDATE runs SET store = CASE WHEN summarised_through IS NULL THEN 'facts' ELSE 'facts,summaries' END,"
        " facts_every = 1",
        # the node a prompt's backward pass started from (ingest --objective-node); NULL before
        "ALTER TABLE prompts ADD COLUMN IF NOT EXISTS objective_node VARCHAR",
    ),
    6: (_kth_examples,),
    7: (weight_vectors_from_rows,),
}
# The file magic of a DuckDB database: a warehouse written by actwh before the lake.
_DUCKDB_MAGIC = b"DUCK"
_INIT_ATTEMPTS = 5


class WarehouseError(Exception):
    """An error whose message is one line a user can act on."""


class NotAWarehouse(WarehouseError):
    pass


def derived_view_files() -> list[Path]:
    return sorted(DERIVED_DIR.glob("*.sql"))


def dst_names() -> list[str]:
    """Every dst value: raw locations first, then one per derived view file."""
    return [loc.dst for loc in registry.LOCATIONS.values()] + [p.stem for p in derived_view_files()]


def _is_duckdb_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(12)[8:12] == _DUCKDB_MAGIC
    except OSError:
        return False


def config_for(path: str | Path, data_path: str | Path | None = None) -> lake.LakeConfig:
    """The lake a --db value names: a warehouse folder, or a shared catalog (`postgres:...`, lake.py) whose
    data lives at `data_path` (needed once, to create it). A single-file warehouse of an earlier actwh gets
    the command that converts it."""
    if lake.is_catalog_spec(path):
        try:
            return lake.LakeConfig.shared(str(path), data_path)
        except lake.LakeError as exc:
            raise WarehouseError(str(exc)) from None
    if data_path is not None:
        raise WarehouseError(
            f"--data-path is for a shared catalog (--db 'postgres:...'); the warehouse folder {path} keeps its "
            "data in its own data/ folder: remove --data-path"
        )
    path = Path(path)
    if path.is_file():
        if _is_single_file_warehouse(path):
            target = path.with_suffix("") if path.suffix else path.with_name(path.name + ".lake")
            raise NotAWarehouse(
                f"{path} is a single-file warehouse from an earlier actwh: convert it with "
                f"`actwh convert {path} --db {target}` and pass --db {target}"
            )
        what = "a DuckDB database but not a warehouse" if _is_duckdb_file(path) else "a file, not a warehouse folder"
        raise NotAWarehouse(f"{path} is {what}: pass a warehouse folder (or a new path) as --db")
    return lake.LakeConfig.from_path(path)


def _is_single_file_warehouse(path: Path) -> bool:
    """A DuckDB file whose `meta` table says schema version 1 (what actwh wrote before the lake)."""
    if not _is_duckdb_file(path):
        return False
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    except duckdb.Error:
        return False
    return rows == [("1",)]


def connect(
    path: str | Path, read_only: bool = False, data_path: str | Path | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the warehouse attached and in use: tables and views read unqualified.

    `path` is a warehouse folder or a shared catalog (config_for). Read-only opens need an existing
    warehouse of this actwh's schema version; read-write opens create a new one and refuse one of another
    schema version. Readers never wait for a writer: they see its last committed snapshot. Raises
    NotAWarehouse / WarehouseError with one line.
    """
    config = config_for(path, data_path)
    if config.root is not None:
        if read_only and not config.exists:
            raise NotAWarehouse(f"{path} holds no warehouse yet: ingest into it first (actwh ingest --db {path} ...)")
        if not read_only and config.root.exists() and not config.root.is_dir():
            raise WarehouseError(f"{path} is not a folder: pass another --db path")
        if not read_only and not config.root.parent.is_dir():
            raise WarehouseError(f"{config.root.parent} is not a directory: create it or pass another --db path")
    try:
        con = lake.new_connection(postgres=config.is_shared)
    except lake.LakeError as exc:
        raise WarehouseError(str(exc)) from None
    try:
        _attach(con, config, read_only)
        if read_only:
            check_version(con, path)
            interrupts.cancel_on_interrupt(con)
        else:
            concurrency.retry_conflicts(lambda: ensure_schema(con, path))
    except duckdb.Error as exc:
        con.close()
        raise WarehouseError(f"{path}: {str(exc).splitlines()[0]}") from None
    except lake.LakeError as exc:
        con.close()
        raise WarehouseError(str(exc)) from None
    except BaseException:
        con.close()
        raise
    return con


def _attach(con: duckdb.DuckDBPyConnection, config: lake.LakeConfig, read_only: bool) -> None:
    """lake.attach, with a shared catalog's two user mistakes (nothing there yet; a new one without a data
    path) said in one line each."""
    try:
        for attempt in range(_INIT_ATTEMPTS):
            try:
                lake.attach(con, config, read_only)
                break
            except duckdb.Error as exc:
                # Writers that attach a new shared catalog at once race to create DuckLake's tables; the
                # losers find them made when they attach again.
                if "Failed to initialize DuckLake" not in str(exc) or attempt == _INIT_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
    except duckdb.Error as exc:
        text = str(exc)
        if "does not exist - and creating a new DuckLake is explicitly disabled" in text:
            raise NotAWarehouse(
                f"{config.label} holds no warehouse yet: ingest into it first (actwh ingest --db ... --data-path DIR)"
            ) from None
        if "Unable to connect to Postgres" in text:
            reason = text.rpartition("failed: ")[2].replace("FATAL:", "").split("\n")[0].strip()
            raise WarehouseError(
                f"cannot reach the catalog {config.label}: {reason}: check the server and the connection keywords"
            ) from None
        if "data_path is not set" in text:
            raise WarehouseError(
                f"{config.label} holds no warehouse yet: give --data-path DIR (a folder every worker sees, "
                "or s3://...) to create it"
            ) from None
        raise


def has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether the attached lake has `table` (a lake written by an older schema may lack it)."""
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND table_name = ?", [table]
    ).fetchall()
    return bool(found[0][0])


def stored_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The lake's schema version, None when it has no `meta` table (a new lake). Outside a transaction only:
    asking for the table directly costs a bind, where listing tables (has_table) made DuckLake read every
    table's statistics, 30-270 ms of each connect."""
    try:
        rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    except duckdb.CatalogException:
        return None
    return int(rows[0][0]) if rows else None


def _newer(version: int, path: str | Path) -> NotAWarehouse:
    return NotAWarehouse(
        f"{path} has schema version {version}, newer than this actwh's {SCHEMA_VERSION}: upgrade actwh to open it"
    )


def _older(version: int, path: str | Path) -> NotAWarehouse:
    if version in MIGRATIONS:
        return NotAWarehouse(
            f"{path} has schema version {version}, older than this actwh's {SCHEMA_VERSION}: `actwh compact --db "
            f"{path}` (or any ingest into it) upgrades it"
        )
    return NotAWarehouse(
        f"{path} has schema version {version}, older than this actwh's {SCHEMA_VERSION}, and there is no migration "
        "from it: open it with the actwh that wrote it, or ingest into a new --db"
    )


def check_version(con: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    """For read-only opens, which cannot migrate: refuse any version but the current one, saying why."""
    version = stored_version(con)
    if version is None:
        raise NotAWarehouse(f"{path} holds no warehouse yet: ingest into it first")
    if version > SCHEMA_VERSION:
        raise _newer(version, path)
    if version < SCHEMA_VERSION:
        raise _older(version, path)


def ensure_schema(con: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    """For read-write opens: create the schema in a new lake, refuse another schema version,
    and rebuild views whose SQL changed since the lake was last written. Each change is one transaction
    that serializes with other writers (concurrency.py): run again when it loses a conflict."""
    version = stored_version(con)
    if version is None:
        with _transaction(con):
            lake.set_options(con)
            con.execute(SCHEMA_SQL.read_text())
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            concurrency.ensure_serial(con)
            create_views(con)
        lake.set_table_options(con)  # DuckLake sets no table option in the transaction creating the table
        return
    if version > SCHEMA_VERSION:
        raise _newer(version, path)
    if version < SCHEMA_VERSION:
        _migrate(con, version, path)
    lake.set_table_options(con)
    has_serial = con.execute("SELECT count(*) FROM meta WHERE key = ?", [concurrency.SERIAL_KEY]).fetchall()[0][0]
    if stored_views(con) != views_fingerprint() or not has_serial:
        with _transaction(con):
            concurrency.serialize(con)
            concurrency.ensure_serial(con)
            create_views(con)


def _migrate(con: duckdb.DuckDBPyConnection, version: int, path: str | Path) -> None:
    """Upgrade a lake of an older schema version, step by step, in one transaction."""
    if any(v not in MIGRATIONS for v in range(version, SCHEMA_VERSION)):
        raise NotAWarehouse(
            f"{path} has schema version {version} and this actwh has no migration from it: ingest into a new --db"
        )
    _create_with_options(con, list(lake.ROW_GROUP_ROWS))
    with _transaction(con):
        concurrency.serialize(con)
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                if isinstance(statement, str):
                    con.execute(statement)
                else:
                    statement(con)
        con.execute(SCHEMA_SQL.read_text())
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])


def _create_with_options(con: duckdb.DuckDBPyConnection, tables: list[str]) -> None:
    """Create schema.sql's `tables` that the lake lacks, then their file options (lake.set_table_options),
    before a migration fills them: DuckLake sets no option on a table created in the same transaction. Left
    empty in a lake still of the older version should the migration then fail, they are filled when it runs
    again."""
    missing = [table for table in tables if not has_table(con, table)]
    if not missing:
        return
    with _transaction(con):
        for table in missing:
            found = re.search(rf"^CREATE TABLE IF NOT EXISTS {table} \(.*?^\);", SCHEMA_SQL.read_text(), re.M | re.S)
            assert found, f"schema.sql creates no table {table}"
            con.execute(found.group(0))
    lake.set_table_options(con)


@contextlib.contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT has already ended the transaction
            con.execute("ROLLBACK")
        raise


@functools.cache
def views_fingerprint() -> str:
    """A hash of the schema and of every view and macro file: a writer that finds another in the lake
    rebuilds the views, so a lake always answers with the SQL of the actwh that last wrote it. Computed
    once per process: the files do not change under a running actwh."""
    digest = hashlib.sha256(repr(dst_names()).encode() + hook_names.tl_hooks_sql().encode())
    files = [SCHEMA_SQL, *SUPPORT_DIR.glob("*.sql"), *DERIVED_DIR.glob("*.sql"), *DASHBOARD_DIR.glob("*.sql")]
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stored_views(con: duckdb.DuckDBPyConnection) -> str | None:
    rows = con.execute("SELECT value FROM meta WHERE key = 'views'").fetchall()
    return str(rows[0][0]) if rows else None


def _core_views() -> list[str]:
    """The CREATE VIEW statements of schema.sql (tables there are created once, views on every rebuild)."""
    statements = re.split(r";\s*\n", SCHEMA_SQL.read_text())
    return [s for s in statements if re.search(r"^CREATE OR REPLACE VIEW", s, re.MULTILINE)]


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the core views, the support macros, every derived view, `scalars` (raw rows and all
    derived views), and the dashboard views (queries/dashboards/*.sql, read through `scalars` by BI tools).

    Support files (queries/support/*.sql, in name order) hold whole statements; derived files hold one
    view's SELECT each, created after every view whose name they mention (views may read views; the
    SQL itself is the dependency list).
    """
    for statement in _core_views():
        con.execute(statement)
    for path in sorted(SUPPORT_DIR.glob("*.sql")):
        con.execute(path.read_text())
    con.execute(hook_names.tl_hooks_sql())  # TransformerLens names, generated from the registry's locations
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
    con.execute("DELETE FROM meta WHERE key = 'views'")
    con.execute("INSERT INTO meta VALUES ('views', ?)", [views_fingerprint()])
