"""The memory budget: batches are sized so that one batch's pass and the captured tensors of the two the
writer still holds fit in --max-memory, each prompt is stored once and in order, and the values equal
those of an ingest with no budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ingest import memory, worker
from ingest.capture import CaptureSpec
from ingest.checkpoints import load_model
from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries.api import Warehouse
from tests.batching import assert_tables_match

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog"]


def _prompts(n: int) -> list[PromptInput]:
    """n distinct prompts of one length (so every batch is padded to the same size)."""
    return [PromptInput(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(6)) + f" {i}") for i in range(n)]


def test_batches_are_split_where_three_would_not_fit_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = _prompts(7)
    loaded = load_model("gpt2-tiny")
    lengths = {len(loaded.tokenizer.encode_ordinary(p.text)) for p in prompts}
    assert len(lengths) == 1
    n_tokens = lengths.pop()
    spec = CaptureSpec.parse(None, None, loaded.model.config)
    two = memory.estimate(loaded.model.config, spec, 2, n_tokens, True)
    three = memory.estimate(loaded.model.config, spec, 3, n_tokens, True)
    budget = two.total + 2 * two.held  # two prompts a batch fit; three do not
    assert three.total + 2 * three.held > budget
    sizes: list[int] = []
    real = worker.run_batch

    def counted(device, loaded, items, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        return real(device, loaded, items, *args, **kwargs)

    monkeypatch.setattr(worker, "run_batch", counted)
    options = IngestOptions(model="gpt2-tiny", progress=False, batch_size=8, max_memory=budget)
    report = ingest(tmp_path / "budget", prompts, options)
    assert sizes == [2, 2, 2, 1] and report.stored == 7
    # two prompts' pass alone fits here, but not beside the captured tensors of the two batches the writer holds
    sizes.clear()
    tight = dataclasses.replace(options, max_memory=(two.total + budget) // 2)
    assert ingest(tmp_path / "tight", prompts[:3], tight).stored == 3
    assert sizes == [1, 1, 1]
    monkeypatch.setattr(worker, "run_batch", real)
    ingest(tmp_path / "free", prompts, IngestOptions(model="gpt2-tiny", progress=False, batch_size=8))
    query = (
        "SELECT p.text, f.* EXCLUDE (prompt_id) FROM facts f JOIN prompts p USING (prompt_id)"
        " ORDER BY f.prompt_id, dst, layer, token, token2, head, node_index"
    )
    split, whole = Warehouse(tmp_path / "budget").sql(query), Warehouse(tmp_path / "free").sql(query)
    assert_tables_match(split, whole, ["forward", "backward"], ["text", "dst", "layer"])
