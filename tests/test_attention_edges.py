"""Edges with attention nodes (queries/support/62_attention_edges.sql) equal, prompt by prompt and edge by edge,
the oracles built from transformers' modules and autograd, on the warehouses of tests/test_edges.py (random-weight
GPT-2, grouped-query Llama, Gemma 2; prompts of mixed lengths): edges into an attention head's value side
(tests/oracle_attention_edges.py), and edges out of an attention node or the embedding into the MLP neurons that
read them (tests/oracle_edges.py, seen from the upstream side); the API and the CLI take the new nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from ingest.worker import IngestOptions, ingest
from queries import QueryError, Warehouse
from tests.edge_rows import assert_edges_close
from tests.hf_checkpoints import gpt2_checkpoint
from tests.oracle_attention_edges import expected_qk_in_edges, expected_value_in_edges
from tests.oracle_edges import expected_in_edges
from tests.test_edges import PROMPTS, REL, WRITER_KINDS, Stored, stored  # noqa: F401 - the warehouses, one per checkpoint

# head 1 of a grouped-query model (4 heads, 2 key/value heads) reads key/value head 1 // 2 = 0, not 1 % 2
LAYER, HEAD, NEURON = 1, 1, 5


def _close(got: dict, want: dict, label: object) -> None:
    assert all(any(v[column] for v in want.values()) for column in (0, 1)), label  # a check that can fail
    assert_edges_close(got, want, label, REL)


def test_edges_into_a_value_side_match_the_oracle_prompt_by_prompt(stored: Stored) -> None:  # noqa: F811
    for prompt_id, ids, target, distractor in stored.prompts:
        rows = stored.wh.sql(
            "SELECT token, token2, source_dst, source_layer, source_head, source_node_index, source_token, activation,"
            " attribution FROM edges_into('attn_value', ?, ?) WHERE prompt_id = ?",
            [LAYER, HEAD, prompt_id],
            output="rows",
        )
        got = {tuple(r[:7]): (r[7], r[8]) for r in rows}
        want = expected_value_in_edges(stored.checkpoint.model, ids, target, distractor, LAYER, HEAD)
        _close(got, want, prompt_id)
        kinds = {key[2] for key in want}
        assert kinds == WRITER_KINDS


@pytest.mark.parametrize("side", ["query", "key"])
def test_edges_into_a_query_or_key_side_match_the_oracle_prompt_by_prompt(stored: Stored, side: str) -> None:  # noqa: F811
    for prompt_id, ids, target, distractor in stored.prompts:
        rows = stored.wh.sql(
            "SELECT token, token2, source_dst, source_layer, source_head, source_node_index, source_token, activation,"
            f" attribution FROM edges_into('attn_{side}', ?, ?) WHERE prompt_id = ?",
            [LAYER, HEAD, prompt_id],
            output="rows",
        )
        got = {tuple(r[:7]): (r[7], r[8]) for r in rows}
        if len(ids) == 1:  # one key: its probability is 1 whatever the residual
            assert all(abs(v) < 1e-9 for pair in got.values() for v in pair) and got
            continue
        want = expected_qk_in_edges(stored.checkpoint.model, ids, target, distractor, LAYER, HEAD, side)
        _close(got, want, (side, prompt_id))


def test_edges_from_an_attention_node_and_the_embedding_match_the_oracle(stored: Stored) -> None:  # noqa: F811
    wh = stored.wh
    for prompt_id, ids, target, distractor in stored.prompts[:3]:
        want = expected_in_edges(stored.checkpoint.model, ids, target, distractor, LAYER, NEURON)
        for up, args in (
            ("attn_qk_probs", f"'attn_qk_probs', 0, {HEAD}"),
            ("attn_qk_probs", f"'attn_qk_probs', 1, {HEAD}"),
            ("resid_post_embedding", "'resid_post_embedding', NULL, NULL"),
        ):
            rows = wh.sql(
                f"SELECT token, source_dst, source_layer, source_head, source_node_index, source_token, activation,"
                f" attribution FROM edges_from({args}) WHERE prompt_id = ? AND layer = ? AND node_index = ?",
                [prompt_id, LAYER, NEURON],
                output="rows",
            )
            got = {tuple(r[:6]): (r[6], r[7]) for r in rows}
            layer = None if up == "resid_post_embedding" else int(args.split(", ")[1])
            mine = {k: v for k, v in want.items() if k[1] == up and k[2] == layer and k[3] in (None, HEAD)}
            _close(got, mine, (prompt_id, args))
    # every MLP neuron of every layer that reads the node, at every (query, key) pair of a prompt
    n_layers, d_mlp = wh.sql("SELECT n_layers, d_mlp FROM models", output="rows")[0]
    prompt_id, ids = stored.prompts[0][:2]
    pairs = len(ids) * (len(ids) + 1) // 2
    count = "SELECT count(*) FROM edges_from({}) WHERE prompt_id = ? AND dst = 'mlp_post_act'"
    assert (
        wh.sql(count.format(f"'attn_qk_probs', 0, {HEAD}"), [prompt_id], output="rows")[0][0]
        == pairs * n_layers * d_mlp
    )
    embedding = wh.sql(count.format("'resid_post_embedding', NULL, NULL"), [prompt_id], output="rows")[0][0]
    assert embedding == len(ids) * n_layers * d_mlp


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    """A GPT-2 warehouse of the default locations with the input-side weights: no q, k, value gradients or
    pre-activations."""
    tmp = tmp_path_factory.mktemp("attention_edges_bare")
    options = IngestOptions(model=str(gpt2_checkpoint(tmp / "checkpoint").path), progress=False, input_weights="all")
    assert ingest(tmp / "w", PROMPTS[:1], options).stored == 1
    return Warehouse(tmp / "w")


def test_attention_edges_refuse_what_is_not_stored_in_one_line(bare: Warehouse) -> None:
    for macro, args, words in (
        ("edges_into", "'attn_value', 1, 0", "ingest with --locations including attn.v_out:backward"),
        ("edges_into", "'attn_key', 1, 0", "ingest with --locations including attn.q:forward and attn.k:forward"),
        ("edges_from", "'attn_qk_probs', 0, 0", "ingest with --locations including mlp.pre_act:forward"),
        ("edges_from", "'resid_post_embedding', NULL, NULL", "ingest with --locations including mlp.pre_act:forward"),
    ):
        with pytest.raises(QueryError, match=words):
            bare.sql(f"SELECT * FROM {macro}({args})")


def test_attention_edges_refuse_in_one_line(stored: Stored) -> None:  # noqa: F811
    for macro, args, words in (
        ("edges_into", "'attn_value', 1, 99", "no attention head 1:99"),
        ("edges_into", "'attn_query', 7, 0", "no attention head 7:0"),
        (
            "edges_into",
            "'attn_qk_logits', 1, 0",
            "attn_key .an attention head's value, query and key sides., not attn_qk_",
        ),
        ("edges_from", "'attn_qk_probs', NULL, 0", "no attention head NULL:0"),
        (
            "edges_from",
            "'attn_value', 1, 0",
            "out of mlp_post_act .MLP neurons., attn_qk_probs .attention nodes., resid_post_embedding .the embedding.",
        ),
    ):
        with pytest.raises(QueryError, match=words):
            stored.wh.sql(f"SELECT * FROM {macro}({args})")


def test_the_api_and_the_command_take_attention_nodes(stored: Stored, tmp_path: Path) -> None:  # noqa: F811
    wh = stored.wh
    prompt_id, ids = stored.prompts[2][:2]
    top = wh.edges_into("attn_value", LAYER, HEAD, prompt_id=prompt_id, k=5).to_pylist()
    every = wh.sql(
        "SELECT attribution FROM edges_into('attn_value', ?, ?) WHERE prompt_id = ?",
        [LAYER, HEAD, prompt_id],
        output="rows",
    )
    assert [abs(r["attribution"]) for r in top] == pytest.approx(sorted((abs(a) for (a,) in every), reverse=True)[:5])
    assert all(r["token2"] <= r["token"] and r["head"] == HEAD for r in top)
    mlp = ("mlp_post_act", None, None)
    out = wh.edges_from("resid_post_embedding", None, None, prompt_id, len(ids) - 1, mlp, k=None).to_pylist()
    n_layers, d_mlp = wh.sql("SELECT n_layers, d_mlp FROM models", output="rows")[0]
    assert len(out) == n_layers * d_mlp and {r["source_token"] for r in out} == {len(ids) - 1}
    result = CliRunner().invoke(
        main, ["edges", "--db", str(stored.path), "--into", f"attn_value:{LAYER}:{HEAD}", "--prompt-id", str(prompt_id)]
    )
    assert result.exit_code == 0 and "token2" in result.output, result.output
    args = ["edges", "--db", str(stored.path), "--from", "resid_post_embedding", "--prompt-id", "0", "-k", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "resid_post_embedding" in result.output, result.output
