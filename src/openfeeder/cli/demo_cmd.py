"""``openfeeder demo``: the most complete thing the project runs today.

Until FLISR and the digital twin land, the demo loads the ``turin`` case, traces its topology, runs
a symmetric and an unbalanced power flow, and a one-day 15-minute time series, and prints a summary;
then it runs the metering platform of seed 003 in one process (embedded broker, device catalog,
historian, meter agents with a hot-deployed algorithm; see :mod:`openfeeder.cli.demo_iot`).
"""

from __future__ import annotations

import click
import numpy as np

from openfeeder.analysis.pf_report import summarize_power_flow
from openfeeder.analysis.powerflow import run_power_flow, run_time_series
from openfeeder.cli.analysis_cmd import print_topology
from openfeeder.cli.demo_iot import run_metering_demo
from openfeeder.cli.render import console, model_size_line, print_power_flow
from openfeeder.model.cases import resolve_case
from openfeeder.model.topology import analyze_topology, topology_summary

__all__ = ["demo_command"]

# A residential weekday shape (fraction of peak per hour), the same for every load: the twin
# (a later capability) brings per-class profiles; this one is only to show the time series.
_RESIDENTIAL_DAY = np.array(
    [0.42, 0.36, 0.33, 0.32, 0.33, 0.38, 0.52, 0.68, 0.66, 0.58, 0.55, 0.56,
     0.60, 0.58, 0.53, 0.52, 0.57, 0.70, 0.88, 1.00, 0.97, 0.86, 0.70, 0.53]
)  # fmt: skip


@click.command("demo")
@click.option("--case", "case", default="turin", show_default=True, help="Case to run.")
@click.option(
    "--meters",
    type=click.IntRange(0, 100),
    default=12,
    show_default=True,
    help="Meter agents of the metering part (0 skips it).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(2, 3600),
    default=10.0,
    show_default=True,
    help="How long the meters stream.",
)
def demo_command(case: str, meters: int, seconds: float) -> None:
    """Load a grid, trace it, run power flows, then stream from meters; prints a summary."""
    out = console()
    model = resolve_case(case)
    out.rule(f"OpenFeeder demo: {model.name}")
    out.print(model.description)
    topo = analyze_topology(model)
    print_topology(model.name, model_size_line(model), topology_summary(model, topo))

    out.rule("power flow")
    result = run_power_flow(model)
    print_power_flow(out, model, result, summarize_power_flow(model, result))

    out.rule("unbalanced power flow")
    asym = run_power_flow(model, symmetric=False)
    u = asym.bus["u_pu"][asym.bus["energized"]]
    spread = (u.max(axis=1) - u.min(axis=1)).max() * 100
    out.print(
        f"per-phase voltages {u.min():.4f} .. {u.max():.4f} pu; "
        f"largest phase spread at one bus {spread:.2f} % of nominal"
    )

    out.rule("one day, 15-minute steps")
    steps = np.interp(np.arange(96) / 4.0, np.arange(25), np.append(_RESIDENTIAL_DAY, 0.42))
    series = run_time_series(model, load_p_mw=np.outer(steps, model.load["p_mw"]))
    u_min = series.u_pu.min(axis=1)
    worst = int(np.argmin(u_min))
    peak = float(series.source_p_mw.sum(axis=1).max())
    out.print(
        f"{series.steps} snapshots solved in one batch; lowest voltage {u_min[worst]:.4f} pu at "
        f"{worst // 4:02d}:{worst % 4 * 15:02d}; peak supply {peak:.3f} MW; energy losses "
        f"{series.p_loss_mw.sum() / 4 * 1e3:.1f} kWh"
    )

    if meters:
        out.rule(f"metering platform: {meters} meters streaming for {seconds:g} s")
        run_metering_demo(out, case=case, meters=meters, seconds=seconds)
