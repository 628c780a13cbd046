"""Direct effects of every node on logit(target) - logit(distractor), for any token pair: the
`direct_effects` table macro of queries/support, with tokens given as text or ids. `DirectEffects` adds
`direct_effects` to the Warehouse."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from queries.absence import explain_empty
from warehouse import db


class DirectEffects:
    """Warehouse's direct effects (a mixin: it uses the Warehouse's `_connection`, `_run` and
    `_require_prompt`)."""

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
            # The pair as literals, not parameters: the planner then folds the macros' tests on it (no weight
            # scan for tokens whose factors are stored; see token_factors in queries/support/20_pairs.sql).
            pair = ", ".join("NULL" if v is None else str(int(v)) for v in (target_id, distractor_id))
            sql = (
                "SELECT e.prompt_id, e.dst::VARCHAR AS dst, e.node_type::VARCHAR AS node_type, e.layer, e.token,"
                " t1.text AS token_text, e.token2, t2.text AS token2_text, e.node_index, e.value"
                f" FROM direct_effects({pair}) e"
                " JOIN prompts p ON p.prompt_id = e.prompt_id AND p.model_id = ?"
                " LEFT JOIN tokens t1 ON t1.prompt_id = e.prompt_id AND t1.token = e.token"
                " LEFT JOIN tokens t2 ON t2.prompt_id = e.prompt_id AND t2.token = e.token2"
                f" WHERE true{scope} ORDER BY abs(e.value) DESC, e.prompt_id, e.dst, e.layer, e.token, e.token2,"
                " e.node_index"
            )
            params: list[Any] = [model_id]
            if prompt_id is not None:
                params.append(prompt_id)
            if k is not None:
                sql += " LIMIT ?"
                params.append(k)
            table = self._run(con, sql, params)
            if not table.num_rows:  # the pair is checked in SQL (checked_pair): a prompt's rows may be missing
                for needed in ("resid_final_layer_norm_scale", "mlp_post_act"):
                    explain_empty(con, needed, prompt_id=prompt_id)
            return table
