"""Per-node summaries: each equals the aggregate over the stored rows it summarises (raw and derived dsts,
with and without the first token, over many batches, two runs, mixed prompt lengths, float32 and
bfloat16), and the rankings, node statistics and examples read from them equal direct SQL over the rows.

The oracle is SQL over `facts` and the derived views (the definition), plus NumPy for histograms; it
shares nothing with the capture-time computation but the documented bin edges.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from cli import main
from ingest import summaries as ingest_summaries
from ingest import summary_batch, summary_kernels
from ingest.prompts import PromptInput
from ingest.summaries import SummaryState
from ingest.worker import IngestOptions, ingest
from queries.api import Warehouse
from queries.format import render
from queries.notes import notes
from warehouse import db, summaries

WORDS = [
    "the",
    "river",
    "ran",
    "past",
    "old",
    "mills",
    "while",
    "seven",
    "quiet",
    "birds",
    "sang",
    "over",
    "green",
    "hills",
    "at",
    "dawn",
]
# Powers of ten from 1e-5 to 1e5 on both sides of zero, as documented in warehouse/schema.sql.
EDGES = [-(10.0**e) for e in range(5, -6, -1)] + [0.0] + [10.0**e for e in range(-5, 6)]
# Every summarised dst's rows, in the node-key shape of the summary tables (layer and head -1 for none).
ROWS = """
SELECT p.run_id, f.dst, f.pass_type, coalesce(f.layer, -1) AS layer, coalesce(f.head, -1) AS head, f.node_type,
       f.node_index, f.token = 0 AS first_token, f.prompt_id, f.token, coalesce(f.token2, -1) AS token2, f.value
FROM (SELECT prompt_id, token, token2, layer, head, node_type::VARCHAR AS node_type, node_index, dst::VARCHAR AS dst,
             'forward' AS pass_type, forward AS value FROM facts WHERE forward IS NOT NULL AND dst <> 'logits'
      UNION ALL
      SELECT prompt_id, token, token2, layer, head, node_type, node_index, dst, 'backward', backward
      FROM facts WHERE backward IS NOT NULL AND dst <> 'logits'
      UNION ALL SELECT prompt_id, token, token2, layer, head, node_type, node_index, dst, pass_type, value
      FROM mlp_act_times_grad
      UNION ALL SELECT prompt_id, token, token2, layer, head, node_type, node_index, dst, pass_type, value
      FROM unflattened_attn_act_times_grad) f
JOIN prompts p USING (prompt_id)
"""
# The compiled figures take columns in blocks of summary_kernels.COLUMNS (512, wider than gpt2-tiny's
# locations): shrunk so that every location spans several blocks, the last one partial.
NARROW = 48
KEY = ["run_id", "dst", "pass_type", "layer", "head", "node_type", "node_index", "first_token"]


def _prompts(n: int, seed: int) -> list[PromptInput]:
    rng = np.random.default_rng(seed)
    return [PromptInput(" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12))))) for _ in range(n)]


def _sae_run(path: Path, compiled: bool) -> Path:
    """One run with two SAEs spliced in (latents stored only where non-zero, errors dense), in bfloat16,
    batches of 4, flushed every 16 tokens: a run before it was stored without SAE summaries (an ingest of
    schema version 4), so queries scan that run's SAE rows and read the second's from its summaries."""
    from tests.test_sae_bad_input import _sae

    saes = [str(_sae(path.parent, "a")), str(_sae(path.parent, "b", hook="blocks.1.hook_resid_post"))]
    common = {"model": "gpt2-tiny", "progress": False, "saes": saes, "precision": "bfloat16"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(summaries, "FLUSH_TOKENS", 16)
        patch.setattr(summary_batch, "COMPILED", compiled)
        patch.setattr(summary_kernels, "COLUMNS", NARROW)
        patch.setattr(ingest_summaries, "summarised_location", lambda loc: loc.name != "logits" and not loc.from_sae)
        ingest(path, _prompts(5, 2), IngestOptions(batch_size=4, **common))
        patch.undo()
        patch.setattr(summaries, "FLUSH_TOKENS", 16)
        patch.setattr(summary_batch, "COMPILED", compiled)
        patch.setattr(summary_kernels, "COLUMNS", NARROW)
        ingest(path, _prompts(11, 3), IngestOptions(batch_size=4, **common))
    return path


def _two_runs(path: Path, compiled: bool) -> Path:
    """Two runs: 20 prompts in batches of one in float32, then 7 in batches of 3 in bfloat16, the running
    summaries flushed every 16 tokens (so several times a run, and once more as it ends). `compiled`: the
    CPU's compiled summary code (ingest/summary_kernels.py), else the torch code a GPU runs."""
    common = {"model": "gpt2-tiny", "progress": False}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(summaries, "FLUSH_TOKENS", 16)
        patch.setattr(summary_batch, "COMPILED", compiled)
        patch.setattr(summary_kernels, "COLUMNS", NARROW)
        ingest(path, _prompts(20, 0), IngestOptions(batch_size=1, **common))
        ingest(path, _prompts(7, 1), IngestOptions(batch_size=3, precision="bfloat16", **common))
    return path


