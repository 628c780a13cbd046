"""Benchmark: `actwh ingest --workers N` into one PostgreSQL-catalog warehouse, N = 1, 2, 4.

    python -m bench.workers                       # gpt2-tiny, 256 prompts of 12-30 words, N = 1 2 4
    python -m bench.workers --model smollm2 --prompts 32 --workers 1 2

Starts its own PostgreSQL on 127.0.0.1 (tests/postgres.py), and for each N a fresh database and data
folder, then times the whole command (worker start-up, model load, passes, commits) and reads from the
workers' summary lines the fact rows stored and the commits they lost to another worker and ran again.
Every prompt is checked to be stored once. On a CPU-only machine the workers share its cores: the figure
says what concurrency costs or gains there, not what N GPUs give.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/workers.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.postgres import running_server
from warehouse import db

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "red",
    "green",
    "blue",
    "north",
    "south",
    "east",
    "west",
    "cat",
    "dog",
    "bird",
    "one",
    "two",
    "three",
]
_SUMMARY = re.compile(r"stored (\d+) prompts \((\d+) tokens, ([\d,]+) rows\).*?(?:; (\d+) commits retried)?$")


def prompt_file(path: Path, count: int) -> Path:
    """`count` different prompts of 12 to 30 words."""
    lines = [" ".join(random.Random(i).choices(WORDS, k=12 + i % 19)) for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(count: int, catalog: str, data: Path, prompts: Path, model: str, batch: int) -> dict[str, float]:
    command = [sys.executable, str(ROOT / "cli.py"), "ingest", "--db", catalog, "--data-path", str(data)]
    command += ["--model", model, "--prompts", str(prompts), "--quiet", "--workers", str(count)]
    command += ["--batch-size", str(batch), "--device", "cpu"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{count} workers failed: {done.stderr.strip().splitlines()[-1:]}")
    prompts_stored = rows = retried = 0
    for line in done.stdout.splitlines():
        match = _SUMMARY.search(line)
        if match:
            prompts_stored += int(match.group(1))
            rows += int(match.group(3).replace(",", ""))
            retried += int(match.group(4) or 0)
    with db.connect(catalog, read_only=True) as con:
        once = con.execute("SELECT count(*) = count(DISTINCT prompt_key) FROM prompts").fetchall()[0][0]
    return {"workers": count, "seconds": seconds, "prompts": prompts_stored, "rows": rows,
            "rows_per_s": rows / seconds, "retried": retried, "once": bool(once)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, model {args.model}, {args.prompts} prompts, batch {args.batch_size}")
    print("| workers | wall s | prompts | fact rows | rows/s | commits retried | every prompt once |")
    print("|---|---|---|---|---|---|---|")
    with running_server() as server, tempfile.TemporaryDirectory(prefix="actwh-bench-") as tmp:
        prompts = prompt_file(Path(tmp) / "prompts.txt", args.prompts)
        for count in args.workers:
            r = run(count, server.new_database(), Path(tmp) / f"data{count}", prompts, args.model, args.batch_size)
            print(f"| {count} | {r['seconds']:.1f} | {r['prompts']} | {r['rows']:,} | {r['rows_per_s']:,.0f} "
                  f"| {r['retried']} | {'yes' if r['once'] else 'NO'} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
