"""``openfeeder se CASE --measurements FILE`` and ``openfeeder twin measurements SCENARIO -o FILE``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from openfeeder.analysis.estimation import (
    MeasurementSet,
    StateEstimate,
    estimate_state,
    parse_measurement_document,
)
from openfeeder.cli.render import console, model_size_line
from openfeeder.errors import MeasurementError
from openfeeder.model.cases import resolve_case
from openfeeder.model.grid import GridModel, lookup

__all__ = ["read_measurement_file", "se_command", "twin_measurements_command"]


def read_measurement_file(path: Path) -> tuple[MeasurementSet, dict[str, Any]]:
    """The set in a measurement file and its other keys; MeasurementError names the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise MeasurementError(f"cannot read: {err.strerror or err}", file=str(path)) from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise MeasurementError(
            f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})", file=str(path)
        ) from err
    return parse_measurement_document(data, file=str(path))


@click.command("se")
@click.argument("case")
@click.option(
    "-m",
    "--measurements",
    "measurements_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Measurement file (docs/estimation.md; `openfeeder twin measurements` writes one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--pseudo",
    type=click.Choice(["all", "needed", "none"]),
    default="all",
    show_default=True,
    help="Which islands get pseudo-measurements for unmetered loads and generators.",
)
@click.option("--no-bad-data", is_flag=True, help="Skip the chi-square test and bad-data removal.")
@click.option(
    "--uncertainty/--no-uncertainty",
    default=None,
    help="Voltage standard deviations (default: up to 5,000 buses; they cost seconds above).",
)
@click.option(
    "--method",
    type=click.Choice(["iterative_linear", "newton_raphson"]),
    default="iterative_linear",
    show_default=True,
)
@click.option(
    "--strict", is_flag=True, help="Fail when any energized bus is unobservable (default: mark it)."
)
def se_command(  # noqa: PLR0917  (one option each)
    case: str,
    measurements_file: Path,
    as_json: bool,
    pseudo: str,
    no_bad_data: bool,
    uncertainty: bool | None,
    method: str,
    strict: bool,
) -> None:
    """State estimation of CASE (built-in name or case file) from a measurement file."""
    model = resolve_case(case)
    measurements, meta = read_measurement_file(measurements_file)
    estimate = estimate_state(
        model,
        measurements,
        pseudo=pseudo,
        bad_data=not no_bad_data,
        uncertainty=uncertainty,
        method="newton_raphson" if method == "newton_raphson" else "iterative_linear",
        on_unobservable="raise" if strict else "mark",
        file=str(measurements_file),
    )
    truth = _against_truth(model, estimate, meta.get("truth"))
    if as_json:
        document = estimate.as_dict()
        document["file"] = str(measurements_file)
        if truth is not None:
            document["against_truth"] = truth
        click.echo(json.dumps(document))
        return
    if "case" in meta and meta["case"] != model.name:
        click.echo(
            f"warning: {measurements_file} was written for case {meta['case']!r}, not {model.name!r}",
            err=True,
        )
    _print(model, estimate, truth)


def _against_truth(
    model: GridModel, estimate: StateEstimate, truth: Any
) -> dict[str, float | int] | None:
    """Errors against the file's true state (the twin writes one), over estimated buses."""
    if not isinstance(truth, dict) or not isinstance(truth.get("buses"), list):
        return None
    try:
        ids = np.array([int(b["id"]) for b in truth["buses"]], dtype=np.int64)
        u = np.array([float(b["u_pu"]) for b in truth["buses"]])
        angle = np.array([float(b["u_angle_deg"]) for b in truth["buses"]])
    except (KeyError, TypeError, ValueError) as err:
        raise MeasurementError(f"unreadable 'truth' ({err})", field="truth") from err
    rows = lookup(ids, model.bus["id"])
    bus = estimate.bus
    ok = (rows >= 0) & bus["observable"]
    du = bus["u_pu"][ok] - u[rows[ok]]
    da = bus["u_angle_deg"][ok] - angle[rows[ok]]
    sigma_u, sigma_a = bus["u_sigma_pu"][ok], bus["u_angle_sigma_deg"][ok]
    within = np.abs(du) <= 3.0 * sigma_u
    return {
        "buses": int(ok.sum()),
        "u_max_error_pu": float(np.abs(du).max()) if du.size else 0.0,
        "u_rms_error_pu": float(np.sqrt(np.mean(du**2))) if du.size else 0.0,
        "angle_max_error_deg": float(np.abs(da).max()) if da.size else 0.0,
        "u_within_3_sigma": float(within.mean())
        if np.isfinite(sigma_u).all() and du.size
        else -1.0,
        "angle_within_3_sigma": float((np.abs(da) <= 3.0 * sigma_a + 1e-9).mean())
        if np.isfinite(sigma_a).all() and da.size
        else -1.0,
    }


