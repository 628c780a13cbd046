"""actwh: the command line. Thin: parses arguments, calls ingest/, warehouse/ and queries/, prints."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pyarrow as pa

from ingest import DEFAULT_MODEL
from ingest.errors import CaptureError, DeviceError, ModelNotFound, SAEError, TokenError
from ingest.prompts import PromptInput, Skipped, read_prompt_file
from queries import streaming
from queries.api import NODE_COLUMNS, Warehouse
from queries.catalog import dst_catalog
from queries.format import FILE_FORMATS, FORMATS, render, stream, write
from queries.notes import notes
from queries.summaries import DEFAULT_SKIP_FIRST, RANK_BY
from warehouse import db, lake

USER_ERRORS = (
    db.WarehouseError,
    ModelNotFound,
    CaptureError,
    SAEError,
    TokenError,
    DeviceError,
    FileNotFoundError,
    PermissionError,
)


class ActwhGroup(click.Group):
    """Turns the errors a user can fix into one line on stderr and exit status 2, with no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(2)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"error: {_one_line_text(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            why = f" ({exc})" if str(exc) else ""
            click.echo(f"error: interrupted{why}: committed work is kept; rerun the same command to resume", err=True)
            sys.exit(130)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                click.echo(
                    "error: the disk is full: free space or pass --db on another disk, then rerun "
                    "(committed prompts are kept and skipped)",
                    err=True,
                )
                sys.exit(2)
            raise


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return _one_line_text(str(exc)) or type(exc).__name__


def _one_line_text(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


@click.group(cls=ActwhGroup)
@click.version_option(package_name="actwh", message="%(version)s")
def main() -> None:
    """An SQL-queryable activation warehouse for transformer interpretability."""


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _prompt_sources(
    prompts: tuple[str, ...], prompts_file: Path | None, target: str | None, distractor: str | None
) -> Iterator[PromptInput | Skipped]:
    for text in prompts:
        yield PromptInput(text, target, distractor)
    if prompts_file is not None:
        yield from read_prompt_file(prompts_file, target, distractor)


class WarehouseParam(click.ParamType):
    """A --db value: a warehouse folder (a Path) or a shared catalog, 'postgres:...' (kept as written)."""

    name = "folder|postgres:..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, Path) or not lake.is_catalog_spec(value):
            return Path(value)
        return str(value)


def _db_option(
    required: bool = True,
    help: str = "The warehouse: a folder holding its catalog and data, or a shared catalog "
    "'postgres:dbname=NAME host=HOST port=PORT' (README, Beyond one machine).",
) -> Any:
    return click.option("--db", "db_path", required=required, type=WarehouseParam(), help=help)


@main.command("ingest")
@_db_option(
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
    "--no-summaries",
    is_flag=True,
    help="Store no per-node summaries: a faster ingest on a CPU (BENCHMARKS.md), and rank, examples and "
    "node-stats answer this run by a scan of its rows.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ingest_command(
    db_path: Path,
    model: str,
    prompts: tuple[str, ...],
    prompts_file: Path | None,
    target: str | None,
    distractor: str | None,
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
    prepend_bos: bool | None,
    special_tokens_as_text: bool,
    max_memory: str | None,
    no_summaries: bool,
    saes: tuple[str, ...],
    no_sae_error: bool,
    quiet: bool,
    data_path: str | None,
    shard: str | None,
    workers: int | None,
) -> None:
    """Run hooked forward and backward passes over prompts and store every captured value."""
    from ingest.memory import parse_size  # torch: imported by the one command that runs a model
    from ingest.worker import IngestOptions, ingest
    from ingest.workers import parse_shard, run_workers, take_shard

    if not prompts and prompts_file is None:
        raise click.UsageError("give at least one --prompt or a --prompts FILE")
    if any(not p for p in prompts):
        raise click.UsageError("--prompt is empty: give the text of a prompt")
    try:
        layer_list = [int(x) for x in _split(layers)] or None
    except ValueError:
        raise click.UsageError("--layers takes integers, e.g. --layers 0,5,11") from None
    try:
        memory_limit = parse_size(max_memory) if max_memory is not None else None
    except ValueError as exc:
        raise click.UsageError(f"--max-memory: {exc}") from None
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
        target=target,
        distractor=distractor,
        precision=precision,
        unembedding=unembedding,
        max_memory=memory_limit,
        prepend_bos=prepend_bos,
        special_tokens_as_text=special_tokens_as_text,
        summaries=not no_summaries,
        saes=list(saes),
        sae_error=not no_sae_error,
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
            str(Path(__file__).resolve()),
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


@main.command("sql")
@_db_option()
@click.argument("query")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FILE_FORMATS))
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (needed for parquet)."
)
def sql_command(db_path: Path, query: str, fmt: str, output: Path | None) -> None:
    """Run one SQL query (read-only) and write the result as its rows arrive, in bounded memory (the table
    format shows the first rows and counts the rest)."""
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet writes a file: add --output PATH")
    con = db.connect(db_path, read_only=True)
    try:
        with streaming.reader(con, query) as reader:
            stream(reader, fmt, output)
    finally:
        con.close()
    if output is not None:
        click.echo(f"wrote {output}", err=True)


