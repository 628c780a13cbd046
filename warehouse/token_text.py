"""Display text of tokens from their bytes, without U+FFFD for UTF-8 characters split across tokens.

Byte-level tokenizers cut text into bytes, not characters: an emoji (4 bytes) or a CJK character (3 bytes)
often spans two or three tokens, and each part alone is not valid UTF-8. The warehouse stores every
token's exact bytes (`tokens.bytes`, `vocab.bytes`) and a display `text` built by one convention:

- a character is shown on the token whose bytes complete it;
- bytes of a character that a later token completes, and bytes that are not valid UTF-8 at all, are shown
  as `\\xNN` escapes (two lowercase hex digits, as Python's 'backslashreplace' writes them) on the token
  that holds them.

So the tokens b"\\xe4\\xb8" and b"\\xad" of '中' read '\\xe4\\xb8' and '中'. Text decoded from the
concatenated bytes of several tokens (example contexts) shows each character once, escaping only bytes
that stay incomplete or invalid at the edges. A literal backslash in the text is left as it is.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class _Unit:
    """One character of the byte string ([start, end) bytes), or one byte that is not part of one (text
    is then its escape)."""

    start: int
    end: int
    text: str


def _utf8_length(lead: int) -> int:
    """Bytes of the character a lead byte starts (RFC 3629); 0 for a byte that cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _escape(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def _units(data: bytes) -> list[_Unit]:
    units = []
    i = 0
    while i < len(data):
        size = _utf8_length(data[i])
        if size:
            try:  # the codec rejects overlong forms, surrogates and truncated sequences
                units.append(_Unit(i, i + size, data[i : i + size].decode("utf-8")))
                i += size
                continue
            except UnicodeDecodeError:
                pass
        units.append(_Unit(i, i + 1, _escape(data[i : i + 1])))
        i += 1
    return units


def display_texts(pieces: Sequence[bytes]) -> list[str]:
    """The display text of each token of one sequence, given every token's bytes in order.

    A character goes to the token holding its last byte; a token holding earlier bytes of it shows those
    as escapes (module docstring). Tokens that each decode alone (nearly all) are simply decoded.
    """
    try:
        return [piece.decode("utf-8") for piece in pieces]
    except UnicodeDecodeError:
        pass
    ends = []
    offset = 0
    for piece in pieces:
        offset += len(piece)
        ends.append(offset)
    data = b"".join(pieces)
    texts = [""] * len(pieces)
    for unit in _units(data):
        last = bisect.bisect_right(ends, unit.end - 1)
        first = bisect.bisect_right(ends, unit.start)
        for t in range(first, last):  # tokens holding the first bytes of a character completed later
            texts[t] += _escape(data[max(unit.start, ends[t] - len(pieces[t])) : ends[t]])
        texts[last] += unit.text
    return texts


@dataclass(frozen=True)
class Window:
    """A context window decoded from its tokens' concatenated bytes, split around the marked token."""

    left: str
    marked: str
    right: str
    text: str  # left, [[marked]], right, with the key token <<marked>> where it falls in the window


def window(pieces: Sequence[bytes], marked: int, key: int | None = None) -> Window:
    """Decode a window of consecutive tokens (`pieces`, their bytes) and mark token index `marked` with
    [[ ]] and token index `key` (when not None and not `marked`) with << >>.

    Markers sit between characters: a marker covers every character with a byte in its token, so a
    character split across the marked token and its neighbour is shown whole inside the marker; where the
    key token shares a character with the marked one, the character goes to the marked token.
    Raises IndexError for a `marked` outside the window.
    """
    if not 0 <= marked < len(pieces):
        raise IndexError(f"marked token {marked} is outside a window of {len(pieces)} tokens")
    starts = [0]
    for piece in pieces:
        starts.append(starts[-1] + len(piece))
    units = _units(b"".join(pieces))
    unit_starts = [u.start for u in units]

    def span(token: int) -> tuple[int, int]:
        """Units [a, b) with a byte in `token` (empty at the token's place for a token without bytes)."""
        lo, hi = starts[token], starts[token + 1]
        a = max(bisect.bisect_right(unit_starts, lo) - 1, 0) if hi > lo else bisect.bisect_left(unit_starts, lo)
        return a, bisect.bisect_left(unit_starts, hi)

    def join(a: int, b: int) -> str:
        return "".join(u.text for u in units[a:b])

    a, b = span(marked)
    parts = [(a, b, "[[", "]]")]
    if key is not None and key != marked and 0 <= key < len(pieces):
        c, d = span(key)
        c, d = (c, min(d, a)) if c < a else (max(c, b), d)
        if c < d:
            parts.append((c, d, "<<", ">>"))
    parts.sort()
    text, at = "", 0
    for lo, hi, opening, closing in parts:
        text += join(at, lo) + opening + join(lo, hi) + closing
        at = hi
    text += join(at, len(units))
    return Window(join(0, a), join(a, b), join(b, len(units)), text)
