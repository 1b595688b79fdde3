"""``openfeeder keys``: the payload-key lifecycle (:mod:`openfeeder.security.keys`).

- ``keys init [--new-master-key FILE]``: create the key store (and, with the option, a new master
  key file, mode 0600);
- ``keys create NAME --algorithm aes-256-gcm|sm4-gcm``: a new key, ``control`` (group) or
  ``control/fsw-12`` (one device's);
- ``keys list``, ``keys rotate NAME [--overlap-s S]``, ``keys archive KEY_ID``,
  ``keys destroy KEY_ID --yes``;
- ``keys backup FILE``, ``keys recover FILE`` (sealed under the master key, or ``--backup-key``);
- ``keys export KEY_ID --wrapping-key FILE``: the key wrapped (RFC 5649) for another system;
- ``keys issue DEVICE_ID --out BUNDLE --kek-out FILE``: the device's keys wrapped under its
  key-encryption key, and that key for provisioning the device.

The store is ``--dir`` (default ``[payload_protection] key_dir``); the master key comes from
``--master-key FILE``, ``[payload_protection] master_key_file`` or ``OPENFEEDER_MASTER_KEY``. Every
transition is appended to ``--audit-log`` (default ``[payload_protection] audit_log``), with signed
checkpoints when ``--audit-key`` names an Ed25519 key (``openfeeder audit keygen``).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from openfeeder.cli.audit_cmd import audit_options, login_name
from openfeeder.cli.render import console
from openfeeder.config import load_settings
from openfeeder.errors import ConfigError
from openfeeder.security.audit import AuditLog, load_signing_key
from openfeeder.security.keys import (
    DEFAULT_OVERLAP_S,
    KeyStore,
    generate_master_key,
    load_master_key,
)

__all__ = ["keys_group"]

_ALGORITHMS = ("aes-256-gcm", "sm4-gcm")


@click.group("keys")
@click.option("--config", "config", type=click.Path(path_type=Path), help="Settings file.")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Key store directory.")
@click.option(
    "--master-key",
    "master_key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Master key file (base64, 32 bytes); default: settings, then OPENFEEDER_MASTER_KEY.",
)
@audit_options
@click.pass_context
def keys_group(  # noqa: PLR0917  (one option each)
    ctx: click.Context,
    config: Path | None,
    directory: Path | None,
    master_key_file: Path | None,
    audit_log: Path | None,
    audit_key: Path | None,
    actor: str | None,
) -> None:
    """Payload keys: generation, rotation, archive, backup, recovery, destruction, issuance."""
    settings = load_settings(config).payload_protection
    ctx.obj = {
        "directory": directory or settings.key_dir,
        "master_key_file": master_key_file or settings.master_key_file,
        "audit_log": audit_log or settings.audit_log,
        "audit_key": audit_key,
        "actor": actor or login_name(),
    }


@contextmanager
def _store(ctx: click.Context, *, create: bool = False) -> Iterator[KeyStore]:
    options = ctx.obj
    if options["directory"] is None:
        raise click.UsageError("no key store: give --dir or set [payload_protection] key_dir")
    master = load_master_key(options["master_key_file"])
    audit = None
    if options["audit_log"] is not None:
        key = load_signing_key(options["audit_key"]) if options["audit_key"] else None
        audit = AuditLog(options["audit_log"], signing_key=key)
    opener = KeyStore.init if create else KeyStore
    store = opener(options["directory"], master_key=master, audit=audit, actor=options["actor"])
    try:
        yield store
    finally:
        if audit is not None:
            audit.close()


@keys_group.command("init")
@click.option(
    "--new-master-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="First write a new random master key to this file (mode 0600) and use it.",
)
@click.pass_context
def init_command(ctx: click.Context, new_master_key: Path | None) -> None:
    """Create an empty key store."""
    if new_master_key is not None:
        generate_master_key(new_master_key)
        ctx.obj["master_key_file"] = new_master_key
        click.echo(f"{new_master_key}: new master key (keep it apart from the store)")
    with _store(ctx, create=True) as store:
        click.echo(f"{store.path}: key store created")


@keys_group.command("create")
@click.argument("name")
@click.option("--algorithm", type=click.Choice(_ALGORITHMS), required=True)
@click.pass_context
def create_command(ctx: click.Context, name: str, algorithm: str) -> None:
    """Generate version 1 of key NAME (``control`` or ``control/DEVICE_ID``)."""
    with _store(ctx) as store:
        info = store.create(name, algorithm)
    click.echo(f"{info.key_id}: {info.algorithm}, {info.state}")


@keys_group.command("list")
@click.option("--name", help="Only the versions of this key.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_context
def list_command(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Every key version with its state (destroyed ones as tombstones)."""
    with _store(ctx) as store:
        infos = store.list_keys(name=name)
    if as_json:
        click.echo(json.dumps([asdict(info) for info in infos], indent=1))
        return
    table = Table("key id", "algorithm", "state", "created (UTC)", "changed (UTC)", "overlap until")
    for info in infos:
        table.add_row(
            info.key_id,
            info.algorithm,
            info.state,
            info.created_utc,
            info.changed_utc,
            info.overlap_until_utc or "",
        )
    console().print(table)


