"""Keeping a warehouse: `actwh convert` (from an earlier single-file warehouse) and `actwh compact`."""

from __future__ import annotations

from pathlib import Path

import click

from commands.options import db_option


@click.command("convert")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@db_option(help="The new warehouse folder to create.")
def convert_command(source: Path, db_path: Path) -> None:
    """Copy a single-file warehouse written by an earlier actwh (a .duckdb file) into a new warehouse."""
    from warehouse.convert import convert

    counts = convert(source, db_path)
    click.echo(f"{db_path}: " + ", ".join(f"{n:,} {table}" for table, n in counts.items()))


@click.command("compact")
@db_option()
def compact_command(db_path: Path) -> None:
    """Merge small data files and delete files no snapshot needs any more (DuckLake's own maintenance)."""
    from warehouse.maintenance import compact

    before, after = compact(db_path)
    click.echo(f"{db_path}: {before} data files before, {after} after")
