"""Edges between nodes over stored passes: the `edges_into` and `edges_from` table macros of
queries/support/60_edges.sql (docs/DERIVED_SCALARS.md, "Edges"), ranked, for one prompt and token or across
the whole warehouse. `Edges` adds `edges_into` and `edges_from` to the Warehouse."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from warehouse import db

EDGE_BY = ("attribution", "activation")
# A node as DST:LAYER:NODE: an MLP neuron, an attention node (attn_qk_probs, node = head; every query and key),
# its value, query or key side (attn_value, attn_query, attn_key; node = head), the embedding
# (resid_post_embedding, no layer) or a bias.
Node = tuple[str, int | None, int | None]


def parse_node(text: str) -> Node:
    """'mlp_post_act:5:100' -> ('mlp_post_act', 5, 100); 'resid_post_embedding' -> (..., None, None);
    'online_autoencoder_latent::7' -> (..., None, 7) (a node with no layer: the SAE on the embedding's latent).

    Raises WarehouseError (one line) for anything else."""
    parts = text.split(":")
    try:
        if len(parts) == 3:
            return parts[0], int(parts[1]) if parts[1] else None, int(parts[2])
        if len(parts) == 2:
            return parts[0], int(parts[1]), None
        if len(parts) == 1 and parts[0]:
            return parts[0], None, None
    except ValueError:
        pass
    raise db.WarehouseError(f"node {text!r}: give DST:LAYER:NODE, e.g. mlp_post_act:5:100")


class Edges:
    """Warehouse's edges (a mixin: it uses the Warehouse's `_connection`, `_run` and `_require_prompt`)."""

    def edges_into(
        self,
        dst: str,
        layer: int | None,
        node_index: int,
        prompt_id: int | None = None,
        token: int | None = None,
        source: Node | None = None,
        k: int | None = 20,
        by: str = "attribution",
    ) -> pa.Table:
        """The strongest edges into one downstream node (an MLP neuron: dst 'mlp_post_act'; the value, query or key
        side of an attention head: 'attn_value', 'attn_query', 'attn_key', node_index its head, one node per query
        `token` and key `token2`; a latent
        of an SAE on the residual stream: 'online_autoencoder_latent', layer None for the SAE on the embedding,
        rows only where it fires), largest |by| first.

        One row per prompt, token and upstream node (the embedding, every earlier attention node and MLP neuron,
        the blocks' output biases; into an MLP neuron or an attention side also the latents of stored residual
        SAEs before it):
        prompt_id, token, token_text, source_dst, source_layer, source_head,
        source_node_index, source_token, source_token_text, activation (d down / d residual . the source's
        write, norm scales held; the reference's mlp_in_edge_activation) and attribution (dObjective/d down
        times it; NULL without the node's stored gradient). `prompt_id` / `token` narrow to one prompt / token;
        `source` (dst, layer, node index; None for any) keeps one upstream node: with no prompt given, the top
        (prompt, token) rows of that edge over the whole warehouse. Needs `ingest --input-weights all` and
        mlp.pre_act stored (a value side: attn.v_out:backward; a query or key side: attn.q, attn.k); raises
        WarehouseError with one line otherwise. A value or key side's upstream nodes write at its key token, a
        query side's at its query token; a value side's attribution equals its activation (it is the head's
        write projected on the stored gradient: docs/DERIVED_SCALARS.md).
        """
        return self._edges("edges_into", "source", (dst, layer, node_index), prompt_id, token, source, k, by)

    def edges_from(
        self,
        dst: str,
        layer: int | None,
        node_index: int | None,
        prompt_id: int | None = None,
        token: int | None = None,
        target: Node | None = None,
        k: int | None = 20,
        by: str = "attribution",
    ) -> pa.Table:
        """The strongest edges out of one upstream node (an MLP neuron; an attention node: 'attn_qk_probs', node
        index its head, every query and key; the embedding: 'resid_post_embedding', layer and node None; a latent
        of an SAE on the residual stream: 'online_autoencoder_latent', layer None for the SAE on the embedding)
        into every downstream subnode that reads its write, largest |by| first: every MLP neuron after it at the
        same token, the value, query and key sides of every later attention head (dst 'attn_value',
        'attn_query', 'attn_key', head = node_index, token the query and token2 the key) and, out of the first
        three, the latents of every residual SAE after it where they fire. The rows of `edges_into` seen from the
        upstream side, with the downstream node as dst, layer, head, node_index. `target` (dst, layer, node
        index; None for any) keeps one downstream node: with no prompt given, the top (prompt, token) rows of
        that edge over the whole warehouse. Raises WarehouseError with one line where a reader's data is not
        stored (attn.q, attn.k, attn.v_out:backward, mlp.pre_act, SAE encoders) or not modelled (qk_norm)."""
        return self._edges("edges_from", "", (dst, layer, node_index), prompt_id, token, target, k, by)

    def _edges(
        self,
        macro: str,
        side: str,
        node: Node,
        prompt_id: int | None,
        token: int | None,
        other: Node | None,
        k: int | None,
        by: str,
    ) -> pa.Table:
        if by not in EDGE_BY:
            raise db.WarehouseError(f"rank edges by {' or '.join(EDGE_BY)}, not {by!r}")
        dst, layer, node_index = node
        conditions, params = ["true"], [dst]
        source = f"{macro}(?, {_literal(layer)}, {_literal(node_index)})"
        if dst == "mlp_post_act" and other is not None and other[0] == "mlp_post_act" and None not in other:
            # one MLP-to-MLP edge: the macro that computes only it (its single weight factor)
            ends = [(dst, int(layer), int(node_index)), (other[0], int(other[1]), int(other[2]))]  # type: ignore[arg-type]
            down, up = ends if side else ends[::-1]
            source = f"edges_between(?, {down[1]}, {down[2]}, ?, {up[1]}, {up[2]})"
            params = [down[0], up[0]]
        for column, value in (("prompt_id", prompt_id), ("token", token)):
            if value is not None:
                conditions.append(f"e.{column} = ?")
                params.append(value)
        if other is not None:
            prefix = f"{side}_" if side else ""
            for column, value in zip(("dst", "layer", "node_index"), other, strict=True):
                if value is not None:
                    conditions.append(f"e.{prefix}{column} = ?")
                    params.append(value)
        sql = (
            "SELECT e.prompt_id, e.token, t1.text AS token_text, e.token2, e.dst, e.layer, e.head, e.node_index,"
            " e.source_dst,"
            " e.source_layer, e.source_head, e.source_node_index, e.source_token, t2.text AS source_token_text,"
            f" e.activation, e.attribution FROM {source} e"
            " LEFT JOIN tokens t1 ON t1.prompt_id = e.prompt_id AND t1.token = e.token"
            " LEFT JOIN tokens t2 ON t2.prompt_id = e.prompt_id AND t2.token = e.source_token"
            f" WHERE {' AND '.join(conditions)} ORDER BY abs(e.{by}) DESC NULLS LAST, e.prompt_id, e.token, e.token2,"
            " e.layer, e.node_index, e.source_dst, e.source_layer, e.source_node_index, e.source_token"
        )
        if k is not None:
            sql += f" LIMIT {int(k)}"
        with self._connection() as con:
            if prompt_id is not None:
                self._require_prompt(con, prompt_id)
            table = self._run(con, sql, params)
        return _checked(table, by, other)


def _literal(value: int | None) -> str:
    return "NULL" if value is None else str(int(value))


def _checked(table: pa.Table, by: str, other: Node | None) -> pa.Table:
    """The answer, or one line saying why it is empty or cannot be ranked."""
    if not table.num_rows:
        which = "" if other is None else f" with {':'.join(str(v) for v in other if v is not None)}"
        raise db.WarehouseError(f"no edge{which} is stored for this node, prompt and token")
    if by == "attribution" and all(v is None for v in table.column("attribution").to_pylist()):
        raise db.WarehouseError(
            "no gradient of the node is stored (mlp.post_act:backward): rank by activation, or ingest with it"
        )
    return table


def edge_label(row: dict[str, Any], side: str) -> str:
    """'mlp_post_act L0 #3 t4', 'attn_qk_probs L1 h2 t4<-1': one end of an edge row, for plots."""
    prefix = f"{side}_" if side else ""
    dst, layer = row[f"{prefix}dst"], row[f"{prefix}layer"]
    index = row[f"{prefix}node_index"]
    where = f"t{row['token']}"
    if side and row["source_token"] != row["token"]:
        where += f"<-{row['source_token']}"
    return (
        " ".join(
            part
            for part in (dst, f"L{layer}" if layer is not None else "", f"#{index}" if index is not None else "")
            if part
        )
        + f" {where}"
    )