@keys_group.command("rotate")
@click.argument("name")
@click.option(
    "--overlap-s",
    type=click.FloatRange(0),
    default=DEFAULT_OVERLAP_S,
    show_default=True,
    help="How long the previous version still opens traffic.",
)
@click.pass_context
def rotate_command(ctx: click.Context, name: str, overlap_s: float) -> None:
    """Make a new active version of NAME; the previous one overlaps, then is archived."""
    with _store(ctx) as store:
        info = store.rotate(name, overlap_s=overlap_s)
    click.echo(f"{info.key_id}: active (previous version opens traffic for {overlap_s:g} s)")


@keys_group.command("archive")
@click.argument("key_id")
@click.pass_context
def archive_command(ctx: click.Context, key_id: str) -> None:
    """Take KEY_ID out of live traffic (it still reads stored data)."""
    with _store(ctx) as store:
        store.archive(key_id)
    click.echo(f"{key_id}: archived")


@keys_group.command("destroy")
@click.argument("key_id")
@click.option("--yes", is_flag=True, help="Confirm: data sealed under the key becomes unreadable.")
@click.pass_context
def destroy_command(ctx: click.Context, key_id: str, yes: bool) -> None:
    """Erase KEY_ID's material for good (crypto-shredding)."""
    if not yes:
        raise click.UsageError("destroying a key cannot be undone; confirm with --yes")
    with _store(ctx) as store:
        store.destroy(key_id)
    click.echo(f"{key_id}: destroyed")


def _backup_key(path: Path | None) -> bytes | None:
    return load_master_key(path) if path is not None else None


@keys_group.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--backup-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Seal with this key (base64, 32 bytes) instead of the master key.",
)
@click.pass_context
def backup_command(ctx: click.Context, file: Path, backup_key: Path | None) -> None:
    """Write every key that is not destroyed to FILE, sealed."""
    with _store(ctx) as store:
        count = store.backup(file, backup_key=_backup_key(backup_key))
    click.echo(f"{file}: {count} keys backed up")


@keys_group.command("recover")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--backup-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def recover_command(ctx: click.Context, file: Path, backup_key: Path | None) -> None:
    """Restore from FILE the keys the store lacks (destroyed keys stay destroyed)."""
    with _store(ctx) as store:
        restored = store.recover(file, backup_key=_backup_key(backup_key))
    click.echo(
        f"{file}: restored {len(restored)} keys" + (": " + ", ".join(restored) if restored else "")
    )


@keys_group.command("export")
@click.argument("key_id")
@click.option(
    "--wrapping-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The recipient's key-encryption key (base64, 32 bytes).",
)
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def export_command(ctx: click.Context, key_id: str, wrapping_key: Path, out: Path | None) -> None:
    """KEY_ID wrapped (AES key wrap with padding) for another system, as JSON."""
    with _store(ctx) as store:
        document = store.export(key_id, wrapping_key=load_master_key(wrapping_key))
    _write(json.dumps(document, indent=1), out)


@keys_group.command("issue")
@click.argument("device_id")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--kek-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the device's key-encryption key (for provisioning; mode 0600).",
)
@click.pass_context
def issue_command(ctx: click.Context, device_id: str, out: Path, kek_out: Path | None) -> None:
    """The keys of DEVICE_ID wrapped under its key-encryption key, for [payload_protection]
    key_bundle; the KEK (``--kek-out``) goes to the device once, by a provisioning channel."""
    with _store(ctx) as store:
        bundle = store.issue(device_id)
        kek = store.device_kek(device_id) if kek_out is not None else None
    _write(json.dumps(bundle, indent=1), out)
    if kek_out is not None and kek is not None:
        _write(base64.b64encode(kek).decode("ascii"), kek_out)
    click.echo(f"{out}: {len(bundle['keys'])} keys for {device_id}")


def _write(text: str, path: Path | None) -> None:
    if path is None:
        click.echo(text)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as err:
        raise ConfigError(f"{path}: cannot write: {err}") from err