def _warehouse(build: Callable[[Path, bool], Path], compiled: bool) -> Any:
    """A module fixture: the warehouse `build` writes with the compiled summary code or the torch code."""

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return build(tmp_path_factory.mktemp("summaries") / "lake", compiled)

    return fixture


lake = _warehouse(_two_runs, compiled=True)
torch_lake = _warehouse(_two_runs, compiled=False)
sae_lake = _warehouse(_sae_run, compiled=True)
sae_torch_lake = _warehouse(_sae_run, compiled=False)


# The summaries' two code paths, each in warehouses of their own: compiled (the CPU) and torch (a GPU).
BOTH = pytest.mark.parametrize("which", ["lake", "torch_lake", "sae_lake", "sae_torch_lake"])
SAE_DSTS = {"online_autoencoder_latent", "online_autoencoder_error"}


def _rows(path: Path) -> dict[tuple, np.ndarray]:
    with db.connect(path, read_only=True) as con:
        table = con.sql(f"SELECT {', '.join(KEY)}, value FROM ({ROWS})").fetchnumpy()
    keys = list(zip(*(table[c] for c in KEY), strict=True))
    grouped: dict[tuple, list[float]] = {}
    for key, value in zip(keys, table["value"], strict=True):
        grouped.setdefault(tuple(k.item() if hasattr(k, "item") else k for k in key), []).append(float(value))
    return {key: np.asarray(values, np.float32) for key, values in grouped.items()}


@BOTH
def test_every_summary_equals_the_aggregate_of_its_rows(which: str, request: pytest.FixtureRequest) -> None:
    lake = request.getfixturevalue(which)
    expected = _rows(lake)
    with db.connect(lake, read_only=True) as con:
        relation = con.sql(f"SELECT {', '.join(KEY)}, * EXCLUDE ({', '.join(KEY)}) FROM node_summaries")
        columns, stored = relation.columns, relation.fetchall()
    got = {tuple(row[: len(KEY)]): dict(zip(columns, row, strict=True)) for row in stored}
    assert len(got) == len(stored), "one row per run and node key"
    if which.startswith("sae"):  # the first run was stored without SAE summaries
        assert {key[1] for key in got if key[0] == 1} >= SAE_DSTS
        assert not {key[1] for key in got if key[0] == 0} & SAE_DSTS
        expected = {key: v for key, v in expected.items() if key[0] == 1 or key[1] not in SAE_DSTS}
    assert set(got) == set(expected)
    dsts = {key[1] for key in got}
    assert {"mlp_post_act", "mlp_act_times_grad", "unflattened_attn_act_times_grad", "attn_qk_probs"} <= dsts
    assert {key[7] for key in got} == {True, False}
    for key, values in expected.items():
        row = got[key]
        wide = values.astype(np.float64)
        scale = np.abs(wide).sum() + 1e-30
        assert row["n"] == values.size, key
        assert abs(row["sum"] - wide.sum()) <= 1e-6 * scale, key
        assert abs(row["sum_abs"] - np.abs(wide).sum()) <= 1e-6 * scale, key
        assert abs(row["sum_sq"] - (wide * wide).sum()) <= 1e-6 * ((wide * wide).sum() + 1e-30), key
        assert row["min"] == values.min() and row["max"] == values.max(), key
        assert row["n_nonzero"] == np.count_nonzero(values), key
        assert row["hist"] == np.bincount(np.searchsorted(EDGES, values, side="right"), minlength=24).tolist(), key
        # the K-th highest and lowest value, -inf and +inf while there are fewer (what a merge compares with)
        k, ordered = summaries.EXAMPLES_K, np.sort(values)
        kth = (ordered[-k], ordered[k - 1]) if values.size >= k else (-np.inf, np.inf)
        assert (row["kth_top"], row["kth_bottom"]) == kth, key


