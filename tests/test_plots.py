"""The pictures of the reading commands draw the stored values: checked on the figure before it is saved,
against the hand-written values of tests/test_api.py's warehouse."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from cli import main
from queries import Warehouse
from tests.test_api import N1_FORWARD, TOKENS, build_hand_warehouse

pytest.importorskip("matplotlib")
from queries import plots  # noqa: E402 - after the skip: plots needs matplotlib


@pytest.fixture(scope="module")
def hand_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hand_warehouse(tmp_path_factory.mktemp("hand") / "hand")


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure the plots module saves, kept open for inspection (and still written to its file)."""
    kept: list[Any] = []
    save = plots._save

    def keep(fig: Any, plt: Any, path: str | Path) -> Path:
        kept.append(fig)
        monkeypatch.setattr(plt, "close", lambda *a: None)
        return save(fig, plt, path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _invoke(*args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    assert "plot: " in result.output


def test_example_windows_hold_the_stored_values(hand_db: Path) -> None:
    wh = Warehouse(hand_db)
    windows = wh.example_windows("mlp_post_act", 0, 1, k=3, context=1).to_pylist()
    hits = wh.top_examples("mlp_post_act", 0, 1, k=3, context=1).to_pylist()
    assert sorted({r["example"] for r in windows}) == [1, 2, 3]
    for number, hit in enumerate(hits, start=1):
        rows = [r for r in windows if r["example"] == number]
        positions = [p for p in range(hit["token"] - 1, hit["token"] + 2) if 0 <= p < len(TOKENS[hit["prompt_id"]])]
        assert [r["position"] for r in rows] == positions
        assert [r["value"] for r in rows] == pytest.approx([N1_FORWARD[hit["prompt_id"]][p] for p in positions])
        assert [r["token_text"] for r in rows] == [TOKENS[hit["prompt_id"]][p] for p in positions]
        assert [r["is_hit"] for r in rows] == [p == hit["token"] for p in positions]
    # a token-pair dst: the hit query token's attention to each position of the window, none after it
    pair = wh.example_windows("attn_qk_probs", 0, 0, k=1, context=2, bottom=True).to_pylist()
    hit_token = pair[0]["hit_token"]
    for r in pair:
        want = 1.0 / (hit_token + 1) if r["position"] <= hit_token else None
        assert r["value"] == (pytest.approx(want) if want is not None else None)
    with pytest.raises(Exception, match="k must be at least 1"):
        wh.example_windows("mlp_post_act", 0, 1, k=0)


def test_examples_plot_shades_each_context_by_the_stored_values(
    hand_db: Path, tmp_path: Path, figures: list[Any]
) -> None:
    out = tmp_path / "examples.png"
    args = ["--dst", "mlp_post_act", "--layer", "0", "--node", "1", "-k", "4", "--context", "2", "--skip-first", "0"]
    _invoke("examples", "--db", str(hand_db), *args, "--plot", str(out))
    assert out.read_bytes()[:4] == b"\x89PNG"
    windows = Warehouse(hand_db).example_windows("mlp_post_act", 0, 1, k=4, context=2).to_pylist()
    grid = figures[0].axes[0].images[0].get_array()
    assert grid.shape == (4, 5)  # 4 examples, 2 tokens each side of the example's token in the middle column
    drawn = {(y, x) for y in range(4) for x in range(5) if not np.ma.is_masked(grid[y, x])}
    assert drawn == {(r["example"] - 1, r["position"] - r["hit_token"] + 2) for r in windows}
    for r in windows:
        assert grid[r["example"] - 1, r["position"] - r["hit_token"] + 2] == pytest.approx(r["value"])
    texts = [t.get_text() for t in figures[0].axes[0].texts]
    assert texts.count("$") == 0 and " quick" in texts
    svg = tmp_path / "examples.svg"  # the file's suffix picks the format, as for top --plot
    _invoke("examples", "--db", str(hand_db), *args, "--plot", str(svg))
    assert b"<svg" in svg.read_bytes()[:500]


def test_node_stats_plot_draws_the_histogram(hand_db: Path, tmp_path: Path, figures: list[Any]) -> None:
    out = tmp_path / "hist.png"
    _invoke("node-stats", "--db", str(hand_db), "--dst", "mlp_post_act", "--layer", "0", "--node", "1",
            "--bins", "5", "--skip-first", "0", "--plot", str(out))  # fmt: skip
    assert out.read_bytes()[:4] == b"\x89PNG"
    values = [v for prompt in N1_FORWARD.values() for v in prompt]
    low, high = min(values), max(values)
    want = [0] * 5
    for v in values:
        want[min(math.floor((v - low) / ((high - low) / 5)), 4)] += 1
    bars = figures[0].axes[0].patches
    assert [b.get_height() for b in bars] == want
    assert [b.get_x() for b in bars] == pytest.approx([low + i * (high - low) / 5 for i in range(5)])


def test_bars_draw_the_values_in_order(tmp_path: Path, figures: list[Any]) -> None:
    """The bar chart `top --plot` draws, for any ranked list: first label on top, NULL as 0."""
    out = plots.bars(["MLP L0 #1", "attn L1 #3", "$x"], [2.5, -1.0, None], tmp_path / "bars.png", "mean")
    assert out.read_bytes()[:4] == b"\x89PNG"
    ax = figures[0].axes[0]
    assert [b.get_width() for b in ax.patches] == [2.5, -1.0, 0.0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["MLP L0 #1", "attn L1 #3", r"\$x"]
    assert ax.yaxis_inverted()


def test_rank_plot_draws_the_ranked_figures(hand_db: Path, tmp_path: Path, figures: list[Any]) -> None:
    out = tmp_path / "rank.png"
    _invoke("rank", "--db", str(hand_db), "--dst", "mlp_post_act", "--by", "max", "--skip-first", "0",
            "--plot", str(out))  # fmt: skip
    assert out.read_bytes()[:4] == b"\x89PNG"
    ranked = Warehouse(hand_db).rank_nodes("mlp_post_act", by="max", skip_first=0).to_pylist()
    ax = figures[0].axes[0]
    assert [b.get_width() for b in ax.patches] == pytest.approx([r["value"] for r in ranked])
    # neuron 1 peaks at 5.0 (prompt 1, token 0), neuron 0 is -1 everywhere: the hand-written values
    assert [b.get_width() for b in ax.patches] == pytest.approx([5.0, -1.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["MLP L0 #1", "MLP L0 #0"]
    assert ax.get_xlabel() == "max"
    assert ax.get_title() == "mlp_post_act: top 20 nodes by max, --skip-first 0"
    # leaving out the first token drops neuron 1's 5.0; its next highest value is 3.0
    _invoke("rank", "--db", str(hand_db), "--dst", "mlp_post_act", "--by", "max", "--plot", str(out))
    assert [b.get_width() for b in figures[1].axes[0].patches] == pytest.approx([3.0, -1.0])
    assert figures[1].axes[0].get_title() == "mlp_post_act: top 20 nodes by max, --skip-first 1"


def _bar_pixels(png: Path) -> int:
    """Pixels of the PNG in the bars' colour (matplotlib's first colour, C0): what a reader sees drawn."""
    from matplotlib import colors, image

    rgb = image.imread(str(png))[..., :3]
    return int((np.abs(rgb - np.array(colors.to_rgb("C0"))).max(axis=-1) < 0.02).sum())


def test_node_stats_plot_of_the_summaries_bins_draws_visible_bars_without_warnings(
    hand_db: Path, tmp_path: Path, figures: list[Any]
) -> None:
    """The default bins are the summaries' power-of-ten ones, the outer two reaching -inf and +inf: the
    picture must still show a bar per non-empty bin, each wider than a few pixels, and warn about nothing."""
    out = tmp_path / "summaries.png"
    args = ["--dst", "mlp_post_act", "--layer", "0", "--node", "1", "--skip-first", "0", "--plot", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning fails the command, which the invoke reports
        _invoke("node-stats", "--db", str(hand_db), *args)
    hist = Warehouse(hand_db).node_summary("mlp_post_act", 0, 1, skip_first=0).histogram.to_pylist()
    filled = [i for i, b in enumerate(hist) if b["count"]]
    shown = hist[filled[0] : filled[-1] + 1]
    ax = figures[0].axes[0]
    assert [b.get_height() for b in ax.patches] == [b["count"] for b in shown]
    assert [b.get_x() for b in ax.patches] == pytest.approx([b["bin_low"] for b in shown])
    for bar in ax.patches:
        if bar.get_height():
            assert bar.get_window_extent().width > 5, "a bar too thin to see"
    assert _bar_pixels(out) > 2000


def test_histogram_outer_bins_reach_the_data_not_infinity(tmp_path: Path, figures: list[Any]) -> None:
    """Counts in the two infinite bins: drawn from the data's min and to its max, else one decade past."""
    edges = [-math.inf, -1e5, -1.0, 0.0, 1.0, 1e5, math.inf]
    counts = [3, 0, 2, 5, 0, 4]
    hist = pa.table({"bin_low": edges[:-1], "bin_high": edges[1:], "count": counts})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clipped = plots.histogram(hist, tmp_path / "clipped.png", value_range=(-3e5, 2e6))
        decade = plots.histogram(hist, tmp_path / "decade.png")
    for fig, (low, high) in zip(figures, [(-3e5, 2e6), (-1e6, 1e6)], strict=True):
        bars = fig.axes[0].patches
        assert [b.get_height() for b in bars] == counts
        assert bars[0].get_x() == low and bars[-1].get_x() + bars[-1].get_width() == pytest.approx(high)
        assert all(b.get_window_extent().width > 5 for b in bars if b.get_height())
        assert fig.axes[0].get_xscale() == "symlog"
    assert _bar_pixels(clipped) > 2000 and _bar_pixels(decade) > 2000
