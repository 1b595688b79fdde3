"""``openfeeder demo``: a self-healing grid in one command.

Loads the case, traces its topology, runs a power flow, then starts the whole platform with the
digital twin and the FLISR coordinator, injects a fault and prints how the grid heals
(:mod:`openfeeder.cli.demo_flisr`). ``--meters N`` runs the metering-platform demo of the IoT layer
instead (:mod:`openfeeder.cli.demo_iot`).

Both run secured unless ``--insecure``: a throwaway CA, certificates for every service and device
(devices enrol with the catalog), MQTT over mutual TLS 1.3 with the topic ACL, REST over HTTPS,
and control and protection payloads sealed end to end with keys the catalog issues to each device.
The header says which mode runs.
"""

from __future__ import annotations

import json

import click

from openfeeder.analysis.pf_report import summarize_power_flow
from openfeeder.analysis.powerflow import run_power_flow
from openfeeder.cli.analysis_cmd import print_topology
from openfeeder.cli.demo_flisr import DemoOptions, parse_fault, run_flisr_demo
from openfeeder.cli.demo_iot import run_metering_demo
from openfeeder.cli.render import console, model_size_line, print_power_flow
from openfeeder.model.cases import resolve_case
from openfeeder.model.topology import analyze_topology, topology_summary

__all__ = ["demo_command"]


@click.command("demo")
@click.option("--case", "case", default="turin", show_default=True, help="Case to run.")
@click.option(
    "--fault",
    "fault",
    default="103@100",
    show_default=True,
    help="Where the fault is: LINE_ID@DISTANCE_M (metres from the line's from bus).",
)
@click.option(
    "--type",
    "fault_type",
    type=click.Choice(["slg", "ll", "lll", "llg", "arc"]),
    default="slg",
    show_default=True,
    help="Fault type (open conductors trip no breaker: see `openfeeder flisr`).",
)
@click.option(
    "--r-f",
    "r_f_ohm",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Fault resistance (ohm).",
)
@click.option(
    "--speed",
    type=click.FloatRange(0.1, 100),
    default=1.0,
    show_default=True,
    help="Clock speed: 1 is real time, 10 runs ten domain seconds per second.",
)
@click.option(
    "--normal",
    "normal_s",
    type=click.FloatRange(1, 3600),
    default=5.0,
    show_default=True,
    help="Seconds (domain) of normal operation before the fault.",
)
@click.option(
    "--variant",
    type=click.Choice(["central", "edge"]),
    default="central",
    show_default=True,
    help="Who locates the fault: the coordinator, or a plug-in on the feeder-head device.",
)
@click.option("--keep-running", is_flag=True, help="Stay up after the incident (Ctrl-C stops).")
@click.option(
    "--meters",
    type=click.IntRange(0, 100),
    default=0,
    help="Instead: the metering-platform demo with this many synthetic meters.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(2, 3600),
    default=10.0,
    help="How long the meters of --meters stream.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Plain MQTT and HTTP, no certificates, no topic ACL (default: secured).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the incident as JSON at the end.")
def demo_command(  # noqa: PLR0917  (one option each)
    case: str,
    fault: str,
    fault_type: str,
    r_f_ohm: float,
    speed: float,
    normal_s: float,
    variant: str,
    keep_running: bool,
    meters: int,
    seconds: float,
    insecure: bool,
    as_json: bool,
) -> None:
    """A self-healing grid: the platform and the twin start, a fault is injected, FLISR heals it."""
    line, distance_m = parse_fault(fault)
    out = console()
    model = resolve_case(case)
    mode = (
        "INSECURE: plain text (--insecure)"
        if insecure
        else "secured: mTLS 1.3, ACL, HTTPS, sealed payloads"
    )
    out.rule(f"OpenFeeder demo: {model.name} ({mode})")
    out.print(model.description)
    topo = analyze_topology(model)
    print_topology(model.name, model_size_line(model), topology_summary(model, topo))
    if meters:
        out.rule(f"metering platform: {meters} meters streaming for {seconds:g} s")
        run_metering_demo(out, case=case, meters=meters, seconds=seconds, secure=not insecure)
        return
    out.rule("power flow")
    result = run_power_flow(model)
    print_power_flow(out, model, result, summarize_power_flow(model, result))
    out.rule(f"self-healing grid: {fault_type} fault on line {line} at {distance_m:g} m")
    summary = run_flisr_demo(
        out,
        DemoOptions(
            case=case,
            line=line,
            distance_m=distance_m,
            fault_type=fault_type,
            r_f_ohm=r_f_ohm,
            speed=speed,
            normal_s=normal_s,
            variant=variant,
            keep_running=keep_running,
            secure=not insecure,
        ),
    )
    if as_json:
        click.echo(json.dumps(summary, default=str))
