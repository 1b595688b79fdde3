"""``openfeeder agent``, ``openfeeder meters`` and ``openfeeder algorithm``: meter agents and plug-ins.

- ``openfeeder agent --id ID [--config FILE] [--bus BUS_ID] [--seed N]``: one meter agent with a
  synthetic data source, configured by the device catalog (``[catalog] url``);
- ``openfeeder meters --count N [--prefix meter-] [--config FILE] [--duration S]``: N agents in
  this process, placed round-robin on the load buses of the configured case (``[catalog] case``),
  each with a synthetic source scaled to its bus voltage and load; a progress line every few
  seconds and a summary (messages, readings, CPU time per message) at the end;
- ``openfeeder algorithm package SOURCE -o FILE``: build an algorithm package from a folder (or a
  built-in example by name); ``openfeeder algorithm builtin-list``: the shipped examples;
  ``openfeeder algorithm keygen`` / ``sign``: publisher keys and package signatures
  (:mod:`openfeeder.cli.packages_cmd`).

Agents run until SIGINT/SIGTERM (or ``--duration``), stop cleanly and exit 0.

Secured installations (``[security] ca_file``): each agent checks the catalog's HTTPS with the CA,
enrols (``--enrolment-secret-file`` or ``[security] enrolment_secret_file``; without a secret it
waits for an operator's approval), keeps its key and certificate in ``<state_dir>/<device>/`` and
connects to ``mqtts://`` brokers with them (:mod:`openfeeder.iot.agent.identity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import zlib
from pathlib import Path

import click

from openfeeder.cli.packages_cmd import keygen_command, sign_command
from openfeeder.config import Settings, load_settings
from openfeeder.iot.agent.fleet import (
    MAX_AGENTS_PER_PROCESS,
    Fleet,
    FleetStats,
    MeterSpec,
    ProcessFleet,
)
from openfeeder.iot.agent.identity import catalog_client
from openfeeder.iot.agent.metering import CHANNELS
from openfeeder.iot.agent.packages import (
    MANIFEST_FILE,
    Manifest,
    build_package,
    builtin_algorithms,
    package_sha256,
)
from openfeeder.iot.agent.source import SyntheticParams
from openfeeder.iot.device_settings import Location
from openfeeder.iot.topics import ID_PATTERN
from openfeeder.model.cases import resolve_case
from openfeeder.services.runtime import configure_logging, run_service

__all__ = ["agent_command", "algorithm_group", "meters_command"]

_LOG = logging.getLogger("openfeeder.cli.agent")
_PROGRESS_EVERY_S = 5.0

_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings file (default: ./openfeeder.toml if present).",
)
_secret_option = click.option(
    "--enrolment-secret-file",
    "secret_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="File with the enrolment secret (first line); overrides [security] "
    "enrolment_secret_file. Without one, enrolment waits for an operator's approval.",
)
_duration_option = click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds (default: run until SIGINT/SIGTERM).",
)


def _check_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if ID_PATTERN.fullmatch(value) is None:
        raise click.BadParameter("must match [A-Za-z0-9_.-]{1,64}")
    return value


def _seed_for(device_id: str) -> int:
    return zlib.crc32(device_id.encode())


@click.command("agent")
@click.option("--id", "device_id", required=True, callback=_check_id, help="Device id.")
@_config_option
@click.option("--bus", "bus_id", type=click.IntRange(min=0), default=None, help="Bus it measures.")
@click.option("--seed", type=int, default=None, help="Synthetic source seed (default: from --id).")
@_secret_option
@_duration_option
def agent_command(
    *,
    device_id: str,
    config_file: Path | None,
    bus_id: int | None,
    seed: int | None,
    secret_file: Path | None,
    duration_s: float | None,
) -> None:
    """Run one meter agent (synthetic data source) until stopped."""
    settings = _with_secret(load_settings(config_file), secret_file)
    _configure_logging(settings)
    location = (
        Location(case=settings.catalog.case or None, bus_id=bus_id) if bus_id is not None else None
    )
    params = SyntheticParams() if bus_id is None else _params_at_bus(settings, bus_id)
    spec = MeterSpec(
        device_id=device_id,
        seed=seed if seed is not None else _seed_for(device_id),
        params=params,
        location=location,
    )
    with catalog_client(settings) as client:
        _run(Fleet(settings, [spec], catalog=client), duration_s=duration_s, progress=False)


@click.command("meters")
@click.option("--count", type=click.IntRange(min=1, max=100_000), required=True, help="Agents.")
@click.option("--prefix", default="meter-", show_default=True, help="Device id prefix.")
@_config_option
@_duration_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first meter.")
@click.option(
    "--processes",
    type=click.IntRange(min=1, max=256),
    default=None,
    help=f"Worker processes (default: one per {MAX_AGENTS_PER_PROCESS} meters; 1 = this process).",
)
@_secret_option
def meters_command(
    *,
    count: int,
    prefix: str,
    config_file: Path | None,
    duration_s: float | None,
    seed: int,
    processes: int | None,
    secret_file: Path | None,
) -> None:
    """Run COUNT meter agents (load buses of the configured case) until stopped."""
    width = len(str(count - 1))
    ids = [f"{prefix}{index:0{width}d}" for index in range(count)]
    bad = [device_id for device_id in ids[:1] + ids[-1:] if ID_PATTERN.fullmatch(device_id) is None]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not a valid device id", param_hint="--prefix")
    settings = _with_secret(load_settings(config_file), secret_file)
    _configure_logging(settings)
    specs = [
        MeterSpec(device_id=device_id, seed=seed + index, params=params, location=location)
        for index, (device_id, (location, params)) in enumerate(
            zip(ids, meter_placements(settings, count), strict=True)
        )
    ]
    workers = processes or math.ceil(count / MAX_AGENTS_PER_PROCESS)
    if workers > 1:
        _run(ProcessFleet(settings, specs, processes=workers), duration_s=duration_s, progress=True)
        return
    with catalog_client(settings) as client:
        _run(Fleet(settings, specs, catalog=client), duration_s=duration_s, progress=True)


def _with_secret(settings: Settings, secret_file: Path | None) -> Settings:
    if secret_file is None:
        return settings
    security = settings.security.model_copy(update={"enrolment_secret_file": secret_file})
    return settings.model_copy(update={"security": security})


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.logging, service="agent")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is too much


def meter_placements(
    settings: Settings, count: int
) -> list[tuple[Location | None, SyntheticParams]]:
    """Meter ``k`` on the ``k``-th load bus of the case (round-robin), with a source to match."""
    case = settings.catalog.case
    if not case:
        return [(None, SyntheticParams())] * count
    model = resolve_case(case)
    loads = model.load[model.load["in_service"]]
    if loads.size == 0:
        return [(None, SyntheticParams())] * count
    u_rated_kv = dict(zip(model.bus["id"].tolist(), model.bus["u_rated_kv"].tolist(), strict=True))
    placements: list[tuple[Location | None, SyntheticParams]] = []
    for index in range(count):
        load = loads[index % loads.size]
        bus = int(load["bus"])
        location = Location(case=case, bus_id=bus, element_id=int(load["id"]))
        placements.append((location, _params(u_rated_kv[bus], load["p_mw"], load["q_mvar"])))
    return placements


def _params_at_bus(settings: Settings, bus_id: int) -> SyntheticParams:
    case = settings.catalog.case
    if not case:
        return SyntheticParams()
    model = resolve_case(case)
    buses = model.bus[model.bus["id"] == bus_id]
    if buses.size == 0:
        raise click.BadParameter(f"case {case!r} has no bus {bus_id}", param_hint="--bus")
    loads = model.load[model.load["bus"] == bus_id]
    p_mw = float(loads["p_mw"].sum()) if loads.size else 0.0
    q_mvar = float(loads["q_mvar"].sum()) if loads.size else 0.0
    return _params(float(buses["u_rated_kv"][0]), p_mw, q_mvar)


def _params(u_rated_kv: float, p_mw: float, q_mvar: float) -> SyntheticParams:
    apparent = math.hypot(p_mw, q_mvar)
    power_factor = p_mw / apparent if apparent > 0 and p_mw > 0 else 0.95
    return SyntheticParams(
        u_nominal_v=u_rated_kv * 1000 / math.sqrt(3),
        p_peak_w=max(p_mw, 0.0) * 1e6,
        power_factor=min(max(power_factor, 0.05), 1.0),
    )


# --- running agents until a signal -----------------------------------------------------------------


def _run(fleet: Fleet | ProcessFleet, *, duration_s: float | None, progress: bool) -> None:
    started = time.monotonic()

    async def main(stop: asyncio.Event) -> None:
        fleet.start()
        deadline = started + duration_s if duration_s is not None else math.inf
        next_report = started + _PROGRESS_EVERY_S
        last = (started, 0)
        while not stop.is_set() and time.monotonic() < deadline:
            timeout = min(deadline, next_report) - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(timeout, 0.0))
            if progress and time.monotonic() >= next_report:
                now = time.monotonic()
                stats = fleet.stats()
                rate = (stats.produced - last[1]) / (now - last[0])
                click.echo(_progress_line(stats, rate), err=True)
                last = (now, stats.produced)
                next_report += _PROGRESS_EVERY_S
        await asyncio.to_thread(fleet.stop)

    run_service(main, name="agent" if not progress else "meters")
    if isinstance(fleet, ProcessFleet) and fleet.failed:
        raise click.ClickException(f"worker processes failed: {', '.join(fleet.failed)}")
    if progress:
        click.echo(_summary_line(fleet.stats(), time.monotonic() - started))


def _progress_line(stats: FleetStats, rate_per_s: float) -> str:
    return (
        f"meters: {stats.running}/{stats.meters} running, produced {stats.produced} "
        f"({rate_per_s:.1f}/s), published {stats.published}, buffered {stats.buffered}, "
        f"in flight {stats.in_flight}, dropped {stats.dropped}, resends {stats.resends}, "
        f"plug-ins {stats.plugins_running}/{stats.plugins} running"
    )


def _summary_line(stats: FleetStats, elapsed_s: float) -> str:
    produced = stats.produced
    per_message = (
        f"{stats.cpu_s / produced * 1e6:.0f} us CPU per message" if produced else "no messages"
    )
    return (
        f"{stats.meters} meters for {elapsed_s:.1f} s: {produced} messages "
        f"({produced / elapsed_s:.1f}/s, {produced * len(CHANNELS) / elapsed_s:.0f} readings/s), "
        f"published {stats.published}, dropped {stats.dropped}; {per_message} "
        f"({stats.cpu_s:.1f} s CPU)"
    )


# --- algorithm packages ----------------------------------------------------------------------------


@click.group("algorithm")
def algorithm_group() -> None:
    """Algorithm packages for meter agents (plug-ins)."""


@algorithm_group.command("package")
@click.argument("source")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Package file to write (a zip).",
)
def package_command(source: str, output: Path) -> None:
    """Build a package from SOURCE: a folder with manifest.json, or a built-in algorithm's name."""
    folder = Path(source)
    if not (folder / MANIFEST_FILE).is_file():
        builtin = builtin_algorithms()
        if source not in builtin:
            raise click.BadParameter(
                f"{source!r} is neither a folder with {MANIFEST_FILE} nor a built-in algorithm "
                f"({', '.join(builtin)})",
                param_hint="SOURCE",
            )
        folder = builtin[source]
    data = build_package(folder)
    output.write_bytes(data)
    manifest = Manifest.model_validate_json((folder / MANIFEST_FILE).read_bytes())
    click.echo(
        f"{output}: {manifest.name} {manifest.version}, {len(data)} bytes, "
        f"sha256 {package_sha256(data)}"
    )


@algorithm_group.command("builtin-list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def builtin_list_command(as_json: bool) -> None:
    """The example algorithms shipped with OpenFeeder."""
    rows = []
    for folder in builtin_algorithms().values():
        manifest = Manifest.model_validate_json((folder / MANIFEST_FILE).read_bytes())
        rows.append(
            {
                "name": manifest.name,
                "version": manifest.version,
                "inputs": list(manifest.inputs),
                "outputs": [f"{o.channel} [{o.unit}]" for o in manifest.outputs],
                "description": manifest.description,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        click.echo(
            f"{row['name']} {row['version']}: {row['description']}\n"
            f"  inputs: {', '.join(row['inputs'])}\n  outputs: {', '.join(row['outputs'])}"
        )


algorithm_group.add_command(keygen_command)
algorithm_group.add_command(sign_command)