@BOTH
def test_examples_hold_every_nodes_top_and_bottom_k(which: str, request: pytest.FixtureRequest) -> None:
    lake = request.getfixturevalue(which)
    expected = _rows(lake)
    with db.connect(lake, read_only=True) as con:
        kept = con.sql(f"SELECT {', '.join(KEY)}, side, value FROM node_examples").fetchall()
    by_key: dict[tuple, dict[str, list[float]]] = {}
    for row in kept:
        by_key.setdefault(tuple(row[: len(KEY)]), {"top": [], "bottom": []})[row[len(KEY)]].append(row[-1])
    k = summaries.EXAMPLES_K
    if which.startswith("sae"):  # the first run was stored without SAE summaries
        expected = {key: v for key, v in expected.items() if key[0] == 1 or key[1] not in SAE_DSTS}
        latents = [v.size for key, v in expected.items() if key[1] == "online_autoencoder_latent"]
        assert min(latents) < k < max(latents), "latents with fewer and with more rows than K"
    assert any(len(v) > k for v in expected.values()), "some node must have more rows than it keeps"
    for key, values in expected.items():
        ordered = np.sort(values)
        assert sorted(by_key[key]["top"], reverse=True)[:k] == ordered[::-1][:k].tolist(), key
        assert sorted(by_key[key]["bottom"])[:k] == ordered[:k].tolist(), key
        # a finished run's last flush replaced the examples flushed before with its K best and worst
        assert len(by_key[key]["top"]) == len(by_key[key]["bottom"]) == min(k, values.size), key


RANK_ORACLE = {
    "mean": "avg(value::DOUBLE)",
    "sum": "sum(value::DOUBLE)",
    "max": "max(value)",
    "abs-mean": "avg(abs(value::DOUBLE))",
    "density": "avg((value <> 0)::DOUBLE)",
}


@pytest.mark.parametrize("skip_first", [0, 1, 2])
@pytest.mark.parametrize("by", list(RANK_ORACLE))
def test_rank_equals_a_direct_sql_aggregate(lake: Path, by: str, skip_first: int) -> None:
    wh = Warehouse(lake)
    for dst, layer, run, pass_type in (
        ("mlp_act_times_grad", None, None, "forward"),
        ("mlp_post_act", 1, 1, "forward"),
        ("mlp_post_act", 0, None, "backward"),
        ("attn_qk_probs", 0, 0, "forward"),
    ):
        ranked = wh.rank_nodes(dst, by=by, k=7, layer=layer, run=run, skip_first=skip_first, pass_type=pass_type)
        where = f" AND dst = '{dst}' AND pass_type = '{pass_type}' AND token >= {skip_first}"
        where += "" if layer is None else f" AND layer = {layer}"
        where += "" if run is None else f" AND run_id = {run}"
        oracle = wh.sql(
            f"SELECT layer, node_index, {RANK_ORACLE[by]} AS value FROM ({ROWS}) f WHERE true{where}"
            " GROUP BY layer, node_index ORDER BY value DESC, layer, node_index LIMIT 7"
        ).to_pylist()
        assert ranked["value"].to_pylist() == pytest.approx([r["value"] for r in oracle], rel=1e-6, abs=1e-12)
        values = ranked["value"].to_pylist()
        # without ties the nodes are the same too; equal in exact arithmetic (attention probabilities sum to
        # one per query, so every head has the same mean) counts as a tie
        if all(abs(a - b) > 1e-6 * max(abs(a), abs(b)) for a, b in itertools.pairwise(values)):
            got = list(zip(ranked["layer"].to_pylist(), ranked["node_index"].to_pylist(), strict=True))
            assert got == [(r["layer"], r["node_index"]) for r in oracle]
        scanned = any("scan" in n for n in notes(ranked))
        assert scanned == (skip_first > 1)


