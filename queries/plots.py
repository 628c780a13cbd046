"""Pictures of API results: per-token heat strips (one prompt, or each example's context), bar charts of
ranked nodes, a value histogram.

matplotlib is optional (the `plot` extra): these are for a quick look from the command line, and the
warehouse itself never needs it. Each function takes an API result and writes a PNG.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from warehouse import db


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise db.WarehouseError("--plot needs matplotlib: pip install 'actwh[plot]'") from None
    return plt


def _label(text: str) -> str:
    return text.replace("\n", "\\n").replace("$", r"\$")


def token_strip(table: pa.Table, path: str | Path, title: str = "") -> Path:
    """One row of coloured cells per value column, one cell per token, the token text written in it."""
    plt = _pyplot()
    columns = [c for c in table.column_names if c not in ("token", "token_text")]
    tokens = [_label(t) for t in table["token_text"].to_pylist()]
    values = [[v if v is not None else 0.0 for v in table[c].to_pylist()] for c in columns]
    scale = max((abs(v) for row in values for v in row), default=1.0) or 1.0
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(tokens)), 0.6 * len(columns) + 1.2))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
    for r in range(len(columns)):
        for c, tok in enumerate(tokens):
            ax.text(c, r, tok, ha="center", va="center", fontsize=8)
    ax.set_yticks(range(len(columns)), columns)
    ax.set_xticks(range(len(tokens)), [str(i) for i in range(len(tokens))])
    ax.set_xlabel("token position")
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax.set_title(title)
    return _save(fig, plt, path)


def _short(text: str, width: int = 10) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def bars(labels: Sequence[str], values: Sequence[float | None], path: str | Path, xlabel: str, title: str = "") -> Path:
    """Horizontal bars, the first label on top: positive values red, negative blue, NULL drawn as 0.

    The chart of `top --plot`, for any ranked list (nodes of one prompt, nodes across the dataset).
    """
    plt = _pyplot()
    heights = [v if v is not None else 0.0 for v in values]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(heights) + 1.2))
    ax.barh(range(len(heights)), heights, color=["tab:red" if v >= 0 else "tab:blue" for v in heights])
    ax.set_yticks(range(len(heights)), [_label(text) for text in labels], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, plt, path)


def node_label(row: dict[str, Any]) -> str:
    """'MLP L3 #1021', 'attn L0 #5', 'L2 #7 h1': a node of a result row (node_type, layer, node_index, head)."""
    node = {"mlp_neuron": "MLP ", "attention_head": "attn "}.get(row.get("node_type") or "", "")
    layer = f"L{row['layer']} " if row.get("layer") is not None else ""
    head = f" h{row['head']}" if row.get("head") is not None else ""
    return f"{node}{layer}#{row['node_index']}{head}"


def top_nodes_bars(table: pa.Table, column: str, path: str | Path, title: str = "") -> Path:
    """Horizontal bars of one column of a top_nodes result, labelled with node and token."""
    rows = table.to_pylist()
    labels = []
    for r in rows:
        where = f"t{r['token']}" + (f"<-{r['token2']}" if r.get("token2") is not None else "")
        labels.append(f"{node_label(r)} {where} {r.get('token_text') or ''!r}")
    return bars(labels, [r[column] for r in rows], path, column, title)


def rank_bars(table: pa.Table, by: str, path: str | Path, title: str = "") -> Path:
    """Horizontal bars of a `rank_nodes` result: each node's ranked figure (its `value`, the statistic `by`),
    highest on top, labelled with the node (and its model where several are ranked together)."""
    rows = table.to_pylist()
    several = len({r["model_id"] for r in rows}) > 1
    labels = [(f"model {r['model_id']} " if several else "") + node_label(r) for r in rows]
    return bars(labels, [r["value"] for r in rows], path, by, title)


def example_strips(windows: pa.Table, path: str | Path, title: str = "") -> Path:
    """One strip per example of `Warehouse.example_windows`: its context tokens, aligned on the example's
    token (outlined), each cell shaded by the node's value there (blank where none is stored)."""
    plt = _pyplot()
    rows = windows.to_pylist()
    examples = sorted({r["example"] for r in rows})
    offsets = [r["position"] - r["hit_token"] for r in rows]
    left = -min(offsets, default=0)
    width = left + max(offsets, default=0) + 1
    grid = np.full((len(examples), width), np.nan)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * width), 0.5 * len(examples) + 1.2))
    labels = {}
    for r, offset in zip(rows, offsets, strict=True):
        y, x = examples.index(r["example"]), offset + left
        if r["value"] is not None:
            grid[y, x] = r["value"]
        ax.text(x, y, _short(_label(r["token_text"])), ha="center", va="center", fontsize=7,
                fontweight="bold" if r["is_hit"] else "normal")  # fmt: skip
        if r["is_hit"]:
            ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
            labels[y] = f"#{r['example']} prompt {r['prompt_id']} t{r['hit_token']}"
    scale = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-(scale or 1.0), vmax=scale or 1.0, aspect="auto")
    ax.set_yticks(range(len(examples)), [labels.get(y, "") for y in range(len(examples))], fontsize=8)
    ax.set_xticks(range(width), [str(x - left) for x in range(width)])
    ax.set_xlabel("position relative to the example's token")
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax.set_title(title)
    return _save(fig, plt, path)


def histogram(
    hist: pa.Table, path: str | Path, title: str = "", value_range: tuple[float, float] | None = None
) -> Path:
    """Bars of a node histogram (columns bin_low, bin_high, count), from the first non-empty bin to the last.

    The summaries' bins grow by powers of ten and their outer two reach -inf and +inf: an infinite edge is
    drawn at the data's `value_range` (min, max), else one decade past the bin's finite edge, and unequal
    bins are drawn on a symmetric-log axis, where each decade is as wide as the next (on a linear axis the
    decades below the widest are too thin to see). Equal bins (a scan's `--bins`) keep a linear axis."""
    plt = _pyplot()
    lows, highs, counts = (hist[c].to_pylist() for c in ("bin_low", "bin_high", "count"))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    filled = [i for i, c in enumerate(counts) if c]
    if filled and lows[0] is not None:
        first, last = filled[0], filled[-1] + 1
        lows, highs, counts = lows[first:last], highs[first:last], counts[first:last]
        low_data, high_data = value_range or (None, None)
        lows[0] = _finite_edge(lows[0], highs[0], low_data, -1)
        highs[-1] = _finite_edge(highs[-1], lows[-1], high_data, 1)
        widths = [h - lo for lo, h in zip(lows, highs, strict=True)]
        ax.bar(lows, counts, width=widths, align="edge")
        if max(widths) > 10 * min(widths):
            edges = [abs(e) for e in (*lows, highs[-1]) if e != 0]
            ax.set_xscale("symlog", linthresh=min(edges) if edges else 1.0)
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    ax.set_title(title)
    return _save(fig, plt, path)


def _finite_edge(edge: float, other: float, data: float | None, side: int) -> float:
    """An outer bin's edge on the plot: `edge` when finite, else the data's extreme beyond `other` (the bin's
    finite edge), else one decade past it (side -1: the lower edge, 1: the upper)."""
    if np.isfinite(edge):
        return edge
    if data is not None and np.isfinite(data) and (data - other) * side > 0:
        return data
    return other * 10 if other * side > 0 else other + side


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    """Write `fig` in the format of `path`'s suffix (.png, .svg, .pdf ...) and close it."""
    path = Path(path)
    with warnings.catch_warnings():
        # characters the installed fonts lack (CJK, emoji with the default font) are drawn as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
