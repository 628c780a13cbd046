"""Peak memory of an ingest must not grow with the number of prompts (issue 5: within 10%).

Runs `cli.py ingest` with the built-in gpt2-tiny model over N short prompts, each in a fresh subprocess
and a fresh database, and reads that child's peak RSS from the kernel (os.wait4's rusage, the per-child
form of resource.getrusage(RUSAGE_CHILDREN), which would otherwise report the maximum over all
children so far). Usage:

    .venv/bin/python bench/memory.py [--small 200] [--large 2000] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "bright"]


def write_prompts(path: Path, n: int) -> None:
    """Short distinct prompts (4 to 11 tokens), written line by line as a user's file would be."""
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(f"Prompt {i}: " + " ".join(WORDS[: 1 + i % 8]) + "\n")


def peak_rss_mib(n: int, batch_size: int, workdir: Path) -> tuple[float, float, str]:
    """(peak RSS in MiB, seconds, the CLI's summary line) of one ingest of n prompts."""
    prompts, db = workdir / f"prompts{n}.txt", workdir / f"w{n}.duckdb"
    write_prompts(prompts, n)
    args = [sys.executable, str(ROOT / "cli.py"), "ingest", "--db", str(db), "--model", "gpt2-tiny"]
    args += ["--prompts", str(prompts), "--batch-size", str(batch_size), "--quiet"]
    out_path, err_path = workdir / f"out{n}.txt", workdir / f"err{n}.txt"
    start = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child itself, so Popen must not wait
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ingest of {n} prompts failed ({proc.returncode}): {err_path.read_text().strip()}")
    return usage.ru_maxrss / 1024, seconds, out_path.read_text().strip()  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: peak_rss_mib(n, args.batch_size, Path(tmp)) for n in (args.small, args.large)}
    for n, (rss, seconds, summary) in results.items():
        print(f"{n:>6} prompts: peak RSS {rss:7.1f} MiB in {seconds:6.1f} s  ({summary})")
    small, large = results[args.small][0], results[args.large][0]
    ratio = large / small
    verdict = "within" if abs(ratio - 1) < 0.10 else "NOT within"
    print(f"ratio {args.large}/{args.small}: {ratio:.3f} ({verdict} 10%)")


if __name__ == "__main__":
    main()
