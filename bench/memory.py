"""Peak memory of an ingest: bounded for one long prompt, and not growing with the number of prompts.

    python -m bench.memory                        # SmolLM2, default capture: one 1000- and one 2000-token prompt
    python -m bench.memory --long 500 1500        # other lengths
    python -m bench.memory --scaling 200 2000     # gpt2-tiny, many short prompts (issue 5: within 10%)

A long prompt is ingested (ingest.worker.ingest, default options: the budget is what the machine has
available) in a fresh process into a fresh warehouse. The worker's up-front estimate (ingest/memory.py)
is of what a batch adds to the loaded ingest, and the budget it is held to is read once the model is
loaded: so the process's RSS is read at that moment too, and the estimate is set against its peak RSS
less that (issue 19: within 1.5x, never below). Beside it, another fresh process runs the same prompt
through the worker's model pass alone (run_batch: hooked forward and backward, tensors copied out,
nothing written), so the peak splits into the model's share and the writer's.

The many-prompt runs (--scaling) run `cli.py ingest` in a fresh subprocess, its peak RSS read from the
kernel (os.wait4's rusage of that child: resource.getrusage(RUSAGE_CHILDREN) would report the maximum
over all children so far). A long prompt is varied text, the repository's own prose with its whitespace
collapsed, cut to the wanted number of tokens; the result says whether it was stored or skipped, and why.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python bench/memory.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "bright"]
PROSE = ("docs/*.md", "TESTING.md", "README.md")  # in this order, as far as the wanted length needs


@dataclass
class Run:
    peak_rss_mib: float
    seconds: float
    returncode: int
    output: str  # the CLI's stdout and stderr, stripped


def long_text(n_tokens: int, tokenizer) -> str:  # type: ignore[no-untyped-def]
    """About n_tokens tokens of the repository's prose on one line (never one token repeated)."""
    files = [path for pattern in PROSE for path in sorted(ROOT.glob(pattern))]
    prose = " ".join(re.sub(r"\s+", " ", p.read_text()) for p in files)
    ids = tokenizer.encode_ordinary(prose)
    if len(ids) < n_tokens:
        raise SystemExit(f"the repository's prose is only {len(ids)} tokens: ask for fewer")
    return tokenizer.decode(ids[:n_tokens]).strip()


def ingest_child(args: list[str], workdir: Path, label: str) -> Run:
    """Run `cli.py ingest ARGS` in a fresh process; its own peak RSS, time, exit status and output."""
    out_path = workdir / f"out-{label}.txt"
    command = [sys.executable, str(ROOT / "cli.py"), "ingest", *args, "--quiet"]
    start = time.perf_counter()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child itself, so Popen must not wait
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return Run(usage.ru_maxrss / 1024, seconds, proc.returncode, out_path.read_text().strip())  # KiB on Linux


