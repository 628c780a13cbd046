"""The ingest worker: prompts in, committed long-format rows out.

The model pass runs on the main thread (GPU or CPU); Arrow conversion and the DuckDB commit run on one
writer thread, two batches deep, so the next pass overlaps the previous batch's write. Per-prompt
problems (too long, a target that is not one token, a bad line) skip that prompt with a reason and the
ingest goes on; command-level problems raise before anything is written.
"""

from __future__ import annotations

import gc
import hashlib
import json
import pickle
import re
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors import SafetensorError

from ingest import memory
from ingest.capture import CaptureSpec, Recorder, check_storable, first_row, location_rows, logits_rows
from ingest.checkpoints import DEFAULT_MODEL, LoadedModel, load_model
from ingest.errors import DeviceError, ModelNotFound, TokenError
from ingest.model_rows import factor_weights, register_model, token_columns, token_rows
from ingest.objective import LOGIT_DIFF, objective_kind, per_prompt_objective, single_token
from ingest.prompts import PromptInput, Skipped
from ingest.sae.load import load_saes
from ingest.sae.record import record_saes
from ingest.sae.splice import spliced
from ingest.summaries import BatchSummary, SummaryState
from ingest.tokenizers import Tokenization
from warehouse.registry import LOCATIONS
from warehouse.writer import Batch, LakeWriter


@dataclass
class IngestOptions:
    model: str = DEFAULT_MODEL
    locations: list[str] | None = None
    layers: list[int] | None = None
    backward: bool = True
    device: str = "auto"
    batch_size: int = 8
    force: bool = False
    wait: bool = False
    truncate: bool = False
    progress: bool = True
    target: str | None = None  # the command-wide target and distractor, checked once before anything runs
    distractor: str | None = None
    precision: str = "float32"  # stored values: float32, or bfloat16 (rounded to nearest even, kept as FLOAT)
    max_memory: int | None = None  # bytes the ingest may use for a batch; None: what the machine has available
    unembedding: str = "used"  # unembedding columns stored: those of targets and distractors, or all
    prepend_bos: bool | None = None  # None: as the tokenizer's own config says
    special_tokens_as_text: bool = False  # '<|endoftext|>' in a prompt: the special token unless this is set
    data_path: str | None = None  # a shared catalog's data folder or URL (warehouse/lake.py), to create it
    summaries: bool = True  # per-node summaries with every batch (warehouse/summaries.py)
    saes: list[str] = field(default_factory=list)  # --sae DIR[@HOOK] values: SAEs spliced in, latents stored
    sae_error: bool = True  # store each SAE's reconstruction error (--no-sae-error: not)


@dataclass
class IngestReport:
    run_id: int
    model_id: int
    stored: int = 0
    already_stored: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    rows: int = 0
    tokens: int = 0
    seconds: float = 0.0
    write_seconds: float = 0.0
    conflicts_retried: int = 0  # commits lost to another writer and run again (warehouse/concurrency.py)


@dataclass
class Prepared:
    """A prompt that passed validation, tokenised and keyed."""

    source: PromptInput
    ids: list[int]
    target_id: int | None
    distractor_id: int | None
    key: str

    @property
    def kind(self) -> str:
        return objective_kind(self.target_id)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the run is recorded as interrupted before the process exits."""


def open_model(name: str) -> LoadedModel:
    """load_model, with the ways a checkpoint file can be unreadable turned into one ModelNotFound line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loaded = load_model(name)
        except ModelNotFound:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError) as exc:
            # The first sentence only: loaders' later advice (e.g. torch's "weights_only=False") is not ours.
            detail = re.split(r"(?<=\.) ", str(exc).strip().splitlines()[0] if str(exc).strip() else "")[0]
            raise ModelNotFound(
                f"cannot read the checkpoint {name!r} ({type(exc).__name__}: {detail}): "
                "is it a complete, uncorrupted checkpoint?"
            ) from None
    for w in caught:  # a failed load's warnings would only add lines to its one-line error
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return loaded


