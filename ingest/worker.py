"""The ingest worker: prompts in, committed long-format rows out.

The model pass runs on the main thread (GPU or CPU); Arrow conversion and the commit run on one writer
thread, two batches deep, so the next pass overlaps the previous batch's write, and that thread hands the
rows to a pool of threads writing Parquet files (every core but the model's; warehouse/fact_files.py).
Per-prompt problems (too long, a target that is not one token, a bad line) skip that prompt with a reason
and the ingest goes on; command-level problems raise before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from ingest import memory
from ingest.capture import CaptureSpec, check_storable
from ingest.checkpoints import DEFAULT_MODEL, LoadedModel, load_model
from ingest.errors import DeviceError, ModelNotFound, TokenError
from ingest.model_rows import add_input_weights, factor_weights, register_model, token_rows
from ingest.node_objective import NodeObjective, parse_objective_node
from ingest.objective import single_token
from ingest.passes import (
    Captured,
    Prepared,
    batches,
    out_of_memory_reason,
    run_batch,
    run_splitting,
    to_batch,
    too_big_reason,
)
from ingest.progress import Progress
from ingest.prompts import PromptInput, Skipped, text_problem
from ingest.sae.load import load_saes
from ingest.sae.record import record_saes
from ingest.summaries import BatchSummary, SummaryState
from ingest.tokenizers import Tokenization
from warehouse import interrupts
from warehouse.writer import LakeWriter

# What --store may name: the fact rows, and the per-node summaries (warehouse/summaries.py).
STORE_PARTS = ("facts", "summaries")
STORE_DEFAULT = STORE_PARTS


def check_store(store: tuple[str, ...], facts_every: int) -> None:
    """Refuse (ValueError, one line) a --store naming anything but facts and summaries, and a --facts-every
    above 1 unless --store keeps both (it samples the facts; the summaries cover every prompt)."""
    unknown = [part for part in store if part not in STORE_PARTS]
    if unknown or not store:
        named = f"unknown part {unknown[0]!r}" if unknown else "nothing named"
        raise ValueError(f"--store: {named}: give facts, summaries, or facts,summaries")
    if facts_every < 1:
        raise ValueError(f"--facts-every must be 1 or more, not {facts_every}")
    if facts_every > 1 and "facts" not in store:
        raise ValueError("--facts-every samples the facts, which --store summaries keeps none of: drop one of them")
    if facts_every > 1 and "summaries" not in store:
        raise ValueError(
            "--facts-every keeps facts of some prompts only: the others need summaries (--store facts,summaries)"
        )


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
    log_file: Path | None = None  # progress lines appended every minute and at the end (ingest/progress.py)
    target: str | None = None  # the command-wide target and distractor, checked once before anything runs
    distractor: str | None = None
    precision: str = "float32"  # stored values: float32, or bfloat16 (rounded to nearest even, kept as FLOAT)
    max_memory: int | None = None  # bytes the ingest may use for a batch; None: what the machine has available
    unembedding: str = "used"  # unembedding columns stored: those of targets and distractors, or all
    input_weights: str = "none"  # the input-side weights (registry.INPUT_WEIGHTS) for the edge macros: none or all
    prepend_bos: bool | None = None  # None: as the tokenizer's own config says
    special_tokens_as_text: bool = False  # '<|endoftext|>' in a prompt: the special token unless this is set
    data_path: str | None = None  # a shared catalog's data folder or URL (warehouse/lake.py), to create it
    store: tuple[str, ...] = STORE_DEFAULT  # what to keep: "facts" (rows), "summaries" (per node), or both
    facts_every: int = 1  # facts of every N-th prompt only (the others: tokens and summaries); needs summaries
    saes: list[str] = field(default_factory=list)  # --sae DIR[@HOOK] values: SAEs spliced in, latents stored
    sae_error: bool = True  # store each SAE's reconstruction error (--no-sae-error: not)
    objective_node: str | None = None  # --objective-node DST:LAYER:NODE[@TOKEN]: the backward pass starts there
    writer_threads: int | None = None  # threads writing fact files; None: every core but one (warehouse/fact_files.py)


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


def open_model(name: str) -> LoadedModel:
    """load_model, with the ways a checkpoint file can be unreadable turned into one ModelNotFound line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loaded = load_model(name)
        except ModelNotFound:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError) as exc:
            if interrupts.reason(exc) is not None:  # Ctrl-C inside the loader: not an unreadable file
                raise
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
    ids: dict[str, int] = {}
    for role, text in (("--target", options.target), ("--distractor", options.distractor)):
        if text is not None:
            ids[role] = single_token(loaded.tokenizer, text, role, tokenization.special_tokens)
    if options.distractor is not None and options.target is None:
        raise TokenError("--distractor needs --target: the objective is target minus distractor")
    if options.distractor is not None and ids["--target"] == ids["--distractor"]:
        raise TokenError(same_token(options.target, options.distractor, ids["--target"], "--target", "--distractor"))


