"""Edges out of one upstream node into every downstream subnode it writes to (edges_from,
queries/support/63_out_edges.sql beside the MLP readers of 60_edges.sql and 62_attention_edges.sql): into the value,
query and key sides of every later attention head, on the warehouses of tests/test_edges.py (random-weight GPT-2,
grouped-query Llama, Gemma 2; prompts of mixed lengths), equal prompt by prompt to the oracles built from
transformers' modules and autograd (tests/oracle_attention_edges.py) for the source, and for a small model, for
every downstream node of each kind, edges_into(down) filtered to the source equals edges_from(source) filtered to
down: the same rows and no downstream node missing or added."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from queries import QueryError
from tests.edge_rows import assert_edges_close
from tests.oracle_attention_edges import expected_qk_in_edges, expected_value_in_edges
from tests.test_edge_writers import FULL
from tests.test_edges import REL, Stored, stored  # noqa: F401 - the warehouses, one per checkpoint

# (source node, as edges_from takes it; the oracle's source key: dst, layer, head, node_index)
SOURCES = {
    "mlp": (("mlp_post_act", 0, 3), ("mlp_post_act", 0, None, 3)),
    "attn": (("attn_qk_probs", 0, 1), ("attn_qk_probs", 0, 1, 1)),
    "embedding": (("resid_post_embedding", None, None), ("resid_post_embedding", None, None, None)),
}
SIDES = ("value", "query", "key")
COLUMNS = (
    "prompt_id, token, token2, dst, layer, head, node_index, source_dst, source_layer, source_head, source_node_index,"
    " source_token, activation, attribution"
)


def _call(node: tuple) -> str:
    return ", ".join("NULL" if v is None else repr(v) for v in node)


def _rows(wh, sql: str) -> dict[tuple, tuple[float, float]]:  # noqa: ANN001
    return {tuple(r[:12]): (r[12], r[13]) for r in wh.sql(sql, output="rows")}


@pytest.mark.parametrize("source", list(SOURCES))
def test_edges_from_into_attention_sides_match_the_oracle(stored: Stored, source: str) -> None:  # noqa: F811
    node, key = SOURCES[source]
    layer, head = 1, 1
    for prompt_id, ids, target, distractor in stored.prompts:
        rows = stored.wh.sql(
            "SELECT dst, token, token2, source_dst, source_layer, source_head, source_node_index, source_token,"
            f" activation, attribution FROM edges_from({_call(node)}) WHERE prompt_id = ? AND layer = ? AND head = ?",
            [prompt_id, layer, head],
            output="rows",
        )
        for side in SIDES:
            got = {tuple(r[1:8]): (r[8], r[9]) for r in rows if r[0] == f"attn_{side}"}
            if side == "value":
                every = expected_value_in_edges(stored.checkpoint.model, ids, target, distractor, layer, head)
            elif len(ids) == 1:  # one key: its probability is 1 whatever the residual
                assert got and all(abs(v) < 1e-9 for pair in got.values() for v in pair)
                continue
            else:
                every = expected_qk_in_edges(stored.checkpoint.model, ids, target, distractor, layer, head, side)
            want = {k: v for k, v in every.items() if k[2:6] == key}
            assert want
            assert_edges_close(got, want, (side, prompt_id), REL)


@pytest.mark.slow  # one edges_into per sampled reader: 10-50 s a source
@pytest.mark.parametrize("source", list(SOURCES))
def test_edges_from_are_the_edges_into_every_reader(stored: Stored, source: str) -> None:  # noqa: F811
    """For the three sides of sampled attention heads and sampled MLP neurons, edges_into filtered to the source
    is edges_from filtered to that reader, and edges_from reaches every head's sides and no other reader."""
    node, key = SOURCES[source]
    wh = stored.wh
    n_layers, n_heads, d_mlp = wh.sql("SELECT n_layers, n_heads, d_mlp FROM models", output="rows")[0]
    first = 0 if node[1] is None else node[1] + 1  # a block's attention reads before its own writes
    out = _rows(wh, f"SELECT {COLUMNS} FROM edges_from({_call(node)})")
    mine = (
        "source_dst = ? AND source_layer IS NOT DISTINCT FROM ? AND source_head IS NOT DISTINCT FROM ?"
        " AND source_node_index IS NOT DISTINCT FROM ?"
    )
    heads = [(layer, head) for layer in range(first, n_layers) for head in range(n_heads)]
    readers = [(f"attn_{side}", layer, head) for layer, head in heads for side in SIDES]
    mlp_layers = range(first if source == "mlp" else 0, n_layers)  # an attention node's own MLP reads it
    readers += [("mlp_post_act", layer, j) for layer in mlp_layers for j in (0, d_mlp - 1)]
    # and the readers before the write: no edge either way
    before = [(f"attn_{side}", layer, 1) for layer in range(first) for side in SIDES]
    before += [("mlp_post_act", layer, 0) for layer in range(mlp_layers[0])]
    # edges_into for the first and last head of each layer (both key-value groups of a grouped-query model):
    # the sets below still cover every head
    sampled = [r for r in readers if r[0] == "mlp_post_act" or r[2] in (0, n_heads - 1)]
    for down in sampled + before:
        into = wh.sql(f"SELECT {COLUMNS} FROM edges_into({_call(down)}) WHERE {mine}", list(key), output="rows")
        want = {tuple(r[:12]): (r[12], r[13]) for r in into}
        got = {k: v for k, v in out.items() if (k[3], k[4], k[6]) == down}
        assert bool(want) == (down in readers), down
        assert_edges_close(got, want, down, 1e-9)
    readers_seen = {(k[3], k[4], k[6]) for k in out}
    attention = {r for r in readers_seen if r[0] != "mlp_post_act"}
    assert attention == {r for r in readers if r[0] != "mlp_post_act"}
    neurons = {r for r in readers_seen if r[0] == "mlp_post_act"}
    assert neurons == {("mlp_post_act", layer, j) for layer in mlp_layers for j in range(d_mlp)}
    assert {k[0] for k in out} == {p[0] for p in stored.prompts}