@pytest.mark.parametrize("skip_first", [0, 1, 2])
def test_node_summary_and_examples_equal_sql_over_the_rows(lake: Path, skip_first: int) -> None:
    wh = Warehouse(lake)
    for dst, layer, node, pass_type, head in (
        ("mlp_post_act", 1, 5, "backward", None),
        ("attn_qk_probs", 1, 2, "forward", None),
        ("attn_value", 0, 3, "forward", 1),
    ):
        _assert_node_answers(wh, dst, layer, node, pass_type, skip_first, head)


def _assert_node_answers(
    wh: Warehouse, dst: str, layer: int, node: int, pass_type: str, skip_first: int, head: int | None = None
) -> None:
    """node_summary and examples of one node (of one head, for per-head channels) equal NumPy over its
    stored rows."""
    values = wh.sql(
        f"SELECT value FROM ({ROWS}) f WHERE dst = ? AND pass_type = ? AND layer = ? AND node_index = ? AND token >= ?"
        " AND head = ?",
        [dst, pass_type, layer, node, skip_first, -1 if head is None else head],
    )["value"].to_numpy()
    stats = wh.node_summary(dst, layer, node, head=head, pass_type=pass_type, skip_first=skip_first)
    row = stats.summary.to_pylist()[0]
    assert row["count"] == values.size
    assert row["mean"] == pytest.approx(values.astype(np.float64).mean(), rel=1e-9)
    assert row["std"] == pytest.approx(values.astype(np.float64).std(ddof=1), rel=1e-6)
    assert (row["min"], row["max"]) == (values.min(), values.max())
    assert row["frac_nonzero"] == np.count_nonzero(values) / values.size
    hist = np.bincount(np.searchsorted(EDGES, values, side="right"), minlength=24)
    assert stats.histogram["count"].to_pylist() == hist.tolist()
    for bottom in (False, True):
        got = wh.examples(dst, layer, node, k=12, head=head, pass_type=pass_type, bottom=bottom, skip_first=skip_first)
        ordered = np.sort(values) if bottom else np.sort(values)[::-1]
        assert got["value"].to_pylist() == ordered[:12].tolist()
        scan = wh.top_examples(
            dst, layer, node, k=12, head=head, pass_type=pass_type, bottom=bottom, skip_first=skip_first
        )
        if len(set(ordered[:13].tolist())) == 13:  # no ties: the same rows, with the same contexts
            assert got.to_pylist() == scan.to_pylist()


def assert_answered_with_a_scan(wh: Warehouse, scanned: int) -> pa.Table:
    """rank (held to SQL over the rows) and the node answers of a warehouse whose summaries leave
    `scanned` prompts to a scan, which rank's notes must say; returns the ranking."""
    ranked = wh.rank_nodes("mlp_act_times_grad", by="mean", k=5, skip_first=0)
    oracle = wh.sql(
        f"SELECT avg(value::DOUBLE) AS v FROM ({ROWS}) f WHERE dst = 'mlp_act_times_grad'"
        " GROUP BY layer, node_index ORDER BY v DESC LIMIT 5"
    )
    assert ranked["value"].to_pylist() == pytest.approx(oracle["v"].to_pylist(), rel=1e-9)
    assert any(f"scanned {scanned} prompt(s)" in n for n in notes(ranked))
    for skip_first in (0, 1):
        _assert_node_answers(wh, "mlp_post_act", 1, 3, "forward", skip_first)
    return ranked


