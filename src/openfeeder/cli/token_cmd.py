"""``openfeeder token``: keys and bearer tokens for operators and services.

- ``openfeeder token keygen FILE``: a new Ed25519 issuer key (FILE, mode 0600) and its public key
  (FILE.pub) for ``[access] token_keys``;
- ``openfeeder token issue --key FILE --subject alice --role operator --area feeder-3``: a signed
  token on stdout (or ``-o FILE``, mode 0600), for ``Authorization: Bearer`` or
  ``[access] token_file``;
- ``openfeeder token show TOKEN --key FILE.pub``: verify a token and print its claims.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from openfeeder.errors import ConfigError
from openfeeder.security.signing import (
    KeyRing,
    SignatureError,
    generate_key_file,
    key_id,
    load_private_key,
    load_public_key,
)
from openfeeder.security.tokens import ANY, TokenVerifier, issue_token

__all__ = ["token_group"]

_NS_PER_H = 3600 * 1_000_000_000


@click.group("token")
def token_group() -> None:
    """Operator and service tokens for the REST control endpoints ([access])."""


@token_group.command("keygen")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def keygen_command(file: Path) -> None:
    """Write a new Ed25519 key to FILE (mode 0600) and its public key to FILE.pub."""
    key = generate_key_file(file)
    click.echo(f"{file}: key {key_id(key.public_key())}; public key {file}.pub")


@token_group.command("issue")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The issuer's private key (openfeeder token keygen).",
)
@click.option("--subject", required=True, help="Who: an operator's login or a service's name.")
@click.option("--role", "roles", multiple=True, required=True, help="A role (repeatable).")
@click.option("--area", "areas", multiple=True, help="An area of the grid (repeatable; default *).")
@click.option("--device-type", "device_types", multiple=True, help="Repeatable; default *.")
@click.option("--operation", "operations", multiple=True, help="Pattern; repeatable; default *.")
@click.option(
    "--hours", default=8.0, show_default=True, type=click.FloatRange(min=0, min_open=True)
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def issue_command(
    *,
    key_file: Path,
    subject: str,
    roles: tuple[str, ...],
    areas: tuple[str, ...],
    device_types: tuple[str, ...],
    operations: tuple[str, ...],
    hours: float,
    output: Path | None,
) -> None:
    """Issue a signed bearer token valid for HOURS from now."""
    key = load_private_key(key_file)
    try:
        token = issue_token(
            key,
            subject=subject,
            roles=roles,
            areas=areas or (ANY,),
            device_types=device_types or (ANY,),
            operations=operations or (ANY,),
            now_ns=time.time_ns(),
            lifetime_ns=int(hours * _NS_PER_H),
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    if output is None:
        click.echo(token)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    click.echo(f"{output}: token for {subject}, valid {hours:g} h")


@token_group.command("show")
@click.argument("token")
@click.option(
    "--key",
    "key_files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A trusted issuer public key (repeatable).",
)
def show_command(token: str, key_files: tuple[Path, ...]) -> None:
    """Verify TOKEN (or @FILE) and print its claims as JSON."""
    if token.startswith("@"):
        token = Path(token[1:]).read_text(encoding="utf-8").strip()
    verifier = TokenVerifier(
        KeyRing(load_public_key(path) for path in key_files), clock_ns=time.time_ns
    )
    try:
        principal = verifier.verify(token)
    except SignatureError as err:
        raise ConfigError(f"token refused ({err.reason}): {err}") from err
    click.echo(
        json.dumps(
            {
                "subject": principal.subject,
                "roles": sorted(principal.roles),
                "areas": sorted(principal.areas),
                "device_types": sorted(principal.device_types),
                "operations": sorted(principal.operations),
                "token_id": principal.token_id,
                "expires_ns": principal.expires_ns,
            }
        )
    )