def test_edges_from_refuse_what_they_cannot_answer(stored: Stored) -> None:  # noqa: F811
    for args, words in (
        ("'attn_value', 1, 0", "not attn_value"),
        ("'online_autoencoder_latent', 0, 0", "no SAE whose latents are online_autoencoder_latent at layer 0"),
    ):
        with pytest.raises(QueryError, match=words):
            stored.wh.sql(f"SELECT * FROM edges_from({args})")


@pytest.mark.parametrize(
    ("left_out", "words"),
    [
        (("attn.q:forward", "attn.k:forward"), "which need their stored queries and keys: ingest with --locations"),
        (("attn.v_out:backward",), "which need the gradient of their summed values: ingest with --locations"),
    ],
    ids=["queries_and_keys", "value_gradient"],
)
def test_edges_from_refuse_a_warehouse_without_what_later_heads_read(
    tmp_path: Path, left_out: tuple[str, ...], words: str
) -> None:
    """Edges out of a node reach the sides of later attention heads: without their stored inputs, one line says
    so, where the answer would lack those readers' rows with no sign."""
    path = str(tmp_path / "w")
    capture = [n for n in [*FULL, "attn.q:forward", "attn.k:forward"] if n not in left_out]
    ingest = ["ingest", "--db", path, "--model", "gpt2-tiny", "--prompt", "The capital of France is", "--quiet"]
    ingested = CliRunner().invoke(main, [*ingest, "--input-weights", "all", "--locations", ",".join(capture)])
    assert ingested.exit_code == 0, ingested.output
    result = CliRunner().invoke(main, ["edges", "--db", path, "--from", "resid_post_embedding", "--prompt-id", "0"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert words in result.output and "later attention heads" in result.output, result.output
