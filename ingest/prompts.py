"""Prompt sources: command-line strings and files, streamed so memory does not grow with the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PromptInput:
    text: str
    target: str | None = None
    distractor: str | None = None
    line: int | None = None  # 1-based line in the prompt file, for messages


@dataclass(frozen=True)
class Skipped:
    line: int | None
    text: str
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "prompt": self.text[:80], "reason": self.reason}

    def describe(self) -> str:
        where = f"line {self.line}" if self.line is not None else repr(self.text[:40])
        return f"skipped {where}: {self.reason}"


def read_prompt_file(
    path: Path, target: str | None = None, distractor: str | None = None
) -> Iterator[PromptInput | Skipped]:
    """One prompt per line of text, or JSON objects with `prompt` (and optional `target`, `distractor`).

    A line that starts with '{' is JSON whatever the file is called; blank text lines are ignored. Lines
    that cannot be used come out as Skipped, so one bad line never stops a long ingest.
    """
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            if not line.lstrip().startswith("{"):
                yield PromptInput(line, target, distractor, number)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Skipped(number, line, f"malformed JSON ({exc.msg} at column {exc.colno})")
                continue
            text = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(text, str):
                yield Skipped(number, line, "JSON line has no string field 'prompt'")
                continue
            if not text:
                yield Skipped(number, line, "empty prompt")
                continue
            yield PromptInput(text, record.get("target", target), record.get("distractor", distractor), number)
