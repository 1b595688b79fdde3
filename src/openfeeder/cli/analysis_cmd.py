"""``openfeeder topology`` and ``openfeeder pf``."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from openfeeder.analysis.pf_report import power_flow_document, summarize_power_flow
from openfeeder.analysis.powerflow import run_power_flow
from openfeeder.cli.render import console, model_size_line, print_power_flow
from openfeeder.errors import OpenFeederError
from openfeeder.model.cases import resolve_case
from openfeeder.model.topology import analyze_topology, topology_summary

__all__ = ["pf_command", "topology_command"]


@click.command("topology")
@click.argument("case")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def topology_command(case: str, as_json: bool) -> None:
    """Islands, feeders, switching sections and ties of CASE (built-in name or case file)."""
    model = resolve_case(case)
    summary = topology_summary(model, analyze_topology(model))
    if as_json:
        click.echo(json.dumps({"case": model.name, **summary}))
        return
    print_topology(model.name, model_size_line(model), summary)


def print_topology(name: str, size_line: str, summary: dict[str, Any]) -> None:
    out = console()
    out.print(f"[bold]Topology[/bold] {name}: {size_line}")
    islands = summary["islands"]
    energized = sum(1 for i in islands if i["energized"])
    counts = ", ".join(
        _count(n, word)
        for n, word in (
            (len(islands), "island"),
            (len(summary["feeders"]), "feeder"),
            (len(summary["sections"]), "switching section"),
            (len(summary["ties"]), "tie"),
        )
    )
    state = "radial" if summary["radial"] else f"NOT radial (loops via {summary['loops']})"
    out.print(f"{counts} ({energized} energized islands); {state}")
    if summary["deenergized_buses"]:
        out.print(f"de-energized buses: {_ids(summary['deenergized_buses'])}")
    feeders = Table("feeder (head switch)", "source", "buses", "sections", title="feeders")
    for feeder in summary["feeders"][:20]:
        feeders.add_row(
            str(feeder["id"]), str(feeder["source"]), str(feeder["buses"]), str(feeder["sections"])
        )
    out.print(feeders)
    if len(summary["feeders"]) > 20:
        out.print(f"... and {len(summary['feeders']) - 20} more feeders (--json for all)")
    if summary["ties"]:
        ties = Table("tie switch", "feeder a", "feeder b", title="normally-open ties")
        for tie in summary["ties"][:20]:
            a, b = tie["feeders"]
            ties.add_row(str(tie["switch"]), str(a), str(b))
        out.print(ties)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _ids(ids: list[int], limit: int = 12) -> str:
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


@click.command("pf")
@click.argument("case")
@click.option("--asym", is_flag=True, help="Three-phase unbalanced power flow.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--source-impedance",
    is_flag=True,
    help="Model the external grid's short-circuit impedance (default: ideal slack).",
)
@click.option("--max-iterations", type=click.IntRange(min=1), default=20, show_default=True)
def pf_command(
    case: str, asym: bool, as_json: bool, source_impedance: bool, max_iterations: int
) -> None:
    """Power flow of CASE (built-in name or case file)."""
    model = resolve_case(case)
    try:
        result = run_power_flow(
            model,
            symmetric=not asym,
            source_impedance=source_impedance,
            max_iterations=max_iterations,
        )
    except OpenFeederError as err:
        if as_json:
            click.echo(json.dumps({"case": model.name, "converged": False, "error": str(err)}))
        raise
    if as_json:
        click.echo(json.dumps(power_flow_document(model, result)))
        return
    print_power_flow(console(), model, result, summarize_power_flow(model, result))
