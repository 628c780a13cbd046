"""The reading commands: `actwh sql`, and the questions of the query API (queries.api.Warehouse) as
thin wrappers: top, examples, node-stats, rank, prompt, edges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from commands.options import db_option
from queries import streaming
from queries.api import Warehouse
from queries.edges import EDGE_BY, edge_label, parse_node
from queries.format import FILE_FORMATS, render, stream, write
from queries.notes import notes
from queries.one_prompt import NODE_COLUMNS
from queries.summaries import DEFAULT_SKIP_FIRST, RANK_BY
from warehouse import db


@click.command("sql")
@db_option()
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
    return db_option()(command)


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


@click.command("top")
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
    table = Warehouse(db_path, check=False).top_nodes(prompt_id, by, k, skip_first)
    if fmt == "table" and output is None and "write_norm" in table.column_names:
        click.echo(
            f"prompt {prompt_id}: top and bottom {k} nodes by {by}; write_norm is signed (the activation's sign"
            " times the size of the node's write to the residual stream)"
        )
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


@click.command("examples")
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
    wh = Warehouse(db_path, check=False)
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


@click.command("node-stats")
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
    wh = Warehouse(db_path, check=False)
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

        extremes = (stats.summary["min"][0].as_py(), stats.summary["max"][0].as_py())
        _plotted(plots.histogram(stats.histogram, plot, _node_title(dst, layer, node_index), extremes))


@click.command("rank")
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
    """The nodes that matter most across every prompt: the top k by mean, sum, max, abs-mean or density
    (--plot: the ranked figures as bars)."""
    table = Warehouse(db_path, check=False).rank_nodes(dst, by, k, layer, run_id, skip_first, pass_type)
    _emit(table, fmt, output)
    if plot is not None:
        from queries import plots

        where = (f" layer {layer}" if layer is not None else "") + (f" run {run_id}" if run_id is not None else "")
        where += " (backward)" if pass_type == "backward" else ""
        title = f"{dst}{where}: top {k} nodes by {by}, --skip-first {skip_first}"
        _plotted(plots.rank_bars(table, by, plot, title))


@click.command("prompt")
@_read_options
@click.option("--prompt-id", required=True, type=int)
@click.option("--dst", help="Sum this dst per token instead of the act-times-grad columns.")
def prompt_command(
    db_path: Path, fmt: str, output: Path | None, plot: Path | None, prompt_id: int, dst: str | None
) -> None:
    """Per-token view of one prompt: act-times-grad of embedding, attention and MLP summed per token."""
    wh = Warehouse(db_path, check=False)
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


@click.command("edges")
@_read_options
@click.option(
    "--into",
    "into",
    help="Edges into this node, DST:LAYER:NODE (an MLP neuron: mlp_post_act:5:100; an attention head's value, "
    "query or key side, every query and key: attn_value:LAYER:HEAD, attn_query:..., attn_key:...).",
)
@click.option(
    "--from",
    "from_",
    help="Edges out of this node, DST:LAYER:NODE (an MLP neuron; an attention node, every query and key: "
    "attn_qk_probs:LAYER:HEAD; a residual SAE's latent: online_autoencoder_latent:LAYER:LATENT), or "
    "resid_post_embedding (the embedding), into every MLP neuron, attention head's value, query and key side and "
    "residual SAE latent that reads its write.",
)
@click.option(
    "--with",
    "with_",
    help="Keep one node at the other end, DST[:LAYER[:NODE]] (an attention node's NODE is its head): without "
    "--prompt-id, that edge's top (prompt, token) rows over the whole warehouse.",
)
@click.option("--prompt-id", type=int, help="Only this prompt (default: every prompt).")
@click.option("--token", type=int, help="Only this token of the downstream node.")
@click.option("-k", "k", default=20, show_default=True, type=click.IntRange(1), help="The k strongest edges.")
@click.option(
    "--by",
    default="attribution",
    show_default=True,
    type=click.Choice(EDGE_BY),
    help="Rank by |attribution| (dObjective/d down x activation) or |activation| (d down/d residual . write).",
)
def edges_command(
    db_path: Path,
    fmt: str,
    output: Path | None,
    plot: Path | None,
    into: str | None,
    from_: str | None,
    with_: str | None,
    prompt_id: int | None,
    token: int | None,
    k: int,
    by: str,
) -> None:
    """The strongest edges into or out of a node (the Transformer Debugger's edge activation and attribution),
    from stored passes (--plot: the edges as bars)."""
    if (into is None) == (from_ is None):
        raise click.UsageError("give exactly one of --into and --from")
    dst, layer, node_index = parse_node(into or from_ or "")
    no_layer = dst == "online_autoencoder_latent"  # the latents of the SAE on the embedding
    if (layer is None and not no_layer or node_index is None) and not (from_ and dst == "resid_post_embedding"):
        raise click.UsageError("--into / --from take DST:LAYER:NODE, e.g. mlp_post_act:5:100")
    other = parse_node(with_) if with_ is not None else None
    wh = Warehouse(db_path, check=False)
    ask = wh.edges_into if into is not None else wh.edges_from
    table = ask(dst, layer, node_index, prompt_id, token, other, k, by)
    _emit(table, fmt, output)
    if plot is not None:
        from queries import plots

        side = "source" if into is not None else ""
        labels = [f"p{r['prompt_id']} {edge_label(r, side)}" for r in table.to_pylist()]
        title = f"edges {'into' if into else 'out of'} {into or from_}: strongest {k} by {by}"
        _plotted(plots.bars(labels, table.column(by).to_pylist(), plot, by, title))
