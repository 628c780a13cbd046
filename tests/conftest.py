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
# parameters cannot carry marks for one test alone, so the cases are named here.
SLOW_CASES = {
    "tests/test_views.py::test_every_view_and_table_macro_answers_or_says_why": ("llama", "gemma2", "olmo2"),
    "tests/test_empty_answers.py::test_every_view_and_table_macro_answers_or_says_why": ("layer1",),
    "tests/test_summaries.py::test_tied_examples_are_the_earliest_positions_as_a_scan_orders_them": ("torch_lake",),
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the cases of SLOW_CASES slow before `-m` selects, so they leave the default suite."""
    for item in items:
        name, _, case = item.nodeid.partition("[")
        if case.rstrip("]") in SLOW_CASES.get(name, ()):
            item.add_marker(pytest.mark.slow)
