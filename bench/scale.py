"""Benchmark: dataset-scale questions answered from the per-node summaries, at two warehouse sizes.

    python -m bench.scale ingest --db W --tokens 100000 [--precision bfloat16] [--store summaries|facts]
    python -m bench.scale queries --db W [--repeat 3]
    python -m bench.scale overhead --tokens 960     # ingest with and without summaries, same prompts
    python -m bench.scale ingest --db W --tokens 40 --model gpt2-tiny                  # a smoke run, then
    python -m bench.scale queries --db W --repeat 1 --layer 1 --node 3

`ingest` stores SmolLM2 (the default model) prompts of exactly 20 tokens with the default capture and
prints the prompt-phase time, tokens/s and the lake's size on disk. `queries` times, each in a new
process (`python cli.py ...`, start to exit), `rank` (mean mlp_act_times_grad over all prompts),
`examples` (one neuron, with context) and `node-stats` (one neuron), best of --repeat. `overhead` ingests
the same prompts into two fresh lakes, summaries off then on, and prints how much longer the prompt phase
took with them, in wall time and in CPU time of the process (all threads; steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/scale.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import prompt_texts

ROOT = Path(__file__).resolve().parent.parent
TOKENS_PER_PROMPT = 20


def query_commands(layer: int, node: int) -> dict[str, list[str]]:
    """The timed commands; `examples` and `node-stats` ask about one neuron (layer 10, node 100 by default)."""
    neuron = ["--layer", str(layer), "--node", str(node)]
    return {
        "rank": ["rank", "--dst", "mlp_act_times_grad", "--by", "mean", "-k", "20"],
        "examples": ["examples", "--dst", "mlp_post_act", *neuron, "-k", "20"],
        "node-stats": ["node-stats", "--dst", "mlp_post_act", *neuron],
    }


def ingest(
    db: Path, tokens: int, precision: str, store: str, offset: int = 0, model: str | None = None
) -> dict[str, Any]:
    """Ingest `tokens` tokens of fresh prompts keeping `store` (ingest --store); the prompt phase's figures."""
    from ingest import worker
    from ingest.model_rows import factor_weights, register_model
    from ingest.prompts import PromptInput
    from warehouse.writer import LakeWriter

    model = model or worker.IngestOptions().model
    loaded = worker.open_model(model)
    worker.open_model = lambda name: loaded  # loaded once, outside the timed prompt phase
    with LakeWriter(db) as writer:  # the weights first, so the figure times the prompt phase
        register_model(writer, loaded, factor_weights(loaded), False)
    weights_size = sum(p.stat().st_size for p in db.rglob("*") if p.is_file())
    n_prompts = tokens // TOKENS_PER_PROMPT
    texts = prompt_texts(offset + n_prompts, TOKENS_PER_PROMPT, loaded.tokenizer)[offset:]
    options = worker.IngestOptions(model=model, progress=False, precision=precision, store=tuple(store.split(",")))
    start, cpu_start = time.perf_counter(), time.process_time()
    report = worker.ingest(db, [PromptInput(t) for t in texts], options)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    size = sum(p.stat().st_size for p in db.rglob("*") if p.is_file())
    return {
        "prompts": report.stored,
        "tokens": report.tokens,
        "rows": report.rows,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),  # every thread of the process: steadier than wall time on a busy host
        "tokens_per_s": round(report.tokens / seconds, 1),
        "bytes_on_disk": size,
        "bytes_added": size - weights_size,  # what the prompts added: the model's weights left out
        "store": store,
    }


def queries(db: Path, repeat: int, layer: int = 10, node: int = 100) -> dict[str, float]:
    """Best-of-`repeat` seconds from process start to exit, per query."""
    out = {}
    for name, args in query_commands(layer, node).items():
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, str(ROOT / "cli.py"), *args, "--db", str(db)], capture_output=True, text=True
            )
            elapsed = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr.strip()}")
            best = min(best, elapsed)
        out[name] = round(best, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("ingest", "queries", "overhead"))
    parser.add_argument("--db", type=Path)
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--precision", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--store", default="facts,summaries", help="what the ingest keeps (actwh ingest --store)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="smollm2", help="gpt2-tiny for a smoke run (the figures are SmolLM2's)")
    parser.add_argument("--layer", type=int, default=10, help="the neuron `queries` asks examples and node-stats of")
    parser.add_argument("--node", type=int, default=100)
    args = parser.parse_args()
    if args.what == "ingest":
        print(json.dumps(ingest(args.db, args.tokens, args.precision, args.store, model=args.model)))
    elif args.what == "queries":
        print(json.dumps(queries(args.db, args.repeat, args.layer, args.node)))
    else:
        results = []
        for store in ("facts", "facts,summaries"):  # each in its own process, so neither warms the other's caches
            with tempfile.TemporaryDirectory() as tmp:
                flags = ["--store", store]
                command = [sys.executable, "-m", "bench.scale", "ingest", "--db", f"{tmp}/lake"]
                command += ["--tokens", str(args.tokens), "--precision", args.precision, "--model", args.model, *flags]
                done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), flush=True)
        wall = results[1]["seconds"] / results[0]["seconds"] - 1
        cpu = results[1]["cpu_seconds"] / results[0]["cpu_seconds"] - 1
        print(json.dumps({"overhead_wall": round(wall, 3), "overhead_cpu": round(cpu, 3)}))


if __name__ == "__main__":
    main()
