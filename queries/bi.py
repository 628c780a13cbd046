"""The SQLAlchemy dialect `duckdb+actwh`: BI tools open a warehouse the way actwh does.

    duckdb+actwh:///<warehouse folder>      e.g. duckdb+actwh:////data/runs (an absolute path: four slashes)
    duckdb+actwh:///<shared catalog>        e.g. duckdb+actwh:///postgres%3Adbname%3Dactwh%20host%3Ddb1
                                            (the --db value, URL-quoted: `url()` writes it)

A warehouse is a DuckLake, which every new DuckDB connection must ATTACH (after loading the DuckLake and
SQLite extensions) before it sees a table; the plain `duckdb://` dialects have no setting for that, and
Apache Superset opens a new connection for every query. This dialect subclasses the DuckDB dialect, so a
BI tool keeps its DuckDB behaviour (types, reflection, Superset's DuckDB engine spec), and opens each
connection with `warehouse.db.connect(path, read_only=True)`: extensions loaded by path, the lake
attached READ_ONLY as catalog `actwh` and `USE`d. Hence, for reflection:

- the default schema is `main` of catalog `actwh`: `MetaData.reflect(engine, views=True)` and
  `inspect(engine).get_table_names()` / `get_view_names()` list exactly the lake's tables and views;
- `get_schema_names()` also lists DuckDB's own `memory.main`, `system.*` and `temp.main`, which are
  empty; `actwh.main` names the lake's schema explicitly.

Every connection sees the last snapshot committed when its transaction began: an ingest running meanwhile
is invisible until it commits a batch, and is never held up by a reader. The default pool is NullPool
(each connection opened and closed per checkout, as Superset does anyway).

actwh registers the dialect through the `sqlalchemy.dialects` entry point `duckdb.actwh` (pyproject.toml),
so any environment where actwh is installed resolves the URL. The base class is duckdb-sqlalchemy's
dialect (SQLAlchemy 2, actwh's own dependency); where it is not installed, duckdb-engine's (the DuckDB
dialect of SQLAlchemy 1.4 environments such as Apache Superset 6.1). docs/BI.md has the steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from queries import streaming
from warehouse import db

try:
    from duckdb_sqlalchemy import ConnectionWrapper
    from duckdb_sqlalchemy import Dialect as DuckDBDialect
except ImportError:  # SQLAlchemy 1.4 environments (Superset 6.1) have duckdb-engine instead
    from duckdb_engine import ConnectionWrapper  # type: ignore[no-redef]
    from duckdb_engine import Dialect as DuckDBDialect  # type: ignore[no-redef]

DRIVER = "actwh"
# DuckDB settings a tool may pass on every connection that only label it (Superset's DuckDB engine spec
# sets a user agent, which DuckDB reports to remote services only): accepted and not applied, since the
# connection is opened by actwh with its own fixed settings.
_LABELS = frozenset({"custom_user_agent"})


class ActwhDialect(DuckDBDialect):  # type: ignore[misc, valid-type]
    """DuckDB dialect whose connections are read-only actwh warehouses (URL `duckdb+actwh:///<folder>`)."""

    driver = DRIVER
    supports_statement_cache = True

    def create_connect_args(self, url: URL) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The warehouse folder, from the URL's path; anything else in the URL is refused (ArgumentError)."""
        extra = [name for name in ("username", "password", "host", "port") if getattr(url, name)]
        extra += sorted(url.query)
        if extra:
            raise sa.exc.ArgumentError(
                f"duckdb+actwh URLs take only a warehouse folder, not {', '.join(extra)}: "
                f"use duckdb+actwh:///<folder> (the warehouse is always opened read-only)"
            )
        if not url.database or url.database.startswith(":memory:"):
            raise sa.exc.ArgumentError(
                "a duckdb+actwh URL names a warehouse folder: duckdb+actwh:////absolute/path/to/warehouse"
            )
        return (url.database,), {}

    def connect(self, path: str, **cparams: Any) -> Any:
        """One read-only connection to the warehouse at `path`, opened by actwh and wrapped for SQLAlchemy.

        Raises ArgumentError for connect arguments (actwh fixes the connection's settings), and actwh's
        own one-line error (NotAWarehouse, WarehouseError) when the folder holds no usable warehouse.
        """
        config = dict(cparams.pop("config", None) or {})
        refused = sorted(set(cparams) | (set(config) - _LABELS))
        if refused:
            raise sa.exc.ArgumentError(
                f"duckdb+actwh takes no connect arguments, got {', '.join(refused)}: remove them "
                f"(actwh opens the warehouse read-only with its own settings)"
            )
        return ConnectionWrapper(db.connect(path, read_only=True))

    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        """Run a statement; a query whose plan could stall DuckDB's streaming result (a UNION feeding it, as
        in edges_into) runs through a materialized CTE instead (queries/streaming.py, streamable)."""
        super().do_execute(cursor, streaming.streamable(cursor, statement, parameters), parameters, context)

    @classmethod
    def get_pool_class(cls, url: URL) -> type[sa.pool.Pool]:
        return NullPool


def url(path: str | Path) -> str:
    """The SQLAlchemy URL of the warehouse folder `path` (made absolute), or of the shared catalog `path`."""
    config = db.config_for(path)
    return f"duckdb+{DRIVER}:///{config.root if config.root is not None else quote(config.catalog, safe='')}"


def create_engine(path: str | Path, **kwargs: Any) -> sa.Engine:
    """An engine on the warehouse folder `path` through this dialect, registered for this process first, so
    it works from a source checkout too (where the entry point is not installed)."""
    sa.dialects.registry.register(f"duckdb.{DRIVER}", __name__, ActwhDialect.__name__)
    return sa.create_engine(url(path), **kwargs)
