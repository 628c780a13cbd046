"""Benchmark: a run's last transaction merging its summaries into a pool of a given size, alone.

    python -m bench.summary_merge_scale --nodes 16400    # a tenth of SmolLM2's default capture
    cp bench/summary_merge_scale.py <an earlier actwh>/bench/ && cd <it> && python -m bench.summary_merge_scale

Writes a new warehouse holding a pool (run 0: every node's EXAMPLES_K highest and lowest examples in each
first_token group, as after many runs) and one one-prompt run (run 1: `--tokens` values per node in the
later-token group, one at position 0) of the same model and capture settings, with made-up values: the
pool's top and bottom from N(+-c, 1), c = --pool-centre, the run's from N(0, 1) (with c = 4 about 2 % of
the run's values reach the pool's K-th, as after some 50 runs; with c = 2, 45 %). Then times what
writer.finish_run does with the run's final rows, in one transaction: this actwh merges them from memory
into the pool (summary_merge.join_pool); an earlier one (run from its checkout: the script uses whatever
`warehouse` package the working directory holds) stored them as the run's own rows and then merged the
two runs' rows. Then, where this actwh has it, times a rewrite of the whole pool (what a merge does once the
pool's rows spread over more than MAX_POOL_FILES files). Prints one JSON line: rows and seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path.cwd()))  # the checkout being timed, ahead of any installed actwh

from warehouse import (  # noqa: E402
    db,  # noqa: E402
    summary_merge,
    writer,
)
from warehouse.summaries import EXAMPLES_K, N_BINS  # noqa: E402


def _examples(nodes: int, per_side: dict[bool, int], centre: float, rng: np.random.Generator) -> tuple[pa.Table, dict]:
    """Example rows, and each group's per-node K-th highest and lowest ((nodes,) arrays; +-inf under K)."""
    parts, kth = [], {}
    for first, k in per_side.items():
        for side, sign in (("top", 1), ("bottom", -1)):
            values = (sign * centre + rng.normal(size=(nodes, k))).astype(np.float32)
            kth[first, side] = values.min(1) if sign == 1 else values.max(1)
            if k < EXAMPLES_K:
                kth[first, side] = np.full(nodes, -sign * np.inf, np.float32)
            parts.append(
                pa.table(
                    {
                        "node_index": np.repeat(np.arange(nodes, dtype=np.int32), k),
                        "first_token": np.full(nodes * k, first),
                        "side": np.full(nodes * k, side),
                        # the pool's prompts first, each node's examples at distinct tokens
                        "prompt_id": np.tile(np.arange(k, dtype=np.int32), nodes) + (0 if centre else 1000),
                        "token": np.tile(np.arange(k, dtype=np.int16), nodes),
                        "token2": np.full(nodes * k, -1, np.int16),
                        "value": values.reshape(-1),
                    }
                )
            )
    return pa.concat_tables(parts), kth


def _summaries(nodes: int, counts: dict[bool, int], kth: dict | None) -> pa.Table:
    """Summary rows of `counts` values per node in each first_token group (figures made up), with the
    K-th examples `kth` when the warehouse has the columns."""
    parts = []
    for first, n in counts.items():
        part = {"node_index": np.arange(nodes, dtype=np.int32), "first_token": np.full(nodes, first)}
        part |= {"n": np.full(nodes, n, np.int64), "sum": np.zeros(nodes), "sum_sq": np.ones(nodes)}
        part |= {"sum_abs": np.ones(nodes), "min": np.full(nodes, -9, np.float32), "max": np.full(nodes, 9, np.float32)}
        part |= {
            "n_nonzero": np.full(nodes, n, np.int64),
            "hist": pa.array([[0] * N_BINS] * nodes, pa.list_(pa.int32())),
        }
        if kth is not None:
            part |= {"kth_top": kth[first, "top"], "kth_bottom": kth[first, "bottom"]}
        parts.append(pa.table(part))
    return pa.concat_tables(parts)