@main.command("convert")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_db_option(help="The new warehouse folder to create.")
def convert_command(source: Path, db_path: Path) -> None:
    """Copy a single-file warehouse written by an earlier actwh (a .duckdb file) into a new warehouse."""
    from warehouse.convert import convert

    counts = convert(source, db_path)
    click.echo(f"{db_path}: " + ", ".join(f"{n:,} {table}" for table, n in counts.items()))


@main.command("compact")
@_db_option()
def compact_command(db_path: Path) -> None:
    """Merge small data files and delete files no snapshot needs any more (DuckLake's own maintenance)."""
    from warehouse.maintenance import compact

    before, after = compact(db_path)
    click.echo(f"{db_path}: {before} data files before, {after} after")


@main.command("dsts")
@_db_option(required=False, help="Also say how many rows each raw dst has in this warehouse.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FORMATS))
def dsts_command(db_path: Path | None, fmt: str) -> None:
    """Every dst, raw and derived: node type, what it needs, and what it means."""
    entries = dst_catalog()
    table = pa.table(
        {field: [getattr(e, field) for e in entries] for field in ("dst", "kind", "node_type", "needs")}
        | {"description": [e.description for e in entries]}
    )
    if db_path is not None:
        con = db.connect(db_path, read_only=True)
        try:
            counts = dict(con.sql("SELECT dst::VARCHAR, count(*) FROM activations GROUP BY ALL").fetchall())
        finally:
            con.close()
        table = table.append_column("stored_rows", pa.array([counts.get(e.dst) for e in entries], pa.int64()))
    click.echo(render(table, fmt), nl=False)


@main.command("info")
@_db_option()
def info_command(db_path: Path) -> None:
    """Models, runs, prompt counts and rows per dst."""
    con = db.connect(db_path, read_only=True)
    try:
        sections = {
            "models": "SELECT model_id, name, family, n_layers, d_model, n_heads, n_kv_heads, d_mlp, vocab_size, "
            "checkpoint_hash FROM models ORDER BY model_id",
            "runs": "SELECT run_id, model_id, status, objective, n_prompts, device, precision, prepend_bos, "
            "special_tokens, started_at, finished_at, json_array_length(skipped) AS skipped FROM runs ORDER BY run_id",
            "prompts": "SELECT count(*) AS prompts, sum(n_tokens) AS tokens FROM prompts",
            "rows per dst": "SELECT dst, pass_type, count(*) AS rows FROM activations GROUP BY ALL ORDER BY ALL",
        }
        for title, query in sections.items():
            click.echo(f"== {title}")
            click.echo(render(con.sql(query).to_arrow_table(), "table"), nl=False)
    finally:
        con.close()


@main.command("files")
@_db_option()
@click.option("--table", default="facts", show_default=True, help="The table whose data files to list.")
def files_command(db_path: Path | str, table: str) -> None:
    """The Parquet files holding a table now, one per line, from the catalog: what Spark or another
    engine reads (README, Beyond one machine). Never a glob: the data folder also holds merged-away files."""
    for path in Warehouse(db_path).parquet_files(table):
        click.echo(path)


# -- reading: thin wrappers over queries.api (Warehouse) --------------------------------------------


def _read_options(command: Any) -> Any:
    """--db, --format, --output and --plot, shared by the reading commands."""
    command = click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Also draw a PNG here.")(
        command
    )
    command = click.option(
        "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (needed for parquet)."
    )(command)
    command = click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FILE_FORMATS))(
        command
    )
    return _db_option()(command)


