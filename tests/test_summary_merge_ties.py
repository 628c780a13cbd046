"""The examples a merge of summaries keeps (warehouse/summary_merge.py), on rows made to be hard: values
from five integers, mostly 0 (so that most of a node's values tie), a pool whose prompt ids are larger than those
of the runs merged into it (as a worker of a shared catalog, or a run killed midway, leaves them), nodes
with fewer than K values and with many, a merged run that kept more than K (killed before its last
flush), and a pool whose K-th values are unknown (written before schema version 7) or that itself holds
more than K (a killed run's rows, merged into for the first time).

The oracle: every node's values of every run sorted in Python by the queries' order (the highest first for
'top', the lowest for 'bottom', then prompt, token, token2), the first K kept.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from warehouse import db
from warehouse.summaries import EXAMPLES_K, N_BINS
from warehouse.summary_merge import merge_all

K = EXAMPLES_K
KEY = {"dst": "mlp_post_act", "pass_type": "forward", "layer": 0, "head": -1, "node_type": "mlp_neuron"}
# (run_id, first prompt id, status, examples kept beyond each node's K best): the pool first
RUNS = ((0, 100, "completed", 0), (1, 0, "completed", 0), (2, 50, "interrupted", 7))
NODES = 6
# Even nodes' values are mostly zeros: a node's K-th value ties with many of its values, and with the
# merged runs' (whose earlier prompts come first among equals), while few of theirs beat it. Odd nodes'
# are all apart (a K-th and a (K+1)-th differ).
_VALUES, _WEIGHTS = [-2.0, -1.0, 0.0, 1.0, 2.0], [0.05, 0.1, 0.7, 0.1, 0.05]
# a node's K-th value while it has fewer than K values, or when it is unknown (a pool of schema version 6)
_FEWER = {"top": -np.inf, "bottom": np.inf}
_NODE = [("node_index", pa.int32()), ("first_token", pa.bool_())]
_SUMMARY = pa.schema(
    [
        *_NODE,
        ("n", pa.int64()),
        ("sum", pa.float64()),
        *((c, pa.float32()) for c in ("min", "max", "kth_top", "kth_bottom")),
    ]
)
_EXAMPLE = pa.schema(
    [
        *_NODE,
        ("side", pa.string()),
        *((c, pa.int32()) for c in ("prompt_id", "token", "token2")),
        ("value", pa.float32()),
    ]
)


def _draw(rng: np.random.Generator, count: int, ties: bool, run: int) -> list[float]:
    """`count` values: mostly zeros (`ties`), or values apart from each other and from every other run's
    (multiples of 1/2 plus run / 8, exact in float32)."""
    if ties:
        return [float(v) for v in rng.choice(_VALUES, size=count, p=_WEIGHTS)]
    return [float(v) / 2 + run / 8 for v in rng.permutation(count) - count // 2]


def _values(seed: int) -> dict[tuple[int, bool], list[tuple[int, int, int, float]]]:
    """Per (node, first_token): (prompt offset, token, token2, value) of one run, 0 to 2.5 K values each."""
    rng = np.random.default_rng(seed)
    values = {}
    for node in range(NODES):
        for first in (True, False):
            count = int(rng.integers(0, 5 * K // 2))
            places = rng.choice(4 * 40 * 3, size=count, replace=False)
            values[node, first] = [
                (int(p // 120), int(p // 3 % 40), int(p % 3) - 1, value)
                for p, value in zip(places, _draw(rng, count, node % 2 == 0, seed), strict=True)
            ]
    return values


def _best(values: list[tuple[int, int, int, float]], side: str, keep: int) -> list[tuple[int, int, int, float]]:
    """The first `keep` of (prompt_id, token, token2, value) in the queries' order for `side`."""
    sign = -1 if side == "top" else 1
    return sorted(values, key=lambda v: (sign * v[3], v[0], v[1], v[2]))[:keep]


def _kth(values: list[tuple[int, int, int, float]], side: str) -> float:
    """The value of the K-th of `values` for `side`; -inf (+inf for 'bottom') when there are fewer."""
    return _best(values, side, K)[-1][3] if len(values) >= K else _FEWER[side]


