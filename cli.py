"""actwh: the command line. Thin: parses arguments, calls ingest/, warehouse/ and queries/, prints.

This module is the entry point: the command group and how it reports errors; the commands themselves are
in commands/, one module per kind."""

from __future__ import annotations

import errno
import sys
from typing import Any

import click

from commands import describing, ingesting, maintenance, reading
from ingest.errors import CaptureError, DeviceError, ModelNotFound, PromptFileError, SAEError, TokenError
from warehouse import db, interrupts

USER_ERRORS = (
    db.WarehouseError,
    ModelNotFound,
    PromptFileError,
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
            with interrupts.raised():
                try:
                    return super().invoke(ctx)
                except (SystemExit, click.exceptions.Exit):
                    raise
                except BaseException as exc:  # Ctrl-C, SIGTERM, or a library's error for one (interrupts.py)
                    why = interrupts.reason(exc)
                    if why is None:
                        raise
                    click.echo(_interrupted(ctx, why), err=True)
                    sys.exit(130)
        except USER_ERRORS as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(2)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"error: {_one_line_text(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                click.echo(
                    "error: the disk is full: free space or pass --db on another disk, then rerun "
                    "(committed prompts are kept and skipped)",
                    err=True,
                )
                sys.exit(2)
            raise


def _interrupted(ctx: click.Context, why: str) -> str:
    """The one line for a stopped command; an ingest's says how it resumes."""
    line = "error: interrupted" + ("" if why == interrupts.CTRL_C else f" ({why})")
    if ctx.invoked_subcommand == ingesting.ingest_command.name:
        line += ": committed work is kept; rerun the same command to resume"
    return line


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


for command in (
    ingesting.ingest_command,
    reading.sql_command,
    maintenance.convert_command,
    maintenance.compact_command,
    describing.dsts_command,
    describing.info_command,
    describing.files_command,
    reading.top_command,
    reading.examples_command,
    reading.node_stats_command,
    reading.rank_command,
    reading.prompt_command,
    reading.edges_command,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
