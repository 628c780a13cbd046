"""One batch of prompts through the hooked model: the pass (forward, backward, the summaries measured
where it ran) and its rows for the writer, batched so that each batch fits in memory and split in halves
when the device runs out of it anyway (ingest/worker.py drives these)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from ingest import memory
from ingest.capture import CaptureSpec, Recorder, first_row, location_rows, logits_rows
from ingest.checkpoints import LoadedModel
from ingest.model_rows import token_columns
from ingest.node_objective import NodeObjective, NodeTap
from ingest.objective import LOGIT_DIFF, objective_kind, per_prompt_objective
from ingest.prompts import PromptInput
from ingest.sae.splice import spliced
from ingest.summaries import BatchSummary, SummaryState
from warehouse.registry import LOCATIONS
from warehouse.writer import Batch


@dataclass
class Prepared:
    """A prompt that passed validation, tokenised and keyed."""

    source: PromptInput
    ids: list[int]
    target_id: int | None
    distractor_id: int | None
    key: str
    facts: bool = True  # its fact rows are stored (else its tokens and summaries only: ingest --store)
    node: NodeObjective | None = None  # the objective node (--objective-node), and its place in this prompt
    place: tuple[int, int | None] | None = None

    @property
    def kind(self) -> str:
        """runs.objective: logit_diff, next_token_ce, or node:DST:LAYER:NODE@TOKEN as given."""
        return f"node:{self.node.label()}" if self.node is not None else objective_kind(self.target_id)


@dataclass
class Captured:
    """One batch's kept tensors, on the CPU, ready for the writer thread: those of the prompts whose facts
    are stored (`facts`, their places in the batch), in that order."""

    items: list[Prepared]
    prompt_ids: np.ndarray
    lengths: np.ndarray
    facts: np.ndarray
    forward: dict[tuple[str, int | None], np.ndarray]
    backward: dict[tuple[str, int | None], np.ndarray]
    last_logits: np.ndarray | None
    objective: list[float | None]
    model_rows: list[tuple[str, pa.Table]] = field(default_factory=list)  # see Batch.model_rows
    summaries: BatchSummary | None = None  # see Batch.summaries
    copied: torch.cuda.Event | None = None  # set when the arrays are still being copied from the GPU

    def wait(self) -> None:
        """Block until the arrays hold their values (a no-op for a pass on the CPU)."""
        if self.copied is not None:
            self.copied.synchronize()


def run_batch(
    model_device: torch.device,
    loaded: LoadedModel,
    items: list[Prepared],
    prompt_ids: np.ndarray,
    spec: CaptureSpec,
    backward: bool,
    summaries: SummaryState | None = None,
) -> Captured:
    model = loaded.model
    lengths = torch.tensor([len(p.ids) for p in items], device=model_device)
    ids = torch.zeros((len(items), int(lengths.max())), dtype=torch.long, device=model_device)
    for b, p in enumerate(items):
        ids[b, : len(p.ids)] = torch.tensor(p.ids, device=model_device)
    recorder = Recorder(spec, backward)
    hook = spliced(recorder, spec.saes, spec.sae_error) if spec.saes else recorder
    node = items[0].node
    tap = NodeTap(node, hook, recorder) if node is not None and backward else None
    hold = items[0].kind == LOGIT_DIFF
    objective: list[float | None] = [None] * len(items)
    # On the CPU the writer thread inserts the previous batch meanwhile: leave it a core, or torch's spinning
    # threads and DuckDB's fight over the same cores (3x slower end to end on 2 cores; BENCHMARKS.md).
    # Values do not change: MKL runs in strict reproducibility mode (ingest/model.py).
    threads = torch.get_num_threads()
    if model_device.type == "cpu" and threads > 1:
        torch.set_num_threads(threads - 1)
    try:
        with torch.set_grad_enabled(backward):
            logits = model.forward(ids, lengths, tap or hook, hold_final_scale=hold)
            if tap is not None:
                values = tap.values([p.place for p in items])
            elif backward:
                values = per_prompt_objective(
                    logits, ids, lengths, [p.target_id for p in items], [p.distractor_id for p in items]
                )
            if backward:
                values.sum().backward()
                objective = [float(v) for v in values.detach().cpu()]
        # summarised where the tensors are (the GPU when there is one), before they are copied out
        summary_rows = summaries.measure(recorder.forward, recorder.gradients(), lengths) if summaries else None
    finally:
        torch.set_num_threads(threads)
    # only the prompts whose facts are stored leave the device (none at all for --store summaries)
    kept = [b for b, p in enumerate(items) if p.facts]
    last = logits.detach()[torch.arange(len(items), device=model_device), lengths - 1]

    def host(tensors: dict[tuple[str, int | None], torch.Tensor]) -> dict[tuple[str, int | None], np.ndarray]:
        if not kept:
            return {}
        if len(kept) == len(items):
            return {k: _to_host(v) for k, v in tensors.items() if k[0] != "logits"}
        rows = torch.tensor(kept, device=model_device)
        return {k: _to_host(v.detach()[rows]) for k, v in tensors.items() if k[0] != "logits"}

    forward, grads = host(recorder.forward), host(recorder.gradients())
    copied = None
    if model_device.type == "cuda":  # the copies run behind the next batch's pass; the writer waits for them
        copied = torch.cuda.Event()
        copied.record()
    return Captured(
        items,
        prompt_ids,
        lengths.cpu().numpy(),
        np.array(kept, np.int64),
        forward,
        grads,
        _to_host(last[kept]) if ("logits", None) in recorder.forward and kept else None,
        objective,
        summaries=summary_rows,
        copied=copied,
    )


def _to_host(tensor: torch.Tensor) -> np.ndarray:
    """The tensor as a NumPy array in host memory. From a GPU the copy is queued into pinned memory and not
    waited for: read the array only after the batch's `copied` event (Captured.wait)."""
    if tensor.device.type != "cuda":
        return tensor.cpu().numpy()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host.numpy()


