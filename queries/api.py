"""The Python query API: the questions researchers ask most, each a thin function over SQL.

Every function takes any dst, raw or derived: it reads the rows `scalars` would give for that dst (raw rows
from `activations`, derived ones from the view of that name, which `scalars` unions).
User values always travel as bound parameters; the only names that reach SQL text are dst names checked
against the registry and the file's catalog, and column or view names fixed in this module.

A Warehouse attaches the lake for each call, so each call sees the latest committed snapshot while an
ingest runs. `session()` keeps one connection (one consistent snapshot) for a block of calls.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa

from queries import contexts, streaming
from queries.notes import with_notes
from queries.streaming import QueryError
from queries.summaries import SummaryQueries
from warehouse import db, lake, registry

if TYPE_CHECKING:
    import sqlalchemy as sa

Output = Literal["arrow", "pandas", "rows"]

# The reference node table: the four columns per node family, each a dst.
NODE_COLUMNS = ("activation", "write_norm", "direct_effect", "act_times_grad")
NODE_TABLE: dict[str, dict[str, str]] = {
    "mlp_neuron": {
        "activation": "mlp_post_act",
        "write_norm": "mlp_write_norm",
        "direct_effect": "mlp_write_to_final_residual_grad",
        "act_times_grad": "mlp_act_times_grad",
    },
    "attention_head": {
        "activation": "attn_qk_probs",
        "write_norm": "unflattened_attn_write_norm",
        "direct_effect": "unflattened_attn_write_to_final_residual_grad",
        "act_times_grad": "unflattened_attn_act_times_grad",
    },
}
# Per-token attribution strip: column name -> the dst summed per (query) token.
TOKEN_ATTRIBUTION = {
    "embedding": "token_attribution",
    "attn": "unflattened_attn_act_times_grad",
    "mlp": "mlp_act_times_grad",
}
NODE_KEY = ("node_type", "layer", "token", "token2", "head", "node_index")
QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


class UnknownDst(db.WarehouseError):
    """A dst name that is neither a registry location nor a derived view."""


class DstNotAvailable(db.WarehouseError):
    """A known dst this warehouse file cannot answer (view missing, or its inputs not stored)."""


def _check_name(dst: str) -> None:
    known = db.dst_names()
    if not isinstance(dst, str) or dst not in known:
        close = difflib.get_close_matches(str(dst), known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (Warehouse.dsts() lists them)"
        raise UnknownDst(f"unknown dst {dst!r}{hint}")


def _pass_type(pass_type: str) -> str:
    valid = [p.value for p in registry.PassType]
    if pass_type not in valid:
        raise db.WarehouseError(f"unknown pass type {pass_type!r}: use one of {', '.join(valid)}")
    return pass_type


@dataclass
class NodeStats:
    """Distribution of one node's values across the dataset."""

    summary: pa.Table  # one row: count, mean, std, min, max, frac_nonzero, p01 ... p99
    histogram: pa.Table  # bin_low, bin_high, count


@dataclass
class _Source:
    """SQL for the rows of one dst, (prompt_id, token, token2, layer, head, node_type, node_index, value)."""

    sql: str
    params: list[Any]
    note: str | None = None


