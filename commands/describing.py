"""What a warehouse holds: `actwh dsts`, `actwh info` and `actwh files`."""

from __future__ import annotations

from pathlib import Path

import click
import pyarrow as pa

from commands.options import db_option
from queries.api import Warehouse
from queries.catalog import dst_catalog
from queries.format import FORMATS, render
from warehouse import db


@click.command("dsts")
@db_option(required=False, help="Also say how many rows each raw dst has in this warehouse.")
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


@click.command("info")
@db_option()
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


@click.command("files")
@db_option()
@click.option("--table", default="facts", show_default=True, help="The table whose data files to list.")
def files_command(db_path: Path | str, table: str) -> None:
    """The Parquet files holding a table now, one per line, from the catalog: what Spark or another
    engine reads (README, Beyond one machine). Never a glob: the data folder also holds merged-away files."""
    for path in Warehouse(db_path).parquet_files(table):
        click.echo(path)