def _store(
    con: duckdb.DuckDBPyConnection, run_id: int, first_prompt: int, status: str, extra: int, known: bool
) -> list[tuple]:
    """A run's row, its summary rows (count, extremes, K-th examples, or unknown ones when not `known`) and
    each node's best K + `extra` examples; returns its values as (node, first, prompt_id, token, token2, value)."""
    con.execute(
        "INSERT INTO runs (run_id, model_id, objective, locations, software_version, device, dtype, precision,"
        " prepend_bos, special_tokens, started_at, status, n_prompts, summarised_through) VALUES (?, 0,"
        " 'next_token_ce', ['mlp.post_act:forward'], 'test', 'cpu', 'float32', 'float32', true, 'special',"
        " now()::TIMESTAMP, ?, 4, ?)",
        [run_id, status, first_prompt + 3],
    )
    out, summaries, examples = [], [], []
    for (node, first), found in _values(run_id).items():
        rows = [(first_prompt + p, t, t2, v) for p, t, t2, v in found]
        out += [(node, first, *row) for row in rows]
        if not rows:
            continue
        kth = [_kth(rows, side) if known else _FEWER[side] for side in ("top", "bottom")]
        values = [v for *_, v in rows]
        summaries.append(
            dict(
                zip(_SUMMARY.names, (node, first, len(rows), sum(values), min(values), max(values), *kth), strict=True)
            )
        )
        examples += [
            dict(zip(_EXAMPLE.names, (node, first, side, *row), strict=True)) for side in ("top", "bottom")
            for row in _best(rows, side, K + extra)
        ]  # fmt: skip
    con.register("summary_rows", pa.Table.from_pylist(summaries, _SUMMARY))
    con.register("example_rows", pa.Table.from_pylist(examples, _EXAMPLE))
    key = ", ".join(f"{value!r} AS {name}" for name, value in KEY.items())
    con.execute(
        f"INSERT INTO node_summaries BY NAME SELECT ? AS run_id, {key}, *, 0.0 AS sum_sq, 0.0 AS sum_abs,"
        " n AS n_nonzero, ? AS hist FROM summary_rows",
        [run_id, [0] * N_BINS],
    )
    con.execute(f"INSERT INTO node_examples BY NAME SELECT ? AS run_id, {key}, * FROM example_rows", [run_id])
    return out


@pytest.mark.parametrize(
    "pool", ["K-th known", "K-th unknown", "killed run's rows"], ids=["known", "unknown", "superset"]
)
def test_a_merge_keeps_each_nodes_k_best_in_the_queries_order(tmp_path: Path, pool: str) -> None:
    runs = list(RUNS)
    if pool == "killed run's rows":  # the pool's own rows hold more than K: cut at its first merge
        runs[0] = (0, 100, "interrupted", 5)
    con = db.connect(tmp_path / "lake")
    try:
        con.execute("BEGIN")
        values = [v for run_id, *rest in runs for v in _store(con, run_id, *rest, known=pool != "K-th unknown")]
        con.execute("COMMIT")
        con.execute("BEGIN")
        assert merge_all(con) == 2
        con.execute("COMMIT")
        kept = con.execute(
            "SELECT node_index, first_token, side, prompt_id, token, token2, value, run_id FROM node_examples"
        ).fetchall()
        summaries = con.execute(
            "SELECT node_index, first_token, run_id, n, min, max, kth_top, kth_bottom FROM node_summaries"
        ).fetchall()
    finally:
        con.close()
    assert {row[-1] for row in kept} == {0} and {row[2] for row in summaries} == {0}
    by_node: dict[tuple[int, bool], list[tuple[int, int, int, float]]] = {}
    for node, first, *row in values:
        by_node.setdefault((node, first), []).append(tuple(row))
    expected_rows = sorted(
        (node, first, side, *row) for (node, first), rows in by_node.items() for side in ("top", "bottom")
        for row in _best(rows, side, K)
    )  # fmt: skip
    assert sorted(row[:-1] for row in kept) == expected_rows
    expected_summaries = {
        (node, first): (len(rows), min(r[3] for r in rows), max(r[3] for r in rows))
        + tuple(_kth(rows, side) for side in ("top", "bottom"))
        for (node, first), rows in by_node.items()
        if rows
    }
    got = {(node, first): tuple(rest) for node, first, _, *rest in summaries}
    if pool == "K-th unknown":  # a node no merged run reached keeps its unknown K-th
        assert all(got[key][:3] == expected_summaries[key][:3] for key in expected_summaries)
        unknown = (_FEWER["top"], _FEWER["bottom"])
        assert all(got[key][3:] in (unknown, expected_summaries[key][3:]) for key in expected_summaries)
    else:
        assert got == expected_summaries
