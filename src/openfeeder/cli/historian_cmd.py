"""``openfeeder historian``: run the historian, and query a running one.

``serve`` runs the service until SIGINT/SIGTERM (exit code 0 after a clean stop: the last batch is
committed and the marks are published). ``query`` asks a running historian's REST API (``--url``,
default ``http://[historian] listen_host:listen_port``) for one channel of one device and prints a
table: raw values, or per-bucket aggregates with ``--bucket``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import click
import httpx
from rich.table import Table

from openfeeder.cli.render import console
from openfeeder.config import HistorianSettings, load_settings
from openfeeder.errors import OpenFeederError
from openfeeder.services.historian import HistorianReady, serve_historian
from openfeeder.services.runtime import configure_logging, run_service

__all__ = ["historian_group"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _config_option(function: _F) -> _F:
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Settings file (default: ./openfeeder.toml if present).",
    )(function)


@click.group("historian")
def historian_group() -> None:
    """Historian: measurements from MQTT into SQLite/PostgreSQL, committed marks, queries."""


@historian_group.command("serve")
@_config_option
@click.option(
    "--instance",
    default="1",
    show_default=True,
    help="Names this historian's MQTT sessions (historian-ID); keep it stable across restarts.",
)
@click.option(
    "--host", default=None, help="Address to listen on (default: [historian] listen_host)."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="TCP port (default: [historian] listen_port; 0 picks a free one and prints it).",
)
def serve_command(
    config_file: Path | None, instance: str, host: str | None, port: int | None
) -> None:
    """Run the historian until SIGINT or SIGTERM (exit code 0 after a clean stop)."""
    settings = load_settings(config_file)
    updates: dict[str, Any] = {}
    if host is not None:
        updates["listen_host"] = host
    if port is not None:
        updates["listen_port"] = port
    if updates:
        historian = HistorianSettings.model_validate({**settings.historian.model_dump(), **updates})
        settings = settings.model_copy(update={"historian": historian})
    configure_logging(settings.logging, service="historian")

    def announce(running: HistorianReady) -> None:
        click.echo(f"openfeeder historian {instance} listening on {running.url}")

    def main(stop: asyncio.Event) -> Awaitable[None]:
        return serve_historian(settings, stop, instance=instance, ready=announce)

    run_service(main, name="historian")


def _time_ns(value: str | None, option: str) -> int | None:
    """Integer nanoseconds since the epoch, or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as err:
        raise click.BadParameter(
            "give nanoseconds since the epoch or an ISO 8601 time", param_hint=option
        ) from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _iso(t_ns: int) -> str:
    moment = dt.datetime.fromtimestamp(t_ns // 10**9, tz=dt.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{t_ns % 10**9:09d}Z"


@historian_group.command("query")
@click.argument("device")
@click.option("--channel", required=True, help="Channel, e.g. u_a.")
@click.option("--start", default=None, help="From (inclusive): ns since the epoch or ISO 8601.")
@click.option("--end", default=None, help="To (exclusive): ns since the epoch or ISO 8601.")
@click.option(
    "--bucket", "bucket_s", type=float, default=None, help="Downsample: bucket length in seconds."
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option(
    "--url", default=None, help="The historian's URL (default: from [historian] listen_*)."
)
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
def query_command(
    *,
    device: str,
    channel: str,
    start: str | None,
    end: str | None,
    bucket_s: float | None,
    limit: int,
    url: str | None,
    config_file: Path | None,
    as_json: bool,
) -> None:
    """Print one channel of DEVICE over a time range (raw, or aggregated with --bucket)."""
    if url is None:
        config = load_settings(config_file).historian
        url = f"http://{config.listen_host}:{config.listen_port}"
    params: dict[str, str | int | float] = {"channel": channel, "limit": limit}
    for name, option, value in (("start_ns", "--start", start), ("end_ns", "--end", end)):
        t_ns = _time_ns(value, option)
        if t_ns is not None:
            params[name] = t_ns
    if bucket_s is not None:
        params["bucket_s"] = bucket_s
    document = _get(f"{url.rstrip('/')}/v1/devices/{quote(device, safe='')}/readings", params)
    if as_json:
        click.echo(json.dumps(document))
        return
    _print_readings(document)


def _get(url: str, params: dict[str, str | int | float]) -> dict[str, Any]:
    try:
        response = httpx.get(url, params=params, timeout=30)
    except httpx.HTTPError as err:
        raise OpenFeederError(f"{url}: cannot reach the historian: {err}") from err
    if response.status_code != 200:
        try:
            problem = response.json()
            detail = str(problem.get("detail", response.text))
        except ValueError:
            detail = response.text
        raise OpenFeederError(f"historian answered {response.status_code}: {detail}")
    document: dict[str, Any] = response.json()
    return document


def _print_readings(document: dict[str, Any]) -> None:
    unit = document["unit"]
    name = f"{document['device_id']} {document['channel']} [{unit}]"
    out = console()
    if document.get("buckets") is not None:
        table = Table("bucket start (UTC)", "avg", "min", "max", "count", title=name)
        rows = document["buckets"]
        for bucket in rows:
            table.add_row(
                _iso(bucket["t_ns"]),
                *(_number(bucket[key]) for key in ("avg", "min", "max")),
                str(bucket["count"]),
            )
        noun = "bucket"
    else:
        table = Table("time (UTC)", "t_ns", "value", "quality", title=name)
        rows = document["readings"] or []
        for reading in rows:
            table.add_row(
                _iso(reading["t_ns"]),
                str(reading["t_ns"]),
                _number(reading["value"]),
                reading["quality"],
            )
        noun = "reading"
    out.print(table)
    out.print(f"{len(rows)} {noun}{'' if len(rows) == 1 else 's'}")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
