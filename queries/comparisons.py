"""Comparisons: one dst per node between two prompts (`compare`) and its mean per node between two runs
(`compare_runs`). `Comparisons` adds them to the Warehouse."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa

from queries.absence import explain_empty
from queries.notes import with_notes
from queries.sources import NODE_KEY
from warehouse import db


class Comparisons:
    """Warehouse's comparisons (a mixin: it uses the Warehouse's `path`, `_connection`, `_run`,
    `_require_prompt` and `_source`)."""

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
            if not table.num_rows:
                for prompt in (prompt_a, prompt_b):
                    explain_empty(con, dst, pass_type, prompt_id=prompt)
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
            if not table.num_rows:
                for run in (run_a, run_b):
                    explain_empty(con, dst, pass_type, run_id=run)
        return with_notes(table, [src.note] if src.note else [])