class Warehouse(SummaryQueries, contexts.ExampleWindows):
    """A warehouse, attached per call (read-only by default): each call reads the last committed snapshot."""

    def __init__(self, path: str | Path, read_only: bool = True) -> None:
        self.path: str | Path = path if lake.is_catalog_spec(path) else Path(path)
        self.read_only = read_only
        self._session: duckdb.DuckDBPyConnection | None = None
        with self._connection():  # fail now, with a clear message, if the file is not a warehouse
            pass

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r}, read_only={self.read_only})"

    # -- connections ---------------------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Warehouse]:
        """Hold one connection for several calls, without the reattach cost; each call still reads the last
        committed snapshot."""
        if self._session is not None:
            yield self
            return
        with self._open() as cur:
            self._session = cur
            try:
                yield self
            finally:
                self._session = None

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
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._session is not None:
            yield self._session
            return
        with self._open() as cur:
            yield cur

    @staticmethod
    def _run(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        try:
            return con.sql(query, params=list(params or [])).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from exc

    # -- ad hoc SQL ----------------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None, output: Output = "arrow") -> Any:
        """Run one statement with bound parameters (`?` or `$name`); Arrow, pandas or a list of tuples."""
        if output not in ("arrow", "pandas", "rows"):
            raise ValueError(f"unknown output {output!r}: use arrow, pandas or rows")
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
        with self._connection() as con, streaming.reader(con, query, params, batch_size) as reader:
            yield reader

    # -- names ---------------------------------------------------------------------------------------

    @staticmethod
    def _views(con: duckdb.DuckDBPyConnection) -> set[str]:
        return {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}

    def dsts(self) -> pa.Table:
        """Every dst this actwh knows, whether it is raw or derived, and whether this file can answer it."""
        with self._connection() as con:
            views = self._views(con)
            stored = {r[0] for r in con.sql("SELECT DISTINCT dst::VARCHAR FROM activations").fetchall()}
        raw = set(registry.LOCATION_BY_DST)
        names = db.dst_names()
        return pa.table(
            {
                "dst": names,
                "kind": ["raw" if n in raw else "derived" for n in names],
                "available": [(n in stored) if n in raw else (n in views) for n in names],
            }
        )

    def _check_dst(self, con: duckdb.DuckDBPyConnection, dst: str) -> str:
        """'raw' or 'derived'; raises a one-line error for a name this file cannot answer."""
        _check_name(dst)
        if dst in registry.LOCATION_BY_DST:
            return "raw"
        if dst not in self._views(con):
            raise DstNotAvailable(f"this warehouse file has no view for the derived dst {dst!r} (the file predates it)")
        return "derived"

    def _source(
        self, con: duckdb.DuckDBPyConnection, dst: str, pass_type: str = "forward", prompt_id: int | None = None
    ) -> _Source:
        """Where the rows of `dst` come from: `activations` for a raw dst, else the dst's own view."""
        pass_type = _pass_type(pass_type)
        scope = " AND prompt_id = ?" if prompt_id is not None else ""
        scope_params = [prompt_id] if prompt_id is not None else []
        columns = "prompt_id, token, token2, layer, head, node_type::VARCHAR AS node_type, node_index, value"
        self._check_dst(con, dst)
        # The dst's own relation rather than `scalars` (its union): the same rows, without planning all
        # ~30 branches per query (80 ms against 2 ms measured). The view name is a checked dst name.
        relation = "activations" if dst in registry.LOCATION_BY_DST else f'"{dst}"'
        sql = f"SELECT {columns} FROM {relation} WHERE dst = ? AND pass_type = ?{scope}"
        return _Source(sql, [dst, pass_type, *scope_params])

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
        return int(row[0][0])

    # -- the reference node table --------------------------------------------------------------------

    def top_nodes(self, prompt_id: int, dst: str = "act_times_grad", k: int = 10, skip_first: int = 0) -> pa.Table:
        """The top and bottom k nodes of one prompt by `dst`, with the four node-table columns beside them.

        `dst` is a dst name (ranks that dst's node family) or one of the column names activation,
        write_norm, direct_effect, act_times_grad (ranks MLP neurons and attention nodes together, each by
        its own dst for that column, as the reference UI does). Columns whose dst this file cannot answer
        come back NULL, with the reason in `notes(result)`. `skip_first` leaves out nodes at the prompt's
        first N tokens (default 0: the node table shows every token, as the reference system's does).
        """
        if k < 1 or skip_first < 0:
            raise db.WarehouseError("k must be at least 1 and skip_first at least 0")
        with self._connection() as con:
            self._require_prompt(con, prompt_id)
            if dst in NODE_COLUMNS:
                families = list(NODE_TABLE)
                rank_dsts = {fam: NODE_TABLE[fam][dst] for fam in families}
            else:
                _check_name(dst)
                families = [fam for fam, cols in NODE_TABLE.items() if dst in cols.values()]
                rank_dsts = {fam: dst for fam in families}
                if not families:  # a dst outside the node table: rank it on its own
                    families, rank_dsts = ["*"], {"*": dst}
            messages: list[str] = []
            rank_parts, rank_params = [], []
            for fam in families:
                try:
                    src = self._source(con, rank_dsts[fam], "forward", prompt_id)
                except DstNotAvailable as exc:
                    if len(families) == 1:
                        raise
                    messages.append(f"{fam} nodes not ranked: {exc}")
                    continue
                if src.note:
                    messages.append(src.note)
                rank_parts.append(src.sql)
                rank_params += src.params
            if not rank_parts:
                raise DstNotAvailable(f"cannot rank by {dst!r}: " + "; ".join(messages))
            key = ", ".join(NODE_KEY)
            sql = (
                f"WITH base AS (SELECT * FROM ({' UNION ALL '.join(rank_parts)}) WHERE token >= ?),"
                f" ranked AS (SELECT {key}, value AS rank_value,"
                f" row_number() OVER (ORDER BY value DESC, {key}) AS r_top,"
                f" row_number() OVER (ORDER BY value ASC, {key}) AS r_bottom FROM base)"
                f" SELECT {key}, rank_value, CASE WHEN r_top <= ? THEN 'top' ELSE 'bottom' END AS side"
                " FROM ranked WHERE r_top <= ? OR r_bottom <= ?"
            )
            params: list[Any] = [*rank_params, skip_first, k, k, k]
            join_sql = ""
            select_cols = []
            for i, col in enumerate(NODE_COLUMNS):
                parts, part_params = [], []
                for fam in families:
                    col_dst = NODE_TABLE.get(fam, {}).get(col)
                    if col_dst is None:
                        continue
                    try:
                        src = self._source(con, col_dst, "forward", prompt_id)
                    except DstNotAvailable as exc:
                        messages.append(f"{col} of {fam} nodes is NULL: {exc}")
                        continue
                    if src.note and src.note not in messages:
                        messages.append(src.note)
                    parts.append(src.sql)
                    part_params += src.params
                if families == ["*"]:
                    continue
                if parts:
                    alias = f"c{i}"
                    on = " AND ".join(f"{alias}.{c} IS NOT DISTINCT FROM s.{c}" for c in NODE_KEY)
                    join_sql += f" LEFT JOIN ({' UNION ALL '.join(parts)}) {alias} ON {on}"
                    params += part_params
                    select_cols.append(f"{alias}.value AS {col}")
                else:
                    select_cols.append(f"NULL::FLOAT AS {col}")
            extra = ", s.rank_value AS value" if families == ["*"] else ""
            final = (
                f"WITH s AS ({sql}) SELECT s.side, s.node_type, s.layer, s.token, t1.text AS token_text, s.token2,"
                " t2.text AS token2_text, s.head, s.node_index"
                + "".join(", " + c for c in select_cols)
                + extra
                + f" FROM s{join_sql}"
                " LEFT JOIN tokens t1 ON t1.prompt_id = ? AND t1.position = s.token"
                " LEFT JOIN tokens t2 ON t2.prompt_id = ? AND t2.position = s.token2"
                " ORDER BY s.rank_value DESC, s.node_type, s.layer, s.token, s.token2, s.node_index"
            )
            params += [prompt_id, prompt_id]
            table = self._run(con, final, params)
        for col in NODE_COLUMNS:
            if col in table.column_names and table.num_rows and table[col].null_count == table.num_rows:
                message = f"{col}: no values for these nodes (its inputs were not stored for this prompt?)"
                if not any(m.startswith(f"{col} of") for m in messages):
                    messages.append(message)
        return with_notes(table, messages)

    # -- one node across the dataset -----------------------------------------------------------------

    def _node_filter(
        self, layer: int | None, node_index: int, head: int | None, run_id: int | None, skip_first: int = 0
    ) -> tuple[str, list[Any]]:
        where = " AND layer IS NOT DISTINCT FROM ? AND node_index = ?"
        params: list[Any] = [layer, node_index]
        if head is not None:
            where += " AND head = ?"
            params.append(head)
        if run_id is not None:
            where += " AND prompt_id IN (SELECT prompt_id FROM prompts WHERE run_id = ?)"
            params.append(run_id)
        if skip_first:
            where += " AND token >= ?"
            params.append(skip_first)
        return where, params

    def top_examples(
        self,
        dst: str,
        layer: int | None,
        node_index: int,
        k: int = 10,
        context: int = 5,
        head: int | None = None,
        run_id: int | None = None,
        pass_type: str = "forward",
        bottom: bool = False,
        skip_first: int = 0,
    ) -> pa.Table:
        """The k highest (or lowest) values of one node across all prompts, with `context` tokens each side,
        by a scan of every stored row (`examples` answers from the per-node summaries).

        `context_text` marks the activating token [[like this]] and, for attention nodes, the attended-to
        token <<like this>> when it falls inside the window. Windows are clipped at the sequence edges.
        Contexts decode the window's concatenated token bytes, so a character split across tokens reads
        whole; markers sit between characters (queries/contexts.py, warehouse/token_text.py).
        `skip_first` leaves out the rows of each prompt's first N tokens.
        """
        if k < 1 or context < 0 or skip_first < 0:
            raise db.WarehouseError("k must be at least 1, context and skip_first at least 0")
        with self._connection() as con:
            hits, params, note = self._hits(con, dst, layer, node_index, k, head, run_id, pass_type, bottom, skip_first)
            table = contexts.with_context(con, hits, params, context)
        return with_notes(table, [note] if note else [])

    def node_stats(
        self,
        dst: str,
        layer: int | None,
        node_index: int,
        head: int | None = None,
        run_id: int | None = None,
        pass_type: str = "forward",
        bins: int = 20,
        skip_first: int = 0,
    ) -> NodeStats:
        """Count, mean, spread, fraction non-zero, quantiles and a histogram of `bins` equal bins between
        min and max, of one node over every token (but each prompt's first `skip_first`), by a scan of
        every stored row (`node_summary` answers from the per-node summaries)."""
        if bins < 1 or skip_first < 0:
            raise db.WarehouseError("bins must be at least 1 and skip_first at least 0")
        with self._connection() as con:
            src = self._source(con, dst, pass_type)
            where, params = self._node_filter(layer, node_index, head, run_id, skip_first)
            values = f"SELECT value FROM ({src.sql}) WHERE true{where}"
            all_params = [*src.params, *params]
            quantile_cols = ", ".join(
                f"quantile_cont(value, {q}) AS p{round(q * 100):02d}"
                for q in QUANTILES  # fixed literals
            )
            summary = self._run(
                con,
                f"SELECT count(*) AS count, avg(value) AS mean, stddev_samp(value) AS std, min(value) AS min,"
                f" max(value) AS max, avg(CASE WHEN value <> 0 THEN 1.0 ELSE 0.0 END) AS frac_nonzero,"
                f" {quantile_cols} FROM ({values})",
                all_params,
            )
            low, high = summary["min"][0].as_py(), summary["max"][0].as_py()
            counts = [0] * bins
            if low is not None:
                width = (high - low) / bins if high > low else 1.0
                rows = con.sql(
                    f"SELECT least(greatest(floor((value - ?) / ?)::INTEGER, 0), ?) AS bin, count(*)"
                    f" FROM ({values}) GROUP BY bin",
                    params=[low, width, bins - 1, *all_params],
                ).fetchall()
                for b, n in rows:
                    counts[int(b)] = int(n)
            else:
                width = math.nan
        edges = [low + i * width if low is not None else None for i in range(bins + 1)]
        histogram = pa.table(
            {
                "bin_low": pa.array(edges[:-1], pa.float64()),
                "bin_high": pa.array(edges[1:], pa.float64()),
                "count": pa.array(counts, pa.int64()),
            }
        )
        return NodeStats(with_notes(summary, [src.note] if src.note else []), histogram)

    # -- per-token view ------------------------------------------------------------------------------

    def token_attribution(self, prompt_id: int, dst: str | None = None) -> pa.Table:
        """Per-token sums for one prompt: act-times-grad of the embedding, attention and MLP by default.

        Attention sums are by query token (the token the head writes to). With `dst`, that dst is summed
        per token instead. Missing derived views fall back to raw forward x backward products.
        """
        with self._connection() as con:
            self._require_prompt(con, prompt_id)
            columns = {dst: dst} if dst is not None else TOKEN_ATTRIBUTION
            messages: list[str] = []
            selects, joins, params = [], [], []
            for i, (name, col_dst) in enumerate(columns.items()):
                try:
                    src = self._source(con, col_dst, "forward", prompt_id)
                except DstNotAvailable as exc:
                    if dst is not None:
                        raise
                    messages.append(f"{name} is NULL: {exc}")
                    selects.append(f"NULL::DOUBLE AS {name}")
                    continue
                if src.note:
                    messages.append(src.note)
                alias = f"a{i}"
                joins.append(
                    f" LEFT JOIN (SELECT token, sum(value) AS value FROM ({src.sql}) GROUP BY token) {alias}"
                    f" ON {alias}.token = t.position"
                )
                params += src.params
                selects.append(f"{alias}.value AS {name if dst is None else 'value'}")
            sql = (
                "SELECT t.position AS token, t.text AS token_text, "
                + ", ".join(selects)
                + " FROM tokens t"
                + "".join(joins)
                + " WHERE t.prompt_id = ? ORDER BY t.position"
            )
            table = self._run(con, sql, [*params, prompt_id])
        if dst is None and all(table[c].null_count == table.num_rows for c in TOKEN_ATTRIBUTION):
            raise DstNotAvailable(
                f"prompt {prompt_id} has no act-times-grad values: ingest it with a backward pass"
                " (a --target, and without --no-backward)"
            )
        return with_notes(table, messages)

    # -- comparisons ---------------------------------------------------------------------------------

    def compare(
        self,
        prompt_a: int,
        prompt_b: int,
        dst: str,
        k: int | None = 20,
        align: Literal["position", "last"] = "position",
        pass_type: str = "forward",
    ) -> pa.Table:
        """The difference b - a of `dst` per node between two prompts, largest |difference| first.

        align='position' matches nodes at the same token positions; align='last' compares each prompt's
        last token (token is then the offset from the end, 0). Nodes present in one prompt only keep a NULL.
        """
        if align not in ("position", "last"):
            raise db.WarehouseError("align must be 'position' or 'last'")
        with self._connection() as con:
            n_a = self._require_prompt(con, prompt_a)
            n_b = self._require_prompt(con, prompt_b)
            src_a = self._source(con, dst, pass_type, prompt_a)
            src_b = self._source(con, dst, pass_type, prompt_b)
            if align == "last":
                side_a = f"SELECT * REPLACE (token - ? AS token) FROM ({src_a.sql}) WHERE token = ?"
                side_b = f"SELECT * REPLACE (token - ? AS token) FROM ({src_b.sql}) WHERE token = ?"
                params = [n_a - 1, *src_a.params, n_a - 1, n_b - 1, *src_b.params, n_b - 1]
            else:
                side_a, side_b = src_a.sql, src_b.sql
                params = [*src_a.params, *src_b.params]
            key = ", ".join(NODE_KEY)
            on = " AND ".join(f"a.{c} IS NOT DISTINCT FROM b.{c}" for c in NODE_KEY)
            sql = (
                f"SELECT {', '.join(f'coalesce(a.{c}, b.{c}) AS {c}' for c in NODE_KEY)},"
                " a.value AS value_a, b.value AS value_b, b.value - a.value AS diff"
                f" FROM ({side_a}) a FULL OUTER JOIN ({side_b}) b ON {on}"
                f" ORDER BY abs(b.value - a.value) DESC NULLS LAST, {key}"
            )
            if k is not None:
                sql += " LIMIT ?"
                params.append(k)
            table = self._run(con, sql, params)
        return with_notes(table, [n for n in {src_a.note} if n])

    def compare_runs(
        self, run_a: int, run_b: int, dst: str, k: int | None = 20, matched: bool = True, pass_type: str = "forward"
    ) -> pa.Table:
        """Mean of `dst` per node (layer, head, node) in run a and run b, largest |difference| first.

        matched=True keeps only prompts whose text, target and distractor appear in both runs, so the
        means compare like with like.
        """
        with self._connection() as con:
            for run in (run_a, run_b):
                if not con.sql("SELECT 1 FROM runs WHERE run_id = ?", params=[run]).fetchall():
                    raise db.WarehouseError(f"no run with id {run} in {self.path}")
            src = self._source(con, dst, pass_type)

            def side(run: int, other: int) -> tuple[str, list[Any]]:
                match, match_params = "", []
                if matched:  # NULL-safe: prompts without a target match prompts without a target
                    match = (
                        " AND EXISTS (SELECT 1 FROM prompts q WHERE q.run_id = ? AND q.text = p.text"
                        " AND q.target IS NOT DISTINCT FROM p.target"
                        " AND q.distractor IS NOT DISTINCT FROM p.distractor)"
                    )
                    match_params = [other]
                return (
                    "SELECT s.node_type, s.layer, s.head, s.node_index, avg(s.value) AS mean, count(*) AS n"
                    f" FROM ({src.sql}) s JOIN prompts p USING (prompt_id) WHERE p.run_id = ?{match}"
                    " GROUP BY ALL",
                    [*src.params, run, *match_params],
                )

            sa_sql, sa_params = side(run_a, run_b)
            sb_sql, sb_params = side(run_b, run_a)
            key = ("node_type", "layer", "head", "node_index")
            on = " AND ".join(f"a.{c} IS NOT DISTINCT FROM b.{c}" for c in key)
            sql = (
                f"SELECT {', '.join(f'coalesce(a.{c}, b.{c}) AS {c}' for c in key)},"
                " a.mean AS mean_a, b.mean AS mean_b, b.mean - a.mean AS diff, a.n AS n_a, b.n AS n_b"
                f" FROM ({sa_sql}) a FULL OUTER JOIN ({sb_sql}) b ON {on}"
                f" ORDER BY abs(b.mean - a.mean) DESC NULLS LAST, {', '.join(key)}"
            )
            params = [*sa_params, *sb_params]
            if k is not None:
                sql += " LIMIT ?"
                params.append(k)
            table = self._run(con, sql, params)
        return with_notes(table, [src.note] if src.note else [])

    # -- direct effects ------------------------------------------------------------------------------

    def _token_id(self, con: duckdb.DuckDBPyConnection, token: str | int, model_id: int) -> int:
        if isinstance(token, int):
            return token
        rows = con.sql(
            "SELECT token_id FROM vocab WHERE model_id = ? AND text = ? ORDER BY token_id", params=[model_id, token]
        ).fetchall()
        if len(rows) != 1:
            found = "no vocabulary entry" if not rows else f"{len(rows)} vocabulary entries"
            raise db.WarehouseError(f"{token!r} has {found} in model {model_id}: give exactly one token (or its id)")
        return int(rows[0][0])

    def direct_effects(
        self,
        target: str | int,
        distractor: str | int | None = None,
        prompt_id: int | None = None,
        k: int | None = 20,
    ) -> pa.Table:
        """Every node's direct effect on logit(target) - logit(distractor) at the last token, largest first.

        Any pair works, ingested or not (the closed form needs only forward rows and weights): the
        `direct_effects` table macro of queries/support. Tokens are strings (exactly one vocabulary entry)
        or ids; they are resolved in the model of `prompt_id`, or of the only model in the file.
        """
        with self._connection() as con:
            if prompt_id is not None:
                self._require_prompt(con, prompt_id)
                model_rows = con.sql("SELECT model_id FROM prompts WHERE prompt_id = ?", params=[prompt_id]).fetchall()
            else:
                model_rows = con.sql("SELECT DISTINCT model_id FROM prompts ORDER BY 1").fetchall()
            if len(model_rows) != 1:
                raise db.WarehouseError("prompts of several models are stored: pass prompt_id to pick one")
            model_id = int(model_rows[0][0])
            target_id = self._token_id(con, target, model_id)
            distractor_id = self._token_id(con, distractor, model_id) if distractor is not None else None
            scope = " AND e.prompt_id = ?" if prompt_id is not None else ""
            sql = (
                "SELECT e.prompt_id, e.dst::VARCHAR AS dst, e.node_type::VARCHAR AS node_type, e.layer, e.token,"
                " t1.text AS token_text, e.token2, t2.text AS token2_text, e.node_index, e.value"
                " FROM direct_effects(?::INTEGER, ?::INTEGER) e"
                " JOIN prompts p ON p.prompt_id = e.prompt_id AND p.model_id = ?"
                " LEFT JOIN tokens t1 ON t1.prompt_id = e.prompt_id AND t1.position = e.token"
                " LEFT JOIN tokens t2 ON t2.prompt_id = e.prompt_id AND t2.position = e.token2"
                f" WHERE true{scope} ORDER BY abs(e.value) DESC, e.prompt_id, e.dst, e.layer, e.token, e.token2,"
                " e.node_index"
            )
            params: list[Any] = [target_id, distractor_id, model_id]
            if prompt_id is not None:
                params.append(prompt_id)
            if k is not None:
                sql += " LIMIT ?"
                params.append(k)
            return self._run(con, sql, params)