def check_command_tokens(loaded: LoadedModel, options: IngestOptions, tokenization: Tokenization) -> None:
    """A --target or --distractor that is not one token would skip every prompt: refuse it up front."""
    for role, text in (("--target", options.target), ("--distractor", options.distractor)):
        if text is not None:
            single_token(loaded.tokenizer, text, role, tokenization.special_tokens)
    if options.distractor is not None and options.target is None:
        raise TokenError("--distractor needs --target: the objective is target minus distractor")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def software_version() -> str:
    try:
        return version("actwh")
    except PackageNotFoundError:
        return "unknown"


def prompt_key(checkpoint_hash: str, source: PromptInput, settings: str) -> str:
    payload = json.dumps([checkpoint_hash, source.text, source.target, source.distractor, settings])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


AS_WRITTEN = Tokenization(bos_id=None, special_tokens=True)  # no BOS added, special-token text is the token


def prepare(
    loaded: LoadedModel,
    source: PromptInput,
    settings: str,
    truncate: bool,
    backward: bool,
    tokenization: Tokenization = AS_WRITTEN,
) -> Prepared:
    """Tokenise and validate one prompt; raises ValueError with the reason it cannot be stored."""
    tok = loaded.tokenizer
    specials = tokenization.special_tokens
    if not source.text:
        raise ValueError("empty prompt")
    ids = tokenization.prompt_ids(tok, source.text)
    n_ctx = loaded.model.config.n_ctx
    if len(ids) > n_ctx:
        if not truncate:
            raise ValueError(
                f"prompt is {len(ids)} tokens, longer than the model's context of {n_ctx}: "
                "shorten it or pass --truncate"
            )
        ids = ids[:n_ctx]
    target_id = single_token(tok, source.target, "target", specials) if source.target is not None else None
    distractor_id = (
        single_token(tok, source.distractor, "distractor", specials) if source.distractor is not None else None
    )
    if distractor_id is not None and target_id is None:
        raise ValueError("a distractor needs a target")
    if backward and target_id is None and len(ids) < 2:
        raise ValueError("a one-token prompt has no next token to predict: give it a target or use --no-backward")
    return Prepared(source, ids, target_id, distractor_id, prompt_key(loaded.checkpoint_hash, source, settings))


