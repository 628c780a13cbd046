"""Benchmark: many one-prompt runs into one warehouse, their summaries merged as each run ends.

    python -m bench.many_runs --runs 100 --model gpt2-tiny          # the figures in BENCHMARKS.md
    python -m bench.many_runs --runs 2 --model gpt2-tiny --repeat 1 # a smoke run

Ingests `--runs` runs of one prompt of `--tokens` tokens each (default capture, summaries on) into a new
warehouse, the model loaded once, and keeps a copy of the warehouse as the first run left it. For that
copy and for the final warehouse it prints the bytes their live data files hold per table (facts against
node_summaries and node_examples, whose rows runs of the same model and capture settings share:
warehouse/summary_merge.py) and the seconds, best of `--repeat`, that `rank` (mean mlp_act_times_grad
over every prompt), `examples` (one neuron's 20 highest, with context) and `node-stats` (one neuron) take
through the Python API, each opening the warehouse anew, the two warehouses asked in turns so that the
machine's load weighs on both alike; then again after `actwh compact` of both (which merges the small
files each commit leaves in facts, prompts, tokens and runs). The last line gives the ratio of summaries
and examples to facts, and of each latency after the last run to after the first, before and after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/many_runs.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import prompt_texts
from warehouse.lake import ALIAS

TABLES = ("facts", "node_summaries", "node_examples")


def table_bytes(db: Path) -> dict[str, int]:
    """Bytes of the live data files of each of TABLES (what the current snapshot reads)."""
    from warehouse import db as warehouse_db

    meta = f"__ducklake_metadata_{ALIAS}"
    with warehouse_db.connect(db, read_only=True) as con:
        rows = con.execute(
            f"SELECT t.table_name, sum(f.file_size_bytes) FROM {meta}.ducklake_data_file f"
            f" JOIN {meta}.ducklake_table t USING (table_id)"
            " WHERE f.end_snapshot IS NULL AND t.end_snapshot IS NULL GROUP BY 1"
        ).fetchall()
    sizes = {name: int(size) for name, size in rows}
    return {name: sizes.get(name, 0) for name in TABLES}


def latencies(db: Path, repeat: int, layer: int, node: int) -> dict[str, float]:
    """Best-of-`repeat` seconds of each reading question, each call opening the warehouse."""
    from queries.api import Warehouse

    questions: dict[str, Callable[[Warehouse], Any]] = {
        "rank": lambda wh: wh.rank_nodes("mlp_act_times_grad", by="mean", k=20),
        "examples": lambda wh: wh.examples("mlp_post_act", layer, node, k=20),
        "node-stats": lambda wh: wh.node_summary("mlp_post_act", layer, node),
    }
    out = {}
    for name, ask in questions.items():
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            ask(Warehouse(db))
            best = min(best, time.perf_counter() - start)
        out[name] = round(best, 4)
    return out


def run(db: Path, runs: int, tokens: int, model: str, repeat: int, layer: int, node: int) -> dict[str, Any]:
    from ingest import worker
    from ingest.model_rows import factor_weights, register_model
    from ingest.prompts import PromptInput
    from warehouse.maintenance import compact
    from warehouse.writer import LakeWriter

    loaded = worker.open_model(model)
    worker.open_model = lambda name: loaded  # loaded once, outside the timed runs
    finishing = _timed_finish(LakeWriter)
    with LakeWriter(db) as writer:
        register_model(writer, loaded, factor_weights(loaded), False)
    texts = prompt_texts(runs, tokens, loaded.tokenizer)
    options = worker.IngestOptions(model=model, progress=False)
    seconds = []
    first_run = db.with_name(db.name + "-after-1-run")
    for i, text in enumerate(texts):
        start = time.perf_counter()
        worker.ingest(db, [PromptInput(text)], options)
        seconds.append(time.perf_counter() - start)
        if i == 0:  # kept as it is, to be timed beside the last state
            shutil.copytree(db, first_run)
    result: dict[str, Any] = {"runs": runs, "tokens_per_run": tokens, "model": model}
    for compacted in (False, True):
        if compacted:  # the facts', prompts' and runs' small files of each commit merged, old snapshots gone
            for path in (first_run, db):
                compact(path)
        points = _compare({1: first_run, runs: db}, repeat, layer, node)
        for count, point in points.items():
            print(json.dumps({"after_runs": count, "compacted": compacted, **point}), flush=True)
        first, last = points[1], points[runs]
        kept = last["bytes"]["node_summaries"] + last["bytes"]["node_examples"]
        suffix = "_after_compact" if compacted else ""
        result[f"summaries_and_examples_over_facts{suffix}"] = round(kept / max(last["bytes"]["facts"], 1), 3)
        result[f"latency_after_last_over_first{suffix}"] = {
            name: round(last["seconds"][name] / first["seconds"][name], 2) for name in first["seconds"]
        }
    tenth = max(1, runs // 10)
    for name, times in (("run", seconds), ("finish", finishing)):
        result[f"mean_{name}_seconds_first_and_last_tenth"] = [
            round(sum(part) / len(part), 3) for part in (times[:tenth], times[-tenth:])
        ]
    return result


def _timed_finish(writer: Any) -> list[float]:
    """The seconds of each run's last transaction (LakeWriter.finish_run: its summaries' last flush and
    their merge into the pool), appended to the list returned as runs end."""
    times: list[float] = []
    finish = writer.finish_run

    def timed(self: Any, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            finish(self, *args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    writer.finish_run = timed
    return times


def _compare(paths: dict[int, Path], repeat: int, layer: int, node: int) -> dict[int, dict[str, Any]]:
    """Bytes per table and best-of-`repeat` latencies of each warehouse, keyed by its run count; the
    warehouses asked in turns, so that a change in the machine's load weighs on all alike."""
    points: dict[int, dict[str, Any]] = {
        count: {"bytes": table_bytes(path), "seconds": {}} for count, path in paths.items()
    }
    for _ in range(repeat):
        for count, path in paths.items():
            for name, took in latencies(path, 1, layer, node).items():
                points[count]["seconds"][name] = min(points[count]["seconds"].get(name, float("inf")), took)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=20, help="tokens of each run's one prompt")
    parser.add_argument("--model", default="gpt2-tiny", help="smollm2 for the default model (slow on 2 cores)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--layer", type=int, default=1, help="the neuron examples and node-stats ask about")
    parser.add_argument("--node", type=int, default=3)
    parser.add_argument("--db", type=Path, help="a new warehouse folder (default: a temporary one)")
    args = parser.parse_args()
    if args.runs < 1:
        raise SystemExit("--runs must be 1 or more")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "lake"
        copy = db.with_name(db.name + "-after-1-run")
        if db.exists() or copy.exists():
            raise SystemExit(f"{db if db.exists() else copy} exists: pass a new --db folder")
        result = run(db, args.runs, args.tokens, args.model, args.repeat, args.layer, args.node)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