def fact_rows(captured: Captured, top_k: int, bfloat16: bool) -> Iterator[pa.RecordBatch]:
    """One captured batch's fact rows, both passes per row: a primer of one row per location and layer,
    then every location's rows grouped by the columns it leaves NULL and in (dst, layer, prompt, token,
    node) order within a group.

    The writer stores the primer, and then each group, in files of their own, so that DuckLake 1.5.5
    records statistics that cover every value: a value in each column in the transaction's first file,
    and no file whose column is NULL in some row groups and not in others (see _null_runs in
    warehouse/writer.py; warehouse/maintenance.py checks the statistics).
    """

    def order(key: tuple[str, int | None]) -> tuple:
        loc, layer = LOCATIONS[key[0]], key[1]
        valued = (loc.n_token_axes == 2, loc.head_axis is not None, layer is not None)
        passes = (key in captured.forward, key in captured.backward)
        return (*valued, *passes, loc.dst, layer if layer is not None else -1)

    lengths, prompt_ids = captured.lengths[captured.facts], captured.prompt_ids[captured.facts]
    sources = [
        (
            LOCATIONS[name],
            layer,
            captured.forward.get((name, layer)),
            captured.backward.get((name, layer)),
            lengths,
            prompt_ids,
            bfloat16,
        )
        for name, layer in sorted({*captured.forward, *captured.backward}, key=order)
    ]
    if sources:
        yield pa.concat_batches([first_row(*source) for source in sources])
    for source in sources:
        yield from location_rows(*source, skip_first=True)
    if captured.last_logits is not None:
        kept = [captured.items[b] for b in captured.facts]
        extra = [[i for i in (p.target_id, p.distractor_id) if i is not None] for p in kept]
        yield logits_rows(captured.last_logits, lengths - 1, prompt_ids, top_k, extra, bfloat16)


def to_batch(captured: Captured, run_id: int, model_id: int, loaded: LoadedModel, top_k: int, bfloat16: bool) -> Batch:
    """The batch's prompt and token records, with its fact rows as a stream (converted as the commit reads them)."""
    items = captured.items
    prompts = pa.table(
        {
            "prompt_id": captured.prompt_ids.astype(np.int32),
            "run_id": np.full(len(items), run_id, np.int32),
            "model_id": np.full(len(items), model_id, np.int32),
            "prompt_key": [p.key for p in items],
            "text": [p.source.text for p in items],
            "n_tokens": captured.lengths.astype(np.int32),
            "target": pa.array([p.source.target for p in items], pa.string()),
            "distractor": pa.array([p.source.distractor for p in items], pa.string()),
            "target_id": pa.array([p.target_id for p in items], pa.int32()),
            "distractor_id": pa.array([p.distractor_id for p in items], pa.int32()),
            "objective": pa.array(captured.objective, pa.float64()),
            "objective_node": pa.array([p.node.label(p.place) if p.node else None for p in items], pa.string()),
            "facts_stored": pa.array([p.facts for p in items], pa.bool_()),
        }
    )
    token_ids = np.concatenate([np.asarray(p.ids, np.int32) for p in items])
    tokens = pa.table(
        {
            "prompt_id": np.repeat(captured.prompt_ids, captured.lengths).astype(np.int32),
            "token": np.concatenate([np.arange(len(p.ids)) for p in items]).astype(np.int16),
            "token_id": token_ids,
            **token_columns(loaded.tokenizer, [p.ids for p in items]),
        }
    )
    return Batch(prompts, tokens, fact_rows(captured, top_k, bfloat16), captured.model_rows, captured.summaries)


def batches(
    items: Iterable[Prepared], size: int, fits: Callable[[int, int], bool] = lambda n, tokens: True
) -> Iterator[list[Prepared]]:
    """Consecutive prompts, split where the objective kind changes (the final-scale hold is per pass) and
    where the padded batch would no longer `fits(n_prompts, n_tokens)` in memory."""
    batch: list[Prepared] = []
    for item in items:
        longest = max(len(p.ids) for p in [*batch, item])
        if batch and (len(batch) == size or item.kind != batch[0].kind or not fits(len(batch) + 1, longest)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def too_big_reason(needed: memory.Estimate, budget: int) -> str:
    return (
        f"needs about {needed.total / 2**30:.1f} GB to capture (largest: {needed.largest()}), more than the "
        f"{budget / 2**30:.1f} GB this ingest may use: store fewer --locations or --layers, shorten it, "
        "or raise --max-memory"
    )


def out_of_memory_reason(item: Prepared, device: torch.device) -> str:
    fallback = ", or use --device cpu" if device.type != "cpu" else ""
    return (
        f"out of memory on {device} even alone ({len(item.ids)} tokens): shorten it "
        f"or store fewer --locations or --layers{fallback}"
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_splitting(
    items: list[Prepared], run: Callable[[list[Prepared]], Captured], give_up: Callable[[Prepared], None]
) -> Iterator[Captured]:
    """Run a batch; on out-of-memory retry it in halves, down to one prompt, which `give_up` then skips.

    Order is kept (first half first). The failed attempt's tensors are released before the retry: the
    exception, and the frames that hold them, are dropped on leaving the except block.
    """
    stack = [items]
    while stack:
        part = stack.pop()
        captured = None
        with suppress(torch.OutOfMemoryError):
            captured = run(part)
        if captured is not None:
            yield captured
            continue
        _free_memory()
        if len(part) == 1:
            give_up(part[0])
            continue
        half = (len(part) + 1) // 2
        stack.append(part[half:])
        stack.append(part[:half])