@dataclass
class Captured:
    """One batch's kept tensors, on the CPU, ready for the writer thread."""

    items: list[Prepared]
    prompt_ids: np.ndarray
    lengths: np.ndarray
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
            logits = model.forward(ids, lengths, hook, hold_final_scale=hold)
            if backward:
                values = per_prompt_objective(
                    logits, ids, lengths, [p.target_id for p in items], [p.distractor_id for p in items]
                )
                values.sum().backward()
                objective = [float(v) for v in values.detach().cpu()]
        # summarised where the tensors are (the GPU when there is one), before they are copied out
        summary_rows = summaries.measure(recorder.forward, recorder.gradients(), lengths) if summaries else None
    finally:
        torch.set_num_threads(threads)
    last = logits.detach()[torch.arange(len(items), device=model_device), lengths - 1]
    forward = {k: _to_host(v) for k, v in recorder.forward.items() if k[0] != "logits"}
    grads = {k: _to_host(v) for k, v in recorder.gradients().items()}
    copied = None
    if model_device.type == "cuda":  # the copies run behind the next batch's pass; the writer waits for them
        copied = torch.cuda.Event()
        copied.record()
    return Captured(
        items,
        prompt_ids,
        lengths.cpu().numpy(),
        forward,
        grads,
        _to_host(last) if ("logits", None) in recorder.forward else None,
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

    sources = [
        (
            LOCATIONS[name],
            layer,
            captured.forward.get((name, layer)),
            captured.backward.get((name, layer)),
            captured.lengths,
            captured.prompt_ids,
            bfloat16,
        )
        for name, layer in sorted({*captured.forward, *captured.backward}, key=order)
    ]
    if sources:
        yield pa.concat_batches([first_row(*source) for source in sources])
    for source in sources:
        yield from location_rows(*source, skip_first=True)
    if captured.last_logits is not None:
        extra = [[i for i in (p.target_id, p.distractor_id) if i is not None] for p in captured.items]
        yield logits_rows(captured.last_logits, captured.lengths - 1, captured.prompt_ids, top_k, extra, bfloat16)


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
        }
    )
    token_ids = np.concatenate([np.asarray(p.ids, np.int32) for p in items])
    tokens = pa.table(
        {
            "prompt_id": np.repeat(captured.prompt_ids, captured.lengths).astype(np.int32),
            "position": np.concatenate([np.arange(len(p.ids)) for p in items]).astype(np.int16),
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


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM stop the ingest like Ctrl-C, so the run is marked interrupted (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def ingest(
    db_path: str | Path,
    prompts: Iterable[PromptInput | Skipped],
    options: IngestOptions,
    on_skip: Callable[[Skipped], None] | None = None,
) -> IngestReport:
    """Store every prompt not already committed; command-level problems raise before anything is written.

    Prompts stream through (read, batch, run, commit), so memory does not grow with the prompt file.
    """
    start = time.perf_counter()
    device = resolve_device(options.device)
    loaded = open_model(options.model)
    loaded.model.to(device)
    spec = CaptureSpec.parse(options.locations, options.layers, loaded.model.config)
    check_storable(loaded.model.config, spec)
    spec = replace(spec, saes=load_saes(options.saes, loaded.model.config, device), sae_error=options.sae_error)
    tokenization = Tokenization.of(loaded.special, options.prepend_bos, options.special_tokens_as_text)
    check_command_tokens(loaded, options, tokenization)
    settings = json.dumps(
        [spec.labels(), sorted(spec.layers or []), options.backward, options.truncate, *tokenization.settings()]
        + [sae.sha256 for sae in spec.saes]
    )
    with LakeWriter(db_path, wait=options.wait, data_path=options.data_path) as writer, sigterm_interrupts():
        weights = factor_weights(loaded)
        unembedding_all = options.unembedding == "all"
        model_id = register_model(writer, loaded, weights, unembedding_all)
        record_saes(writer, model_id, spec.saes, loaded.model)
        known_tokens = writer.known_tokens(model_id)
        layernorm = loaded.model.config.norm == "layernorm"
        run_id = writer.start_run(
            model_id=model_id,
            objective="pending",
            locations=spec.labels(),
            layers=sorted(spec.layers) if spec.layers else None,
            software_version=software_version(),
            device=str(device),
            dtype="float32",
            precision=options.precision,
            prepend_bos=tokenization.bos_id is not None,
            special_tokens="special" if tokenization.special_tokens else "text",
        )
        report = IngestReport(run_id, model_id)
        config = loaded.model.config
        budget = options.max_memory if options.max_memory is not None else memory.available_bytes()
        committed = set() if options.force else writer.committed_keys(model_id)
        next_prompt_id = writer.next_id("prompts", "prompt_id")
        kinds: set[str] = set()
        summary_state = SummaryState(options.precision == "bfloat16") if options.summaries else None

        def skip(item: Skipped) -> None:
            report.skipped.append(item)
            if on_skip:
                on_skip(item)

        def prepared() -> Iterator[Prepared]:
            seen: set[str] = set()
            for source in prompts:
                if isinstance(source, Skipped):
                    skip(source)
                    continue
                try:
                    item = prepare(loaded, source, settings, options.truncate, options.backward, tokenization)
                except (ValueError, TokenError) as exc:
                    skip(Skipped(source.line, source.text, str(exc)))
                    continue
                if item.key in committed or item.key in seen:
                    report.already_stored += 1
                    continue
                alone = memory.estimate(config, spec, 1, len(item.ids), options.backward)
                if budget is not None and alone.total > budget:
                    skip(Skipped(source.line, source.text, too_big_reason(alone, budget)))
                    continue
                seen.add(item.key)
                yield item

        def fits(n_prompts: int, n_tokens: int) -> bool:
            """Room for this batch while the writer still holds the two before it (three in memory at once)."""
            need = memory.estimate(config, spec, n_prompts, n_tokens, options.backward).total
            return budget is None or 3 * need <= budget

        def attempt(part: list[Prepared]) -> Captured:
            """One model pass; prompt ids are taken only when it succeeds, so retries leave no gaps."""
            nonlocal next_prompt_id
            ids = np.arange(next_prompt_id, next_prompt_id + len(part))
            captured = run_batch(device, loaded, part, ids, spec, options.backward, summary_state)
            next_prompt_id += len(part)
            return captured

        def give_up(item: Prepared) -> None:
            skip(Skipped(item.source.line, item.source.text, out_of_memory_reason(item, device)))

        status, message = "failed", None
        pending: deque[Future[float]] = deque()
        halted = threading.Event()
        try:
            with (
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="actwh-writer") as pool,
                _progress(options.progress) as bar,
            ):
                try:
                    for items in batches(prepared(), options.batch_size, fits):
                        for captured in run_splitting(items, attempt, give_up):
                            if options.backward:
                                kinds.add(captured.items[0].kind)
                            new_tokens = {
                                i for p in captured.items for i in (p.target_id, p.distractor_id) if i is not None
                            } - known_tokens
                            known_tokens |= new_tokens
                            captured.model_rows = token_rows(weights, new_tokens, layernorm, not unembedding_all)
                            while len(pending) >= 2:
                                report.write_seconds += pending.popleft().result()
                            batch_future = pool.submit(
                                _write,
                                writer,
                                captured,
                                run_id,
                                model_id,
                                loaded,
                                spec,
                                report,
                                halted,
                                options.precision == "bfloat16",
                                not options.force,
                            )
                            pending.append(batch_future)
                            bar.update(len(captured.items))
                    while pending:
                        report.write_seconds += pending.popleft().result()
                except BaseException:
                    halted.set()  # stop now: batches still queued are not committed (a rerun stores them)
                    raise
            status = "completed"
        except KeyboardInterrupt as exc:
            status, message = "interrupted", str(exc) or "stopped by the user (Ctrl-C)"
            raise
        except BaseException as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise
        finally:
            for fut in pending:
                fut.cancel()
            last = summary_state.final() if summary_state is not None else None
            _finish(writer, run_id, status, report, message, ",".join(sorted(kinds)) or "none", last)
            report.conflicts_retried = writer.conflicts_retried
    report.seconds = time.perf_counter() - start
    return report


def _finish(
    writer: LakeWriter,
    run_id: int,
    status: str,
    report: IngestReport,
    message: str | None,
    objective: str,
    last_summaries: BatchSummary | None,
) -> None:
    """Record how the run ended. If that fails too (a full disk, a dead file) while another error is on
    its way out, that error is the one to report: the run stays 'running' and the next writer marks it
    interrupted."""
    try:
        skipped = [s.as_dict() for s in report.skipped]
        writer.finish_run(run_id, status, skipped, message, objective=objective, last_summaries=last_summaries)
    except Exception:
        if status == "completed":
            raise


def _write(
    writer: LakeWriter,
    captured: Captured,
    run_id: int,
    model_id: int,
    loaded: LoadedModel,
    spec: CaptureSpec,
    report: IngestReport,
    halted: threading.Event,
    bfloat16: bool,
    unique: bool,
) -> float:
    """Convert and commit one batch on the writer thread (converted again if the commit loses to another
    writer's, see LakeWriter.append_retrying); counts what it stored in `report` and returns the seconds it
    took. Once anything fails (a commit, the model pass, Ctrl-C), batches still queued are dropped rather
    than committed out of order; a rerun stores them."""
    if halted.is_set():
        return 0.0
    start = time.perf_counter()
    try:
        captured.wait()
        stored = writer.append_retrying(
            lambda: to_batch(captured, run_id, model_id, loaded, spec.logits_top_k, bfloat16), run_id, unique
        )
    except BaseException:
        halted.set()
        raise
    report.stored += stored.prompts
    report.tokens += stored.tokens
    report.rows += stored.rows
    report.already_stored += len(captured.items) - stored.prompts  # another writer stored them first
    return time.perf_counter() - start


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(unit="prompt", desc="ingest", leave=False)
