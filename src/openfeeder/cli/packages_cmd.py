"""``openfeeder algorithm keygen`` and ``openfeeder algorithm sign``: publisher keys and signatures.

A publisher signs a package's metadata (name, version, SHA-256, size, expiry) with its Ed25519 key;
the signature goes to the catalog with the upload (``openfeeder catalog upload-algorithm FILE
--signature FILE.sig``) and from there to the meters, which check it against the publisher keys
they trust (``docs/security-packages.md``).
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import click

from openfeeder.errors import ConfigError
from openfeeder.iot.agent.packages import MANIFEST_FILE, package_sha256
from openfeeder.security.signing import (
    NS_PER_DAY,
    generate_key_file,
    key_id,
    load_private_key,
    sign_package,
)

__all__ = ["keygen_command", "sign_command"]


@click.command("keygen")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def keygen_command(file: Path) -> None:
    """Write a new publisher key to FILE (mode 0600) and its public key to FILE.pub."""
    key = generate_key_file(file)
    click.echo(f"{file}: publisher key {key_id(key.public_key())}; public key {file}.pub")


@click.command("sign")
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The publisher's private key (openfeeder algorithm keygen).",
)
@click.option("--days", default=365.0, show_default=True, help="How long the signature holds.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the signature (default: PACKAGE.sig).",
)
def sign_command(package: Path, key_file: Path, days: float, output: Path | None) -> None:
    """Sign PACKAGE (name and version from its manifest)."""
    if days <= 0:
        raise click.UsageError(f"--days must be positive, not {days}")
    data = package.read_bytes()
    try:
        with zipfile.ZipFile(package) as archive:
            manifest = json.loads(archive.read(MANIFEST_FILE))
        name, version = str(manifest["name"]), str(manifest["version"])
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise ConfigError(f"{package}: not an algorithm package with {MANIFEST_FILE}") from err
    signature = sign_package(
        load_private_key(key_file),
        name=name,
        version=version,
        sha256=package_sha256(data),
        size_bytes=len(data),
        signed_ns=time.time_ns(),
        validity_ns=int(days * NS_PER_DAY),
    )
    target = output or package.with_name(package.name + ".sig")
    target.write_text(signature + "\n", encoding="utf-8")
    click.echo(f"{target}: {name} {version} signed, valid {days:g} days")