def run(path: Path, nodes: int, tokens: int, pool_centre: float) -> dict[str, object]:
    rng = np.random.default_rng(0)
    con = db.connect(path)
    with_kth = "kth_top" in {r[0] for r in con.execute("DESCRIBE node_summaries").fetchall()}
    key = "'mlp_post_act' AS dst, 'forward' AS pass_type, 0 AS layer, -1 AS head, 'mlp_neuron' AS node_type"
    con.execute("BEGIN")
    for run_id, counts, per_side, centre in (
        (0, {True: 1000, False: 19000}, {True: EXAMPLES_K, False: EXAMPLES_K}, pool_centre),
        (1, {True: 1, False: tokens}, {True: 1, False: min(tokens, EXAMPLES_K)}, 0.0),
    ):
        con.execute(
            "INSERT INTO runs (run_id, model_id, objective, locations, software_version, device, dtype, precision,"
            " prepend_bos, special_tokens, started_at, status, n_prompts, summarised_through) VALUES (?, 0,"
            " 'next_token_ce', ['mlp.post_act:forward'], 'bench', 'cpu', 'float32', 'float32', true, 'special',"
            " now()::TIMESTAMP, 'completed', 1, 0)",
            [run_id],
        )
        examples, kth = _examples(nodes, per_side, centre, rng)
        summaries = _summaries(nodes, counts, kth if with_kth else None)
        if run_id == 1:  # ends below
            break
        con.register("s_rows", summaries)
        con.register("e_rows", examples)
        con.execute(f"INSERT INTO node_summaries BY NAME SELECT ? AS run_id, {key}, * FROM s_rows", [run_id])
        con.execute(f"INSERT INTO node_examples BY NAME SELECT ? AS run_id, {key}, * FROM e_rows", [run_id])
    con.execute("COMMIT")
    pool = con.execute("SELECT count(*) FROM node_examples").fetchall()[0][0]
    names = {"dst": "mlp_post_act", "pass_type": "forward", "layer": 0, "head": -1, "node_type": "mlp_neuron"}
    rows = tuple(_with_key(table, names) for table in (summaries, examples))
    start = time.perf_counter()
    con.execute("BEGIN")
    if hasattr(summary_merge, "join_pool"):  # this actwh: the run's rows go from memory into the pool
        summary_merge.join_pool(con, 1, rows)
    else:  # an earlier one stored them as the run's, then merged the two runs' rows
        writer._store_summaries(con, 1, rows, whole=True)
        con.execute("UPDATE runs SET summarised_through = 0 WHERE run_id = 1")  # no prompt rows here
        summary_merge.merge_run(con, 1)
    con.execute("COMMIT")
    seconds = time.perf_counter() - start
    after = con.execute("SELECT count(*) FROM node_examples").fetchall()[0][0]
    rewrite = None
    if hasattr(summary_merge, "rewrite_pool"):  # what a merge does once the pool's files pass MAX_POOL_FILES
        start = time.perf_counter()
        con.execute("BEGIN")
        for table in ("node_summaries", "node_examples"):
            summary_merge.rewrite_pool(con, table, 0)
        con.execute("COMMIT")
        rewrite = time.perf_counter() - start
    con.close()
    return {
        "nodes": nodes * 2,
        "pool_examples": pool,
        "run_examples": rows[1].num_rows,
        "after": after,
        "seconds": seconds,
        "pool_rewrite_seconds": rewrite,
    }


def _with_key(table: pa.Table, names: dict[str, object]) -> pa.Table:
    """`table` with the constant key columns first, as the ingest hands its rows to the writer."""
    for i, (name, value) in enumerate(names.items()):
        table = table.add_column(
            i, name, pa.array([value] * table.num_rows, pa.int16() if isinstance(value, int) else None)
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=33000, help="nodes per first_token group")
    parser.add_argument("--tokens", type=int, default=19, help="the run's values per node after position 0")
    parser.add_argument("--pool-centre", type=float, default=4.0, help="the pool's top examples ~ N(this, 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp) / "lake", args.nodes, args.tokens, args.pool_centre)))


if __name__ == "__main__":
    main()
