"""Benchmark: end-to-end ingest against the way a user would otherwise write it, in the same run.

    python -m bench.ingest                # SmolLM2, default locations, 64 prompts of 20 tokens
    python -m bench.ingest --quick        # gpt2-tiny, every location, seconds

Each path runs in its own child process (so peak RSS is its own) on a fresh DuckDB file:
- actwh: `ingest.worker.ingest` (model passes on the main thread, Arrow conversion and the DuckDB commit on
  the writer thread). Time is split by wrapping run_batch (model pass + copy to numpy), to_batch (Arrow)
  and DuckDBWriter.append (insert + commit); the split sums CPU-thread time, which overlaps.
- baseline: the same model and prompts, a plain hook that keeps every wanted tensor in a dict (and
  retain_grad for gradients), per tensor a pandas DataFrame melted to long format, concatenated per
  batch and appended with `con.append` into the same `activations` table.
Figures: rows/s and tokens/s over the prompt phase (after the model is loaded and its weights stored),
stored bytes per value (file size after CHECKPOINT / rows), peak RSS, and the baseline/actwh ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/ingest.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_SENTENCE = (
    "the of and to in is was for on that with as by at from his her their city river music science history war "
    "king paper light water north south market village island language school theory bridge forest"
)
WORDS = _SENTENCE.split(" ")


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
    """Thread-safe seconds per label, for wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def wrap(self, label: str, fn):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        return timed


def _checkpointed_size(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db))
    try:
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return db.stat().st_size


def _stored(db: Path) -> tuple[int, int]:
    """Activation rows, and the file's size after CHECKPOINT."""
    import duckdb

    con = duckdb.connect(str(db))
    try:
        rows = con.execute("SELECT count(*) FROM activations").fetchall()[0][0]
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return int(rows), db.stat().st_size


def run_actwh(args: argparse.Namespace, db: Path) -> dict:
    from ingest import worker
    from ingest.prompts import PromptInput
    from warehouse.writer import DuckDBWriter

    timer = Timer()
    start = time.perf_counter()
    loaded = worker.load_model(args.model)
    load_s = time.perf_counter() - start
    texts = prompt_texts(args.prompts, args.tokens, loaded.tokenizer)
    worker.load_model = lambda name: loaded  # loaded once above, timed separately
    if hasattr(worker, "open_model"):
        worker.open_model = lambda name: loaded
    # register the model's weights first, so the prompt phase is what the figures time
    start = time.perf_counter()
    with DuckDBWriter(db) as writer:
        worker.register_model(writer, loaded)
    register_s = time.perf_counter() - start
    before = _checkpointed_size(db)  # weights and vocabulary: not activation bytes
    worker.run_batch = timer.wrap("model pass", worker.run_batch)
    worker.to_batch = timer.wrap("arrow", worker.to_batch)
    DuckDBWriter.append = timer.wrap("duckdb insert", DuckDBWriter.append)
    options = worker.IngestOptions(
        model=args.model, locations=args.locations, batch_size=args.batch_size, progress=False
    )
    start = time.perf_counter()
    report = worker.ingest(db, [PromptInput(t) for t in texts], options)
    prompt_s = time.perf_counter() - start
    rows, size = _stored(db)
    assert rows == report.rows, (rows, report.rows)
    return {
        "rows": rows,
        "tokens": report.tokens,
        "bytes": size - before,
        "load_s": load_s,
        "register_s": register_s,
        "prompt_s": prompt_s,
        "split": timer.seconds,
    }


def run_baseline(args: argparse.Namespace, db: Path) -> dict:
    """What a user writes without actwh: dict-of-tensors hooks, pandas melt, con.append."""
    import numpy as np
    import pandas as pd
    import torch

    from ingest.capture import CaptureSpec
    from ingest.checkpoints import load_model
    from ingest.objective import per_prompt_objective
    from warehouse import db as wdb
    from warehouse.registry import LOCATIONS, PassType

    start = time.perf_counter()
    loaded = load_model(args.model)
    load_s = time.perf_counter() - start
    texts = prompt_texts(args.prompts, args.tokens, loaded.tokenizer)
    model = loaded.model
    spec = CaptureSpec.parse(args.locations, None, model.config.n_layers)
    wdb.connect(db).close()  # same schema and ENUM types as actwh's file
    before = _checkpointed_size(db)
    con = wdb.connect(db)
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
                    frames.append(_melt(pd, np, array[b], length, loc, first + b, layer, pass_type.value))
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
    con.close()
    prompt_s = time.perf_counter() - start
    stored, size = _stored(db)
    assert stored == rows
    return {
        "rows": rows,
        "tokens": tokens,
        "bytes": size - before,
        "load_s": load_s,
        "prompt_s": prompt_s,
        "split": split,
    }