def _emit(table: Any, fmt: str, output: Path | None) -> None:
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet writes a file: add --output PATH")
    for note in notes(table):
        click.echo(f"note: {note}", err=True)
    text = write(table, fmt, output)
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)


def _plotted(path: Path) -> None:
    click.echo(f"plot: {path}", err=True)


@main.command("top")
@_read_options
@click.option("--prompt-id", required=True, type=int, help="Prompt to rank nodes in (see `actwh sql` on prompts).")
@click.option(
    "--by",
    default="act_times_grad",
    show_default=True,
    help=f"Rank by a node-table column ({', '.join(NODE_COLUMNS)}: MLP and attention together) or any dst.",
)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1), help="Top k and bottom k.")
@click.option(
    "--skip-first",
    default=0,
    show_default=True,
    type=int,
    help="Leave out nodes at the prompt's first N tokens (0: every token, as the reference node table).",
)
def top_command(
    db_path: Path, fmt: str, output: Path | None, plot: Path | None, prompt_id: int, by: str, k: int, skip_first: int
) -> None:
    """The reference node table: top and bottom k nodes of a prompt, four columns side by side."""
    table = Warehouse(db_path).top_nodes(prompt_id, by, k, skip_first)
    _emit(table, fmt, output)
    if plot is not None:
        from queries import plots

        column = by if by in table.column_names else "value"
        _plotted(plots.top_nodes_bars(table, column, plot, f"prompt {prompt_id}: top and bottom {k} by {by}"))


def _skip_first_option() -> Any:
    return click.option(
        "--skip-first",
        default=DEFAULT_SKIP_FIRST,
        show_default=True,
        type=int,
        help="Leave out each prompt's first N tokens (1: the attention-sink first token, whose values dwarf "
        "the rest; 0 keeps it). 0 and 1 read the summaries; more scans every row.",
    )


def _node_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--dst", required=True, help="Any dst, raw (mlp_post_act) or derived (mlp_write_norm)."),
            click.option("--layer", type=int, help="Layer (omit for dsts without one)."),
            click.option("--node", "node_index", required=True, type=int, help="Neuron, head or channel index."),
            click.option("--head", type=int, help="Head, for per-head channel dsts (attn_v ...)."),
            click.option("--run", "run_id", type=int, help="Only prompts of this run."),
            click.option(
                "--pass", "pass_type", default="forward", show_default=True, type=click.Choice(["forward", "backward"])
            ),
            _skip_first_option(),
        ]
    ):
        command = option(command)
    return command


def _node_title(dst: str, layer: int | None, node_index: int) -> str:
    return f"{dst} " + (f"layer {layer} " if layer is not None else "") + f"node {node_index}"


@main.command("examples")
@_read_options
@_node_options
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--context", default=5, show_default=True, type=click.IntRange(0), help="Tokens shown on each side.")
@click.option("--bottom", is_flag=True, help="The lowest values instead of the highest.")
def examples_command(
    db_path: Path,
    fmt: str,
    output: Path | None,
    plot: Path | None,
    dst: str,
    layer: int | None,
    node_index: int,
    head: int | None,
    run_id: int | None,
    pass_type: str,
    skip_first: int,
    k: int,
    context: int,
    bottom: bool,
) -> None:
    """Top-k activating examples of one node across all prompts, the token [[marked]] in its context
    (--plot: each context as a strip of tokens shaded by the node's value)."""
    wh = Warehouse(db_path)
    args = (dst, layer, node_index, k, context, head, run_id, pass_type, bottom, skip_first)
    with wh.session():
        table = wh.examples(*args)
        windows = wh.example_windows(*args) if plot is not None else None
    if fmt == "table":
        table = table.select(["prompt_id", "token", "value", "context_text"])
    _emit(table, fmt, output)
    if windows is not None:
        from queries import plots

        side = "bottom" if bottom else "top"
        _plotted(plots.example_strips(windows, plot, f"{_node_title(dst, layer, node_index)}: {side} {k} examples"))


