"""Benchmark: edges into one MLP neuron over stored passes (queries/support/60_edges.sql), warm.

    python -m bench.edges --prompts 1000
    python -m bench.edges --prompts 4 --repeat 1 --model gpt2-tiny --db /tmp/e   # a smoke run

1. Ingests N of the views benchmark's 20-token prompts (bench/views.py) with the default locations plus
   mlp.pre_act forward and the input-side weights (`--input-weights all`); a rerun finds them stored.
2. On one read-only connection, times (one warm-up, then the best of --repeat):
   - every edge into one neuron (the middle layer's first) at every token of one prompt (`edges_into`
     WHERE prompt_id = 0), and the API's top 20 of them;
   - one edge (the previous layer's neuron 0 into that neuron) over the whole warehouse: its top 20
     (prompt, token) rows by |attribution|, through the macro filtered by source and through the API.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # `python bench/edges.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.views import folder_size, make_prompts
from ingest.checkpoints import DEFAULT_MODEL, load_model
from ingest.worker import IngestOptions, ingest
from queries.api import Warehouse
from warehouse.registry import DEFAULT_CAPTURE, locations_of


def best_of(run: Callable[[], object], repeat: int) -> float:
    run()  # warm-up: the lake attached, files cached
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edges", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000, help="number of 20-token prompts (default 1000)")
    parser.add_argument("--db", type=Path, help="warehouse folder (default out/bench_edges_<N>)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the warm-up; the best counts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="gpt2-tiny for a smoke run (the figures are SmolLM2's)")
    args = parser.parse_args()
    path = args.db or Path("out") / f"bench_edges_{args.prompts}"
    loaded = load_model(args.model)
    prompts = make_prompts(loaded, args.prompts)
    present = locations_of(loaded.model.config)
    locations = [f"{name}:{p.value}" for name, passes in DEFAULT_CAPTURE.items() if name in present for p in passes]
    options = IngestOptions(
        model=args.model,
        locations=[*locations, "mlp.pre_act:forward"],
        batch_size=args.batch_size,
        input_weights="all",
        progress=True,
    )
    report = ingest(path, prompts, options)
    print(
        f"ingest: {report.stored} prompts stored in {report.seconds:.1f} s, {report.already_stored} already "
        f"stored; the lake holds {folder_size(path) / 2**30:.2f} GiB"
    )
    layers = loaded.model.config.n_layers
    layer = layers // 2
    into = f"edges_into('mlp_post_act', {layer}, 0)"
    one_edge = (
        f"SELECT prompt_id, token, attribution FROM {into} WHERE source_dst = 'mlp_post_act' AND source_layer ="
        f" {layer - 1} AND source_node_index = 0 ORDER BY abs(attribution) DESC LIMIT 20"
    )
    wh = Warehouse(path)
    with wh.session():
        rows = wh.sql(f"SELECT count(*) FROM {into} WHERE prompt_id = 0", output="rows")[0][0]
        timings = {
            f"edges_into one neuron, one prompt ({rows:,} edges)": lambda: wh.sql(
                f"SELECT * FROM {into} WHERE prompt_id = 0", output="rows"
            ),
            "Warehouse.edges_into top 20, one prompt": lambda: wh.edges_into("mlp_post_act", layer, 0, prompt_id=0),
            f"one edge's top 20 (prompt, token) over {args.prompts} prompts (SQL)": lambda: wh.sql(
                one_edge, output="rows"
            ),
            f"one edge's top 20 over {args.prompts} prompts (Warehouse.edges_into, source=...)": lambda: wh.edges_into(
                "mlp_post_act", layer, 0, source=("mlp_post_act", layer - 1, 0)
            ),
        }
        for name, run in timings.items():
            print(f"{name}: {best_of(run, args.repeat):.3f} s")
    print("edges benchmark finished")


if __name__ == "__main__":
    main()