@pytest.mark.slow
def test_a_run_whose_process_died_is_answered_from_its_summaries_and_a_scan_of_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running summaries were flushed a few times, but the process died before the last flush: the
    queries merge what the summaries cover with a scan of the prompts they do not, and say so."""
    path = tmp_path / "lake"
    monkeypatch.setattr(summaries, "FLUSH_TOKENS", 20)
    monkeypatch.setattr(SummaryState, "final", lambda self: None)
    ingest(path, _prompts(9, 3), IngestOptions(model="gpt2-tiny", progress=False, batch_size=2))
    wh = Warehouse(path)
    through = wh.sql("SELECT summarised_through FROM runs", output="rows")[0][0]
    assert through is not None and 0 < through < 8, "some prompts covered, some not"
    assert_answered_with_a_scan(wh, 8 - through)


def test_skip_first_leaves_out_position_zero_in_the_node_table(lake: Path) -> None:
    wh = Warehouse(lake)
    kept = wh.top_nodes(3, "mlp_act_times_grad", k=50)
    skipped = wh.top_nodes(3, "mlp_act_times_grad", k=50, skip_first=1)
    assert 0 in kept["token"].to_pylist()
    assert 0 not in skipped["token"].to_pylist()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rank", "--dst", "mlp_post_acts"], "unknown dst 'mlp_post_acts'"),
        (["rank", "--dst", "mlp_post_act", "--layer", "9"], "layer 9 does not exist"),
        (["rank", "--dst", "mlp_post_act", "-k", "0"], "k must be at least 1"),
        (["rank", "--dst", "mlp_post_act", "--run", "7"], "no run 7"),
        (["rank", "--dst", "mlp_post_act", "--by", "median"], "unknown --by 'median'"),
        (["rank", "--dst", "resid_post_embedding", "--layer", "0"], "has no layers"),
        (["examples", "--dst", "mlp_post_act", "--layer", "5", "--node", "1"], "layer 5 does not exist"),
        (["node-stats", "--dst", "mlp_post_act", "--layer", "0", "--node", "1", "--run", "4"], "no run 4"),
        (["node-stats", "--dst", "mlp_post_act", "--layer", "0", "--node", "1", "--skip-first", "-1"], "skip-first"),
        (["examples", "--dst", "mlp_post_act", "--node", "3"], "mlp_post_act has layers: give --layer"),
        (["node-stats", "--dst", "mlp_post_act", "--node", "3"], "mlp_post_act has layers: give --layer"),
        (["node-stats", "--dst", "mlp_post_act", "--layer", "0", "--node", "9999"], "has no node 9999 at layer 0"),
        (["examples", "--dst", "mlp_post_act", "--layer", "0", "--node", "-2"], "--node must be 0 or more"),
        (["rank", "--dst", "online_autoencoder_latent"], "stores no online_autoencoder_latent"),
    ],
)
def test_bad_input_gets_one_line(lake: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, [*args, "--db", str(lake)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_rank_command_lists_the_top_nodes(lake: Path) -> None:
    result = CliRunner().invoke(main, ["rank", "--dst", "mlp_act_times_grad", "-k", "3", "--db", str(lake)])
    assert result.exit_code == 0, result.output
    assert "(3 rows)" in result.output


@pytest.mark.slow  # one of the default suite's longest checks: .ci/run runs it
def test_the_reading_commands_give_the_apis_answers_with_every_option(lake: Path, tmp_path: Path) -> None:
    """rank, examples and node-stats on the command line, each option at a value other than its default,
    answer as the API does (which the tests above hold to SQL over the rows); --pass backward answers
    are the gradients', not the forward values'."""
    wh = Warehouse(lake)

    def cli(*args: str) -> list[dict]:
        result = CliRunner().invoke(main, [*args, "--db", str(lake), "--format", "json"])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.output.splitlines()]

    rank = ("rank", "--dst", "mlp_post_act", "--by", "abs-mean", "-k", "5", "--layer", "1", "--run", "1")
    node = ("--dst", "mlp_post_act", "--layer", "1", "--node", "5", "--run", "0", "--skip-first", "0")
    answers = {}
    for pass_type in ("forward", "backward"):
        ranked = cli(*rank, "--skip-first", "0", "--pass", pass_type)
        assert ranked == wh.rank_nodes("mlp_post_act", "abs-mean", 5, 1, 1, 0, pass_type).to_pylist()
        examples = cli("examples", *node, "-k", "4", "--context", "2", "--bottom", "--pass", pass_type)
        assert examples == wh.examples("mlp_post_act", 1, 5, 4, 2, None, 0, pass_type, True, 0).to_pylist()
        stats = wh.node_summary("mlp_post_act", 1, 5, None, 0, pass_type, 0)
        assert cli("node-stats", *node, "--pass", pass_type) == stats.summary.to_pylist()
        assert cli("node-stats", *node, "--pass", pass_type, "--histogram") == stats.histogram.to_pylist()
        answers[pass_type] = (ranked, examples, stats.summary.to_pylist())
    assert all(f != b for f, b in zip(answers["forward"], answers["backward"], strict=True))
    head = ("--dst", "attn_value", "--layer", "0", "--node", "3", "--head", "1")
    assert cli("examples", *head, "-k", "3") == wh.examples("attn_value", 0, 3, 3, head=1).to_pylist()
    assert cli("node-stats", *head) == wh.node_summary("attn_value", 0, 3, 1).summary.to_pylist()
    assert cli("node-stats", *head, "--histogram") != cli("node-stats", *head[:-2], "--head", "0", "--histogram")
    out = tmp_path / "ranked.csv"
    result = CliRunner().invoke(main, [*rank, "--db", str(lake), "--format", "csv", "--output", str(out)])
    assert result.exit_code == 0 and result.output.startswith("wrote 5 rows"), result.output
    assert out.read_text() == render(wh.rank_nodes("mlp_post_act", "abs-mean", 5, 1, 1), "csv")


def test_a_run_stored_without_summaries_is_answered_by_a_scan(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    ingest(path, _prompts(3, 2), IngestOptions(model="gpt2-tiny", progress=False, store=("facts",)))
    wh = Warehouse(path)
    assert wh.sql("SELECT count(*) AS n FROM node_summaries")["n"].to_pylist() == [0]
    ranked = wh.rank_nodes("mlp_post_act", by="sum", k=3, skip_first=1)
    assert any("summaries do not cover" in n for n in notes(ranked))
    oracle = wh.sql(
        "SELECT sum(value::DOUBLE) AS v FROM activations WHERE dst = 'mlp_post_act' AND pass_type = 'forward'"
        " AND token >= 1 GROUP BY layer, node_index ORDER BY v DESC LIMIT 3"
    )
    assert ranked["value"].to_pylist() == pytest.approx(oracle["v"].to_pylist(), rel=1e-9)
    examples = wh.examples("mlp_post_act", 1, 4, k=2, skip_first=0)
    assert examples.num_rows == 2 and any("scan" in n for n in notes(examples))


@pytest.mark.parametrize("compiled", [True, False])
def test_a_commit_that_fails_or_reruns_counts_its_batch_once(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch folded into the running summaries by a commit that then fails is taken out again: rerun
    (after a conflict) it counts once; never committed, the run's last flush leaves it out."""
    monkeypatch.setattr(summary_batch, "COMPILED", compiled)
    monkeypatch.setattr(summaries, "FLUSH_TOKENS", 1)  # every commit flushes (and marks examples stored)
    rng = np.random.default_rng(3)
    lengths = torch.tensor([6, 4, 5])
    batches = [{("mlp.post_act", 0): torch.tensor(rng.normal(size=(3, 6, 8)), dtype=torch.float32)} for _ in range(6)]

    def flushed(steps: list[tuple[int, str]]) -> tuple[list, list]:
        state = SummaryState(bfloat16=False)
        measured: dict[int, ingest_summaries.BatchSummary] = {}
        for i, step in steps:
            if i not in measured:
                measured[i] = state.measure(batches[i], {}, lengths)
            measured[i].rows(np.arange(3 * i, 3 * i + 3))
            if step == "commit":
                measured[i].committed()
        stats, examples = state.final().rows(np.empty(0, np.int64))
        return sorted(map(repr, stats.to_pylist())), sorted(map(repr, examples.to_pylist()))

    # 6 batches of 3 prompts: nodes reach K = 20 examples after the second, so later folds change rows in place
    once = flushed([(i, "commit") for i in range(6)])
    assert (
        flushed([(0, "commit"), (1, "commit"), (2, "commit"), (3, "fail"), (3, "commit"), (4, "commit"), (5, "commit")])
        == once
    )
    without = flushed([(i, "commit") for i in (0, 1, 2, 3, 4)])
    assert flushed([(i, "commit") for i in (0, 1, 2, 3, 4)] + [(5, "fail")]) == without
    assert without != once


