"""Edges into an MLP neuron (queries/support/60_edges.sql) equal, prompt by prompt and edge by edge, the oracle
built from transformers' modules and autograd (tests/oracle_edges.py), on random-weight GPT-2, grouped-query
Llama (gated MLP) and Gemma 2 (norms after the blocks, soft caps) checkpoints, prompts of mixed lengths in one
warehouse; the in-edge activations add up to the neuron's pre-activation read (the decomposition identity);
`edges_from` gives the same rows as `edges_into` seen from the upstream node; the API and the CLI answer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from cli import main
from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries import QueryError, Warehouse
from tests.hf_checkpoints import Checkpoint, gemma2_checkpoint, gpt2_checkpoint, llama_checkpoint
from tests.oracle_edges import expected_in_edges, read_sum
from warehouse import db
from warehouse.registry import locations_of

# Every kind of write into the residual stream an edge's reader sums over (the oracle's writes must hold
# each, or a missing kind would go unnoticed)
WRITER_KINDS = {"resid_post_embedding", "attn_qk_probs", "attn_residual_bias", "mlp_post_act", "mlp_residual_bias"}

transformers = pytest.importorskip("transformers")

PROMPTS = [
    PromptInput("The capital of France is", " Paris", " London"),
    PromptInput("A", " Rome", " Berlin"),
    PromptInput("When Mary and John went to the store, John gave a drink to", " Mary"),
    PromptInput("Rome and Berlin"),
]
CHECKPOINTS = {"gpt2": gpt2_checkpoint, "llama": llama_checkpoint, "gemma2": gemma2_checkpoint}
# float32 storage against a float64 oracle, relative to the prompt's largest |edge|
REL = 1e-4
LAYER, NEURON = 1, 5


@dataclass
class Stored:
    checkpoint: Checkpoint
    wh: Warehouse
    path: Path
    prompts: list[tuple[int, list[int], int | None, int | None]]  # prompt_id, ids, target, distractor


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    tmp = tmp_path_factory.mktemp(f"edges_{request.param}")
    checkpoint = CHECKPOINTS[request.param](tmp / "checkpoint")
    switches = SimpleNamespace(pre_block_norms=True, post_block_norms=request.param == "gemma2", sae=False)
    path = tmp / "edges.duckdb"
    options = IngestOptions(
        model=str(checkpoint.path), locations=locations_of(switches), progress=False, input_weights="all"
    )
    report = ingest(path, PROMPTS, options)
    assert report.stored == len(PROMPTS), report
    wh = Warehouse(path)
    rows = wh.sql("SELECT prompt_id, target_id, distractor_id FROM prompts ORDER BY prompt_id", output="rows")
    prompts = []
    for prompt_id, target, distractor in rows:
        ids = wh.sql("SELECT token_id FROM tokens WHERE prompt_id = ? ORDER BY token", [prompt_id], output="rows")
        prompts.append((prompt_id, [i for (i,) in ids], target, distractor))
    assert len({len(p[1]) for p in prompts}) == len(prompts)  # mixed lengths, one of them a single token
    yield Stored(checkpoint, wh, path, prompts)


def _edges(wh: Warehouse, macro: str, args: str, prompt_id: int) -> dict[tuple, tuple[float, float]]:
    rows = wh.sql(
        f"SELECT token, source_dst, source_layer, source_head, source_node_index, source_token, activation,"
        f" attribution FROM {macro}({args}) WHERE prompt_id = ?",
        [prompt_id],
        output="rows",
    )
    return {tuple(r[:6]): (r[6], r[7]) for r in rows}


def test_edges_into_an_mlp_neuron_match_the_oracle_prompt_by_prompt(stored: Stored) -> None:
    for prompt_id, ids, target, distractor in stored.prompts:
        got = _edges(stored.wh, "edges_into", f"'mlp_post_act', {LAYER}, {NEURON}", prompt_id)
        want = expected_in_edges(stored.checkpoint.model, ids, target, distractor, LAYER, NEURON)
        assert set(got) == set(want), (set(got) ^ set(want)).pop()
        kinds = {key[1] for key in want}
        assert kinds == WRITER_KINDS
        for column in (0, 1):
            scale = max(abs(v[column]) for v in want.values())
            assert scale > 0
            worst = max(abs(got[k][column] - want[k][column]) for k in want) / scale
            assert worst < REL, (prompt_id, column, worst)


def test_in_edge_activations_add_up_to_the_pre_activation_read(stored: Stored) -> None:
    for prompt_id, ids, _, _ in stored.prompts:
        sums = stored.wh.sql(
            "SELECT token, sum(activation) FROM edges_into('mlp_post_act', ?, ?) WHERE prompt_id = ? GROUP BY token"
            " ORDER BY token",
            [LAYER, NEURON, prompt_id],
            output="rows",
        )
        want = read_sum(stored.checkpoint.model, ids, LAYER, NEURON)
        assert [t for t, _ in sums] == list(range(len(ids)))
        scale = max(1.0, max(abs(w) for w in want))
        for (_, got), expected in zip(sums, want, strict=True):
            assert abs(got - expected) < REL * scale, (prompt_id, got, expected)


def test_edges_into_refuse_what_they_cannot_answer(stored: Stored) -> None:
    for args, words in (
        ("'mlp_pre_act', 1, 0", "not mlp_pre_act"),
        ("'mlp_post_act', 9, 0", "no MLP neuron 9:0"),
        ("'mlp_post_act', 1, 100000", "no MLP neuron 1:100000"),
    ):
        with pytest.raises(QueryError, match=words):
            stored.wh.sql(f"SELECT * FROM edges_into({args})")


def test_edges_from_an_mlp_neuron_are_the_edges_into_its_readers(stored: Stored) -> None:
    for prompt_id, _, _, _ in stored.prompts:
        out = stored.wh.sql(
            "SELECT token, node_index, activation, attribution FROM edges_from('mlp_post_act', 0, 3)"
            " WHERE prompt_id = ? AND layer = 1 AND dst = 'mlp_post_act'",
            [prompt_id],
            output="rows",
        )
        into = _edges(stored.wh, "edges_into", f"'mlp_post_act', 1, {NEURON}", prompt_id)
        mine = {t: (act, atr) for t, j, act, atr in out if j == NEURON}
        want = {k[0]: v for k, v in into.items() if k[1:5] == ("mlp_post_act", 0, None, 3)}
        assert set(mine) == set(want) and mine
        for t, (act, atr) in want.items():
            assert abs(mine[t][0] - act) < 1e-9 * max(1.0, abs(act)) and abs(mine[t][1] - atr) < 1e-9 * max(
                1.0, abs(atr)
            )
        n_mlp = stored.wh.sql("SELECT d_mlp FROM models", output="rows")[0][0]
        assert len(out) == n_mlp * len(mine)  # every neuron of the later layer at every token


def test_the_api_ranks_edges_by_size_in_one_prompt_and_across_prompts(stored: Stored) -> None:
    wh = stored.wh
    prompt_id, ids = stored.prompts[2][:2]
    every = _edges(wh, "edges_into", f"'mlp_post_act', {LAYER}, {NEURON}", prompt_id)
    for by, column in (("attribution", 1), ("activation", 0)):
        top = wh.edges_into("mlp_post_act", LAYER, NEURON, prompt_id=prompt_id, k=7, by=by).to_pylist()
        sizes = sorted((abs(v[column]) for v in every.values()), reverse=True)[:7]
        assert [abs(r[by]) for r in top] == pytest.approx(sizes, rel=1e-12)
    last = len(ids) - 1
    at_token = wh.edges_into("mlp_post_act", LAYER, NEURON, prompt_id=prompt_id, token=last, k=None).to_pylist()
    assert len(at_token) == sum(1 for key in every if key[0] == last)
    # one edge (an earlier neuron into this one) over the whole warehouse: every prompt's tokens, ranked
    source = ("mlp_post_act", 0, 3)
    across = wh.edges_into("mlp_post_act", LAYER, NEURON, source=source, k=None).to_pylist()
    want = {}
    for pid, _, _, _ in stored.prompts:
        for key, value in _edges(wh, "edges_into", f"'mlp_post_act', {LAYER}, {NEURON}", pid).items():
            if key[1:5] == ("mlp_post_act", 0, None, 3):
                want[(pid, key[0])] = value[1]
    # edges_between sums the one edge's factor in its own order, from float32 weights: equal to float32 rounding
    assert {(r["prompt_id"], r["token"]): r["attribution"] for r in across} == pytest.approx(want, rel=1e-6)
    ranked = sorted((abs(v) for v in want.values()), reverse=True)
    assert [abs(r["attribution"]) for r in across] == pytest.approx(ranked, rel=1e-6)
    out = wh.edges_from("mlp_post_act", 0, 3, target=("mlp_post_act", LAYER, NEURON), k=None).to_pylist()
    assert {(r["prompt_id"], r["token"]): r["attribution"] for r in out} == pytest.approx(want, rel=1e-6)


def test_edges_refuse_in_one_line(stored: Stored) -> None:
    wh = stored.wh
    with pytest.raises(QueryError, match="is in the last layer"):
        wh.edges_from("mlp_post_act", 1, 0)
    with pytest.raises(QueryError, match="not attn_qk_probs"):
        wh.edges_into("attn_qk_probs", 1, 0)
    with pytest.raises(db.WarehouseError, match="rank edges by"):
        wh.edges_into("mlp_post_act", 1, 0, by="size")
    with pytest.raises(QueryError, match="does not write before MLP neuron 1:5"):
        wh.edges_into("mlp_post_act", LAYER, NEURON, source=("mlp_post_act", 1, 0))
    with pytest.raises(db.WarehouseError, match="no edge with attn_qk_probs:1:0"):
        wh.edges_into("mlp_post_act", 0, NEURON, source=("attn_qk_probs", 1, 0))


def test_the_edges_command_prints_and_plots(stored: Stored, tmp_path: Path) -> None:
    db_path = str(stored.path)
    plot = tmp_path / "edges.png"
    into = ["edges", "--db", db_path, "--into", f"mlp_post_act:{LAYER}:{NEURON}", "--prompt-id", "0"]
    result = CliRunner().invoke(main, [*into, "-k", "5", "--by", "activation", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 0 and "source_dst" in result.output
    csv = tmp_path / "edges.csv"
    args = ["edges", "--db", db_path, "--from", "mlp_post_act:0:3", "--with", f"mlp_post_act:{LAYER}:{NEURON}"]
    result = CliRunner().invoke(main, [*args, "--token", "1", "--format", "csv", "--output", str(csv)])
    assert result.exit_code == 0, result.output
    lines = csv.read_text().splitlines()
    assert len(lines) == 1 + len([p for p in stored.prompts if len(p[1]) > 1])  # token 1 of each longer prompt
    result = CliRunner().invoke(main, ["edges", "--db", db_path, "--into", "mlp_post_act:1"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "DST:LAYER:NODE" in result.output
