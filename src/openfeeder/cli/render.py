"""Human-readable terminal output (rich tables) for the CLI."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from openfeeder.analysis.pf_report import PowerFlowSummary
from openfeeder.analysis.powerflow import BranchKind, PowerFlowResult
from openfeeder.model.grid import GridModel

__all__ = ["console", "model_size_line", "print_power_flow"]


def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def model_size_line(model: GridModel) -> str:
    size = model.size
    parts = [
        f"{size['bus']} buses",
        f"{size['line']} lines",
        f"{size['transformer']} transformers",
        f"{size['switch']} switches",
        f"{size['load']} loads",
    ]
    if size["generator"]:
        parts.append(f"{size['generator']} DERs")
    if size["measurement"]:
        parts.append(f"{size['measurement']} measurement devices")
    return ", ".join(parts)


def print_power_flow(
    out: Console, model: GridModel, result: PowerFlowResult, summary: PowerFlowSummary
) -> None:
    mode = "symmetric" if result.symmetric else "asymmetric (per phase)"
    out.print(f"[bold]Power flow[/bold] {model.name}: {mode}, converged")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("energized buses", f"{summary.energized_buses} of {summary.buses}")
    table.add_row("lowest voltage", f"{summary.u_min_pu:.4f} pu at bus {summary.u_min_bus}")
    table.add_row("highest voltage", f"{summary.u_max_pu:.4f} pu at bus {summary.u_max_bus}")
    table.add_row(
        "highest loading",
        f"{summary.max_loading_percent:.1f} % on branch {summary.max_loading_branch}",
    )
    table.add_row("load", f"{summary.load_mw:.3f} MW")
    table.add_row("DER generation", f"{summary.generation_mw:.3f} MW")
    table.add_row("from sources", f"{summary.source_p_mw:.3f} MW, {summary.source_q_mvar:.3f} Mvar")
    table.add_row("losses", f"{summary.losses_mw * 1e3:.1f} kW")
    out.print(table)

    bus = result.bus
    u = bus["u_pu"] if result.symmetric else bus["u_pu"].min(axis=1)
    energized = np.flatnonzero(bus["energized"])
    lowest = energized[np.argsort(u[energized], kind="stable")[:5]]
    low = Table("bus", "kV rated", "u_pu", "angle deg", title="lowest voltages")
    rated = dict(zip(model.bus["id"].tolist(), model.bus["u_rated_kv"].tolist(), strict=True))
    for row in lowest:
        angle = bus["u_angle_deg"][row]
        angle_text = f"{angle:.2f}" if result.symmetric else " / ".join(f"{a:.1f}" for a in angle)
        u_text = (
            f"{bus['u_pu'][row]:.4f}"
            if result.symmetric
            else " / ".join(f"{v:.4f}" for v in bus["u_pu"][row])
        )
        low.add_row(str(bus["id"][row]), f"{rated[int(bus['id'][row])]:g}", u_text, angle_text)
    out.print(low)

    branch = result.branch
    loading = np.nan_to_num(branch["loading_percent"], nan=-1.0)
    top = np.argsort(-loading, kind="stable")[:5]
    kinds = [k.name.lower() for k in BranchKind]
    busiest = Table(
        "branch", "kind", "i_ka", "loading %", "P from MW", "Q from Mvar", title="most loaded"
    )
    for row in top:
        busiest.add_row(
            str(branch["id"][row]),
            kinds[branch["kind"][row]],
            f"{branch['i_ka'][row]:.4f}",
            f"{branch['loading_percent'][row]:.1f}",
            f"{branch['p_from_mw'][row]:.4f}",
            f"{branch['q_from_mvar'][row]:.4f}",
        )
    out.print(busiest)
