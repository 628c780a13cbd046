"""No edge macro is planned with a nested-loop join between two of its inputs: DuckDB turns a join
whose condition it cannot split into equalities (an ON clause holding a condition on one side alone, in an
outer join) into a loop over every pair of rows, which on a few thousand rows per side runs for minutes where
a hash join takes milliseconds (the rotary partners of the query and key sides' gradients did, in edges_from).
The plan is the same whatever the data, so an empty warehouse shows it. A loop whose condition is a one-row
scalar subquery (a refusal's check, a reach computed once) is a filter and allowed. Nor does a question plan
another question's refusal checks (scans of facts that find nothing cost the most: every file of the range)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warehouse import db

LOOPS = {"NESTED_LOOP_JOIN", "BLOCKWISE_NL_JOIN", "PIECEWISE_MERGE_JOIN"}
# every kind of node the edge macros take, into and out of
EDGE_CALLS = [
    "edges_into('mlp_post_act', 1, 0)",
    "edges_into('online_autoencoder_latent', 1, 0)",
    "edges_into('attn_value', 1, 0)",
    "edges_into('attn_query', 1, 0)",
    "edges_into('attn_key', 1, 0)",
    "edges_from('mlp_post_act', 0, 0)",
    "edges_from('attn_qk_probs', 0, 0)",
    "edges_from('resid_post_embedding', NULL, NULL)",
    "edges_from('online_autoencoder_latent', 0, 0)",
    "edges_between('mlp_post_act', 1, 0, 'mlp_post_act', 0, 0)",
]


def _plan(con: Any, call: str) -> list[dict[str, Any]]:
    """The physical plan of `SELECT * FROM call`, as EXPLAIN (FORMAT JSON)'s list of roots."""
    return json.loads(con.execute(f"EXPLAIN (FORMAT JSON) SELECT * FROM {call}").fetchall()[0][1])


def _loops(node: dict[str, Any]) -> list[str]:
    found = []
    info = node.get("extra_info", {})
    condition = json.dumps(info.get("Condition", info.get("Conditions", "")))
    if node.get("name") in LOOPS and "SUBQUERY" not in condition:
        found.append(f"{node['name']} on {condition}")
    for child in node.get("children", []):
        found += _loops(child)
    return found


def test_no_edge_macro_loops_over_pairs_of_rows(tmp_path: Path) -> None:
    con = db.connect(tmp_path / "w")
    try:
        con.execute("PRAGMA explain_output = 'physical_only'")
        loops = {}
        for call in EDGE_CALLS:
            found = [loop for node in _plan(con, call) for loop in _loops(node)]
            if found:
                loops[call] = found
        assert not loops, loops
    finally:
        con.close()


def _scanned_dsts(node: dict[str, Any], dsts: tuple[str, ...]) -> set[str]:
    """Which of `dsts` the plan's scans filter on (a DuckLake scan's extra_info names them)."""
    info = json.dumps(node.get("extra_info", {}))
    found = {d for d in dsts if f"'{d}'" in info} if node.get("name", "").endswith("SCAN") else set()
    for child in node.get("children", []):
        found |= _scanned_dsts(child, dsts)
    return found


def _scans(con: Any, call: str, dsts: tuple[str, ...]) -> set[str]:
    return set().union(*(_scanned_dsts(node, dsts) for node in _plan(con, call)))


# What only the attention sides' refusals read: each such scan opened every facts file of the layer's range
# (0.3-0.4 s apiece on the 1000-prompt lake) for the edges into an MLP neuron or a residual latent, since a
# refusal's subqueries all run whichever of its cases applies.
ATTENTION_ONLY = ("attn_query", "attn_key", "attn_weighted_sum_of_values")


def test_edges_plan_only_their_own_refusal_checks(tmp_path: Path) -> None:
    con = db.connect(tmp_path / "w")
    try:
        con.execute("PRAGMA explain_output = 'physical_only'")
        for call in ("edges_into('mlp_post_act', 1, 0)", "edges_into('online_autoencoder_latent', 1, 0)"):
            assert not _scans(con, call, ATTENTION_ONLY), call
        # the checks are planned where they apply
        assert {"attn_query", "attn_key"} <= _scans(con, "edges_into('attn_key', 1, 0)", ATTENTION_ONLY)
        # and the MLP neurons' own (their pre-activations) likewise
        assert not _scans(con, "edges_into('attn_value', 1, 0)", ("mlp_pre_act",))
        assert _scans(con, "edges_into('mlp_post_act', 1, 0)", ("mlp_pre_act",))
    finally:
        con.close()