def rss_mib() -> float:
    """This process's resident set now (VmRSS), in MiB."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


def ingest_one(text_file: Path, model: str, batch_size: int) -> None:
    """Child: ingest the prompt in `text_file` into a fresh lake; prints what it added to the loaded
    ingest's RSS against the worker's estimate."""
    import resource

    from ingest import memory, worker
    from ingest.capture import CaptureSpec
    from ingest.prompts import PromptInput

    seen: dict = {}
    available, open_model = memory.available_bytes, worker.open_model

    def budget() -> int | None:  # read by the worker once the model is loaded and its weights stored
        seen["rss"] = rss_mib()
        return available()

    memory.available_bytes = budget
    worker.open_model = lambda name: seen.setdefault("loaded", open_model(name))
    text = text_file.read_text().strip()
    with tempfile.TemporaryDirectory(prefix="actwh-memory-") as tmp:
        start = time.perf_counter()
        options = worker.IngestOptions(model=model, progress=False, batch_size=batch_size)
        report = worker.ingest(Path(tmp) / "lake", [PromptInput(text)], options)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = seen["loaded"].model.config
    n_tokens = len(worker.prepare(seen["loaded"], PromptInput(text), "", False, True).ids)
    estimate = memory.estimate(config, CaptureSpec.parse(None, None, config), 1, n_tokens, True).total / 2**20
    verdict = "stored" if report.stored else f"SKIPPED ({report.skipped[0].reason})"
    added = peak - seen["rss"]
    print(
        f"{n_tokens:>6}-token prompt: {verdict} in {seconds:6.1f} s; RSS {seen['rss']:7.0f} MiB when the budget was"
        f" read, peak {peak:7.0f} MiB: the prompt added {added:7.0f} MiB; the worker's estimate {estimate:7.0f} MiB"
        f" ({estimate / added:.2f}x); load average {os.getloadavg()[0]:.2f}"
    )


def pass_only(n_tokens: int, model: str) -> None:
    """Child: the long prompt through run_batch alone; prints its peak RSS in MiB and the estimate."""
    import resource

    import numpy as np
    import torch

    from ingest import memory, worker
    from ingest.capture import CaptureSpec
    from ingest.prompts import PromptInput

    loaded = worker.open_model(model)
    spec = CaptureSpec.parse(None, None, loaded.model.config)
    item = worker.prepare(loaded, PromptInput(long_text(n_tokens, loaded.tokenizer)), "", False, True)
    needed = memory.estimate(loaded.model.config, spec, 1, len(item.ids), True, summaries=False, facts=False)
    before = rss_mib()
    captured = worker.run_batch(torch.device("cpu"), loaded, [item], np.arange(1), spec, True)
    kept = sum(a.nbytes for a in [*captured.forward.values(), *captured.backward.values()])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"        model pass alone: peak RSS {peak:8.1f} MiB (model loaded: {before:.0f} MiB; captured tensors kept: "
        f"{kept / 2**20:.0f} MiB); the worker's estimate of the pass: {needed.total / 2**20:.0f} MiB"
        f" (largest: {needed.largest()})"
    )


def long_prompts(lengths: list[int], model: str, batch_size: int) -> None:
    from ingest.checkpoints import load_model

    tokenizer = load_model(model).tokenizer
    with tempfile.TemporaryDirectory(prefix="actwh-memory-") as tmp:
        for n in lengths:
            prompt = Path(tmp) / f"long{n}.txt"
            prompt.write_text(long_text(n, tokenizer) + "\n")
            sys.stdout.flush()
            one = ["--ingest-one", str(prompt), "--model", model, "--batch-size", str(batch_size)]
            subprocess.run([sys.executable, "-m", "bench.memory", *one], cwd=ROOT, check=False)
            child = [sys.executable, "-m", "bench.memory", "--pass-only", str(n), "--model", model]
            subprocess.run(child, cwd=ROOT, check=False)


def write_short_prompts(path: Path, n: int) -> None:
    """Short distinct prompts (4 to 11 tokens), written line by line as a user's file would be."""
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(f"Prompt {i}: " + " ".join(WORDS[: 1 + i % 8]) + "\n")


def scaling(small: int, large: int, batch_size: int) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="actwh-memory-") as tmp:
        workdir = Path(tmp)
        for n in (small, large):
            prompts = workdir / f"prompts{n}.txt"
            write_short_prompts(prompts, n)
            args = ["--db", str(workdir / f"lake{n}"), "--model", "gpt2-tiny", "--prompts", str(prompts)]
            run = ingest_child([*args, "--batch-size", str(batch_size)], workdir, str(n))
            if run.returncode != 0:
                raise SystemExit(f"ingest of {n} prompts failed ({run.returncode}): {run.output}")
            results[n] = run
            print(f"{n:>6} prompts: peak RSS {run.peak_rss_mib:7.1f} MiB in {run.seconds:6.1f} s  ({run.output})")
    ratio = results[large].peak_rss_mib / results[small].peak_rss_mib
    verdict = "within" if abs(ratio - 1) < 0.10 else "NOT within"
    print(f"ratio {large}/{small}: {ratio:.3f} ({verdict} 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", type=int, nargs="*", default=[1000, 2000], help="token counts of single prompts")
    parser.add_argument("--model", default="smollm2", help="model of the long-prompt runs")
    parser.add_argument("--scaling", type=int, nargs=2, metavar=("SMALL", "LARGE"), help="gpt2-tiny prompt counts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pass-only", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ingest-one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_one:
        ingest_one(args.ingest_one, args.model, args.batch_size)
    elif args.pass_only:
        pass_only(args.pass_only, args.model)
    elif args.scaling:
        scaling(*args.scaling, args.batch_size)
    else:
        long_prompts(args.long, args.model, args.batch_size)


if __name__ == "__main__":
    main()
