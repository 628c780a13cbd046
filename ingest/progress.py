"""The ingest's progress: a bar on the terminal (prompts, with tokens and tokens/s beside them), and with
`--log-file` one line per interval appended to a file, for a long pass nobody watches (run under nohup, a
scheduler, or several workers, each of which appends its own lines: one write per line, O_APPEND).

A log line, in UTC:

    2026-12-07T05:01:02Z run 7: 1,200 prompts, 24,000 tokens in 250.1 s, 96.0 tokens/s (98.2 over the last 60.0 s)

and a last line when the run ends, saying how (completed, interrupted, failed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG_EVERY_S = 60.0  # seconds between two log lines while the run goes on


class Progress:
    """Counts the prompts and tokens a run has passed to its writer and shows them.

    `bar`: draw a tqdm bar on stderr. `log_file`: append a line every LOG_EVERY_S seconds and at `close`.
    `clock`: seconds (monotonic), replaceable in tests. Raises OSError when the log file cannot be opened."""

    def __init__(
        self, run_id: int, bar: bool, log_file: Path | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.run_id, self.prompts, self.tokens = run_id, 0, 0
        self._clock = clock
        self._start = self._last_at = clock()
        self._last_tokens = 0
        self._log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log_file else None
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(unit="prompt", desc="ingest", leave=False)

    def update(self, prompts: int, tokens: int) -> None:
        """`prompts` more prompts of `tokens` tokens in all went to the writer."""
        self.prompts += prompts
        self.tokens += tokens
        now = self._clock()
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.tokens:,} tokens, {self._rate(self.tokens, now - self._start)}")
            self._bar.update(prompts)
        if self._log is not None and now - self._last_at >= LOG_EVERY_S:
            recent = f" ({self._rate(self.tokens - self._last_tokens, now - self._last_at)} over the last "
            _append(self._log, f"{self._counts(now)}{recent}{now - self._last_at:.1f} s)")
            self._last_at, self._last_tokens = now, self.tokens

    def close(self, status: str) -> None:
        """Take the bar down and log the last line: the totals and how the run ended (`status`)."""
        if self._bar is not None:
            self._bar.close()
        if self._log is not None:
            _append(self._log, f"{self._counts(self._clock())}; {status}")
            os.close(self._log)
            self._log = None

    def _counts(self, now: float) -> str:
        elapsed = now - self._start
        return (
            f"run {self.run_id}: {self.prompts:,} prompts, {self.tokens:,} tokens in {elapsed:.1f} s, "
            f"{self._rate(self.tokens, elapsed)}"
        )

    @staticmethod
    def _rate(tokens: int, seconds: float) -> str:
        return f"{tokens / seconds:.1f} tokens/s" if seconds > 0 else "- tokens/s"


def _append(fd: int, line: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    os.write(fd, f"{stamp} {line}\n".encode())
