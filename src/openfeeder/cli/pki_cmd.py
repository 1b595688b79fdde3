"""``openfeeder pki``: the platform CA, identities, and a secured Mosquitto configuration.

- ``pki init DIR``: make the CA (``ca.crt``, ``ca.key`` mode 0600, ``index.json``);
- ``pki issue NAME --role ROLE --ca DIR [--host H ...]``: a key and certificate for a device
  (``--role device``) or a service (``--role catalog|historian|flisr|observer|operator``, or any
  other role for a broker's server certificate with ``--host``), written to ``DIR/issued/``;
- ``pki mosquitto-config --ca DIR --broker NAME --out DIR``: ``mosquitto.conf`` (mutual TLS 1.3,
  ``require_certificate``, ``use_identity_as_username``) and the ACL of every identity the CA issued
  (devices and services, with their roles): the dynamic-security plug-in's JSON file (default,
  the identity given by ``--admin`` may change it at run time: the catalog) or ``--acl-file``;
  the broker checks the CA's CRL (``crlfile``);
- ``pki revoke NAME --ca DIR [--serial HEX] [--reason R] [--keep-latest]``: revoke certificates
  (into ``index.json`` and the signed ``crl.pem``), audited with ``--audit-log``; with
  ``--mosquitto-pid FILE`` Mosquitto is told to read the CRL again (the embedded broker notices
  the file changed by itself);
- ``pki crl --ca DIR``: the revoked certificates, and ``crl.pem`` signed again.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import click

from openfeeder.cli.audit_cmd import audit_options, login_name
from openfeeder.iot.access import DEVICE_ROLE, ServiceRole, build_access_table
from openfeeder.security.audit import AuditKind, AuditLog, load_signing_key
from openfeeder.security.mosquitto import (
    MosquittoFiles,
    dynamic_security_config,
    find_dynsec_plugin,
    mosquitto_config,
    reload_mosquitto,
)
from openfeeder.security.pki import CertificateAuthority, PkiError, RevocationReason
from openfeeder.security.tls import issued_files

__all__ = ["pki_group"]

_CA_OPTION = click.option(
    "--ca",
    "ca_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The CA directory (made by 'openfeeder pki init').",
)


@click.group("pki")
def pki_group() -> None:
    """The platform CA: identities (X.509) for devices, services and brokers."""


@pki_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="OpenFeeder CA", show_default=True, help="The CA's common name.")
@click.option("--valid-days", type=click.IntRange(1, 36500), default=3650, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA (its certificates die).")
def init_command(directory: Path, name: str, valid_days: int, force: bool) -> None:
    """Create the CA in DIRECTORY."""
    ca = CertificateAuthority.init(directory, common_name=name, valid_days=valid_days, force=force)
    not_after = ca.certificate.not_valid_after_utc.date()
    click.echo(f"CA '{name}' created in {directory} (valid until {not_after}); keep ca.key secret")


@pki_group.command("issue")
@click.argument("name")
@click.option(
    "--role",
    required=True,
    help=f"'{DEVICE_ROLE}', a service role ({', '.join(r.value for r in ServiceRole)}) or, "
    "for a broker's server certificate, e.g. 'broker'.",
)
@_CA_OPTION
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="DNS name or IP address the identity serves on (makes it a server certificate too).",
)
@click.option("--valid-days", type=click.IntRange(1, 36500), default=825, show_default=True)
def issue_command(
    name: str, role: str, ca_dir: Path, hosts: tuple[str, ...], valid_days: int
) -> None:
    """Issue a key and certificate for NAME (written to CA/issued/NAME.crt and .key)."""
    ca = CertificateAuthority.open(ca_dir)
    issued = ca.issue(name, role=role, hosts=hosts, valid_days=valid_days)
    click.echo(
        f"{name} ({role}): {issued.cert_file} and {issued.key_file}, serial {issued.serial:x}, "
        f"valid until {issued.not_after.date()}"
    )


@pki_group.command("mosquitto-config")
@_CA_OPTION
@click.option("--broker", "broker_name", required=True, help="The broker's issued identity.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where to write mosquitto.conf and the ACL.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True)
@click.option("--host", default="", help="Address to listen on (empty: all).")
@click.option("--tls-min-version", type=click.Choice(["1.2", "1.3"]), default="1.3")
@click.option(
    "--admin",
    default="catalog",
    show_default=True,
    help="Identity allowed to change the dynamic-security ACL at run time (the catalog).",
)
@click.option("--acl-file", "use_acl_file", is_flag=True, help="A static ACL file instead.")
@click.option("--user", "run_as_user", default=None, help="User Mosquitto runs as (key owner).")
def mosquitto_command(  # noqa: PLR0917  (one option each)
    ca_dir: Path,
    broker_name: str,
    out_dir: Path,
    port: int,
    host: str,
    tls_min_version: str,
    admin: str,
    use_acl_file: bool,
    run_as_user: str | None,
) -> None:
    """Write mosquitto.conf and the ACL of every identity the CA issued."""
    ca = CertificateAuthority.open(ca_dir)
    broker = issued_files(ca, broker_name)
    identities = ca.identities()
    roles = {role.value for role in ServiceRole}
    devices = {name: () for name, role in identities.items() if role == DEVICE_ROLE}
    services = {name: role for name, role in identities.items() if role in roles}
    table = build_access_table(devices=devices, services=services)
    if broker.cert_file is None or broker.key_file is None:
        raise PkiError(f"{broker_name}: no certificate and key issued by {ca_dir}")
    crl = ca.crl_file if ca.crl_file.exists() else ca.write_crl()  # a CA made before CRLs
    out_dir.mkdir(parents=True, exist_ok=True)
    if use_acl_file:
        acl = out_dir / "acl"
        acl.write_text(table.mosquitto_acl(), encoding="utf-8")
        files = MosquittoFiles(
            ca.cert_file, broker.cert_file, broker.key_file, acl_file=acl, crl_file=crl
        )
    else:
        plugin = find_dynsec_plugin()
        if plugin is None:
            raise PkiError("Mosquitto's dynamic-security plug-in is not installed: use --acl-file")
        admins = [admin] if admin in table else []
        dynsec = out_dir / "dynamic-security.json"
        dynsec.write_text(json.dumps(dynamic_security_config(table, admins=admins), indent=1))
        files = MosquittoFiles(
            ca.cert_file,
            broker.cert_file,
            broker.key_file,
            dynsec_file=dynsec,
            dynsec_plugin=plugin,
            crl_file=crl,
        )
    user = run_as_user or (pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None)
    config = out_dir / "mosquitto.conf"
    config.write_text(
        mosquitto_config(
            files, port=port, host=host, tls_min_version=tls_min_version, run_as_user=user
        ),
        encoding="utf-8",
    )
    click.echo(
        f"wrote {config} ({len(devices)} devices, {len(services)} services); "
        f"run: mosquitto -c {config}"
    )


@pki_group.command("revoke")
@click.argument("name")
@_CA_OPTION
@click.option("--serial", help="Revoke this certificate (hex) only; default: all of NAME's.")
@click.option(
    "--reason",
    type=click.Choice([r.value for r in RevocationReason]),
    default=RevocationReason.UNSPECIFIED.value,
    show_default=True,
)
@click.option(
    "--keep-latest",
    is_flag=True,
    help="Spare the newest certificate (revoke the ones it replaced).",
)
@click.option(
    "--mosquitto-pid",
    "pid_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Mosquitto's pid file: SIGHUP it so that it reads the new CRL.",
)
@audit_options
def revoke_command(  # noqa: PLR0917  (one option each)
    name: str,
    ca_dir: Path,
    serial: str | None,
    reason: str,
    keep_latest: bool,
    pid_file: Path | None,
    audit_log: Path | None,
    audit_key: Path | None,
    actor: str | None,
) -> None:
    """Revoke NAME's certificates: brokers refuse them on the next connection."""
    if serial is not None and keep_latest:
        raise click.UsageError("--serial and --keep-latest exclude each other")
    number = None
    if serial is not None:
        try:
            number = int(serial, 16)
        except ValueError:
            raise click.BadParameter(
                f"{serial!r} is not a hexadecimal serial", param_hint="--serial"
            ) from None
    ca = CertificateAuthority.open(ca_dir)
    revoked = ca.revoke(
        name, serial=number, reason=RevocationReason(reason), keep_latest=keep_latest
    )
    shown = ", ".join(format(s, "x") for s in revoked) or "nothing new (already revoked or expired)"
    click.echo(f"{name}: revoked {shown}; CRL {ca.crl_file}")
    if audit_log is not None and revoked:
        audit = AuditLog(audit_log, signing_key=load_signing_key(audit_key) if audit_key else None)
        try:
            audit.append(
                AuditKind.SECURITY,
                actor or login_name(),
                "certificate_revoked",
                name,
                {"serials": [format(s, "x") for s in revoked], "reason": reason},
            )
        finally:
            audit.close()
    if pid_file is not None:
        pid = reload_mosquitto(pid_file)
        click.echo(f"Mosquitto (pid {pid}) told to read the CRL again")


@pki_group.command("crl")
@_CA_OPTION
def crl_command(ca_dir: Path) -> None:
    """List the revoked certificates and sign crl.pem again."""
    ca = CertificateAuthority.open(ca_dir)
    path = ca.write_crl()
    revoked = ca.revoked()
    for entry in revoked:
        click.echo(
            f"{entry.serial:x}  {entry.name}  {entry.reason}  {entry.revoked_at.isoformat()}"
        )
    click.echo(f"{len(revoked)} revoked; {path}")
