"""What an ingest keeps (--store, --facts-every): a summaries-only pass answers rank, examples and
node-stats exactly as a full pass over the same prompts does (and as SQL over that pass's facts); a
sampled pass stores the facts of exactly every N-th prompt, equal to the full pass's; a question that
needs the facts of a prompt stored without them is refused in one line; the resume key tells a prompt
stored without facts from one stored with them; a killed summaries-only run leaves no prompt that
holds nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from ingest.prompts import PromptInput
from ingest.summaries import SummaryState
from ingest.worker import IngestOptions, ingest
from queries.api import Warehouse
from queries.notes import notes
from queries.stored_facts import FactsNotStored
from tests.test_summaries import WORDS
from warehouse import db, summaries
from warehouse.writer import LakeWriter

BASE = IngestOptions(model="gpt2-tiny", progress=False, batch_size=3)
N_PROMPTS = 10
EVERY = 3


def _prompts(n: int = N_PROMPTS, seed: int = 5) -> list[PromptInput]:
    rng = np.random.default_rng(seed)
    return [PromptInput(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 10))))) for _ in range(n)]


@pytest.fixture(scope="module")
def lakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same prompts ingested three ways, the running summaries flushed every 16 tokens (so several
    times a run): with facts, summaries only, and the facts of every third prompt."""
    root = tmp_path_factory.mktemp("store")
    paths = {name: root / name for name in ("full", "summaries", "sampled")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(summaries, "FLUSH_TOKENS", 16)
        ingest(paths["full"], _prompts(), BASE)
        ingest(paths["summaries"], _prompts(), dataclasses.replace(BASE, store=("summaries",)))
        ingest(paths["sampled"], _prompts(), dataclasses.replace(BASE, facts_every=EVERY))
    return paths


QUESTIONS = [  # dst, layer, node, pass, head
    ("mlp_post_act", 1, 5, "backward", None),
    ("attn_qk_probs", 0, 2, "forward", None),
    ("attn_value", 1, 3, "forward", 1),
    ("mlp_act_times_grad", 0, 7, "forward", None),
]


@pytest.mark.parametrize("which", ["summaries", "sampled"])
def test_rank_examples_and_node_stats_equal_a_full_pass(lakes: dict[str, Path], which: str) -> None:
    full, other = Warehouse(lakes["full"]), Warehouse(lakes[which])
    for dst, layer, node, pass_type, head in QUESTIONS:
        for skip_first in (0, 1):
            for by in ("mean", "max", "abs-mean", "density"):
                want = full.rank_nodes(dst, by=by, k=7, skip_first=skip_first, pass_type=pass_type)
                got = other.rank_nodes(dst, by=by, k=7, skip_first=skip_first, pass_type=pass_type)
                assert got.to_pylist() == want.to_pylist() and not notes(got), (dst, by, skip_first)
            want_stats = full.node_summary(dst, layer, node, head=head, pass_type=pass_type, skip_first=skip_first)
            got_stats = other.node_summary(dst, layer, node, head=head, pass_type=pass_type, skip_first=skip_first)
            assert got_stats.summary.to_pylist() == want_stats.summary.to_pylist()
            assert got_stats.histogram.to_pylist() == want_stats.histogram.to_pylist()
            for bottom in (False, True):
                args = {"k": 12, "head": head, "pass_type": pass_type, "bottom": bottom, "skip_first": skip_first}
                assert (
                    other.examples(dst, layer, node, **args).to_pylist()
                    == full.examples(dst, layer, node, **args).to_pylist()
                )
    # and against SQL over the full pass's facts (the definition), for one ranking
    oracle = full.sql(
        "SELECT avg(value::DOUBLE) AS v FROM activations WHERE dst = 'mlp_post_act' AND pass_type = 'forward'"
        " AND token >= 1 GROUP BY layer, node_index ORDER BY v DESC LIMIT 5"
    )
    ranked = other.rank_nodes("mlp_post_act", by="mean", k=5)
    assert ranked["value"].to_pylist() == pytest.approx(oracle["v"].to_pylist(), rel=1e-9)


def test_a_summaries_only_pass_stores_no_fact_rows_and_says_what_it_kept(lakes: dict[str, Path]) -> None:
    wh, full = Warehouse(lakes["summaries"]), Warehouse(lakes["full"])
    assert wh.sql("SELECT count(*) AS n FROM facts")["n"].to_pylist() == [0]
    assert wh.sql("SELECT store, facts_every FROM runs", output="rows") == [("summaries", 1)]
    assert wh.sql("SELECT bool_or(facts_stored) AS any FROM prompts")["any"].to_pylist() == [False]
    for table in ("prompts", "tokens"):  # everything but the facts, as the full pass stores it
        columns = "* EXCLUDE (facts_stored, prompt_key)" if table == "prompts" else "*"
        query = f"SELECT {columns} FROM {table} ORDER BY ALL"
        assert wh.sql(query).to_pylist() == full.sql(query).to_pylist()


def test_facts_every_n_stores_the_facts_of_exactly_every_nth_prompt(lakes: dict[str, Path]) -> None:
    wh, full = Warehouse(lakes["sampled"]), Warehouse(lakes["full"])
    kept = list(range(0, N_PROMPTS, EVERY))
    assert wh.sql("SELECT prompt_id FROM prompts WHERE facts_stored ORDER BY 1")["prompt_id"].to_pylist() == kept
    assert wh.sql("SELECT DISTINCT prompt_id FROM facts ORDER BY 1")["prompt_id"].to_pylist() == kept
    marks = ", ".join(map(str, kept))
    query = f"SELECT * FROM facts WHERE prompt_id IN ({marks}) ORDER BY ALL"
    assert wh.sql(query).to_pylist() == full.sql(query).to_pylist()
    assert wh.sql("SELECT store, facts_every FROM runs", output="rows") == [("facts,summaries", EVERY)]
    # a scan answers on the sample and says so
    scanned = wh.top_examples("mlp_post_act", 1, 4, k=3)
    assert any(f"scan of the {len(kept)} prompt(s) stored with facts" in n for n in notes(scanned))
    assert set(scanned["prompt_id"].to_pylist()) <= set(kept)


def test_a_question_that_needs_facts_not_stored_is_refused_in_one_line(lakes: dict[str, Path]) -> None:
    summaries_only, sampled = Warehouse(lakes["summaries"]), Warehouse(lakes["sampled"])
    for wh, prompt_id in ((summaries_only, 1), (sampled, 1)):
        for question, args in (
            (wh.top_nodes, (prompt_id,)),
            (wh.token_attribution, (prompt_id,)),
            (wh.cache, (prompt_id,)),
            (wh.compare, (prompt_id, 0, "mlp_post_act")),
            (wh.direct_effects, (" the", None, prompt_id)),
        ):
            with pytest.raises(FactsNotStored, match=f"prompt {prompt_id} was stored without its facts") as caught:
                question(*args)
            assert "\n" not in str(caught.value)
    assert sampled.top_nodes(0).num_rows  # a prompt whose facts were kept answers
    with pytest.raises(FactsNotStored, match="holds no facts, only per-node summaries"):
        summaries_only.top_examples("mlp_post_act", 1, 4)
    for command in (["top", "--prompt-id", "1"], ["prompt", "--prompt-id", "1"]):
        result = CliRunner().invoke(main, [*command, "--db", str(lakes["summaries"])])
        assert result.exit_code != 0 and "was stored without its facts" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "facts,rows"], "--store: unknown part 'rows'"),
        (["--store", ","], "--store: nothing named"),
        (["--store", "summaries", "--facts-every", "2"], "--facts-every samples the facts"),
        (["--store", "facts", "--facts-every", "2"], "the others need summaries"),
    ],
)
def test_store_options_that_cannot_hold_are_refused_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        main, ["ingest", "--db", str(tmp_path / "w"), "--model", "gpt2-tiny", "--prompt", "a"] + args
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "w").exists(), "refused before anything was written"


