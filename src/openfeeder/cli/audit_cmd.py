"""``openfeeder audit``: check and read the tamper-evident audit log (:mod:`openfeeder.security.audit`).

- ``audit verify LOG [--public-key FILE.pub]``: checks the hash chain and, with the key, every
  signed checkpoint; prints each problem (which entry, which line, what) and exits 1 if there is
  one;
- ``audit show LOG [--kind K] [--tail N] [--json]``: the entries;
- ``audit keygen FILE``: an Ed25519 key for checkpoints (FILE, mode 0600) and FILE.pub;
- ``audit checkpoint LOG --signing-key FILE``: sign the head of the log now.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from openfeeder.cli.render import console
from openfeeder.security.audit import (
    AuditLog,
    generate_signing_key,
    load_public_key,
    load_signing_key,
    public_key_id,
    read_audit_log,
    verify_audit_log,
)

__all__ = ["audit_group", "audit_options", "login_name"]

_LOG_PATH = click.Path(exists=True, dir_okay=False, path_type=Path)


def audit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--audit-log``, ``--audit-key`` and ``--actor`` of a command whose actions are audited."""
    for option in reversed(
        (
            click.option("--audit-log", type=click.Path(dir_okay=False, path_type=Path)),
            click.option(
                "--audit-key",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="Ed25519 key that signs audit checkpoints.",
            ),
            click.option("--actor", help="Who acts, for the audit log (default: the login name)."),
        )
    ):
        command = option(command)
    return command


def login_name() -> str:
    """Who runs the command (for the audit log), ``operator`` if the system cannot tell."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "operator"


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log: verify, show, checkpoint keys."""


@audit_group.command("verify")
@click.argument("log", type=_LOG_PATH)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Ed25519 public key (PEM) that verifies the checkpoints.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def verify_command(log: Path, public_key: Path | None, as_json: bool) -> None:
    """Check LOG; exit 1 naming every modified, deleted or reordered entry."""
    key = load_public_key(public_key) if public_key is not None else None
    report = verify_audit_log(log, public_key=key)
    if as_json:
        document = asdict(report)
        document["ok"] = report.ok
        click.echo(json.dumps(document, indent=1))
    else:
        for problem in report.problems:
            click.echo(f"{log}: {problem}", err=True)
        signed = (
            f"{report.verified_checkpoints} of {report.checkpoints} checkpoints verified"
            if key is not None
            else f"{report.checkpoints} checkpoints not verified (no --public-key)"
        )
        verdict = "intact" if report.ok else f"{len(report.problems)} problems"
        click.echo(
            f"{log}: {verdict}; {report.entries} entries, {signed}, "
            f"{report.unanchored_entries} after the last checkpoint"
        )
    if not report.ok:
        raise click.exceptions.Exit(1)


@audit_group.command("show")
@click.argument("log", type=_LOG_PATH)
@click.option("--kind", help="Only entries of this kind (operator, config, command, key, ...).")
@click.option("--tail", type=click.IntRange(1), help="Only the last N entries.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout.")
def show_command(log: Path, kind: str | None, tail: int | None, as_json: bool) -> None:
    """Print the entries of LOG."""
    entries = [
        entry
        for _, entry, _ in read_audit_log(log)
        if entry is not None and (kind is None or entry.kind == kind)
    ]
    if tail is not None:
        entries = entries[-tail:]
    if as_json:
        for entry in entries:
            click.echo(entry.to_json())
        return
    table = Table("seq", "time (UTC)", "kind", "actor", "action", "target", "details")
    for entry in entries:
        table.add_row(
            str(entry.seq),
            entry.time_utc,
            entry.kind,
            entry.actor,
            entry.action,
            entry.target,
            json.dumps(dict(entry.details), separators=(",", ":"))[:80],
        )
    console().print(table)


@audit_group.command("keygen")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def keygen_command(file: Path) -> None:
    """Write a new Ed25519 checkpoint key to FILE (mode 0600) and its public key to FILE.pub."""
    public = generate_signing_key(file)
    click.echo(f"{file}: checkpoint key {public_key_id(public)}; public key {file}.pub")


@audit_group.command("checkpoint")
@click.argument("log", type=_LOG_PATH)
@click.option(
    "--signing-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
)
def checkpoint_command(log: Path, signing_key: Path) -> None:
    """Sign the head of LOG now (nothing to do if the last entry is a checkpoint)."""
    entry = AuditLog(log, signing_key=load_signing_key(signing_key)).checkpoint()
    if entry is None:
        click.echo(f"{log}: head already signed")
    else:
        click.echo(f"{log}: checkpoint {entry.seq} signed")
