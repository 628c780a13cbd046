"""The --db option every command takes: a warehouse folder or a shared catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from warehouse import lake


class WarehouseParam(click.ParamType):
    """A --db value: a warehouse folder (a Path) or a shared catalog, 'postgres:...' (kept as written)."""

    name = "folder|postgres:..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, Path) or not lake.is_catalog_spec(value):
            return Path(value)
        return str(value)


def db_option(
    required: bool = True,
    help: str = "The warehouse: a folder holding its catalog and data, or a shared catalog "
    "'postgres:dbname=NAME host=HOST port=PORT' (README, Beyond one machine).",
) -> Any:
    return click.option("--db", "db_path", required=required, type=WarehouseParam(), help=help)
