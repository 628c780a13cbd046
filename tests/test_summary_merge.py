"""Summaries merged across runs (warehouse/summary_merge.py): prompts ingested as many runs of the same
model and capture settings leave the same summary rows as one run over the same prompts (counts,
non-zeros, extremes, histograms and examples exactly; sums to float64 rounding, their additions grouped
differently), and rank, examples and node-stats answer the same. A run killed midway keeps its own rows
until `actwh compact` merges them, and the prompts they do not cover are still scanned.

The oracles: the same prompts ingested as one run (every value is computed alone, batch size 1, so the
stored values are the same bits), and SQL over the stored rows (tests/test_summaries.py's ROWS).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ingest.summaries import SummaryState
from ingest.worker import IngestOptions, ingest
from queries.api import Warehouse
from queries.notes import notes
from tests.test_summaries import ROWS, _prompts, assert_answered_with_a_scan
from warehouse import db, summaries, summary_merge
from warehouse.lake import ALIAS
from warehouse.maintenance import compact

TINY = {"model": "gpt2-tiny", "progress": False, "batch_size": 1}
KEY = ["dst", "pass_type", "layer", "head", "node_type", "node_index", "first_token"]
EXACT = ["n", "min", "max", "n_nonzero", "hist", "kth_top", "kth_bottom"]
SUMS = ["sum", "sum_sq", "sum_abs"]
# (prompt count of each run): runs of one and of several prompts, one flushed several times on the way
RUNS = (1, 1, 3, 1, 2)


@pytest.fixture(scope="module")
def lakes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same prompts as one run per part of RUNS (merged as each finishes), and as one run."""
    root = tmp_path_factory.mktemp("merge")
    prompts = _prompts(sum(RUNS), 7)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(summaries, "FLUSH_TOKENS", 8)
        start = 0
        for count in RUNS:
            ingest(root / "runs", prompts[start : start + count], IngestOptions(**TINY))
            start += count
        ingest(root / "one", prompts, IngestOptions(**TINY))
    return root / "runs", root / "one"


def _table(path: Path, table: str) -> dict[tuple, dict]:
    with db.connect(path, read_only=True) as con:
        rows = con.sql(f"SELECT * EXCLUDE (run_id) FROM {table}").to_arrow_table().to_pylist()
    key = KEY if table == "node_summaries" else [*KEY, "side", "prompt_id", "token", "token2"]
    keyed = {tuple(row[c] for c in key): row for row in rows}
    assert len(keyed) == len(rows), f"one {table} row per key"
    return keyed


@pytest.mark.slow  # one of the default suite's longest checks: .ci/run runs it
def test_runs_of_one_setting_keep_one_pool_of_rows(lakes: tuple[Path, Path]) -> None:
    runs, _ = lakes
    wh = Warehouse(runs)
    assert wh.sql("SELECT run_id, pool FROM summary_pools ORDER BY run_id", output="rows") == [
        (r, 0) for r in range(len(RUNS))
    ]
    for table in summaries.TABLES:
        assert wh.sql(f"SELECT DISTINCT run_id FROM {table}", output="rows") == [(0,)]


def test_merged_summaries_equal_one_runs_over_the_same_prompts(lakes: tuple[Path, Path]) -> None:
    runs, one = lakes
    merged, single = _table(runs, "node_summaries"), _table(one, "node_summaries")
    assert merged.keys() == single.keys()
    for key, row in single.items():
        got = merged[key]
        assert [got[c] for c in EXACT] == [row[c] for c in EXACT], key
        for column in SUMS:
            assert got[column] == pytest.approx(row[column], rel=1e-12, abs=1e-300), (key, column)
    assert _table(runs, "node_examples") == _table(one, "node_examples")


