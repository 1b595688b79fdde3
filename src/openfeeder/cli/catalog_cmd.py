"""``openfeeder catalog``: run the device catalog, and talk to a running one.

``serve`` runs the service until SIGINT/SIGTERM; ``devices``, ``services``, ``upload-algorithm``
and ``topology`` are clients of its REST API (``--url``, default ``[catalog] url``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from openfeeder.cli.render import console
from openfeeder.config import CatalogSettings, load_settings
from openfeeder.iot.catalog_client import CatalogClient, DeviceInfo, DeviceStatus, TopologyInfo
from openfeeder.iot.schema import SwitchPosition
from openfeeder.security.tls import TlsFiles

__all__ = ["catalog_group"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _config_option(function: _F) -> _F:
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Settings file (default: ./openfeeder.toml if present).",
    )(function)


def _client_options(function: _F) -> _F:
    function = click.option(
        "--url", default=None, help="The catalog's URL (default: [catalog] url of the settings)."
    )(function)
    return _config_option(function)


def _client(url: str | None, config_file: Path | None) -> CatalogClient:
    settings = load_settings(config_file)
    security = settings.security
    verify = (  # an HTTPS catalog is checked against the platform CA ([security] ca_file)
        TlsFiles(security.ca_file, min_version=security.tls_min_version).client_context()
        if security.ca_file is not None
        else None
    )
    return CatalogClient(
        url or settings.catalog.url,
        timeout_s=settings.catalog.request_timeout_s,
        token=settings.access.service_token(),  # [access] token_file: the operator's token
        verify=verify,
    )


@click.group("catalog")
def catalog_group() -> None:
    """Device catalog: registry, self-configuration, liveness, discovery, algorithm packages."""


@catalog_group.command("serve")
@_config_option
@click.option("--host", default=None, help="Address to listen on (default: [catalog] listen_host).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="TCP port (default: [catalog] listen_port; 0 picks a free one and prints it).",
)
def serve_command(config_file: Path | None, host: str | None, port: int | None) -> None:
    """Run the catalog until SIGINT or SIGTERM (exit code 0 after a clean stop)."""
    # the server stack (FastAPI, uvicorn) is imported only to serve, not for the client commands
    from openfeeder.services.catalog import serve_catalog
    from openfeeder.services.runtime import configure_logging, run_service

    settings = load_settings(config_file)
    updates: dict[str, Any] = {}
    if host is not None:
        updates["listen_host"] = host
    if port is not None:
        updates["listen_port"] = port
    if updates:
        catalog = CatalogSettings.model_validate({**settings.catalog.model_dump(), **updates})
        settings = settings.model_copy(update={"catalog": catalog})
    configure_logging(settings.logging, service="catalog")

    def announce(url: str) -> None:
        click.echo(f"openfeeder catalog listening on {url}", nl=True)

    def main(stop: asyncio.Event) -> Awaitable[None]:
        return serve_catalog(settings, stop, ready=announce)

    run_service(main, name="catalog")


@catalog_group.command("devices")
@_client_options
@click.option("--type", "device_type", default=None, help="Only devices of this type.")
@click.option(
    "--status",
    type=click.Choice([str(s) for s in DeviceStatus]),
    default=None,
    help="Only devices with this status.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def devices_command(
    url: str | None,
    config_file: Path | None,
    device_type: str | None,
    status: str | None,
    as_json: bool,
) -> None:
    """List the registered devices."""
    with _client(url, config_file) as client:
        devices = client.list_devices(device_type=device_type, status=status)
    if as_json:
        click.echo(json.dumps([d.model_dump(mode="json") for d in devices]))
        return
    _print_devices(devices)


def _print_devices(devices: list[DeviceInfo]) -> None:
    table = Table("device", "type", "status", "config", "last seen", "bus", "feeder", "algorithms")
    now_ns = time.time_ns()
    for device in devices:
        seen = (
            "never"
            if device.last_seen_ns is None
            else f"{(now_ns - device.last_seen_ns) / 1e9:.0f} s ago"
        )
        bus = device.location.bus_id if device.location is not None else None
        feeder = device.grid.feeder_id if device.grid is not None else None
        table.add_row(
            device.device_id,
            device.device_type,
            str(device.status),
            str(device.config_version),
            seen,
            "-" if bus is None else str(bus),
            "-" if feeder is None else str(feeder),
            ", ".join(f"{a.name} {a.version}" for a in device.algorithms) or "-",
        )
    out = console()
    out.print(table)
    out.print(f"{len(devices)} device{'' if len(devices) == 1 else 's'}")


@catalog_group.command("services")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def services_command(url: str | None, config_file: Path | None, as_json: bool) -> None:
    """List the registered services and their endpoints."""
    with _client(url, config_file) as client:
        services = client.services()
    if as_json:
        click.echo(json.dumps([s.model_dump(mode="json") for s in services]))
        return
    table = Table("service", "kind", "instance", "endpoints")
    for service in services:
        endpoints = ", ".join(f"{k}={v}" for k, v in sorted(service.endpoints.items()))
        table.add_row(service.name, service.kind, service.instance_id, endpoints or "-")
    console().print(table)


@catalog_group.command("upload-algorithm")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Package name ([A-Za-z0-9_.-]{1,64}).")
@click.option("--version", "version", required=True, help="Package version, e.g. 1.0.2.")
@click.option(
    "--signature",
    "signature_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The publisher's signature (openfeeder algorithm sign); without it the catalog signs.",
)
@_client_options
def upload_command(
    *,
    file: Path,
    name: str,
    version: str,
    signature_file: Path | None,
    url: str | None,
    config_file: Path | None,
) -> None:
    """Upload FILE to the algorithm repository as NAME VERSION."""
    signature = signature_file.read_text(encoding="utf-8").strip() if signature_file else None
    with _client(url, config_file) as client:
        info = client.upload_algorithm(name, version, file.read_bytes(), signature=signature)
    click.echo(f"{info.name} {info.version}: {info.size_bytes} bytes, sha256 {info.sha256}")
    click.echo(f"download: {info.url}")


@catalog_group.group("topology")
def topology_group() -> None:
    """Switch positions the catalog hands to devices (their grid part)."""


@topology_group.command("show")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def topology_show(url: str | None, config_file: Path | None, as_json: bool) -> None:
    """Print the topology version and the open switches."""
    with _client(url, config_file) as client:
        info = client.topology()
    _print_topology(info, as_json=as_json)


def _parse_states(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[int, SwitchPosition]:
    states: dict[int, SwitchPosition] = {}
    for value in values:
        switch, sep, position = value.partition("=")
        if not sep or not switch.strip().isdigit() or position not in ("open", "closed"):
            raise click.BadParameter(f"{value!r}: expected SWITCH_ID=open or SWITCH_ID=closed")
        states[int(switch)] = SwitchPosition(position)
    return states


@topology_group.command("set")
@click.argument("states", nargs=-1, required=True, callback=_parse_states)
@click.option("--reason", default="", help="Why (kept with the topology version).")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def topology_set(
    states: dict[int, SwitchPosition],
    reason: str,
    url: str | None,
    config_file: Path | None,
    as_json: bool,
) -> None:
    """Set switches, e.g. ``325=closed 312=open``; devices whose grid part changes are pushed."""
    with _client(url, config_file) as client:
        info = client.set_topology(states, reason=reason)
    _print_topology(info, as_json=as_json)


def _print_topology(info: TopologyInfo, *, as_json: bool) -> None:
    if as_json:
        click.echo(info.model_dump_json())
        return
    open_ids = [str(i) for i, p in info.switch_states.items() if p is SwitchPosition.OPEN]
    click.echo(f"case {info.case or '-'}, topology version {info.topology_version}")
    click.echo(f"open switches: {', '.join(open_ids) or 'none'}")
    if info.reason:
        click.echo(f"reason: {info.reason}")
