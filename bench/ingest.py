"""Benchmark: end-to-end ingest into the lake, against the model pass alone and the way a user would
otherwise write it, in the same run.

    python -m bench.ingest                # SmolLM2, default capture, 64 prompts of 20 tokens
    python -m bench.ingest --quick        # gpt2-tiny, every location, seconds
    python -m bench.ingest --writer-split # one captured batch: conversion, DuckLake insert, pyarrow write

Each path runs in its own child process (so peak RSS is its own), one after the other:
- actwh float32 and actwh bfloat16 (`--precision`): `ingest.worker.ingest` into a fresh lake folder
  (model passes on the main thread; Arrow conversion and the DuckLake commit on the writer thread, the
  Parquet files on its pool of threads, `--writer-threads`, default every core but one). Time is split
  by wrapping run_batch (model pass + copy to numpy), the fact-row generators (Arrow conversion, pulled
  as the pool takes the rows) and LakeWriter.append_retrying (convert + files + registering commit);
  the IngestReport's write_seconds is the last.
- actwh summaries only (`--store summaries`): the same ingest keeping prompts, tokens and the per-node
  summaries, no fact rows (a dataset pass), against the model pass alone.
- model alone: the same prompts, batches and hooks through the worker's own run_batch, nothing stored:
  the ceiling the ingest can reach on this machine.
- baseline: the same model and prompts, a plain hook that keeps every wanted tensor in a dict (and
  retain_grad for gradients), per tensor a pandas DataFrame melted to long format, concatenated per
  batch and appended with `con.append` to a long `activations` table in a DuckDB file (what a user
  writes without actwh; a lake's fact table holds both passes in a row, which a melt does not give).
Figures: values/s and tokens/s over the prompt phase (model loaded, its weights already stored), stored
bytes per value (the facts table's live Parquet files over non-null forward + backward values; the
baseline: its file's growth after CHECKPOINT over its rows), peak RSS, and the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/ingest.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_SENTENCE = (
    "the of and to in is was for on that with as by at from his her their city river music science history war "
    "king paper light water north south market village island language school theory bridge forest"
)
WORDS = _SENTENCE.split(" ")
PATHS = ("actwh", "actwh-bf16", "actwh-summaries", "model", "baseline")


def prompt_texts(n: int, n_tokens: int, tokenizer) -> list[str]:  # type: ignore[no-untyped-def]
    """Deterministic prompts of exactly n_tokens tokens."""
    out = []
    for i in range(n):
        words, k = [f"{i}."], i  # the number keeps every prompt distinct (a repeat would be skipped as stored)
        while len(tokenizer.encode_ordinary(" ".join(words))) < n_tokens:
            words.append(WORDS[(k * 7 + len(words) * 13) % len(WORDS)])
            k += 1
        ids = tokenizer.encode_ordinary(" ".join(words))[:n_tokens]
        out.append(tokenizer.decode(ids))
    return out


class Timer:
    """Thread-safe seconds per label, for wrapped functions and generators."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def _add(self, label: str, seconds: float) -> None:
        with self._lock:
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds

    def wrap(self, label: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(label, time.perf_counter() - start)

        return timed

    def wrap_iter(self, label: str, fn: Callable) -> Callable:
        """A generator function whose time inside next() counts (the consumer's time does not)."""

        def timed(*args: Any, **kwargs: Any) -> Iterator:
            start = time.perf_counter()
            items = iter(fn(*args, **kwargs))
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    self._add(label, time.perf_counter() - start)
                    return
                self._add(label, time.perf_counter() - start)
                yield item
                start = time.perf_counter()

        return timed


def lake_facts(path: Path) -> tuple[int, int, int, int]:
    """(fact rows, stored values (non-null forward + backward), live Parquet bytes of `facts`, files)."""
    from warehouse import db

    with db.connect(path, read_only=True) as con:
        rows, values = con.execute("SELECT count(*), count(forward) + count(backward) FROM facts").fetchall()[0]
        size, files = con.execute(
            "SELECT sum(f.file_size_bytes), count(*) FROM __ducklake_metadata_actwh.ducklake_data_file f "
            "JOIN __ducklake_metadata_actwh.ducklake_table t USING (table_id) "
            "WHERE t.table_name = 'facts' AND t.end_snapshot IS NULL AND f.end_snapshot IS NULL"
        ).fetchall()[0]
    return int(rows), int(values), int(size or 0), int(files)


def _load(args: argparse.Namespace) -> tuple[Any, float, list[str]]:
    from ingest.checkpoints import load_model

    start = time.perf_counter()
    loaded = load_model(args.model)
    return loaded, time.perf_counter() - start, prompt_texts(args.prompts, args.tokens, loaded.tokenizer)


def run_actwh(args: argparse.Namespace, path: Path) -> dict:
    from ingest import passes, worker
    from ingest.model_rows import factor_weights, register_model
    from ingest.prompts import PromptInput
    from warehouse.writer import LakeWriter

    timer = Timer()
    loaded, load_s, texts = _load(args)
    worker.open_model = lambda name: loaded  # loaded once above, timed separately
    # store the model's weights first, so the prompt phase is what the figures time
    start = time.perf_counter()
    with LakeWriter(path) as writer:
        register_model(writer, loaded, factor_weights(loaded), False)
    register_s = time.perf_counter() - start
    worker.run_batch = timer.wrap("model pass", worker.run_batch)
    for name in ("location_rows", "first_row", "logits_rows"):
        wrap = timer.wrap_iter if name == "location_rows" else timer.wrap
        setattr(passes, name, wrap("arrow conversion", getattr(passes, name)))
    options = worker.IngestOptions(
        model=args.model,
        locations=args.locations,
        batch_size=args.batch_size,
        progress=False,
        precision=args.precision,
        writer_threads=args.writer_threads,
        **({"store": ("summaries",)} if args.child == "actwh-summaries" else {}),
    )
    start = time.perf_counter()
    report = worker.ingest(path, [PromptInput(t) for t in texts], options)
    prompt_s = time.perf_counter() - start
    rows, values, size, files = lake_facts(path)
    assert rows == report.rows, (rows, report.rows)
    split = {**timer.seconds, "write (convert + Parquet + commit)": report.write_seconds}
    return {
        "rows": rows,
        "values": values,
        "tokens": report.tokens,
        "bytes": size,
        "files": files,
        "load_s": load_s,
        "register_s": register_s,
        "prompt_s": prompt_s,
        "split": split,
    }


def run_model(args: argparse.Namespace) -> dict:
    """The worker's model pass over the same batches, with the same hooks, storing nothing."""
    import numpy as np
    import torch

    from ingest import worker
    from ingest.capture import CaptureSpec
    from ingest.prompts import PromptInput

    loaded, load_s, texts = _load(args)
    spec = CaptureSpec.parse(args.locations, None, loaded.model.config)
    items = [worker.prepare(loaded, PromptInput(t), "", False, True) for t in texts]
    start = time.perf_counter()
    tokens = 0
    for batch in worker.batches(items, args.batch_size):
        captured = worker.run_batch(torch.device("cpu"), loaded, batch, np.arange(len(batch)), spec, True)
        tokens += int(captured.lengths.sum())
        del captured
    prompt_s = time.perf_counter() - start
    return {"tokens": tokens, "load_s": load_s, "prompt_s": prompt_s, "split": {"model pass": prompt_s}}


BASELINE_TABLE = """CREATE TABLE activations (
    prompt_id INTEGER, token SMALLINT, token2 SMALLINT, layer SMALLINT, head SMALLINT, node_type VARCHAR,
    node_index INTEGER, dst VARCHAR, pass_type VARCHAR, value FLOAT)"""


def run_baseline(args: argparse.Namespace, path: Path) -> dict:
    """What a user writes without actwh: dict-of-tensors hooks, pandas melt, con.append to a DuckDB file."""
    import duckdb
    import numpy as np
    import pandas as pd
    import torch

    from ingest.capture import CaptureSpec
    from ingest.objective import per_prompt_objective
    from warehouse.registry import LOCATIONS, PassType

    loaded, load_s, texts = _load(args)
    model = loaded.model
    spec = CaptureSpec.parse(args.locations, None, model.config)
    con = duckdb.connect(str(path))
    con.execute(BASELINE_TABLE)
    con.execute("CHECKPOINT")
    before = path.stat().st_size
    start = time.perf_counter()
    rows = tokens = 0
    split = {"model pass": 0.0, "pandas": 0.0, "duckdb insert": 0.0}
    for first in range(0, len(texts), args.batch_size):
        t0 = time.perf_counter()
        batch = [loaded.tokenizer.encode_ordinary(t) for t in texts[first : first + args.batch_size]]
        lengths = torch.tensor([len(p) for p in batch])
        ids = torch.zeros((len(batch), int(lengths.max())), dtype=torch.long)
        for b, p in enumerate(batch):
            ids[b, : len(p)] = torch.tensor(p)
        cache: dict[tuple[str, int | None], torch.Tensor] = {}

        def hook(name: str, layer: int | None, tensor: torch.Tensor, cache=cache) -> torch.Tensor:  # type: ignore[no-untyped-def]
            if name in spec.passes:
                cache[(name, layer)] = tensor
                if tensor.requires_grad:
                    tensor.retain_grad()
            return tensor

        logits = model.forward(ids, lengths, hook)
        n = len(batch)
        per_prompt_objective(logits, ids, lengths, [None] * n, [None] * n).sum().backward()
        t1 = time.perf_counter()
        frames = []
        for (name, layer), tensor in cache.items():
            loc = LOCATIONS[name]
            for pass_type in spec.passes[name]:
                if name == "logits":
                    continue
                source = tensor if pass_type == PassType.FORWARD else tensor.grad
                if source is None:
                    continue
                array = source.detach().numpy()
                for b, length in enumerate(lengths.tolist()):
                    frames.append(_melt(pd, array[b], length, loc, first + b, layer, pass_type.value))
        for b, length in enumerate(lengths.tolist()):  # logits: the last token's top 20
            last = logits[b, length - 1].detach().numpy()
            top = np.argsort(-last)[:20]
            frames.append(
                pd.DataFrame(
                    {"prompt_id": first + b, "token": length - 1, "node_index": top, "value": last[top]}
                ).assign(layer=None, node_type="vocab_token", dst="logits", pass_type="forward")
            )
        df = pd.concat(frames, ignore_index=True)
        df = df[
            ["prompt_id", "token", "token2", "layer", "head", "node_type", "node_index", "dst", "pass_type", "value"]
        ]
        t2 = time.perf_counter()
        con.append("activations", df)
        t3 = time.perf_counter()
        split["model pass"] += t1 - t0
        split["pandas"] += t2 - t1
        split["duckdb insert"] += t3 - t2
        rows += len(df)
        tokens += int(lengths.sum())
    prompt_s = time.perf_counter() - start
    stored = con.execute("SELECT count(*) FROM activations").fetchall()[0][0]
    con.execute("CHECKPOINT")
    con.close()
    assert stored == rows
    return {
        "rows": rows,
        "values": rows,
        "tokens": tokens,
        "bytes": path.stat().st_size - before,
        "load_s": load_s,
        "prompt_s": prompt_s,
        "split": split,
    }


def _melt(pd, array, length: int, loc, prompt_id: int, layer, pass_type: str):  # type: ignore[no-untyped-def]
    """One prompt's tensor as long rows: DataFrame over the leading axes, melt over the last."""
    real = array[:length, :length] if loc.n_token_axes == 2 else array[:length]
    names = ["token", "token2"][: loc.n_token_axes] + (["head"] if loc.head_axis is not None else [])
    index = pd.MultiIndex.from_product([range(s) for s in real.shape[:-1]], names=names).to_frame(index=False)
    wide = pd.concat([index, pd.DataFrame(real.reshape(-1, real.shape[-1]))], axis=1)
    long = wide.melt(id_vars=names, var_name="node_index", value_name="value")
    if loc.n_token_axes == 2:
        long = long[long["token2"] <= long["token"]]
    for column in ("token2", "head"):
        if column not in long:
            long[column] = None
    return long.assign(
        prompt_id=prompt_id, layer=layer, node_type=loc.node_type.value, dst=loc.dst, pass_type=pass_type
    )


def child(args: argparse.Namespace) -> None:
    path = Path(args.db)
    if args.child == "model":
        result = run_model(args)
    elif args.child == "baseline":
        result = run_baseline(args, path)
    else:
        result = run_actwh(args, path)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def writer_split(args: argparse.Namespace) -> None:
    """Where the writer's time goes, on one real captured batch held in memory (best of 2 each): the fact
    rows' Arrow conversion (with its costliest functions), the product's commit of those rows into a new
    lake (LakeWriter.append_retrying: the writer's threads write pyarrow files, the commit registers them;
    and LakeWriter.append without files: DuckDB's Parquet writer, one INSERT per pattern of NULL columns),
    and pyarrow's Parquet writer on the same rows alone (zstd, BYTE_STREAM_SPLIT floats, as STORAGE.md
    measured)."""
    import cProfile
    import pstats

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from ingest import passes, worker
    from ingest.capture import CaptureSpec
    from ingest.prompts import PromptInput
    from warehouse.facts import FACT_SCHEMA
    from warehouse.writer import LakeWriter

    loaded, _, texts = _load(args)
    spec = CaptureSpec.parse(args.locations, None, loaded.model.config)
    items = [worker.prepare(loaded, PromptInput(t), "", False, True) for t in texts[: args.batch_size]]
    captured = worker.run_batch(torch.device("cpu"), loaded, items, np.arange(len(items)), spec, True)

    def convert() -> list[pa.RecordBatch]:
        return list(passes.fact_rows(captured, spec.logits_top_k, False))

    def best(fn: Callable[[], Any]) -> tuple[float, float]:
        """The faster of two runs: (wall seconds, CPU seconds of every thread of this process)."""
        times = []
        for _ in range(2):
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            times.append((time.perf_counter() - start, time.process_time() - cpu))
        return min(times)

    convert_s = best(convert)
    profiler = cProfile.Profile()
    profiler.enable()
    rows = convert()
    profiler.disable()
    n_values = sum(2 * b.num_rows - b.column("forward").null_count - b.column("backward").null_count for b in rows)
    table = pa.Table.from_batches(rows, FACT_SCHEMA)
    floats = ["forward", "backward"]
    commits: dict[str, list[tuple[float, float]]] = {"files": [], "insert": []}
    lake_bytes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="actwh-split-") as tmp:
        for i, way in itertools.product(range(2), commits):
            # the product's commit of the batch (prompts, tokens, facts, run progress) into a new lake, its
            # rows already converted: fact files written by the writer's threads and registered ("files"),
            # or inserted by DuckDB inside the transaction ("insert"); opening the lake is not timed
            lake = Path(tmp) / f"{way}{i}"
            with LakeWriter(lake, writer_threads=args.writer_threads) as writer:
                batch = worker.to_batch(captured, 0, 0, loaded, spec.logits_top_k, False)
                batch.facts = iter(rows)
                cpu, start = time.process_time(), time.perf_counter()
                if way == "files":
                    writer.append_retrying(lambda batch=batch: batch, 0)
                else:
                    writer.append(batch, 0)
                commits[way].append((time.perf_counter() - start, time.process_time() - cpu))
            lake_bytes[way] = sum(f.stat().st_size for f in (lake / "data" / "main" / "facts").rglob("*.parquet"))
        pyarrow_s = best(
            lambda: pq.write_table(
                table, f"{tmp}/pa.parquet", compression="zstd", use_byte_stream_split=floats, use_dictionary=False
            )
        )
        pyarrow_dict_s = best(
            lambda: pq.write_table(
                table,
                f"{tmp}/pa.parquet",
                compression="zstd",
                use_byte_stream_split=floats,
                use_dictionary=[c for c in table.column_names if c not in floats],
            )
        )
        pa_bytes = Path(f"{tmp}/pa.parquet").stat().st_size
    print(
        f"one batch of {len(items)} x {args.tokens} tokens ({args.model}): {table.num_rows:,} rows, {n_values:,} "
        f"stored values; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    for label, (seconds, cpu), size in [
        ("Arrow conversion (fact_rows)", convert_s, None),
        ("LakeWriter.append_retrying: pool's pyarrow files + registration", min(commits["files"]), lake_bytes["files"]),
        ("LakeWriter.append: DuckDB INSERTs into the lake + commit", min(commits["insert"]), lake_bytes["insert"]),
        ("pyarrow write_table, zstd + BYTE_STREAM_SPLIT, no dictionary", pyarrow_s, None),
        ("pyarrow write_table, as above + dictionary on the index columns", pyarrow_dict_s, pa_bytes),
    ]:
        line = f"  {label:66s} {seconds:6.2f} s ({cpu:5.2f} CPU s)  {n_values / seconds / 1e6:6.1f} M values/s"
        print(line + (f", {size / n_values:.2f} bytes/value" if size else ""))
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="gpt2-tiny, every location, 32 prompts")
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=None, help="number of prompts (default 64; 32 with --quick)")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--locations", nargs="*", default=None, help="default: the default capture")
    parser.add_argument(
        "--baseline-prompts",
        type=int,
        default=None,
        help="prompts for the baseline (default 16, all with --quick): it is slow, and tokens/s is a rate",
    )
    parser.add_argument("--paths", nargs="*", choices=PATHS, default=list(PATHS), help="which paths to run")
    parser.add_argument("--writer-split", action="store_true", help="time the writer's parts on one batch")
    parser.add_argument(
        "--writer-threads", type=int, default=None, help="threads writing fact files (default: every core but one)"
    )
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.model = args.model or "gpt2-tiny"
        args.prompts = args.prompts or 32
        if args.locations is None:
            from warehouse.registry import PRE_NORM_LOCATIONS

            args.locations = PRE_NORM_LOCATIONS
    args.model = args.model or "smollm2"
    args.prompts = args.prompts or 64
    args.baseline_prompts = args.baseline_prompts or (args.prompts if args.quick else min(16, args.prompts))
    if args.child:
        child(args)
        return
    if args.writer_split:
        writer_split(args)
        return
    results = {}
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="actwh-bench-") as tmp:
        for path in args.paths:
            command = [sys.executable, "-m", "bench.ingest", "--child", path, "--db", f"{tmp}/{path}"]
            n_prompts = args.baseline_prompts if path == "baseline" else args.prompts
            command += ["--model", args.model, "--prompts", str(n_prompts), "--tokens", str(args.tokens)]
            command += ["--batch-size", str(args.batch_size)]
            command += ["--precision", "bfloat16" if path == "actwh-bf16" else "float32"]
            if args.writer_threads is not None:
                command += ["--writer-threads", str(args.writer_threads)]
            if args.locations:
                command += ["--locations", *args.locations]
            out = subprocess.run(command, capture_output=True, text=True, cwd=root, env=os.environ, check=False)
            if out.returncode != 0:
                sys.exit(f"{path} failed:\n{out.stderr[-3000:]}")
            results[path] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{path}: {results[path]}", file=sys.stderr)
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    print(
        f"model {args.model}, {args.prompts} prompts x {args.tokens} tokens, batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end"
    )
    for path, r in results.items():
        tok_s = r["tokens"] / r["prompt_s"]
        line = f"{path:10s} {r['tokens']:>7,} tokens in {r['prompt_s']:7.1f} s: {tok_s:7.1f} tokens/s"
        if r.get("values"):
            line += (
                f", {r['values']:,} values, {r['values'] / r['prompt_s'] / 1e6:6.2f} M values/s, "
                f"{r['bytes'] / r['values']:.2f} bytes/value"
            )
        if "files" in r:
            line += f" ({r['files']} Parquet files)"
        line += f", peak RSS {r['peak_rss_mb']:,.0f} MB (model load {r['load_s']:.1f} s"
        line += f", weights stored {r['register_s']:.1f} s)" if "register_s" in r else ")"
        print(line)
        split = ", ".join(f"{k} {v:.1f} s" for k, v in r["split"].items())
        print(f"{'':10s} time split (thread seconds; in actwh the writer overlaps the model): {split}")
    if "actwh" not in results:
        return
    if "actwh-summaries" in results and "model" in results:
        s, m = results["actwh-summaries"], results["model"]
        ratio = (s["tokens"] / s["prompt_s"]) / (m["tokens"] / m["prompt_s"])
        print(f"actwh summaries-only tokens/s / model's: {ratio:.2f}")
    a = results["actwh"]
    a_tok_s = a["tokens"] / a["prompt_s"]
    for other in ("actwh-bf16", "model", "baseline"):
        if other in results:
            o = results[other]
            print(f"actwh float32 tokens/s / {other}'s: {a_tok_s / (o['tokens'] / o['prompt_s']):.2f}")
    model_s, write_s = a["split"].get("model pass", 0.0), a["split"]["write (convert + Parquet + commit)"]
    side = "the model pass" if model_s >= write_s else "the writer"
    print(f"bottleneck: {side} (model pass {model_s:.1f} s, writer {write_s:.1f} s of {a['prompt_s']:.1f} s wall)")


if __name__ == "__main__":
    main()