def same_token(target: str | None, distractor: str | None, token_id: int, target_role: str, role: str) -> str:
    """The refusal of a pair whose objective logit(target) - logit(distractor) is identically 0."""
    spelled = repr(target) if target == distractor else f"{target!r} and {distractor!r}"
    return (
        f"{target_role} and {role} are the same token ({spelled}, id {token_id}): logit(target) - logit(distractor)"
        f" would be 0 for every input; give a different {role}, or none"
    )


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


def prompt_key(checkpoint_hash: str, source: PromptInput, settings: str, facts: bool = True) -> str:
    """The prompt's resume key: a hash of the checkpoint, the prompt and the capture settings. A prompt stored
    without its facts has a key of its own, so that an ingest storing its facts does not take it as stored
    (an ingest without facts takes either as stored: see ingest's `prepared`)."""
    payload = json.dumps([checkpoint_hash, source.text, source.target, source.distractor, settings])
    if not facts:
        payload = json.dumps([payload, "without facts"])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


AS_WRITTEN = Tokenization(bos_id=None, special_tokens=True)  # no BOS added, special-token text is the token


def prepare(
    loaded: LoadedModel,
    source: PromptInput,
    settings: str,
    truncate: bool,
    backward: bool,
    tokenization: Tokenization = AS_WRITTEN,
    facts: bool = True,
    node: NodeObjective | None = None,
) -> Prepared:
    """Tokenise and validate one prompt (to be stored with its facts or without); raises ValueError with
    the reason it cannot be stored."""
    tok = loaded.tokenizer
    specials = tokenization.special_tokens
    if not source.text:
        raise ValueError("empty prompt")
    problem = text_problem(source.text)
    if problem is not None:
        raise ValueError(f"prompt text: {problem}: give UTF-8 text")
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
    if distractor_id is not None and distractor_id == target_id:
        raise ValueError(same_token(source.target, source.distractor, target_id, "target", "distractor"))
    if node is not None and (source.target is not None or source.distractor is not None):
        raise ValueError(f"it has a target, but the objective is the node {node.label()}: drop its target")
    place = node.place(len(ids)) if node is not None else None
    if backward and target_id is None and node is None and len(ids) < 2:
        raise ValueError("a one-token prompt has no next token to predict: give it a target or use --no-backward")
    key = prompt_key(loaded.checkpoint_hash, source, settings, facts)
    return Prepared(source, ids, target_id, distractor_id, key, facts, node, place)


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
    check_store(options.store, options.facts_every)
    device = resolve_device(options.device)
    loaded = open_model(options.model)
    loaded.model.to(device)
    spec = CaptureSpec.parse(options.locations, options.layers, loaded.model.config)
    check_storable(loaded.model.config, spec)
    spec = replace(spec, saes=load_saes(options.saes, loaded.model.config, device), sae_error=options.sae_error)
    tokenization = Tokenization.of(loaded.special, options.prepend_bos, options.special_tokens_as_text)
    check_command_tokens(loaded, options, tokenization)
    node = None
    if options.objective_node is not None:
        logit = options.target is not None or options.distractor is not None
        node = parse_objective_node(options.objective_node, loaded.model.config, spec.saes, options.backward, logit)
    settings = json.dumps(
        [spec.labels(), sorted(spec.layers or []), options.backward, options.truncate, *tokenization.settings()]
        + [sae.sha256 for sae in spec.saes]
        + ([f"objective-node {node.label()}"] if node is not None else [])  # a node run is no logit run
    )
    # Signals raised from here on (the command line raises them from its start) are recognised whatever
    # library they land in (warehouse/interrupts.py), so the run is recorded as interrupted.
    opened = LakeWriter(db_path, options.wait, options.data_path, options.writer_threads)
    with interrupts.raised(), opened as writer:
        weights = factor_weights(loaded)
        unembedding_all = options.unembedding == "all"
        input_weights = options.input_weights == "all"
        model_id = register_model(writer, loaded, weights, unembedding_all, input_weights)
        if input_weights:  # a model registered before without them gets them now
            add_input_weights(writer, model_id, loaded)
        record_saes(writer, model_id, spec.saes, loaded.model, input_weights)
        known_tokens = writer.known_tokens(model_id)
        layernorm = loaded.model.config.norm == "layernorm"
        run_fields = {
            "model_id": model_id,
            "objective": "pending",
            "locations": spec.labels(),
            "layers": sorted(spec.layers) if spec.layers else None,
            "software_version": software_version(),
            "device": str(device),
            "dtype": "float32",
            "precision": options.precision,
            "prepend_bos": tokenization.bos_id is not None,
            "special_tokens": "special" if tokenization.special_tokens else "text",
            "store": ",".join(part for part in STORE_PARTS if part in options.store),
            "facts_every": options.facts_every,
        }
        run_id: int | None = None  # None until the run is in the catalog: then this process must finish it
        report = IngestReport(-1, model_id)
        config = loaded.model.config
        budget = options.max_memory if options.max_memory is not None else memory.available_bytes()
        committed: set[str] = set()
        next_prompt_id = 0
        kinds: set[str] = set()
        summarising = "summaries" in options.store
        summary_state = SummaryState(options.precision == "bfloat16") if summarising else None

        def skip(item: Skipped) -> None:
            report.skipped.append(item)
            if on_skip:
                on_skip(item)

        def prepared() -> Iterator[Prepared]:
            seen: set[str] = set()
            ordinal = 0  # the prompt's place in the input: --facts-every keeps the facts of every N-th from the first
            for source in prompts:
                if isinstance(source, Skipped):
                    skip(source)
                    continue
                facts = "facts" in options.store and ordinal % options.facts_every == 0
                ordinal += 1
                try:
                    item = prepare(
                        loaded, source, settings, options.truncate, options.backward, tokenization, facts, node
                    )
                except (ValueError, TokenError) as exc:
                    skip(Skipped(source.line, source.text, str(exc)))
                    continue
                # a prompt to store without facts is stored by any earlier ingest of it; one with facts, only
                # by one that kept them
                stored = {item.key} if facts else {item.key, prompt_key(loaded.checkpoint_hash, source, settings)}
                if stored & committed or item.key in seen:
                    report.already_stored += 1
                    continue
                alone = memory.estimate(config, spec, 1, len(item.ids), options.backward, summarising, facts)
                if budget is not None and alone.total > budget:
                    skip(Skipped(source.line, source.text, too_big_reason(alone, budget)))
                    continue
                seen.add(item.key)
                yield item

        def fits(n_prompts: int, n_tokens: int) -> bool:
            """Room for this batch's pass while the writer still holds the captured tensors of the two before it."""
            keeps_facts = "facts" in options.store
            need = memory.estimate(config, spec, n_prompts, n_tokens, options.backward, summarising, keeps_facts)
            return budget is None or need.total + 2 * need.held <= budget

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
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actwh-writer")
        progress: Progress | None = None
        try:
            with interrupts.deferred():  # a Ctrl-C while it commits lands once run_id is known
                run_id = report.run_id = writer.start_run(**run_fields)
            if not options.force:
                committed = writer.committed_keys(model_id)
            next_prompt_id = writer.next_id("prompts", "prompt_id")
            progress = Progress(run_id, options.progress, options.log_file)
            for items in batches(prepared(), options.batch_size, fits):
                for captured in run_splitting(items, attempt, give_up):
                    interrupts.check()
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
                    progress.update(len(captured.items), sum(len(p.ids) for p in captured.items))
            while pending:
                report.write_seconds += pending.popleft().result()
            interrupts.check()
            status = "completed"
        except BaseException as exc:
            halted.set()  # stop now: batches still queued are not committed (a rerun stores them)
            why = interrupts.reason(exc)
            if why is not None:
                status, message = "interrupted", why
                if not isinstance(exc, KeyboardInterrupt):  # a library's wrapping of it (DuckDB, Numba)
                    raise interrupts.Interrupted(why) from exc
            else:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise
        finally:
            # Not cut short by a second Ctrl-C: the writer thread must be done with the connection before
            # the run's status is written on it, and the status must be written.
            with interrupts.deferred():
                pool.shutdown(wait=True, cancel_futures=True)
                if progress is not None:
                    progress.close(status)
                if run_id is not None:
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
