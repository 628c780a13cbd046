"""The Python query API: the questions researchers ask most, each a thin function over SQL.

Every function takes any dst, raw or derived: it reads the rows `scalars` would give for that dst (raw rows
from `activations`, derived ones from the view of that name, which `scalars` unions).
User values always travel as bound parameters; the only names that reach SQL text are dst names checked
against the registry and the file's catalog, and column or view names fixed in the query modules.

A Warehouse attaches the lake for each call, so each call sees the latest committed snapshot while an
ingest runs. `session()` keeps one connection (one consistent snapshot) for a block of calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa

from queries import contexts, streaming
from queries.comparisons import Comparisons
from queries.direct_effects import DirectEffects
from queries.edges import Edges
from queries.node_scans import NodeScans
from queries.one_prompt import OnePrompt
from queries.sources import DstSources
from queries.stored_facts import require_facts
from queries.streaming import QueryError
from queries.summaries import SummaryQueries
from warehouse import db, interrupts, lake

if TYPE_CHECKING:
    import sqlalchemy as sa

    from queries.cache import StoredCache

Output = Literal["arrow", "pandas", "rows"]


class Warehouse(
    SummaryQueries, contexts.ExampleWindows, OnePrompt, NodeScans, Comparisons, DirectEffects, Edges, DstSources
):
    """A warehouse, attached per call (read-only by default): each call reads the last committed snapshot."""

    def __init__(self, path: str | Path, read_only: bool = True, *, check: bool = True) -> None:
        """`check`: attach the warehouse now, to fail here with a clear message if `path` is not one (the
        CLI's one-call commands leave it to their call, which attaches it anyway: about 0.35 s saved)."""
        self.path: str | Path = path if lake.is_catalog_spec(path) else Path(path)
        self.read_only = read_only
        # a session's connection belongs to the thread that opened it: a DuckDB connection runs one query
        # at a time, and another thread's query on it ended a reader's result early, silently
        self._sessions = threading.local()
        if check:
            with self._connection():
                pass

    def __getstate__(self) -> dict[str, Any]:
        """A Warehouse pickles as its path and mode (for multiprocessing); a session stays with its thread."""
        return {"path": self.path, "read_only": self.read_only}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["read_only"], check=False)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r}, read_only={self.read_only})"

    # -- connections ---------------------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Warehouse]:
        """Hold one connection for several calls of this thread, without the reattach cost; each call still
        reads the last committed snapshot. Other threads' calls, and `sql_reader`, open their own."""
        if self._session is not None:
            yield self
            return
        with self._open() as cur:
            self._sessions.con = cur
            try:
                yield self
            finally:
                self._sessions.con = None

    @property
    def _session(self) -> duckdb.DuckDBPyConnection | None:
        return getattr(self._sessions, "con", None)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        return db.connect(self.path, read_only=self.read_only)

    @contextmanager
    def _open(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    def engine(self) -> sa.Engine:
        """A read-only SQLAlchemy engine for Python dashboards and `pandas.read_sql`, whatever this
        Warehouse's mode: the `duckdb+actwh` dialect (queries/bi.py), each connection opened by
        `db.connect` and closed when returned to the engine (NullPool), so an ingest is never held up.
        """
        from queries import bi  # dashboards only: the CLI's query commands start without SQLAlchemy

        return bi.create_engine(self.path)

    def parquet_files(self, table: str = "facts") -> list[str]:
        """The data files (paths or URLs) holding `table` at the current snapshot, from the catalog, for an
        engine that reads Parquet (Spark: README, Beyond one machine). Raises WarehouseError when some of its
        rows are not in plain files (run `actwh compact` first). See queries/files.py."""
        from queries import files

        with self._connection() as con:
            return files.parquet_files(con, table)

    @contextmanager
    def _connection(self, own: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The session's connection, or with `own` (or outside a session) one opened for this call."""
        session = None if own else self._session
        try:
            with nullcontext(session) if session is not None else self._open() as con:
                try:
                    yield con
                except BaseException as exc:
                    # DuckDB reports Ctrl-C as RuntimeError('Query interrupted') at once, and its threads may
                    # run the query on: cancelled here, or the connection's next query (or its close) waits
                    # for the query's end
                    if interrupts.reason(exc) is not None:
                        con.interrupt()
                    raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) or interrupts.reason(exc) is None:
                raise
            raise KeyboardInterrupt(str(exc)) from exc  # so a script stops as on Ctrl-C, whatever DuckDB ran

    @staticmethod
    def _run(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        try:
            return con.sql(query, params=list(params or [])).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from exc

    # -- ad hoc SQL ----------------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None, output: Output = "arrow") -> Any:
        """Run one statement with bound parameters (`?` or `$name`); Arrow, pandas or a list of tuples.

        Raises QueryError with DuckDB's first line when the query fails, and one naming `pip install pandas`
        for output="pandas" where pandas is not installed (it is not a dependency of actwh)."""
        if output not in ("arrow", "pandas", "rows"):
            raise ValueError(f"unknown output {output!r}: use arrow, pandas or rows")
        if output == "pandas":
            try:
                import pandas  # noqa: F401 - DuckDB's .df() needs it; pandas is not among actwh's dependencies
            except ImportError:
                raise QueryError("output='pandas' needs pandas, which is not installed: pip install pandas") from None
        with self._connection() as con:
            try:
                relation = con.sql(query, params=params if params is not None else None)
                if relation is None:
                    return None
                if output == "arrow":
                    return relation.to_arrow_table()
                if output == "pandas":
                    return relation.df()
                return relation.fetchall()
            except duckdb.Error as exc:
                raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from exc

    @contextmanager
    def sql_reader(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        batch_size: int = streaming.BATCH_ROWS,
    ) -> Iterator[pa.RecordBatchReader]:
        """Stream one statement's result: `with wh.sql_reader(query, params) as reader: for batch in
        reader: ...`. A pyarrow.RecordBatchReader of batches of at most `batch_size` rows, produced as they
        are read, so memory stays about one batch whatever the result's size (a sort or aggregate in the
        query still holds its input). The connection (one snapshot) is held until the block ends; the
        reader is closed there. Raises QueryError (one line) at the start or mid-stream.
        """
        # its own connection even in a session: another call on the reader's connection would end its result,
        # and the reader would stop early without an error
        with self._connection(own=True) as con, streaming.reader(con, query, params, batch_size) as reader:
            yield reader

    # -- TransformerLens ------------------------------------------------------------------------------

    def cache(self, prompt_ids: int | Sequence[int], run_id: int | None = None, device: str = "cpu") -> StoredCache:
        """Stored prompts as a TransformerLens ActivationCache (batch axis: the prompts, in the order given).

        Keys are the TransformerLens hook names of every stored location (`keys()`; `name + '_grad'` for
        gradients) and TransformerLens' short keys (`cache["pattern", 5]`, `cache["resid_post", -1]`); each
        tensor is read when first asked for, and the analyses (accumulated_resid, logit_attrs, ...) are
        TransformerLens'. The prompts must come from one model and have one length; `run_id`, if given, must
        be theirs (WarehouseError otherwise). A name that is not stored raises MissingActivation, a
        KeyError naming the --locations that stores it. The cache holds one connection (one snapshot):
        close it, or use it in a `with` block. See queries/cache.py.
        """
        from queries.cache import open_cache  # torch is imported only by those who ask for a cache

        return open_cache(self._connect(), prompt_ids, run_id, device)

    # -- prompts -------------------------------------------------------------------------------------

    def prompts(self, run_id: int | None = None) -> pa.Table:
        """Stored prompts with their ids, the handle every other call takes."""
        where, params = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
        with self._connection() as con:
            return self._run(
                con,
                "SELECT prompt_id, run_id, model_id, n_tokens, text, target, distractor, objective"
                f" FROM prompts {where} ORDER BY prompt_id",
                params,
            )

    def _require_prompt(self, con: duckdb.DuckDBPyConnection, prompt_id: int) -> int:
        row = con.sql("SELECT n_tokens FROM prompts WHERE prompt_id = ?", params=[prompt_id]).fetchall()
        if not row:
            raise db.WarehouseError(f"no prompt with id {prompt_id} in {self.path} (committed prompts: prompts())")
        require_facts(con, [prompt_id])  # every question about one prompt reads its fact rows
        return int(row[0][0])
