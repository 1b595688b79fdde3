"""``openfeeder config``: show the effective settings (file + environment, credentials masked)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from openfeeder.config import load_settings

__all__ = ["config_group"]


@click.group("config")
def config_group() -> None:
    """Settings shared by every service (TOML file + OPENFEEDER_* environment)."""


@config_group.command("show")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings file (default: ./openfeeder.toml if present).",
)
def show_command(config_file: Path | None) -> None:
    """Print the effective settings as JSON."""
    click.echo(json.dumps(load_settings(config_file).redacted(), indent=1))
