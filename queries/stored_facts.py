"""Prompts stored without their fact rows (`actwh ingest --store summaries`, or `--facts-every N` for all
but every N-th): their tokens, objective and per-node summaries are in the warehouse, their captured
values are not (prompts.facts_stored is false).

A question about one such prompt (its top nodes, attributions, direct effects, cache) is refused with
one line naming how the prompt was stored; a scan over many prompts answers on those stored with facts
and says so in a note, or, when none in its scope was, says that in one line instead of an empty table.
Dataset questions the summaries answer (rank, examples, node-stats) cover every prompt either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from queries.sources import DstNotAvailable


class FactsNotStored(DstNotAvailable):
    """The question needs fact rows of prompts that were stored without them."""


def _how(store: str | None, facts_every: int | None) -> str:
    if facts_every is not None and facts_every > 1:
        return f"its run kept the facts of every {facts_every}th prompt only (--facts-every {facts_every})"
    return f"its run kept {store or 'summaries'} only (--store {store or 'summaries'})"


def require_facts(con: duckdb.DuckDBPyConnection, prompt_ids: Sequence[int]) -> None:
    """Raise FactsNotStored (one line) when any of the prompts was stored without its facts."""
    if not prompt_ids:
        return
    marks = ", ".join("?" for _ in prompt_ids)
    rows = con.execute(
        "SELECT p.prompt_id, r.store, r.facts_every FROM prompts p JOIN runs r USING (run_id)"
        f" WHERE p.prompt_id IN ({marks}) AND NOT coalesce(p.facts_stored, true) ORDER BY p.prompt_id LIMIT 1",
        list(prompt_ids),
    ).fetchall()
    if rows:
        prompt_id, store, every = rows[0]
        raise FactsNotStored(
            f"prompt {prompt_id} was stored without its facts ({_how(store, every)}): rank, examples and "
            "node-stats answer from its summaries; for this question ingest it again with --store facts,summaries"
        )


def _counts(con: duckdb.DuckDBPyConnection, run_id: int | None) -> tuple[int, int]:
    """(prompts stored with facts, prompts stored without) in the whole warehouse or run `run_id`."""
    scope, params = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
    with_facts, without = con.execute(
        "SELECT count(*) FILTER (WHERE coalesce(facts_stored, true)),"
        f" count(*) FILTER (WHERE NOT coalesce(facts_stored, true)) FROM prompts {scope}",
        params,
    ).fetchall()[0]
    return int(with_facts), int(without)


def sample_note(con: duckdb.DuckDBPyConnection, run_id: int | None = None) -> str | None:
    """The note of a scan over the prompts (of run `run_id`) when some were stored without facts; None when
    every one has its facts."""
    with_facts, without = _counts(con, run_id)
    if not without:
        return None
    return (
        f"a sample: answered by a scan of the {with_facts} prompt(s) stored with facts; {without} were stored"
        " without them (--store summaries, --facts-every)"
    )


def require_some_facts(con: duckdb.DuckDBPyConnection, run_id: int | None = None) -> None:
    """Raise FactsNotStored when prompts (of run `run_id`) are stored but none with its facts: a scan's
    empty answer is then for want of facts, not of values."""
    with_facts, without = _counts(con, run_id)
    if without and not with_facts:
        scope = f"run {run_id}" if run_id is not None else "this warehouse"
        raise FactsNotStored(
            f"{scope} holds no facts, only per-node summaries (its prompts were stored with --store summaries):"
            " rank, examples and node-stats answer from them; a scan needs an ingest with --store facts,summaries"
        )
