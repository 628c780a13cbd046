"""actwh: the command line. Thin: parses arguments, calls ingest/, warehouse/ and queries/, prints."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ingest.capture import CaptureError
from ingest.checkpoints import DEFAULT_MODEL, ModelNotFound
from ingest.objective import TokenError
from ingest.prompts import PromptInput, Skipped, read_prompt_file
from ingest.worker import DeviceError, IngestOptions, ingest
from queries.format import FORMATS, render
from warehouse import db

USER_ERRORS = (
    db.WarehouseError,
    ModelNotFound,
    CaptureError,
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
        except OSError as exc:
            if exc.errno == 28:
                click.echo(
                    "error: the disk is full: free space or pass --db on another disk, then rerun "
                    "(committed prompts are kept and skipped)",
                    err=True,
                )
                sys.exit(2)
            raise


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, FileNotFoundError) and exc.args else str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


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


@main.command("ingest")
@click.option(
    "--db",
    "db_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="DuckDB file to write (created if missing).",
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
    quiet: bool,
) -> None:
    """Run hooked forward and backward passes over prompts and store every captured value."""
    if not prompts and prompts_file is None:
        raise click.UsageError("give at least one --prompt or a --prompts FILE")
    if any(not p for p in prompts):
        raise click.UsageError("--prompt is empty: give the text of a prompt")
    try:
        layer_list = [int(x) for x in _split(layers)] or None
    except ValueError:
        raise click.UsageError("--layers takes integers, e.g. --layers 0,5,11") from None
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
    )
    sources = _prompt_sources(prompts, prompts_file, target, distractor)
    report = ingest(db_path, sources, options, on_skip=lambda s: click.echo(f"warning: {s.describe()}", err=True))
    click.echo(
        f"run {report.run_id}: stored {report.stored} prompts ({report.tokens} tokens, {report.rows:,} rows) "
        f"in {report.seconds:.1f} s; {report.already_stored} already stored; {len(report.skipped)} skipped"
    )
    if report.skipped:
        sys.exit(3)


@main.command("sql")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("query")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FORMATS))
def sql_command(db_path: Path, query: str, fmt: str) -> None:
    """Run one SQL query (read-only) and print the result."""
    con = db.connect(db_path, read_only=True)
    try:
        try:
            table = con.sql(query).to_arrow_table()
        except Exception as exc:  # a DuckDB error in the user's SQL
            raise db.WarehouseError(f"query failed: {_one_line(exc)}") from None
    finally:
        con.close()
    click.echo(render(table, fmt), nl=False)


@main.command("info")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
def info_command(db_path: Path) -> None:
    """Models, runs, prompt counts and rows per dst."""
    con = db.connect(db_path, read_only=True)
    try:
        sections = {
            "models": "SELECT model_id, name, family, n_layers, d_model, n_heads, n_kv_heads, d_mlp, vocab_size, "
            "checkpoint_hash FROM models ORDER BY model_id",
            "runs": "SELECT run_id, model_id, status, objective, n_prompts, device, started_at, finished_at, "
            "json_array_length(skipped) AS skipped FROM runs ORDER BY run_id",
            "prompts": "SELECT count(*) AS prompts, sum(n_tokens) AS tokens FROM prompts",
            "rows per dst": "SELECT dst, pass_type, count(*) AS rows FROM activations GROUP BY ALL ORDER BY ALL",
        }
        for title, query in sections.items():
            click.echo(f"== {title}")
            click.echo(render(con.sql(query).to_arrow_table(), "table"), nl=False)
    finally:
        con.close()


if __name__ == "__main__":
    main()
