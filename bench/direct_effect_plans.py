"""Benchmark: the views and macros of two versions of queries/support on one warehouse, side by side.

    python -m bench.direct_effect_plans --db out/bench_views_1000 --baseline 9acb3e1
    python -m bench.direct_effect_plans --db demo-warehouse --baseline 9acb3e1 --only direct_effects --pair 7268 11452
    python -m bench.direct_effect_plans --db /tmp/v --baseline HEAD --repeat 1   # a smoke run on any warehouse

Each side's support macros (queries/support/*.sql: the baseline's from `git show REV:...`, the other from
the working tree) are created as TEMP macros on a read-only connection, where they take precedence over
the warehouse's own, so both sides pay the same set-up and read the same files; the derived views stored
in the warehouse call whichever macros the connection holds. Every figure comes from a fresh child
process (warm: one untimed run first, then the best of --repeat), the two sides alternating, so a busy
machine slows both alike: compare the ratio. Figures: the twelve Tier-1 top-20s of bench/views.py, one
prompt's node table (Warehouse.top_nodes, each call opening its own connection as the API does), and
`direct_effects(t, d) WHERE prompt_id = P` (wall and CPU seconds, and the child's peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = "queries/support"


def support_sql(rev: str | None) -> list[str]:
    """The support files' SQL, in name order: from git revision `rev`, or the working tree for None."""
    if rev is None:
        return [p.read_text() for p in sorted((ROOT / SUPPORT).glob("*.sql"))]
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{rev}:{SUPPORT}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    return [
        subprocess.run(
            ["git", "show", f"{rev}:{SUPPORT}/{n}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        for n in sorted(names)
        if n.endswith(".sql")
    ]


def as_temp(sql: str) -> str:
    return sql.replace("CREATE OR REPLACE MACRO", "CREATE OR REPLACE TEMP MACRO")


def child(args: argparse.Namespace) -> None:
    """One figure in this process; prints one JSON line."""
    from warehouse import db  # noqa: PLC0415 - the parent process needs none of the project

    statements = [as_temp(s) for s in support_sql(None if args.side == "new" else args.baseline)]
    connect = db.connect

    def connect_with_side(*a: object, **k: object):  # noqa: ANN202
        con = connect(*a, **k)
        for statement in statements:
            con.execute(statement)
        return con

    db.connect = connect_with_side
    if args.item == "node_table":
        from queries.api import Warehouse  # noqa: PLC0415

        wh = Warehouse(args.db)

        def run() -> object:
            return wh.top_nodes(args.prompt_id).num_rows
    else:
        con = db.connect(args.db, read_only=True)
        if args.item == "direct_effects":
            # default: the lowest and highest stored targets, a pair no prompt was ingested with as a rule
            pair = args.pair or con.execute("SELECT min(target_id), max(target_id) FROM prompts").fetchall()[0]
            sql = f"SELECT count(*), sum(value) FROM direct_effects({pair[0]}, {pair[1]})"
            sql += f" WHERE prompt_id = {args.prompt_id}"
        else:
            from bench.views import sql_for  # noqa: PLC0415

            sql = sql_for(args.item)

        def run() -> object:
            return con.execute(sql).fetchall()

    answer = run()  # warm-up
    best_wall = best_cpu = float("inf")
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        answer = run()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # floats to 6 digits: the two sides may add the same values in another order
    shown = repr(
        answer if isinstance(answer, int) else [[f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in answer]
    )
    print(json.dumps({"wall": best_wall, "cpu": best_cpu, "rss": rss, "answer": shown[:400]}))


def measure(args: argparse.Namespace, side: str, item: str) -> dict:
    command = [sys.executable, "-m", "bench.direct_effect_plans", "--child", "--side", side, "--item", item]
    command += ["--db", str(args.db), "--baseline", args.baseline, "--repeat", str(args.repeat)]
    command += ["--prompt-id", str(args.prompt_id), *(["--pair", *map(str, args.pair)] if args.pair else [])]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if done.returncode != 0:
        raise SystemExit(f"{side} {item} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.direct_effect_plans", description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="a warehouse (opened read-only)")
    parser.add_argument("--baseline", required=True, help="git revision whose queries/support is the baseline")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs after the warm-up; the best counts")
    parser.add_argument("--prompt-id", type=int, default=0)
    parser.add_argument(
        "--pair", type=int, nargs=2, help="target and distractor ids (default: the lowest and highest targets)"
    )
    parser.add_argument("--only", nargs="*", help="items: Tier-1 dsts, node_table, direct_effects")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("baseline", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--item", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from bench.views import TIER1  # noqa: PLC0415

    items = [*TIER1, "node_table", "direct_effects"]
    items = [i for i in items if not args.only or i in args.only]
    print(f"warehouse {args.db}; baseline {args.baseline}; load {os.getloadavg()[0]:.1f}", flush=True)
    print("| item | baseline s (CPU s) | new s (CPU s) | new / baseline | peak RSS baseline / new | answers equal |")
    print("|---|---:|---:|---:|---:|---|")
    totals = {"baseline": 0.0, "new": 0.0}
    for item in items:
        got = {side: measure(args, side, item) for side in ("baseline", "new")}
        if item in TIER1:
            for side in totals:
                totals[side] += got[side]["wall"]
        b, n = got["baseline"], got["new"]
        ratio = n["wall"] / b["wall"]
        same = "yes" if b["answer"] == n["answer"] else "NO"
        print(
            f"| {item} | {b['wall']:.3f} ({b['cpu']:.2f}) | {n['wall']:.3f} ({n['cpu']:.2f}) | {ratio:.2f} |"
            f" {b['rss'] / 2**20:.0f} / {n['rss'] / 2**20:.0f} MiB | {same} |",
            flush=True,
        )
    if totals["baseline"]:
        ratio = totals["new"] / totals["baseline"]
        print(f"| Tier-1 total | {totals['baseline']:.2f} | {totals['new']:.2f} | {ratio:.2f} | | |")
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
