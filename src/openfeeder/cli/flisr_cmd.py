"""``openfeeder flisr``: the FLISR analysis offline, and the coordinator service.

``openfeeder flisr CASE --fault LINE_ID@DISTANCE_M --type slg|ll|lll|llg|open|open_ground|arc``
plays the fault on the case with the twin's fault calculation and protection (definite-time
overcurrent at the feeder head, no reclosing), takes the fault indicators that latched and the fault
records the default devices would capture (with their measurement noise), and runs the pure
analysis: FLOC (section and distance), FISO (switches to open and lock out) and SRES (switching
plan). ``--json`` prints one document (see :func:`flisr_document`).

``openfeeder flisr serve`` runs the coordinator against the configured brokers and catalog.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from openfeeder.analysis.flisr.location import FaultLocation, locate_fault
from openfeeder.analysis.flisr.restoration import FlisrPlan, plan_flisr
from openfeeder.cli.demo_flisr import parse_fault
from openfeeder.cli.render import console
from openfeeder.config import load_settings
from openfeeder.errors import ConfigError
from openfeeder.model.cases import resolve_case
from openfeeder.model.grid import GridModel
from openfeeder.sim.fault_records import fault_records
from openfeeder.sim.faults import FaultScenario, FaultSpec, ProtectionSettings, fault_timeline
from openfeeder.sim.placements import default_placements

__all__ = ["flisr_document", "flisr_group"]

_TYPES = ("slg", "ll", "lll", "llg", "open", "open_ground", "arc")


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is no subcommand, goes to the default command."""

    default_command = "locate"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group("flisr", cls=_DefaultGroup)
def flisr_group() -> None:
    """Fault location, isolation and service restoration: `flisr CASE --fault ...` or `serve`."""