@main.command("node-stats")
@_read_options
@_node_options
@click.option(
    "--bins",
    type=click.IntRange(1),
    help="Equal bins between min and max, with quantiles: a scan of every row. Default: the summaries' "
    "fixed power-of-ten bins.",
)
@click.option("--histogram", "show_histogram", is_flag=True, help="Emit the histogram rather than the summary.")
def node_stats_command(
    db_path: Path,
    fmt: str,
    output: Path | None,
    plot: Path | None,
    dst: str,
    layer: int | None,
    node_index: int,
    head: int | None,
    run_id: int | None,
    pass_type: str,
    skip_first: int,
    bins: int | None,
    show_histogram: bool,
) -> None:
    """Count, mean, std, min, max, fraction non-zero and histogram of one node across the dataset."""
    wh = Warehouse(db_path)
    if bins is None:
        stats: Any = wh.node_summary(dst, layer, node_index, head, run_id, pass_type, skip_first)
    else:
        stats = wh.node_stats(dst, layer, node_index, head, run_id, pass_type, bins, skip_first)
    if fmt == "table" and output is None and not show_histogram:
        _emit(stats.summary, fmt, None)
        click.echo(render(stats.histogram, "table"), nl=False)
    else:
        _emit(stats.histogram if show_histogram else stats.summary, fmt, output)
    if plot is not None:
        from queries import plots

        _plotted(plots.histogram(stats.histogram, plot, _node_title(dst, layer, node_index)))


@main.command("rank")
@_read_options
@click.option("--dst", required=True, help="The dst to rank nodes by (mlp_act_times_grad, mlp_post_act ...).")
@click.option("--layer", type=int, help="Only nodes of this layer.")
@click.option("--by", default="mean", show_default=True, help=f"The figure ranked: {', '.join(RANK_BY)}.")
@click.option("-k", "k", default=20, show_default=True, type=int, help="Nodes listed.")
@click.option("--run", "run_id", type=int, help="Only prompts of this run.")
@click.option("--pass", "pass_type", default="forward", show_default=True, type=click.Choice(["forward", "backward"]))
@_skip_first_option()
def rank_command(
    db_path: Path,
    fmt: str,
    output: Path | None,
    plot: Path | None,
    dst: str,
    layer: int | None,
    by: str,
    k: int,
    run_id: int | None,
    pass_type: str,
    skip_first: int,
) -> None:
    """The nodes that matter most across every prompt: the top k by mean, sum, max, abs-mean or density."""
    if plot is not None:
        raise click.UsageError("rank has no plot yet: use --format and a tool of your choice")
    _emit(Warehouse(db_path).rank_nodes(dst, by, k, layer, run_id, skip_first, pass_type), fmt, output)


@main.command("prompt")
@_read_options
@click.option("--prompt-id", required=True, type=int)
@click.option("--dst", help="Sum this dst per token instead of the act-times-grad columns.")
def prompt_command(
    db_path: Path, fmt: str, output: Path | None, plot: Path | None, prompt_id: int, dst: str | None
) -> None:
    """Per-token view of one prompt: act-times-grad of embedding, attention and MLP summed per token."""
    wh = Warehouse(db_path)
    with wh.session():
        info = wh.sql("SELECT text, target, distractor, objective FROM prompts WHERE prompt_id = ?", [prompt_id])
        table = wh.token_attribution(prompt_id, dst)
    if fmt == "table" and output is None and info.num_rows:
        row = info.to_pylist()[0]
        click.echo(f"prompt {prompt_id}: {row['text']!r}  target={row['target']!r} distractor={row['distractor']!r}")
    _emit(table, fmt, output)
    if plot is not None:
        from queries import plots

        _plotted(plots.token_strip(table, plot, f"prompt {prompt_id}" + (f": {dst}" if dst else "")))


if __name__ == "__main__":
    main()