def test_rank_examples_and_node_stats_answer_as_one_run(lakes: tuple[Path, Path]) -> None:
    runs, one = lakes
    merged, single = Warehouse(runs), Warehouse(one)
    for dst, layer, pass_type in (("mlp_act_times_grad", None, "forward"), ("mlp_post_act", 1, "backward")):
        for skip_first in (0, 1):
            a = merged.rank_nodes(dst, k=8, layer=layer, skip_first=skip_first, pass_type=pass_type)
            b = single.rank_nodes(dst, k=8, layer=layer, skip_first=skip_first, pass_type=pass_type)
            assert a.drop(["value", "mean", "sum", "abs_mean"]) == b.drop(["value", "mean", "sum", "abs_mean"])
            assert a["value"].to_pylist() == pytest.approx(b["value"].to_pylist(), rel=1e-12)
    for dst, layer, node, head in (
        ("mlp_post_act", 1, 5, None),
        ("attn_qk_probs", 1, 2, None),
        ("attn_value", 0, 3, 1),
    ):
        for bottom in (False, True):
            args = (dst, layer, node)
            assert merged.examples(*args, k=15, head=head, bottom=bottom) == single.examples(
                *args, k=15, head=head, bottom=bottom
            )
        a, b = merged.node_summary(dst, layer, node, head), single.node_summary(dst, layer, node, head)
        assert a.histogram == b.histogram
        for column in ("count", "min", "max", "frac_nonzero", "mean", "std"):
            assert a.summary[column].to_pylist() == pytest.approx(b.summary[column].to_pylist(), rel=1e-12)


def test_a_run_of_a_pool_is_answered_by_a_scan_of_its_prompts(lakes: tuple[Path, Path]) -> None:
    wh = Warehouse(lakes[0])
    ranked = wh.rank_nodes("mlp_post_act", by="sum", k=4, layer=0, run=2)
    assert any("merged with those of runs 0, 1, 3, 4" in n for n in notes(ranked))
    oracle = wh.sql(
        f"SELECT sum(value::DOUBLE) AS v FROM ({ROWS}) f WHERE dst = 'mlp_post_act' AND pass_type = 'forward'"
        " AND layer = 0 AND token >= 1 AND run_id = 2 GROUP BY node_index ORDER BY v DESC LIMIT 4"
    )
    assert ranked["value"].to_pylist() == pytest.approx(oracle["v"].to_pylist(), rel=1e-9)


