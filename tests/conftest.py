"""Shared fixtures. No test may reach a model hub: transformers is told it is offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.postgres import pg_catalog, postgres_server  # noqa: E402, F401 - fixtures for shared-catalog tests

# Parameter cases whose test runs in the default suite on its first case (the same code path, a cheaper
# or more central model) and on the rest only with `-m slow`, which .ci/run runs too: a fixture's
# parameters cannot carry marks for one test alone, so the cases are named here. A whole-warehouse sweep
# (every view and macro) runs with `-m slow` on every case.
SLOW_CASES = {
    "tests/test_views.py::test_every_view_and_table_macro_answers_or_says_why": ("gpt2", "llama", "gemma2", "olmo2"),
    "tests/test_empty_answers.py::test_every_view_and_table_macro_answers_or_says_why": ("full", "layer1"),
    "tests/test_summaries.py::test_tied_examples_are_the_earliest_positions_as_a_scan_orders_them": (
        "lake",
        "torch_lake",
    ),
    "tests/test_summaries.py::test_every_summary_equals_the_aggregate_of_its_rows": ("torch_lake",),
    "tests/test_store.py::test_rank_examples_and_node_stats_equal_a_full_pass": ("sampled",),
    "tests/test_fact_files.py::test_a_killed_ingest_leaves_no_partial_prompt_and_no_orphan": ("registered",),
    "tests/test_roundtrip.py::test_every_location_rebuilds_what_the_model_captured": ("llama-gqa",),
    "tests/test_roundtrip.py::test_batch_size_changes_no_row_and_no_value_beyond_the_batching_bound": ("llama-gqa",),
}
# Files whose checks run on several model families through one fixture: GPT-2 in the default suite, the
# other families (grouped-query Llama, Gemma 2, OLMo 2) with `-m slow`, each family's fixture with them.
SLOW_FAMILIES = {
    "tests/test_views.py": ("llama", "gemma2", "olmo2"),
    "tests/test_edges.py": ("llama", "gemma2"),
    "tests/test_attention_edges.py": ("llama", "gemma2"),
    "tests/test_edges_from.py": ("llama", "gemma2"),
}

# Files whose checks share an ingest fixture that costs most of their time (summaries over several lakes,
# the store options' three passes, SAE captures, schema upgrades, the PostgreSQL catalog) or start
# processes and wait on them (interrupts, killed writers, streaming in bounded memory): with `-m slow`.
SLOW_FILES = {
    "tests/test_summaries.py",
    "tests/test_store.py",
    "tests/test_sae_capture.py",
    "tests/test_sae_capped.py",
    "tests/test_sae_edges_from.py",
    "tests/test_migration.py",
    "tests/test_summary_merge.py",
    "tests/test_shared_catalog.py",
    "tests/test_interrupts.py",
    "tests/test_fact_files.py",
    "tests/test_sql_streaming.py",
}


@pytest.fixture(scope="session", autouse=True)
def flushes_by_tokens_alone() -> object:
    """Summaries flush by FLUSH_TOKENS alone in the tests (which set it low to flush often), not also every
    FLUSH_SECONDS: tests/test_summary_flushes.py checks the seconds."""
    from warehouse import summaries

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(summaries, "FLUSH_SECONDS", 0.0)
        yield


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the cases of SLOW_CASES, SLOW_FAMILIES and SLOW_FILES slow before `-m` selects, so they leave
    the default suite (`make test`, about 10 minutes on 2 cores) for `.ci/run`'s second command."""
    for item in items:
        name, _, case = item.nodeid.partition("[")
        case = case.rstrip("]")
        family = case.split("-")[0]
        path = name.split("::")[0]
        if case in SLOW_CASES.get(name, ()) or family in SLOW_FAMILIES.get(path, ()) or path in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
