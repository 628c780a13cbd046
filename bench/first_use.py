"""Benchmark: a new user's first minutes, a new warehouse with one short prompt, and `make demo`.

    python -m bench.first_use                 # SmolLM2 (the default model), one 5-token prompt
    python -m bench.first_use --profile 25    # and the 25 costliest functions of the ingest (cProfile)
    python -m bench.first_use --model gpt2-tiny   # the same steps with the tiny model (the smoke test's)

1. In a fresh process: `ingest.worker.ingest` of one prompt into a new warehouse folder, with the model
   load timed apart (the worker's open_model wrapped), so the figure is the seconds beyond loading the
   model: creating the lake, storing the model's weights and vocabulary, the pass, the commit. Then the
   folder's size (catalog + Parquet), with the facts table's files and the weight tables' apart. The
   same ingest as a user runs it, `cli.py ingest`, is timed from process start to exit.
2. `make demo`'s two commands (an ingest of examples/capitals.jsonl into a new warehouse, then the demo
   query), each timed from process start to exit, with this interpreter (and --model, which `make demo`
   leaves at the default).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/first_use.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"  # 5 SmolLM2 tokens


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def table_bytes(path: Path) -> dict[str, int]:
    """Live Parquet bytes per lake table."""
    from warehouse import db

    with db.connect(path, read_only=True) as con:
        rows = con.execute(
            "SELECT t.table_name, sum(f.file_size_bytes) FROM __ducklake_metadata_actwh.ducklake_data_file f "
            "JOIN __ducklake_metadata_actwh.ducklake_table t USING (table_id) "
            "WHERE t.end_snapshot IS NULL AND f.end_snapshot IS NULL GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    return {str(name): int(size) for name, size in rows}


def child(model: str, lake: Path, profile: int) -> None:
    """One prompt into a new warehouse, in this process; prints a JSON line of the timings."""
    start = time.perf_counter()
    from ingest import worker
    from ingest.prompts import PromptInput

    import_s = time.perf_counter() - start
    load_s = 0.0
    open_model = worker.open_model

    def timed_open(name: str):  # type: ignore[no-untyped-def]
        nonlocal load_s
        t0 = time.perf_counter()
        try:
            return open_model(name)
        finally:
            load_s += time.perf_counter() - t0

    worker.open_model = timed_open
    options = worker.IngestOptions(model=model, progress=False)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    report = worker.ingest(lake, [PromptInput(PROMPT)], options)
    ingest_s = time.perf_counter() - start
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(profile)
    print(
        json.dumps(
            {
                "import_s": import_s,
                "load_s": load_s,
                "ingest_s": ingest_s,
                "beyond_load_s": ingest_s - load_s,
                "write_s": report.write_seconds,
                "tokens": report.tokens,
                "rows": report.rows,
            }
        )
    )


def timed_command(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return seconds, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions of the ingest")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.child, args.profile)
        return
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="actwh-first-") as tmp:
        lake = Path(tmp) / "first"
        command = [python, "-m", "bench.first_use", "--child", str(lake), "--model", args.model]
        out = subprocess.run([*command, "--profile", str(args.profile)], cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"first-use ingest failed: {out.stderr.strip()[-3000:]}")
        if args.profile:
            print(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        size, tables = folder_bytes(lake), table_bytes(lake)
        catalog = (lake / "catalog.sqlite").stat().st_size
        cli_lake = Path(tmp) / "cli"
        ingest = [python, "cli.py", "ingest", "--model", args.model, "--quiet", "--db"]
        cli_s, _ = timed_command([*ingest, str(cli_lake), "--prompt", PROMPT])
        demo = Path(tmp) / "demo"
        demo_ingest_s, _ = timed_command([*ingest, str(demo), "--prompts", "examples/capitals.jsonl"])
        query = (ROOT / "examples" / "demo_query.sql").read_text()
        demo_sql_s, demo_out = timed_command([python, "cli.py", "sql", "--db", str(demo), "--", query])
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    print(
        f"one {r['tokens']}-token prompt into a new warehouse ({args.model}): imports {r['import_s']:.1f} s, "
        f"ingest {r['ingest_s']:.1f} s of which model load {r['load_s']:.1f} s, "
        f"beyond the load {r['beyond_load_s']:.1f} s (commit of the batch {r['write_s']:.2f} s)"
    )
    parts = ", ".join(f"{name} {b / 2**20:.2f}" for name, b in tables.items())
    print(
        f"warehouse after it: {size / 2**20:.1f} MiB ({size / 1e6:.1f} MB; catalog {catalog / 2**20:.1f} MiB; "
        f"Parquet MiB by table: {parts})"
    )
    print(f"the same through the CLI, process start to exit: {cli_s:.1f} s")
    print(
        f"make demo's commands: ingest {demo_ingest_s:.1f} s + sql {demo_sql_s:.1f} s = "
        f"{demo_ingest_s + demo_sql_s:.1f} s; the query printed {len(demo_out.splitlines())} lines"
    )


if __name__ == "__main__":
    main()