@pytest.mark.slow  # one of the default suite's longest checks: .ci/run runs it
def test_a_killed_run_is_scanned_past_its_summaries_before_and_after_compact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two one-prompt runs share a pool; a third flushed its summaries twice but never ended (no last
    flush): it keeps its own rows and the queries scan the prompts past its summarised_through. `compact`
    merges its rows into the pool; those prompts are still scanned, the answers unchanged. A run of other
    settings (bfloat16) is never merged."""
    path = tmp_path / "lake"
    prompts = _prompts(12, 4)
    for i in range(2):
        ingest(path, prompts[i : i + 1], IngestOptions(**TINY))
    monkeypatch.setattr(summaries, "FLUSH_TOKENS", 20)
    with monkeypatch.context() as patch:
        patch.setattr(SummaryState, "final", lambda self: None)
        ingest(path, prompts[2:11], IngestOptions(**{**TINY, "batch_size": 2}))
    ingest(path, prompts[11:], IngestOptions(**TINY, precision="bfloat16"))
    wh = Warehouse(path)
    through = wh.sql("SELECT summarised_through FROM runs WHERE run_id = 2", output="rows")[0][0]
    assert 2 < through < 10, "some of the killed run's prompts covered, some not"

    def answers() -> list:
        return assert_answered_with_a_scan(wh, 10 - through).to_pylist()

    before = answers()
    assert wh.sql("SELECT DISTINCT run_id FROM node_summaries ORDER BY 1", output="rows") == [(0,), (2,), (3,)]
    compact(path)
    assert wh.sql("SELECT run_id, pool FROM summary_pools ORDER BY 1", output="rows") == [(0, 0), (1, 0), (2, 0)]
    assert wh.sql("SELECT DISTINCT run_id FROM node_summaries ORDER BY 1", output="rows") == [(0,), (3,)]
    after = answers()
    assert [r["node_index"] for r in after] == [r["node_index"] for r in before]
    kept = wh.sql(
        f"SELECT max(n) FROM (SELECT count(*) AS n FROM node_examples GROUP BY run_id, {', '.join(KEY)}, side)"
    )
    assert kept.to_pylist()[0] == {"max(n)": summaries.EXAMPLES_K}, "the superset the killed run flushed, cut to K"


def test_merged_examples_are_each_nodes_k_best_of_the_union(lakes: tuple[Path, Path]) -> None:
    """Per node and side, the pool keeps min(K, rows) examples: the K highest and lowest of every run's."""
    runs, _ = lakes
    wh = Warehouse(runs)
    values = wh.sql(f"SELECT {', '.join(KEY)}, list(value) AS v FROM ({ROWS}) f GROUP BY ALL", output="rows")
    kept: dict[tuple, dict[str, list[float]]] = {}
    for row in wh.sql(f"SELECT {', '.join(KEY)}, side, value FROM node_examples", output="rows"):
        kept.setdefault(tuple(row[:-2]), {"top": [], "bottom": []})[row[-2]].append(row[-1])
    k = summaries.EXAMPLES_K
    assert any(len(row[-1]) > k for row in values), "some node must have more rows than the pool keeps"
    for *key, row_values in values:
        ordered = np.sort(np.asarray(row_values, np.float32))
        assert sorted(kept[tuple(key)]["top"], reverse=True) == ordered[::-1][:k].tolist(), key
        assert sorted(kept[tuple(key)]["bottom"]) == ordered[:k].tolist(), key


def test_runs_with_an_sae_share_a_pool_and_their_rows_are_not_scanned_again(tmp_path: Path) -> None:
    """A pool's members have summaries of an SAE's dsts when its holder's rows do: their prompts are not
    scanned besides (which would count them twice)."""
    from tests.test_sae_bad_input import _sae

    path = tmp_path / "lake"
    sae = str(_sae(tmp_path, "a"))
    for prompt in _prompts(3, 5):
        ingest(path, [prompt], IngestOptions(**TINY, saes=[sae]))
    wh = Warehouse(path)
    assert wh.sql("SELECT run_id, pool FROM summary_pools ORDER BY 1", output="rows") == [(0, 0), (1, 0), (2, 0)]
    for dst in ("online_autoencoder_latent", "online_autoencoder_error"):
        ranked = wh.rank_nodes(dst, by="sum", k=5, layer=0, skip_first=0)
        oracle = wh.sql(
            f"SELECT sum(value::DOUBLE) AS v FROM ({ROWS}) f WHERE dst = ? AND pass_type = 'forward' AND layer = 0"
            " GROUP BY node_index ORDER BY v DESC, node_index LIMIT 5",
            [dst],
        )
        assert ranked["value"].to_pylist() == pytest.approx(oracle["v"].to_pylist(), rel=1e-9), dst
        assert not notes(ranked), dst


def _files(path: Path, table: str) -> int:
    """Live data files of `table` and their delete files, as DuckLake lists them."""
    with db.connect(path, read_only=True) as con:
        return con.execute(
            f"SELECT count(*) + count(delete_file) FROM ducklake_list_files('{ALIAS}', '{table}')"
        ).fetchall()[0][0]