@pytest.mark.parametrize("dst", sorted(SAE_DSTS))
def test_sae_questions_merge_summaries_with_a_scan_of_runs_stored_without_them(sae_lake: Path, dst: str) -> None:
    """Rank and node answers for an SAE's dsts equal SQL over every stored row: the second run's from its
    summaries, the first's (stored before SAE summaries) by a scan, which the note counts."""
    wh = Warehouse(sae_lake)
    ranked = wh.rank_nodes(dst, by="mean", k=5, layer=1)
    oracle = wh.sql(
        f"SELECT node_index, avg(value::DOUBLE) AS value FROM ({ROWS}) f WHERE dst = ? AND pass_type = 'forward'"
        " AND layer = 1 AND token >= 1 GROUP BY node_index ORDER BY value DESC, node_index LIMIT 5",
        [dst],
    )
    assert ranked["value"].to_pylist() == pytest.approx(oracle["value"].to_pylist(), rel=1e-9)
    assert any("also scanned 5 prompt(s)" in n for n in notes(ranked))
    node = ranked["node_index"].to_pylist()[0]
    _assert_node_answers(wh, dst, 1, node, "backward", 1)
    assert wh.rank_nodes(dst, k=5, layer=1, run=1)["value"].to_pylist() == pytest.approx(
        wh.sql(
            f"SELECT avg(value::DOUBLE) AS v FROM ({ROWS}) f WHERE dst = ? AND pass_type = 'forward' AND layer = 1"
            " AND token >= 1 AND run_id = 1 GROUP BY node_index ORDER BY v DESC, node_index LIMIT 5",
            [dst],
        )["v"].to_pylist(),
        rel=1e-9,
    )


