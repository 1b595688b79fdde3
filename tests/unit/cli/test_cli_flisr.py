"""``openfeeder flisr``: the offline analysis from the command line, checked with pandapower."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from openfeeder.cli import main
from openfeeder.model.cases import resolve_case


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _flisr(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, "flisr", *args, "--json")
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def test_text_report_names_section_location_and_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "flisr", "turin", "--fault", "103@100", "--type", "slg")
    assert code == 0
    assert "breaker 300 tripped" in out
    assert "faulted section: buses [14, 16]" in out
    assert "line 103 (bus 14 -> 16) at" in out
    assert "open and lock out [306, 307]" in out
    assert "restored 695 customers" in out


def test_json_document_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    document = _flisr(capsys, "turin", "--fault", "110@150", "--type", "ll")
    for key in (
        "faulted_section",
        "isolation",
        "restoration",
        "restored_customers",
        "unserved_customers",
        "restored_mw",
        "unserved_mw",
    ):
        assert key in document
    # line 110 (bus 45 -> 47) between switches 321 and 322 on feeder 313
    assert document["trip"] == 313
    assert document["faulted_section"] == [45, 47]
    assert sorted(document["isolation"]) == [321, 322]
    assert [op["switch"] for op in document["restoration"]] == [313, 325]
    assert all(op["action"] == "close" for op in document["restoration"])
    assert document["location"]["line_id"] == 110
    assert document["location"]["error_m"] <= 50.0
    assert document["unserved_customers"] == 0


def test_offline_indicator_widens_the_section(capsys: pytest.CaptureFixture[str]) -> None:
    document = _flisr(capsys, "turin", "--fault", "108@30", "--type", "ll", "--offline", "317")
    assert document["indicators"]["317"] is None
    assert document["location"]["widened"] is True
    assert document["faulted_section"] == [36, 37, 38, 39]
    assert 317 not in document["isolation"]


def test_open_conductor_is_located_without_a_trip(capsys: pytest.CaptureFixture[str]) -> None:
    document = _flisr(capsys, "turin", "--fault", "104@100", "--type", "open")
    assert document["trip"] is None
    assert 18 in document["faulted_section"]
    assert 20 in document["faulted_section"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("turin", "--fault", "103-100"), "expected LINE_ID@DISTANCE_M"),
        (("turin", "--fault", "999@10"), "no line with id 999"),
        (("turin", "--fault", "103@5000"), "outside the line"),
        (("turin", "--fault", "103@100", "--offline", "999"), "has no such switch"),
    ],
)
def test_bad_input_is_named(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, _, err = run(capsys, "flisr", *args)
    assert code == 1
    assert message in err


def test_plan_checked_with_pandapower(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The final switch states of a plan, applied to the pandapower export, give a radial grid
    whose every in-service load is supplied within the limits (an independent power flow)."""
    pp = pytest.importorskip("pandapower")
    net_file = tmp_path / "turin.json"
    code, _, err = run(capsys, "case", "export", "pandapower", "turin", "-o", str(net_file))
    assert code == 0, err
    document = _flisr(capsys, "turin", "--fault", "101@50", "--type", "lll")
    net = pp.from_json(str(net_file))
    net.switch.loc[document["trip"], "closed"] = False
    for switch in document["isolation"]:
        net.switch.loc[switch, "closed"] = False
    for op in document["restoration"]:
        net.switch.loc[op["switch"], "closed"] = op["action"] == "close"
    pp.runpp(net, algorithm="nr", calculate_voltage_angles=True, trafo_model="pi")
    model = resolve_case("turin")
    dead = set(document["dead_zone"])
    supplied = ~net.res_bus.vm_pu.isna()
    for bus in model.bus["id"].tolist():
        assert bool(supplied[bus]) == (bus not in dead), f"bus {bus}"
    assert net.res_bus.vm_pu[supplied].min() >= 0.9
    assert np.nanmax(net.res_line.loading_percent.to_numpy()) <= 100.0
    # radial: no loop in the graph of closed switches and in-service branches (pandapower's own)
    import networkx as nx
    from pandapower import topology

    graph = nx.Graph(topology.create_nxgraph(net, respect_switches=True))
    assert nx.cycle_basis(graph) == []
