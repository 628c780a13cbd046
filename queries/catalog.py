"""The dst catalogue: every scalar name with its node type, inputs and meaning.

Raw dsts are described by the component registry; derived dsts by the `-- key: value` header of their
view file, so the documentation of a view lives beside its SQL and cannot drift from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from warehouse import db, registry

_HEADER = re.compile(r"^--\s*(\w+):\s*(.*)$")


@dataclass(frozen=True)
class DstInfo:
    dst: str
    kind: str  # 'raw' or 'derived'
    node_type: str
    needs: str
    formula: str
    description: str


def view_header(path: Path) -> dict[str, str]:
    """The `-- key: value` lines that open a view file."""
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = _HEADER.match(line)
        if not match:
            break
        fields[match.group(1)] = match.group(2).strip()
    return fields


def dst_catalog() -> list[DstInfo]:
    entries = []
    for loc in registry.LOCATIONS.values():
        passes = "forward and backward" if loc.has_backward else "forward"
        entries.append(
            DstInfo(
                loc.dst,
                "raw",
                loc.node_type.value,
                f"{loc.name} ({passes})",
                " x ".join(d.value for d in loc.shape),
                loc.description,
            )
        )
    for path in db.derived_view_files():
        head = view_header(path)
        entries.append(
            DstInfo(
                path.stem,
                "derived",
                head.get("node_type", ""),
                head.get("needs", ""),
                head.get("formula", ""),
                head.get("description", ""),
            )
        )
    return entries