@flisr_group.command("locate")
@click.argument("case")
@click.option("--fault", "fault", required=True, help="LINE_ID@DISTANCE_M from the from bus.")
@click.option("--type", "fault_type", type=click.Choice(_TYPES), default="slg", show_default=True)
@click.option("--r-f", "r_f_ohm", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option(
    "--offline",
    "offline",
    type=int,
    multiple=True,
    help="Switch whose device is offline (indicator unknown, not operable); repeatable.",
)
@click.option("--seed", type=int, default=3, show_default=True, help="Measurement-noise seed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def locate_command(  # noqa: PLR0917  (one option each)
    case: str,
    fault: str,
    fault_type: str,
    r_f_ohm: float,
    offline: tuple[int, ...],
    seed: int,
    as_json: bool,
) -> None:
    """Locate, isolate and restore a fault on CASE (built-in name or case file)."""
    line, distance_m = parse_fault(fault)
    model = resolve_case(case)
    document = flisr_document(
        model,
        line=line,
        distance_m=distance_m,
        fault_type=fault_type,
        r_f_ohm=r_f_ohm,
        offline=offline,
        seed=seed,
    )
    if as_json:
        click.echo(json.dumps(document, default=_default))
        return
    _print(document)


def flisr_document(
    model: GridModel,
    *,
    line: int,
    distance_m: float,
    fault_type: str,
    r_f_ohm: float = 0.0,
    offline: tuple[int, ...] = (),
    seed: int = 3,
) -> dict[str, Any]:
    """The offline FLISR result as a JSON-ready document.

    Keys: ``case``, ``fault`` (what was injected), ``trip`` (breaker or null), ``indicators``
    (switch id -> true/false/null), ``location`` (FLOC: ``faulted_section`` bus ids, line, bus
    pair, ``distance_m``, ``sigma_m``, ``error_m``...), ``faulted_section`` (bus ids),
    ``isolation`` (switch ids opened), ``lockout``, ``restoration`` (ordered ``{switch, action,
    purpose}``), ``restored_customers``, ``unserved_customers``, ``restored_mw``, ``unserved_mw``,
    ``shed_bus_ids``, ``check`` (power-flow check of the final state), ``optimal``.
    """
    switch_ids = set(model.switch["id"].tolist())
    unknown = [s for s in offline if s not in switch_ids]
    if unknown:
        raise ConfigError(f"--offline {unknown[0]}: the case {model.name} has no such switch")
    spec = FaultSpec(
        kind=FaultScenario(fault_type),
        line_id=line,
        distance_m=distance_m,
        start_ns=0,
        r_f_ohm=r_f_ohm,
    )
    timeline = fault_timeline(model, spec, ProtectionSettings(reclose_dead_times_s=()))
    result = next((r for r in timeline.fault_results if r is not None), None)
    records = []
    if result is not None:
        records = fault_records(
            model, result, default_placements(model), t_ns=spec.start_ns + 20_000_000, seed=seed
        )
        records = [r for r in records if not _offline_device(r.device_id, offline)]
    fi = model.switch["id"][model.switch["fault_indicator"].astype(bool)].tolist()
    indicators: dict[int, bool | None] = {
        int(s): (
            None
            if int(s) in offline
            else bool(
                timeline.fault_indicators.get(int(s)) and timeline.fault_indicators[int(s)].latched
            )
        )
        for s in fi
    }
    breaker = timeline.tripped_breaker
    location = locate_fault(model, tripped_breaker=breaker, indicators=indicators, records=records)
    after_trip = model if breaker is None else model.with_switch_states({breaker: False})
    plan = plan_flisr(
        after_trip, location.section_bus_ids, tripped_breaker=breaker, unavailable=offline
    )
    return _document(model, spec, breaker, indicators, location, plan)


def _offline_device(device_id: str, offline: tuple[int, ...]) -> bool:
    return any(device_id == f"ftu-{s}" for s in offline)


def _document(  # noqa: PLR0917  (the parts of one result)
    model: GridModel,
    spec: FaultSpec,
    breaker: int | None,
    indicators: dict[int, bool | None],
    location: FaultLocation,
    plan: FlisrPlan,
) -> dict[str, Any]:
    planned = plan.as_dict()
    located = location.as_dict()
    error = None
    if location.line_id == spec.line_id and location.distance_m is not None:
        error = abs(location.distance_m - spec.distance_m)
    located["error_m"] = error
    return {
        "case": model.name,
        "fault": {
            "line": spec.line_id,
            "distance_m": spec.distance_m,
            "type": str(spec.kind),
            "r_f_ohm": spec.r_f_ohm,
        },
        "trip": breaker,
        "indicators": {str(k): v for k, v in indicators.items()},
        "location": located,
        "faulted_section": list(location.section_bus_ids),
        "dead_zone": planned["faulted_section"],
        "isolation": planned["isolation"],
        "lockout": planned["lockout"],
        "restoration": planned["restoration"],
        "restored_customers": planned["restored_customers"],
        "unserved_customers": planned["unserved_customers"],
        "restored_mw": planned["restored_mw"],
        "unserved_mw": planned["unserved_mw"],
        "shed_bus_ids": planned["shed_bus_ids"],
        "optimal": planned["optimal"],
        "check": planned["check"],
    }


def _print(document: dict[str, Any]) -> None:
    out = console()
    fault = document["fault"]
    out.rule(
        f"FLISR on {document['case']}: {fault['type']} fault on line {fault['line']} at "
        f"{fault['distance_m']:g} m"
    )
    location = document["location"]
    out.print(
        f"protection: {'breaker ' + str(document['trip']) + ' tripped' if document['trip'] is not None else 'no breaker tripped'}"
    )
    latched = [k for k, v in document["indicators"].items() if v]
    unknown = [k for k, v in document["indicators"].items() if v is None]
    out.print(
        f"fault indicators latched: {', '.join(latched) or 'none'}"
        + (f"; unknown (offline): {', '.join(unknown)}" if unknown else "")
    )
    widened = " (widened: indicators missing)" if location.get("widened") else ""
    out.print(f"[bold]faulted section[/bold]: buses {document['faulted_section']}{widened}")
    if location.get("distance_m") is not None:
        error = location.get("error_m")
        out.print(
            f"[bold]location[/bold]: line {location['line_id']} (bus {location['from_bus']} -> "
            f"{location['to_bus']}) at {location['distance_m']:.1f} m +- {location['sigma_m']:.1f} m"
            + (f"; error {error:.1f} m" if error is not None else "")
            + f" ({location['method']}, type {location['fault_type']})"
        )
    else:
        out.print(f"location: no distance ({location.get('reason')})")
    out.print(f"[bold]isolation[/bold]: open and lock out {document['isolation']}")
    table = Table(title="restoration (in order)")
    table.add_column("#", justify="right")
    table.add_column("switch", justify="right")
    table.add_column("action")
    table.add_column("purpose")
    for k, op in enumerate(document["restoration"], 1):
        table.add_row(str(k), str(op["switch"]), op["action"], op["purpose"])
    out.print(table)
    out.print(
        f"restored {document['restored_customers']:,} customers ({document['restored_mw']:.3f} MW); "
        f"unserved {document['unserved_customers']:,} ({document['unserved_mw']:.3f} MW)"
        + ("" if document["optimal"] else " [not proven optimal]")
    )


def _default(value: object) -> object:
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)


@flisr_group.command("serve")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Settings file (default: openfeeder.toml if present).",
)
@click.option("--variant", type=click.Choice(["central", "edge"]), default=None)
def serve_command(config_file: Path | None, variant: str | None) -> None:
    """Run the FLISR coordinator until SIGINT/SIGTERM (brokers and catalog from the settings)."""
    from openfeeder.services.flisr.service import serve_flisr
    from openfeeder.services.runtime import configure_logging, run_service

    settings = load_settings(config_file)
    if variant is not None:
        settings = settings.model_copy(
            update={"flisr": settings.flisr.model_copy(update={"variant": variant})}
        )
    configure_logging(settings.logging, service="flisr")
    run_service(lambda stop: serve_flisr(settings, stop), name="flisr")
