"""``openfeeder twin ...``: run digital-twin scenarios and list the shipped ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from openfeeder.cli.render import console, model_size_line
from openfeeder.cli.se_cmd import twin_measurements_command
from openfeeder.sim.clock import NS_PER_S
from openfeeder.sim.scenario import builtin_scenarios, load_scenario
from openfeeder.sim.twin import Twin, TwinRun

__all__ = ["twin_group"]


@click.group("twin")
def twin_group() -> None:
    """The digital twin: time-stepped grid, devices, faults, waveforms."""


twin_group.add_command(twin_measurements_command)


@twin_group.command("scenarios")
def scenarios_command() -> None:
    """List the shipped scenarios (run one by name: openfeeder twin run NAME)."""
    table = Table("scenario", "description")
    for name, path in builtin_scenarios().items():
        table.add_row(name, load_scenario(path).scenario.description)
    console().print(table)


@twin_group.command("run")
@click.argument("scenario")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for timeline.json, summary.json, steps.npz, COMTRADE files "
    "(default: twin-out/<scenario>).",
)
@click.option(
    "--measurements", is_flag=True, help="Also write every device reading (measurements.npz)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option(
    "--live",
    is_flag=True,
    help="Run with the platform: embedded broker, catalog, the scenario's emulated network and "
    "every device a platform device, on the scenario's clock (speed 'realtime' or a factor).",
)
def run_command(
    scenario: str, output: Path | None, measurements: bool, as_json: bool, live: bool
) -> None:
    """Run SCENARIO (a TOML file or a shipped name): as fast as possible without messaging, or
    --live with the platform."""
    loaded = load_scenario(scenario)
    if live:
        from openfeeder.cli.twin_live import run_live

        run_live(loaded)
        return
    out_dir = output if output is not None else Path("twin-out") / loaded.scenario.name
    out = console()
    twin = Twin(loaded)
    if not as_json:
        out.print(
            f"[bold]Twin[/bold] {loaded.scenario.name}: {model_size_line(twin.model)}; "
            f"{len(twin.placements)} devices; {loaded.scenario.steps} steps of "
            f"{loaded.scenario.step_s:g} s"
        )
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f} %"),
        TimeRemainingColumn(),
        console=out,
        transient=True,
        disable=as_json,
    ) as progress:
        task = progress.add_task("run", total=1.0)
        run = twin.run_study(
            output_dir=out_dir,
            write_measurements=measurements,
            progress=lambda done, _t: progress.update(task, completed=done),
        )
    if as_json:
        click.echo(json.dumps(run_document(twin, run)))
        return
    print_run(twin, run)


def run_document(twin: Twin, run: TwinRun) -> dict[str, Any]:
    return {
        "scenario": run.scenario,
        "buses": run.buses,
        "devices": run.devices,
        "steps": run.steps,
        "simulated_s": run.simulated_s,
        "wall_s": run.wall_s,
        "realtime_factor": run.realtime_factor,
        "readings": run.readings,
        "valid_readings": run.valid_readings,
        "timeline": [entry.as_dict(twin.start_ns) for entry in run.timeline],
        "faults": [
            {
                "event": record.event_index,
                "tripped_breaker": record.timeline.tripped_breaker,
                "locked_out": record.timeline.locked_out,
                "fault_indicators": sorted(
                    s for s, flag in record.timeline.fault_indicators.items() if flag.latched
                ),
                "comtrade": [str(p) for p in record.comtrade],
            }
            for record in run.faults
        ],
        "outputs": [str(p) for p in run.outputs],
    }


def print_run(twin: Twin, run: TwinRun) -> None:
    out = console()
    summary = run.summary
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("simulated", f"{run.simulated_s:g} s in {run.wall_s:.2f} s wall")
    table.add_row("real-time factor", f"{run.realtime_factor:,.0f}x")
    table.add_row("readings", f"{run.readings:,} ({run.valid_readings:,} delivered)")
    if summary["u_min_pu"].size:
        table.add_row(
            "voltage range",
            f"{summary['u_min_pu'].min():.4f} .. {summary['u_max_pu'].max():.4f} pu",
        )
        table.add_row(
            "peak load",
            f"{summary['load_p_mw'].max():.3f} MW (served {summary['served_mw'].max():.3f} MW)",
        )
    out.print(table)
    if run.timeline:
        events = Table("t (s)", "event", "details", title="timeline")
        for entry in run.timeline:
            details = ", ".join(f"{k}={v}" for k, v in entry.detail.items())
            events.add_row(f"{(entry.t_ns - twin.start_ns) / NS_PER_S:.3f}", entry.kind, details)
        out.print(events)
    for record in run.faults:
        timeline = record.timeline
        fis = sorted(s for s, flag in timeline.fault_indicators.items() if flag.latched)
        out.print(
            f"fault (event {record.event_index}): breaker {timeline.tripped_breaker} "
            f"{'locked out' if timeline.locked_out else 'not locked out'}; "
            f"fault indicators latched: {fis or 'none'}"
        )
        for path in record.comtrade:
            out.print(f"  COMTRADE: {path}")
    if run.outputs:
        out.print(f"outputs in {run.outputs[0].parent}")