def test_a_prompt_stored_without_facts_is_not_stored_for_an_ingest_that_keeps_them(tmp_path: Path) -> None:
    path, prompts = tmp_path / "w", _prompts(4)
    only = dataclasses.replace(BASE, store=("summaries",))
    assert ingest(path, prompts, only).stored == 4
    assert ingest(path, prompts, only).already_stored == 4
    assert ingest(path, prompts, BASE).stored == 4, "a full pass took prompts without facts as stored"
    assert ingest(path, prompts, only).already_stored == 4, "the facts stored count for a summaries-only pass"
    assert ingest(path, prompts, dataclasses.replace(BASE, facts_every=2)).already_stored == 4
    assert Warehouse(path).sql("SELECT count(*) AS n FROM prompts")["n"].to_pylist() == [8]


def test_a_killed_summaries_only_run_keeps_only_what_its_summaries_cover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process died after some flushes of its summaries (the run still 'running', its last flush never
    made): the next writer drops the prompts no summary covers, and a rerun stores them again."""
    path, prompts = tmp_path / "w", _prompts(9, 3)
    only = dataclasses.replace(BASE, store=("summaries",), batch_size=2)
    with monkeypatch.context() as patch:
        patch.setattr(summaries, "FLUSH_TOKENS", 20)
        patch.setattr(SummaryState, "final", lambda self: None)
        ingest(path, prompts, only)
    with db.connect(path) as con:  # as the dead process left it
        con.execute("UPDATE runs SET status = 'running', message = NULL")
        through = con.execute("SELECT summarised_through FROM runs").fetchall()[0][0]
    assert through is not None and 0 < through < 8, "some prompts covered, some not"
    LakeWriter(path).close()
    wh = Warehouse(path)
    assert wh.sql("SELECT max(prompt_id) AS m, count(*) AS n FROM prompts", output="rows") == [(through, through + 1)]
    assert wh.sql("SELECT count(*) AS n FROM tokens WHERE prompt_id > ?", [through])["n"].to_pylist() == [0]
    assert wh.sql("SELECT status FROM runs")["status"].to_pylist() == ["interrupted"]
    rerun = ingest(path, prompts, only)
    assert (rerun.stored, rerun.already_stored) == (8 - through, through + 1)
