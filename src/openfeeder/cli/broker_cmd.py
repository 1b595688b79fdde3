"""``openfeeder broker``: run the embedded MQTT broker in the foreground until SIGINT/SIGTERM.

Secured (``--cert``, ``--key``, ``--ca``): an MQTT-over-TLS listener that requires a client
certificate of the platform CA (TLS 1.3 unless ``--tls-min-version 1.2``); each client's identity
is its certificate's CN. With ``--acl-file`` the topic ACL is the Mosquitto-format file the catalog
keeps current (``[security] acl_backend = "acl_file"``, ``acl_file`` the same path,
``mosquitto_pid_file`` the broker's ``--pid-file``): the broker re-reads it on SIGHUP, disconnects
identities that left it and drops subscriptions it no longer allows. A file that does not exist yet
means nobody may connect until it does (and a SIGHUP follows); an unreadable one keeps the table in
force and logs why. With ``--crl`` (the CA's ``crl.pem``, ``openfeeder pki revoke``) a client whose
certificate is revoked is refused at CONNECT; the file is read again whenever it changes, and a
SIGHUP also disconnects clients already connected with a revoked certificate. A CRL that cannot be
read or is not signed by ``--ca`` refuses every client until it is fixed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import click

from openfeeder.errors import SecurityError
from openfeeder.iot.broker import DEFAULT_LIMITS, Broker, BrokerLimits, run_broker
from openfeeder.security.acl import AccessTable
from openfeeder.security.pki import RevocationList
from openfeeder.security.tls import TLS_VERSIONS, TlsFiles

__all__ = ["broker_command", "load_acl_file"]

_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG = logging.getLogger("openfeeder.iot.broker")
_File = click.Path(dir_okay=False, path_type=Path)


def load_acl_file(path: Path) -> AccessTable:
    """The access table in ``path`` (empty when the file does not exist yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AccessTable()
    except OSError as err:
        raise SecurityError(f"{path}: cannot read the ACL file: {err.strerror}") from err
    return AccessTable.from_mosquitto_acl(text, source=str(path))


@click.command("broker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="TCP port (0 picks a free one and prints it) [default: 1883, with --cert 8883].",
)
@click.option(
    "--max-packet-bytes",
    type=click.IntRange(64, 268_435_455),
    default=DEFAULT_LIMITS.max_packet_bytes,
    show_default=True,
    help="Largest MQTT packet accepted from a client; a larger one closes its connection.",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS),
    default="info",
    show_default=True,
    help="Level of the broker's log lines (stderr).",
)
@click.option("--cert", "cert_file", type=_File, default=None, help="Broker certificate (PEM).")
@click.option("--key", "key_file", type=_File, default=None, help="Its private key (PEM).")
@click.option(
    "--ca", "ca_file", type=_File, default=None, help="Platform CA: clients must show its certs."
)
@click.option(
    "--tls-min-version",
    type=click.Choice(sorted(TLS_VERSIONS)),
    default="1.3",
    show_default=True,
    help="Oldest TLS version accepted.",
)
@click.option(
    "--acl-file",
    type=_File,
    default=None,
    help="Topic ACL (Mosquitto format, written by the catalog); re-read on SIGHUP.",
)
@click.option(
    "--crl",
    "crl_file",
    type=_File,
    default=None,
    help="The CA's revocation list (crl.pem): revoked client certificates are refused.",
)
@click.option(
    "--pid-file",
    type=_File,
    default=None,
    help="Write the broker's pid here (the catalog's [security] mosquitto_pid_file).",
)
def broker_command(  # noqa: PLR0917  (one option each)
    host: str,
    port: int | None,
    max_packet_bytes: int,
    log_level: str,
    cert_file: Path | None,
    key_file: Path | None,
    ca_file: Path | None,
    tls_min_version: str,
    acl_file: Path | None,
    crl_file: Path | None,
    pid_file: Path | None,
) -> None:
    """Run the embedded MQTT broker (MQTT 3.1.1 and 5) until interrupted.

    For tests, demos and single-machine installs; production uses Mosquitto.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    _LOG.setLevel(log_level.upper())
    limits = BrokerLimits(max_packet_bytes=max_packet_bytes)
    given = [f is not None for f in (cert_file, key_file, ca_file)]
    if any(given) and not all(given):
        raise click.UsageError("TLS needs all three of --cert, --key and --ca")
    ssl_context = None
    if cert_file is not None and key_file is not None and ca_file is not None:
        files = TlsFiles(ca_file, cert_file, key_file, "1.2" if tls_min_version == "1.2" else "1.3")
        try:
            ssl_context = files.server_context()
        except SecurityError as err:
            raise click.ClickException(str(err)) from err
    elif acl_file is not None:
        raise click.UsageError(
            "--acl-file needs --cert/--key/--ca: identities come from client certificates"
        )
    revocations = None
    if crl_file is not None:
        if ca_file is None:
            raise click.UsageError("--crl needs --cert/--key/--ca: it revokes client certificates")
        try:
            revocations = RevocationList.of(crl_file, ca_file)
        except SecurityError as err:
            raise click.ClickException(str(err)) from err
    access = None
    if acl_file is not None:
        try:
            access = load_acl_file(acl_file)
        except SecurityError as err:
            raise click.ClickException(str(err)) from err
        if not access.entries:
            _LOG.warning("%s: no identities yet; nobody may connect until it has some", acl_file)
    scheme = "mqtts" if ssl_context is not None else "mqtt"
    if port is None:
        port = 8883 if ssl_context is not None else 1883

    def announce(broker: Broker) -> None:
        if pid_file is not None:
            pid_file.write_text(f"{os.getpid()}\n", encoding="utf-8")
        if acl_file is not None or crl_file is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload, broker, acl_file)
        secured = (
            f" (mutual TLS {tls_min_version}+, "
            f"{'ACL ' + str(acl_file) if acl_file else 'no topic ACL'}"
            f"{', CRL ' + str(crl_file) if crl_file else ''})"
            if ssl_context is not None
            else ""
        )
        click.echo(
            f"openfeeder broker listening on {scheme}://{broker.host}:{broker.port}{secured}"
        )

    try:
        stats = run_broker(
            host,
            port,
            limits=limits,
            ssl_context=ssl_context,
            access=access,
            revocations=revocations,
            on_listening=announce,
        )
    finally:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
    denied = (
        f", denied: {stats['denied_connects']} connects, {stats['denied_publishes']} publishes, "
        f"{stats['denied_subscribes']} subscribes"
        if access is not None
        else ""
    )
    click.echo(
        f"openfeeder broker stopped: {stats['messages_received']} messages received, "
        f"{stats['messages_sent']} sent, {stats['connections_total']} connections{denied}"
    )


def _reload(broker: Broker, acl_file: Path | None) -> None:
    """SIGHUP (on the broker's loop): clients with a revoked certificate out; the ACL file
    again (a bad file keeps the table in force)."""
    broker.drop_revoked()
    if acl_file is None:
        return
    try:
        table = load_acl_file(acl_file)
    except SecurityError as err:
        _LOG.error("%s: ACL not reloaded, the previous one stays in force: %s", acl_file, err)
        return
    broker.set_access(table)
    _LOG.info("%s: ACL reloaded, %d identities (version %d)", acl_file, len(table), table.version)
