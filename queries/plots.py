"""Pictures of API results: a per-token heat strip, a top-nodes bar chart, a value histogram.

matplotlib is optional (the `plot` extra): these are for a quick look from the command line, and the
warehouse itself never needs it. Each function takes an API result and writes a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def top_nodes_bars(table: pa.Table, column: str, path: str | Path, title: str = "") -> Path:
    """Horizontal bars of one column of a top_nodes result, labelled with node and token."""
    plt = _pyplot()
    rows = table.to_pylist()
    labels = []
    for r in rows:
        node = "MLP" if r["node_type"] == "mlp_neuron" else ("attn" if r["node_type"] == "attention_head" else "")
        where = f"t{r['token']}" + (f"<-{r['token2']}" if r.get("token2") is not None else "")
        labels.append(f"{node} L{r['layer']} #{r['node_index']} {where} {_label(r.get('token_text') or '')!r}")
    values = [r[column] if r[column] is not None else 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh(range(len(rows)), values, color=["tab:red" if v >= 0 else "tab:blue" for v in values])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel(column)
    ax.set_title(title)
    return _save(fig, plt, path)


def histogram(hist: pa.Table, path: str | Path, title: str = "") -> Path:
    """Bars of a node_stats histogram."""
    plt = _pyplot()
    lows, highs, counts = (hist[c].to_pylist() for c in ("bin_low", "bin_high", "count"))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if lows and lows[0] is not None:
        ax.bar(lows, counts, width=[h - lo for lo, h in zip(lows, highs, strict=True)], align="edge")
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    ax.set_title(title)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