@pytest.mark.parametrize("which", ["lake", "torch_lake"])
def test_tied_examples_are_the_earliest_positions_as_a_scan_orders_them(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Of equal values (gradients that are exactly zero) the summaries keep the earliest positions, so the
    examples they give are the rows a scan orders first (value, then prompt, token)."""
    wh = Warehouse(request.getfixturevalue(which))
    tied = 0
    with wh.session():
        for node in range(0, 128, 3):
            for bottom in (False, True):
                args = ("mlp_post_act", 1, node)
                kept = wh.examples(*args, k=20, pass_type="backward", bottom=bottom, skip_first=0)
                scan = wh.top_examples(*args, k=20, pass_type="backward", bottom=bottom, skip_first=0)
                assert kept.select(["prompt_id", "token", "value"]) == scan.select(["prompt_id", "token", "value"])
                values = scan["value"].to_pylist()
                tied += len(values) != len(set(values))
    assert tied, "no node had tied examples: the test shows nothing"


@pytest.mark.parametrize("compiled", [True, False])
def test_of_tied_values_the_earliest_positions_are_kept(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values on three levels only, so each node's best K end inside a run of equal values: the examples
    kept are the earliest (prompt, token) of them, the order the queries and a scan use."""
    monkeypatch.setattr(summary_batch, "COMPILED", compiled)
    rng = np.random.default_rng(5)
    lengths = torch.tensor([6, 4, 5])
    arrays = [rng.integers(0, 3, size=(3, 6, 8)).astype(np.float32) for _ in range(6)]
    state = SummaryState(bfloat16=False)
    for i, array in enumerate(arrays):
        batch = state.measure({("mlp.post_act", 0): torch.from_numpy(array)}, {}, lengths)
        batch.rows(np.arange(3 * i, 3 * i + 3))
        batch.committed()
    _, examples = state.final().rows(np.empty(0, np.int64))
    k = summaries.EXAMPLES_K
    for node in range(8):
        for side, sign in (("top", -1), ("bottom", 1)):
            rows = [
                (sign * float(array[b, t, node]), 3 * i + b, t)
                for i, array in enumerate(arrays)
                for b, n in enumerate(lengths.tolist())
                for t in range(1, n)
            ]
            expected = [(p, t) for _, p, t in sorted(rows)[:k]]
            got = [
                (r["prompt_id"], r["token"])
                for r in examples.to_pylist()
                if r["node_index"] == node and r["side"] == side and not r["first_token"]
            ]
            assert sorted(got) == sorted(expected), (node, side)


def test_a_derived_dst_without_layers_is_asked_without_layer(lake: Path) -> None:
    """`loss` (one value per prompt, no layer) answers node-stats and examples with no --layer, as SQL."""
    wh = Warehouse(lake)
    values = wh.sql("SELECT value FROM loss WHERE token >= 1")["value"].to_numpy()
    row = wh.node_summary("loss", None, 0).summary.to_pylist()[0]
    assert row["count"] == values.size > 0
    assert row["mean"] == pytest.approx(values.astype(np.float64).mean(), rel=1e-9)
    assert wh.examples("loss", None, 0, k=3)["value"].to_pylist() == np.sort(values)[::-1][:3].tolist()
