"""What every ``tidings`` subcommand shares: the --config option, settings, failing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from .config import Settings

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (TIDINGS_* env vars override it).",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``Error: message`` on stderr and exit with ``code``."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def load_settings(config: Path | None) -> Settings:
    """Settings as ``serve`` reads them; invalid ones exit with status 2."""
    try:
        return Settings.load(config_file=config)
    except (ValidationError, ValueError, OSError) as e:
        fail(f"invalid settings: {e}", code=2)
