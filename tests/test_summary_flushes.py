"""When a run's running summaries are flushed (warehouse/summaries.py FLUSH_TOKENS and FLUSH_SECONDS): at
the first commit with enough stored tokens *and* time since the last flush's commit, so that a fast device
does not flush several times a second; a commit that fails does not count as a flush. The clock is a fake
one the test moves; whether a commit flushes is whether its rows come back (SummaryState, no model)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ingest import summaries as ingest_summaries
from ingest.summaries import SummaryState
from warehouse import summaries


def test_flushes_wait_for_their_seconds_and_a_failed_commit_is_no_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(ingest_summaries, "time", SimpleNamespace(monotonic=lambda: clock.now))
    monkeypatch.setattr(summaries, "FLUSH_TOKENS", 10)
    monkeypatch.setattr(summaries, "FLUSH_SECONDS", 300.0)
    rng = np.random.default_rng(5)
    lengths = torch.tensor([4, 3])
    state = SummaryState(bfloat16=False)

    def commit(at: float, fails: bool = False) -> bool:
        """A batch of 7 tokens committed at `at` seconds; whether its commit flushed."""
        clock.now = at
        batch = {("mlp.post_act", 0): torch.tensor(rng.normal(size=(2, 4, 6)), dtype=torch.float32)}
        measured = state.measure(batch, {}, lengths)
        flushed = measured.rows(np.arange(2)) is not None
        if not fails:
            measured.committed()
        return flushed

    assert not commit(10)  # 7 tokens
    assert not commit(20)  # 14 tokens, 20 s
    assert commit(300)  # 21 tokens, 300 s since the run's start
    assert not commit(400) and not commit(500)  # tokens enough, 200 s since
    assert commit(650, fails=True)  # due, but the commit fails: the last flush stays at 300 s
    assert commit(660)
    assert not commit(900)  # 240 s after the flush at 660
    monkeypatch.setattr(summaries, "FLUSH_SECONDS", 0.0)
    state = SummaryState(bfloat16=False)
    assert not commit(901) and commit(902)  # by tokens alone: 7, then 14