def _melt(pd, np, array, length: int, loc, prompt_id: int, layer, pass_type: str):  # type: ignore[no-untyped-def]
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
    db = Path(args.db)
    result = run_actwh(args, db) if args.child == "actwh" else run_baseline(args, db)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


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
        help="prompts for the baseline (default 16, all with --quick): it is slow, and rows/s is a rate",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--layouts", action="store_true", help="insert one real batch into other table layouts")
    parser.add_argument("--child", choices=["actwh", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.model = args.model or "gpt2-tiny"
        args.prompts = args.prompts or 32
        if args.locations is None:
            from warehouse.registry import LOCATIONS

            args.locations = [name for name, loc in LOCATIONS.items() if not loc.only_with]
    args.model = args.model or "smollm2"
    args.prompts = args.prompts or 64
    args.baseline_prompts = args.baseline_prompts or (args.prompts if args.quick else min(16, args.prompts))
    if args.child:
        child(args)
        return
    if args.layouts:
        layouts(args)
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="actwh-bench-") as tmp:
        for path in ["actwh"] + ([] if args.skip_baseline else ["baseline"]):
            command = [sys.executable, "-m", "bench.ingest", "--child", path, "--db", f"{tmp}/{path}.duckdb"]
            n_prompts = args.prompts if path == "actwh" else args.baseline_prompts
            command += ["--model", args.model, "--prompts", str(n_prompts), "--tokens", str(args.tokens)]
            command += ["--batch-size", str(args.batch_size)]
            if args.locations:
                command += ["--locations", *args.locations]
            root = Path(__file__).resolve().parent.parent
            out = subprocess.run(command, capture_output=True, text=True, cwd=root, env=os.environ, check=False)
            if out.returncode != 0:
                sys.exit(f"{path} failed:\n{out.stderr[-3000:]}")
            results[path] = json.loads(out.stdout.strip().splitlines()[-1])
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    print(
        f"model {args.model}, {args.prompts} prompts x {args.tokens} tokens, batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs"
    )
    for path, r in results.items():
        rows_s, tok_s = r["rows"] / r["prompt_s"], r["tokens"] / r["prompt_s"]
        print(
            f"{path:9s} {r['rows']:>12,} rows in {r['prompt_s']:7.1f} s: {rows_s / 1e6:6.2f} M rows/s, "
            f"{tok_s:7.1f} tokens/s, {r['bytes'] / r['rows']:.2f} bytes/value, peak RSS {r['peak_rss_mb']:,.0f} MB "
            f"(model load {r['load_s']:.1f} s"
            + (f", weights stored {r['register_s']:.1f} s)" if "register_s" in r else ")")
        )
        split = ", ".join(f"{k} {v:.1f} s" for k, v in r["split"].items())
        print(f"{'':9s} time split (thread seconds, they overlap in actwh): {split}")
    if "baseline" in results:
        a, b = results["actwh"], results["baseline"]
        print(f"actwh is {b['prompt_s'] / a['prompt_s'] * a['rows'] / b['rows']:.2f}x the baseline's rows/s")


def layouts(args: argparse.Namespace) -> None:
    """Insert one real captured batch into fresh tables of other physical layouts (best of 2 each)."""
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from ingest import worker
    from ingest.capture import CaptureSpec
    from ingest.prompts import PromptInput
    from warehouse import db as wdb
    from warehouse.facts import FACT_SCHEMA

    loaded = worker.load_model(args.model)
    spec = CaptureSpec.parse(args.locations, None, loaded.model.config.n_layers)
    texts = prompt_texts(args.batch_size, args.tokens, loaded.tokenizer)
    items = [worker.prepare(loaded, PromptInput(t), "", False, True) for t in texts]
    captured = worker.run_batch(torch.device("cpu"), loaded, items, np.arange(len(items)), spec, True)
    facts = pa.concat_tables(
        [t.cast(FACT_SCHEMA) for t in worker.to_batch(captured, 0, 0, loaded, spec.logits_top_k).activations]
    )
    codes = facts
    for name in ("node_type", "dst", "pass_type"):
        i = codes.schema.get_field_index(name)
        codes = codes.set_column(i, name, pc.dictionary_encode(codes[name]).combine_chunks().indices.cast(pa.uint8()))
    variants = {
        "ENUM columns from Arrow dictionaries (as stored)": (facts, "SELECT * FROM activations"),
        "UTINYINT codes instead of ENUM": (
            codes,
            "node_type UTINYINT, node_index INTEGER, dst UTINYINT, pass_type UTINYINT",
        ),
        "no token2/head columns (8 columns)": (
            facts.drop_columns(["token2", "head"]),
            "SELECT * EXCLUDE (token2, head) FROM activations",
        ),
        "value first (column order)": (
            facts.select(["value", *facts.column_names[:-1]]),
            "SELECT value, * EXCLUDE (value) FROM activations",
        ),
        "two batches in one insert": (pa.concat_tables([facts, facts]), "SELECT * FROM activations"),
    }
    print(f"one real batch: {facts.num_rows:,} rows ({args.model}, {args.batch_size} prompts x {args.tokens} tokens)")
    with tempfile.TemporaryDirectory(prefix="actwh-layouts-") as tmp:
        for label, (table, change) in variants.items():
            best = float("inf")
            for rep in range(2):
                path = Path(tmp) / f"{abs(hash(label))}-{rep}.duckdb"
                wdb.connect(path).close()
                con = duckdb.connect(str(path))
                con.execute(
                    f"CREATE TABLE t2 AS {change} LIMIT 0"
                    if change.startswith("SELECT")
                    else f"CREATE TABLE t2 ({_columns(change)})"
                )
                con.register("batch", table)
                start = time.perf_counter()
                con.execute("BEGIN")
                con.execute("INSERT INTO t2 SELECT * FROM batch")
                con.execute("COMMIT")
                best = min(best, time.perf_counter() - start)
                con.close()
            print(f"  {label:50s} {table.num_rows / best / 1e6:6.2f} M rows/s")


def _columns(change: str) -> str:
    head = "prompt_id INTEGER, token SMALLINT, token2 SMALLINT, layer SMALLINT, head SMALLINT"
    return f"{head}, {change}, value FLOAT"


if __name__ == "__main__":
    main()