def test_a_pools_files_stay_few_as_runs_merge(
    lakes: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompts of RUNS as one-prompt runs, with a pool allowed 2 files per table before a merge rewrites
    them: after every run each table's files (data and delete files, DuckLake's listing) stay within a
    merge's own additions of that bound, where unbounded they grow by about two a run, and the rows equal
    one run's over the same prompts."""
    monkeypatch.setattr(summary_merge, "MAX_POOL_FILES", 2)
    path = tmp_path / "lake"
    prompts = _prompts(sum(RUNS), 7)
    for i, prompt in enumerate(prompts):
        ingest(path, [prompt], IngestOptions(**TINY))
        for table in summaries.TABLES:
            assert _files(path, table) <= 2 + 3, (i, table)
    merged, single = _table(path, "node_summaries"), _table(lakes[1], "node_summaries")
    assert merged.keys() == single.keys()
    for key, row in single.items():
        assert [merged[key][c] for c in EXACT] == [row[c] for c in EXACT], key
    assert _table(path, "node_examples") == _table(lakes[1], "node_examples")


def test_a_runs_merge_writes_what_enters_the_pool_not_the_pool(
    lakes: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One more one-prompt run joining the pool of RUNS: its commit inserts into node_examples exactly its
    values that enter their node's best K and deletes exactly the pool's rows they push out (SQL over the
    fact rows ranks every value), and replaces the summary rows of its own nodes only, so the merge
    costs what the run's rows cost, not a rewrite of the pool (read from DuckLake's snapshot changes; the
    pool's files are allowed a few more than it has, so that no rewrite is due)."""
    path = tmp_path / "lake"
    shutil.copytree(lakes[0], path)
    monkeypatch.setattr(summary_merge, "MAX_POOL_FILES", max(_files(path, t) for t in summaries.TABLES) + 3)
    last = f"SELECT max(snapshot_id) FROM ducklake_snapshots('{ALIAS}')"
    before = Warehouse(path).sql(last, output="rows")[0][0]
    ingest(path, _prompts(1, 11), IngestOptions(**TINY))
    wh = Warehouse(path)
    after = wh.sql(last, output="rows")[0][0]
    new_run = wh.sql("SELECT max(run_id) FROM runs", output="rows")[0][0]
    example = [*KEY, "side", "prompt_id", "token", "token2"]

    def changed(table: str, kind: str, columns: list[str]) -> set[tuple]:
        rows = wh.sql(
            f"SELECT {', '.join(columns)} FROM ducklake_table_{kind}('{ALIAS}', 'main', '{table}', ?, ?)",
            [before + 1, after],
            output="rows",
        )
        assert len(set(rows)) == len(rows)
        return set(rows)

    order = "CASE WHEN side = 'top' THEN -value ELSE value END, prompt_id, token, token2"
    places = wh.sql(
        f"SELECT {', '.join(example)}, run_id = {new_run} AS new,"
        f" row_number() OVER (PARTITION BY {', '.join(KEY)}, side ORDER BY {order}) AS place,"
        f" row_number() OVER (PARTITION BY {', '.join(KEY)}, side, run_id = {new_run} ORDER BY {order}) AS old_place"
        f" FROM (SELECT *, unnest(['top', 'bottom']) AS side FROM ({ROWS}))",
        output="rows",
    )
    k = summaries.EXAMPLES_K
    entering = {tuple(row[:-3]) for row in places if row[-3] and row[-2] <= k}
    pushed_out = {tuple(row[:-3]) for row in places if not row[-3] and row[-1] <= k < row[-2]}
    assert entering and pushed_out, "the run must change the pool for the test to mean anything"
    assert changed("node_examples", "insertions", example) == entering
    assert changed("node_examples", "deletions", example) == pushed_out
    nodes = wh.sql(f"SELECT DISTINCT {', '.join(KEY)} FROM ({ROWS}) WHERE run_id = {new_run}", output="rows")
    assert changed("node_summaries", "insertions", KEY) == set(nodes)
    assert changed("node_summaries", "deletions", KEY) <= set(nodes)
    pool = wh.sql("SELECT count(*) FROM node_examples", output="rows")[0][0]
    assert len(entering) + len(pushed_out) < pool, "a rewrite would delete and insert the whole pool"
