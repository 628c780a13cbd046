"""Questions about one prompt: the reference node table (`top_nodes`: the top and bottom nodes with
the four node-table columns beside them) and the per-token attribution strip (`token_attribution`).
`OnePrompt` adds them to the Warehouse."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from queries.absence import explain_empty, traced_from_node
from queries.notes import with_notes
from queries.sources import NODE_KEY, DstNotAvailable, check_name
from warehouse import db

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


class OnePrompt:
    """Warehouse's questions about one prompt (a mixin: it uses the Warehouse's `_connection`, `_run`,
    `_require_prompt` and `_source`)."""

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
                check_name(dst)
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
            same = " AND ".join(f"t.{c} IS NOT DISTINCT FROM b.{c}" for c in NODE_KEY)
            # two top-k operators, not a window sorting every row twice (0.5 s of a SmolLM2 prompt's table);
            # a node among both the top and the bottom k (fewer than 2k rows) is listed once, as 'top'
            sql = (
                f"WITH base AS MATERIALIZED (SELECT * FROM ({' UNION ALL '.join(rank_parts)}) WHERE token >= ?),"
                f" top AS MATERIALIZED (SELECT {key}, value AS rank_value, 'top' AS side FROM base"
                f" ORDER BY value DESC, {key} LIMIT ?)"
                f" SELECT * FROM top UNION ALL SELECT * FROM (SELECT {key}, value, 'bottom' FROM base b"
                f" WHERE NOT EXISTS (SELECT 1 FROM top t WHERE {same}) ORDER BY value ASC, {key} LIMIT ?)"
            )
            ranked = self._run(con, sql, [*rank_params, skip_first, k, k])
            # the columns' sources read only the ranked nodes' layers, tokens and indices: a filter that reaches
            # their scans, where a join with the ranked rows would read every row of the prompt first
            near = " AND ".join(
                f"{c} IN ({', '.join(str(int(v)) for v in set(ranked[c].to_pylist()) if v is not None) or 'NULL'})"
                for c in ("layer", "token", "node_index")
            )
            params: list[Any] = []
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
                    parts.append(f"SELECT * FROM ({src.sql}) WHERE {near}")
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
                "WITH s AS (SELECT * FROM ranked_nodes) SELECT s.side, s.node_type, s.layer, s.token,"
                " t1.text AS token_text, s.token2,"
                " t2.text AS token2_text, s.head, s.node_index"
                + "".join(", " + c for c in select_cols)
                + extra
                + f" FROM s{join_sql}"
                " LEFT JOIN tokens t1 ON t1.prompt_id = ? AND t1.token = s.token"
                " LEFT JOIN tokens t2 ON t2.prompt_id = ? AND t2.token = s.token2"
                " ORDER BY s.rank_value DESC, s.node_type, s.layer, s.token, s.token2, s.node_index"
            )
            params += [prompt_id, prompt_id]
            con.register("ranked_nodes", ranked)
            try:
                table = self._run(con, final, params)
            finally:
                con.unregister("ranked_nodes")
            if not table.num_rows:
                for rank_dst in rank_dsts.values():
                    explain_empty(con, rank_dst, prompt_id=prompt_id)
            traced = traced_from_node(con, prompt_id)
        for col in NODE_COLUMNS:
            if col in table.column_names and table.num_rows and table[col].null_count == table.num_rows:
                message = f"{col}: no values for these nodes (its inputs were not stored for this prompt?)"
                if col == "direct_effect" and traced is not None:
                    message = f"{col}: {traced}"
                if not any(m.startswith(f"{col} of") for m in messages):
                    messages.append(message)
        return with_notes(table, messages)

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
                    f" ON {alias}.token = t.token"
                )
                params += src.params
                selects.append(f"{alias}.value AS {name if dst is None else 'value'}")
            sql = (
                "SELECT t.token, t.text AS token_text, "
                + ", ".join(selects)
                + " FROM tokens t"
                + "".join(joins)
                + " WHERE t.prompt_id = ? ORDER BY t.token"
            )
            table = self._run(con, sql, [*params, prompt_id])
            if dst is not None and table["value"].null_count == table.num_rows:
                explain_empty(con, dst, prompt_id=prompt_id)
        if dst is None and all(table[c].null_count == table.num_rows for c in TOKEN_ATTRIBUTION):
            raise DstNotAvailable(
                f"prompt {prompt_id} has no act-times-grad values: ingest it with a backward pass"
                " (a --target, and without --no-backward)"
            )
        return with_notes(table, messages)
