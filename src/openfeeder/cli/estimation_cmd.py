"""``openfeeder estimation``: the estimation service (``serve``) and the estimation areas of a
case (``areas``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from openfeeder.config import load_settings

__all__ = ["estimation_group"]


@click.group("estimation")
def estimation_group() -> None:
    """State estimation as a service: periodic, event-driven, central or distributed."""


@estimation_group.command("serve")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Settings file (default: openfeeder.toml if present).",
)
@click.option("--mode", type=click.Choice(["central", "distributed"]), default=None)
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds between cycles (default: [estimation] interval_s, 60).",
)
def serve_command(config_file: Path | None, mode: str | None, interval_s: float | None) -> None:
    """Run the estimation service until SIGINT/SIGTERM (brokers and catalog from the settings)."""
    from openfeeder.services.estimation.service import serve_estimation
    from openfeeder.services.runtime import configure_logging, run_service

    settings = load_settings(config_file)
    changes: dict[str, object] = {}
    if mode is not None:
        changes["mode"] = mode
    if interval_s is not None:
        changes["interval_s"] = interval_s
    if changes:
        settings = settings.model_copy(
            update={"estimation": settings.estimation.model_copy(update=changes)}
        )
    configure_logging(settings.logging, service="estimation")
    run_service(lambda stop: serve_estimation(settings, stop), name="estimation")


@estimation_group.command("areas")
@click.argument("case")
@click.option(
    "--open", "open_switches", multiple=True, type=int, help="A switch to open (repeatable)."
)
@click.option(
    "--close", "close_switches", multiple=True, type=int, help="A switch to close (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def areas_command(
    case: str, open_switches: tuple[int, ...], close_switches: tuple[int, ...], as_json: bool
) -> None:
    """The estimation areas (concentrator, LV, MV) of CASE, as its switches stand."""
    from openfeeder.analysis.estimation import partition_areas
    from openfeeder.cli.render import console
    from openfeeder.model.cases import resolve_case

    model = resolve_case(case)
    states = dict.fromkeys(open_switches, False) | dict.fromkeys(close_switches, True)
    try:
        model = model.with_switch_states(states)
    except KeyError as err:
        raise click.UsageError(str(err.args[0])) from err
    partition = partition_areas(model)
    if as_json:
        click.echo(json.dumps(partition.as_dict()))
        return
    out = console()
    out.print(f"[bold]{case}[/bold]: {len(partition.areas)} estimation areas")
    for area in partition.areas:
        boundary = "-" if area.parent is None else f"bus {area.boundary_bus_id} of {area.parent}"
        out.print(
            f"  {area.name:<12} {area.level.value:<12} {area.bus_ids.size:>4} buses  "
            f"boundary {boundary}"
        )
