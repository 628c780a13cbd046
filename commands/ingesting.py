"""`actwh ingest`: hooked passes over prompts, stored in a warehouse (here, or by worker processes)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from commands.options import db_option
from ingest import DEFAULT_MODEL
from ingest.prompts import PromptInput, Skipped, read_prompt_file
from warehouse import db, lake

# What each worker process of --workers runs: this command line's entry point.
CLI = Path(__file__).resolve().parent.parent / "cli.py"


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _prompt_sources(
    prompts: tuple[str, ...], prompts_file: Path | None, target: str | None, distractor: str | None
) -> Iterator[PromptInput | Skipped]:
    """The command's prompts, then the file's lines, streamed; a file that is not text at all is refused
    now, before anything runs."""
    lines = read_prompt_file(prompts_file, target, distractor) if prompts_file is not None else iter(())
    return itertools.chain((PromptInput(text, target, distractor) for text in prompts), lines)


@click.command("ingest")
@db_option(
    help="The warehouse to write (created if missing): a folder, or a shared catalog "
    "'postgres:dbname=NAME host=HOST port=PORT' that many workers write at once."
)
@click.option(
    "--data-path",
    help="Where a new shared catalog's Parquet files go: a folder every worker sees, or s3://bucket/prefix/ "
    "(DuckDB httpfs). Needed once, to create it; the catalog keeps it.",
)
@click.option("--shard", help="Only this worker's share of the prompts, I/N (1-based): every N-th from the I-th.")
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Run N worker processes here on a shared catalog (one per GPU when there are GPUs), one bar for all.",
)
@click.option(
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="smollm2, gpt2-tiny, a checkpoint directory, a .gguf file, or a cached Hugging Face id.",
)
@click.option("--prompt", "prompts", multiple=True, help="A prompt (repeatable).")
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Text file (one prompt per line) or JSONL with prompt, target, distractor.",
)
@click.option("--target", help="Answer token for the backward objective (exactly one token).")
@click.option("--distractor", help="Token whose logit is subtracted from the target's.")
@click.option(
    "--objective-node",
    help="Start the backward pass from one node's activation instead of the logits, as the Transformer Debugger "
    "traces from a node: DST:LAYER:NODE[@TOKEN], e.g. mlp_post_act:5:100 (TOKEN: -1, the last, by default; "
    "negative from the end; attn_qk_probs:L:HEAD@Q,K for an attention node; an SAE latent's dst with --sae).",
)
@click.option(
    "--locations",
    multiple=True,
    help="Locations to store, comma separated, each optionally :forward or :backward. "
    "Default: what the node table needs.",
)
@click.option("--layers", multiple=True, help="Layers to store, comma separated (default: all).")
@click.option("--no-backward", is_flag=True, help="Skip the backward pass.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--force", is_flag=True, help="Store prompts again even if already committed.")
@click.option("--wait", is_flag=True, help="Queue behind another ingest into the same file instead of failing.")
@click.option("--truncate", is_flag=True, help="Cut prompts longer than the context instead of skipping them.")
@click.option(
    "--precision",
    default="float32",
    show_default=True,
    type=click.Choice(["float32", "bfloat16"]),
    help="Stored values: float32, or rounded to bfloat16 (half the disk; the identities need float32).",
)
@click.option(
    "--unembedding",
    default="used",
    show_default=True,
    type=click.Choice(["used", "all"]),
    help="Unembedding columns to store: those of targets and distractors, or every token's "
    "(direct_effects() for any pair; about 4 bytes x d_model x vocabulary).",
)
@click.option(
    "--input-weights",
    default="none",
    show_default=True,
    type=click.Choice(["none", "all"]),
    help="Store the input side of the weights (MLP input/gate projections, W_Q, W_K, W_V and their biases) "
    "for `actwh edges` and the edge macros (about as many values as the rest of the model).",
)
@click.option(
    "--prepend-bos/--no-prepend-bos",
    default=None,
    help="Put the tokenizer's BOS token before every prompt (never before a target). "
    "Default: as the tokenizer's config says; no for GPT-2.",
)
@click.option(
    "--special-tokens-as-text",
    is_flag=True,
    help="Spell out special-token text such as <|endoftext|> instead of encoding it as that token.",
)
@click.option(
    "--max-memory",
    help="Memory the ingest may use, e.g. 4GB (default: what the machine has available). A prompt that "
    "would need more even alone is skipped with the estimate; batches are sized to fit.",
)
@click.option(
    "--sae",
    "saes",
    multiple=True,
    help="A sparse autoencoder's folder (SAELens, sparsify or Gemma Scope; DIR@HOOK names the hook point where "
    "the files do not; OpenAI sparse_autoencoder: FILE.pt@HOOK or DIR@HOOK) spliced in at its hook point: its "
    "non-zero latents are stored as nodes (repeatable).",
)
@click.option("--no-sae-error", is_flag=True, help="Do not store the SAEs' reconstruction errors.")
@click.option(
    "--store",
    default="facts,summaries",
    show_default=True,
    help="What to keep, comma separated: facts (every captured value, a row each) and summaries (per node: "
    "what rank, examples and node-stats read). 'summaries' alone is a dataset pass a few MB per million "
    "tokens; 'facts' alone a faster ingest on a CPU, its runs answered by a scan.",
)
@click.option(
    "--facts-every",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Keep the facts of every N-th prompt only (the 1st, N+1-th, ...; of this worker's share with --shard), "
    "and the summaries of all (--store facts,summaries): node tables and scans then answer on that sample.",
)
@click.option(
    "--writer-threads",
    type=click.IntRange(1),
    help="Threads writing fact files beside the model pass (default: every core but one).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append a progress line (prompts, tokens, tokens/s) to this file every minute and when the run ends.",
)
def ingest_command(
    db_path: Path,
    model: str,
    prompts: tuple[str, ...],
    prompts_file: Path | None,
    target: str | None,
    distractor: str | None,
    objective_node: str | None,
    locations: tuple[str, ...],
    layers: tuple[str, ...],
    no_backward: bool,
    device: str,
    batch_size: int,
    force: bool,
    wait: bool,
    truncate: bool,
    precision: str,
    unembedding: str,
    input_weights: str,
    prepend_bos: bool | None,
    special_tokens_as_text: bool,
    max_memory: str | None,
    store: str,
    facts_every: int,
    saes: tuple[str, ...],
    no_sae_error: bool,
    writer_threads: int | None,
    quiet: bool,
    log_file: Path | None,
    data_path: str | None,
    shard: str | None,
    workers: int | None,
) -> None:
    """Run hooked forward and backward passes over prompts and store every captured value."""
    from ingest.memory import parse_size  # torch: imported by the one command that runs a model
    from ingest.worker import IngestOptions, check_store, ingest
    from ingest.workers import parse_shard, run_workers, take_shard

    if not prompts and prompts_file is None:
        raise click.UsageError("give at least one --prompt or a --prompts FILE")
    if any(not p for p in prompts):
        raise click.UsageError("--prompt is empty: give the text of a prompt")
    if log_file is not None and not log_file.absolute().parent.is_dir():
        raise click.UsageError(f"--log-file {log_file}: no folder {log_file.absolute().parent} to write it in")
    try:
        layer_list = [int(x) for x in _split(layers)] or None
    except ValueError:
        raise click.UsageError("--layers takes integers, e.g. --layers 0,5,11") from None
    try:
        memory_limit = parse_size(max_memory) if max_memory is not None else None
    except ValueError as exc:
        raise click.UsageError(f"--max-memory: {exc}") from None
    store_parts = tuple(dict.fromkeys(part.strip() for part in store.split(",") if part.strip()))
    try:
        check_store(store_parts, facts_every)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    options = IngestOptions(
        model=model,
        locations=_split(locations) or None,
        layers=layer_list,
        backward=not no_backward,
        device=device,
        batch_size=batch_size,
        force=force,
        wait=wait,
        truncate=truncate,
        progress=not quiet,
        log_file=log_file,
        target=target,
        distractor=distractor,
        objective_node=objective_node,
        precision=precision,
        unembedding=unembedding,
        input_weights=input_weights,
        max_memory=memory_limit,
        prepend_bos=prepend_bos,
        special_tokens_as_text=special_tokens_as_text,
        store=store_parts,
        facts_every=facts_every,
        saes=list(saes),
        sae_error=not no_sae_error,
        writer_threads=writer_threads,
    )
    if wait and lake.is_catalog_spec(db_path):
        raise click.UsageError(
            "--wait queues behind the ingest of a warehouse folder; a shared catalog takes many at once"
        )
    if data_path is not None:
        db.config_for(db_path, data_path)  # refuses --data-path with a warehouse folder
        options.data_path = data_path
    sources = _prompt_sources(prompts, prompts_file, target, distractor)
    if workers is not None:
        if shard is not None:
            raise click.UsageError("--workers runs every shard itself: drop --shard (or run one shard per command)")
        if not lake.is_catalog_spec(db_path):
            raise click.UsageError(
                "--workers needs a warehouse many processes may write: --db 'postgres:...' (README, Beyond one machine)"
            )
        total = sum(1 for s in sources if isinstance(s, PromptInput))
        command = [
            sys.executable,
            str(CLI),
            "ingest",
            *_repeated_options(click.get_current_context()),
        ]
        summaries, warnings, status = run_workers(workers, command, str(db_path), data_path, total, device, not quiet)
        for line in warnings:
            click.echo(line, err=True)
        for line in summaries:
            click.echo(line)
        sys.exit(status)
    if shard is not None:
        try:
            index, count = parse_shard(shard)
        except ValueError as exc:
            raise click.UsageError(f"--shard: {exc}") from None
        sources = take_shard(sources, index, count)
    report = ingest(db_path, sources, options, on_skip=lambda s: click.echo(f"warning: {s.describe()}", err=True))
    retried = f"; {report.conflicts_retried} commits retried" if report.conflicts_retried else ""
    click.echo(
        f"run {report.run_id}: stored {report.stored} prompts ({report.tokens} tokens, {report.rows:,} rows) "
        f"in {report.seconds:.1f} s; {report.already_stored} already stored; {len(report.skipped)} skipped{retried}"
    )
    if report.skipped:
        sys.exit(3)


def _repeated_options(ctx: click.Context) -> list[str]:
    """The command's options as given, for a worker process to run the same (less --workers, --quiet)."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if not isinstance(param, click.Option) or param.name in ("workers", "quiet") or value in (None, ()):
            continue
        if param.is_flag:
            args += [param.opts[0]] if value else param.secondary_opts[:1]
            continue
        for item in value if param.multiple else (value,):
            args += [param.opts[0], str(item)]
    return args