def _print(model: GridModel, estimate: StateEstimate, truth: dict[str, float | int] | None) -> None:
    out = console()
    summary = estimate.as_dict()["summary"]
    out.print(f"[bold]State estimation[/bold] {model.name}: {model_size_line(model)}")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row(
        "estimated buses",
        f"{summary['estimated_buses']} of {summary['buses']}"
        + (
            f" ({len(summary['unobservable_buses'])} energized buses unobservable: NaN)"
            if summary["unobservable_buses"]
            else ""
        ),
    )
    table.add_row(
        "measurements",
        f"{summary['measurements']} + {summary['pseudo_measurements']} pseudo-measurements added",
    )
    chi = summary["chi_square"]
    if chi is not None:
        verdict = "passed" if chi["passed"] else "FAILED"
        table.add_row(
            "chi-square test",
            f"J = {chi['objective']:.1f}, {chi['degrees_of_freedom']} degrees of freedom, "
            f"threshold {chi['threshold']:.1f} ({chi['confidence']:.0%}): {verdict}",
        )
    removed = summary["bad_data_removed"]
    table.add_row(
        "bad data removed",
        ", ".join(f"{r['id']} (r_N {r['normalized_residual']:.1f})" for r in removed) or "none",
    )
    if summary["bad_data_kept_critical"]:
        table.add_row("suspect but critical", summary["bad_data_kept_critical"])
    if summary["u_min_pu"] is not None:
        table.add_row("voltage range", f"{summary['u_min_pu']:.4f} .. {summary['u_max_pu']:.4f} pu")
    table.add_row("engine solves", str(summary["solves"]))
    if truth is not None:
        table.add_row(
            "against the true state",
            f"max |du| {truth['u_max_error_pu']:.2e} pu, max |dangle| "
            f"{truth['angle_max_error_deg']:.3f} deg; within 3 sigma: "
            f"{truth['u_within_3_sigma']:.1%} (u), {truth['angle_within_3_sigma']:.1%} (angle)",
        )
    out.print(table)

    bus = estimate.bus
    ok = np.flatnonzero(bus["observable"])
    lowest = ok[np.argsort(bus["u_pu"][ok], kind="stable")[:5]]
    low = Table("bus", "u_pu", "sigma pu", "angle deg", "sigma deg", title="lowest voltages")
    for row in lowest.tolist():
        low.add_row(
            str(bus["id"][row]),
            f"{bus['u_pu'][row]:.4f}",
            f"{bus['u_sigma_pu'][row]:.1e}",
            f"{bus['u_angle_deg'][row]:.3f}",
            f"{bus['u_angle_sigma_deg'][row]:.1e}",
        )
    out.print(low)
    residual = np.nan_to_num(estimate.weighted_residual, nan=-1.0)
    top = np.argsort(-residual, kind="stable")[:5]
    worst = Table("measurement", "weighted residual", title="largest residuals |z - h(x)| / sigma")
    for row in top.tolist():
        if residual[row] >= 0:
            worst.add_row(estimate.measurements.ids[row], f"{residual[row]:.2f}")
    out.print(worst)


@click.command("measurements")
@click.argument("scenario")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Measurement file to write (JSON, with the true state under 'truth').",
)
@click.option(
    "--at",
    "at_s",
    type=float,
    default=None,
    help="Seconds after the scenario's start (default: the middle of the scenario).",
)
@click.option("--seed", type=int, default=None, help="Seed instead of the scenario's own.")
def twin_measurements_command(
    scenario: str, output: Path, at_s: float | None, seed: int | None
) -> None:
    """Write what SCENARIO's devices measure at one instant, for `openfeeder se`."""
    from openfeeder.errors import ConfigError
    from openfeeder.sim.clock import NS_PER_S
    from openfeeder.sim.scenario import load_scenario
    from openfeeder.sim.se_snapshot import se_snapshot
    from openfeeder.sim.twin import Twin

    loaded = load_scenario(scenario)
    if seed is not None:
        loaded = loaded.model_copy(
            update={"scenario": loaded.scenario.model_copy(update={"seed": seed})}
        )
    spec = loaded.scenario
    offset_s = spec.duration_s / 2.0 if at_s is None else at_s
    if not 0.0 <= offset_s <= spec.duration_s:
        raise ConfigError(
            f"--at {offset_s:g} s is outside the scenario (0 .. {spec.duration_s:g} s)"
        )
    twin = Twin(loaded)
    snapshot = se_snapshot(twin, twin.start_ns + round(offset_s * NS_PER_S))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(snapshot.document(), indent=1) + "\n", encoding="utf-8")
    pseudo = int(snapshot.measurements.table["pseudo"].sum())
    click.echo(
        f"wrote {output}: {len(snapshot.measurements) - pseudo} measurements and {pseudo} "
        f"forecasts of {len(twin.placements)} devices on {snapshot.case} at t = {offset_s:g} s, "
        f"with the true state"
    )
