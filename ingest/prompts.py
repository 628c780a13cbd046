"""Prompt sources: command-line strings and files, streamed so memory does not grow with the file."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import PromptFileError


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
        return {"line": self.line, "prompt": shown(self.text[:80]), "reason": self.reason}

    def describe(self) -> str:
        where = f"line {self.line}" if self.line is not None else repr(self.text[:40])
        return f"skipped {where}: {self.reason}"


def text_problem(text: str, read_as_bytes: bool = True) -> str | None:
    """What in `text` is not Unicode text, or None when all of it is: a byte that was not UTF-8, read with
    Python's 'surrogateescape' (as command-line arguments and prompt file lines are), or a lone surrogate
    (half of a UTF-16 pair, as a JSON \\u escape can give; every one is, unless `read_as_bytes`). Names
    the first, and where it is."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        code, at = ord(text[exc.start]), exc.start + 1
    if read_as_bytes and 0xDC80 <= code <= 0xDCFF:
        return f"not UTF-8 (byte 0x{code - 0xDC00:02x} at character {at})"
    return f"a lone surrogate U+{code:04X} at character {at}, half of a character"


def shown(text: str) -> str:
    """`text` printable and storable whatever it holds: characters that are not text as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


FIELDS = ("prompt", "target", "distractor")
BOM = "\ufeff"
# Byte-order marks of the encodings a text editor may save as instead of UTF-8 (UTF-32's first: it starts
# with UTF-16's).
_WIDE_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}


def read_prompt_file(
    path: Path, target: str | None = None, distractor: str | None = None
) -> Iterator[PromptInput | Skipped]:
    """One prompt per line of text, or JSON objects with `prompt` (and optional `target`, `distractor`).

    The file is UTF-8, with Unix or Windows line ends, and a byte-order mark at its start (or at a line's
    start, where files were joined) is not part of a prompt. A line that starts with '{' is JSON whatever
    the file is called; blank text lines are ignored. Lines that cannot be used (bytes that are not UTF-8,
    malformed JSON, a field that is not a string or not one of FIELDS) come out as Skipped, so one bad line
    never stops a long ingest. A file saved as UTF-16 or UTF-32 is refused at once (PromptFileError), before
    anything is read: none of its lines would be text.
    """
    with open(path, "rb") as handle:
        head = handle.read(4096)
    for bom, encoding in _WIDE_BOMS.items():
        if head.startswith(bom) and b"\x00" in head:
            raise PromptFileError(
                f"{path} is {encoding} text; prompt files are UTF-8: convert it, e.g. "
                f"iconv -f {encoding} -t UTF-8 {path} > prompts-utf8.txt"
            )
    return _prompt_lines(path, target, distractor)


def _prompt_lines(path: Path, target: str | None, distractor: str | None) -> Iterator[PromptInput | Skipped]:
    # 'surrogateescape': a byte that is not UTF-8 becomes a character text_problem names, on its line only
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\n").removeprefix(BOM)
            if not line.strip():
                continue
            problem = text_problem(line)
            if problem is not None:
                yield Skipped(number, shown(line), f"{problem}: save the file as UTF-8")
            elif line.lstrip().startswith("{"):
                yield _json_line(number, line, target, distractor)
            else:
                yield PromptInput(line, target, distractor, number)


def _json_line(number: int, line: str, target: str | None, distractor: str | None) -> PromptInput | Skipped:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return Skipped(number, line, f"malformed JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(record, dict):
        return Skipped(number, line, "a JSON line must be an object with a string field 'prompt'")
    unknown = [key for key in record if key not in FIELDS]
    if unknown:
        return Skipped(number, line, f"unknown field {unknown[0]!r}: a JSON line takes {', '.join(FIELDS)}")
    text = record.get("prompt")
    if not isinstance(text, str):
        return Skipped(number, line, "JSON line has no string field 'prompt'")
    if not text:
        return Skipped(number, line, "empty prompt")
    values = {"target": target, "distractor": distractor, **record}
    for name in FIELDS:
        value = values[name]
        if value is not None and not isinstance(value, str):
            return Skipped(number, line, f"field {name!r} is {type(value).__name__}, not a string")
        problem = text_problem(value, read_as_bytes=False) if value is not None else None
        if problem is not None:
            return Skipped(number, shown(line), f"field {name!r}: {problem}: escape whole characters")
    return PromptInput(text, values["target"], values["distractor"], number)
