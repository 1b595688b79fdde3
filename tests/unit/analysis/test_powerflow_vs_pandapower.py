"""Power flow agrees with pandapower's Newton-Raphson on the same grid.

pandapower runs on :func:`~openfeeder.model.pandapower_io.to_pandapower` of the model, whose indices
are the model's ids. Settings that make both tools solve the same equations:

* ``trafo_model="pi"``: power-grid-model splits the magnetizing admittance over both transformer
  sides (pandapower's default "t" model differs by up to 4e-6 pu on mv_oberrhein);
* our power flow treats sources as ideal slack buses (the default ``source_impedance=False``), as
  pandapower does with ``ext_grid``;
* ``calculate_voltage_angles=True`` so that transformer phase shifts (clock numbers) count.

What is left is power-grid-model's ``link`` for closed switches, a tiny but finite impedance where
pandapower fuses the buses: about 1e-6 pu on a grid with 300 switches in series runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from openfeeder.analysis.powerflow import BranchKind, run_power_flow
from openfeeder.model.cases import load_builtin
from openfeeder.model.grid import GridModel
from openfeeder.model.pandapower_io import to_pandapower
from openfeeder.model.synth import generate_feeders

pp = pytest.importorskip("pandapower")

U_TOLERANCE_PU = 1e-4
ANGLE_TOLERANCE_DEG = 1e-2
CURRENT_RELATIVE_TOLERANCE = 1e-3
CURRENT_FLOOR_KA = 1e-3
"""Currents below this (e.g. a line charging from one open end) are compared absolutely."""

CASES: dict[str, Callable[[], GridModel]] = {
    "cigre-mv": lambda: load_builtin("cigre-mv"),
    "turin": lambda: load_builtin("turin"),
    "synthetic": lambda: generate_feeders(buses=400, feeders=6, ties=3, seed=7),
}


def _pandapower_results(model: GridModel) -> Any:
    net = to_pandapower(model)
    pp.runpp(
        net,
        algorithm="nr",
        tolerance_mva=1e-9,
        calculate_voltage_angles=True,
        trafo_model="pi",
        init="dc",
    )
    return net


def _assert_currents_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    big = np.abs(theirs) >= CURRENT_FLOOR_KA
    np.testing.assert_allclose(
        ours[big], theirs[big], rtol=CURRENT_RELATIVE_TOLERANCE, err_msg=what
    )
    np.testing.assert_allclose(
        ours[~big], theirs[~big], rtol=0, atol=CURRENT_FLOOR_KA * CURRENT_RELATIVE_TOLERANCE
    )


@pytest.mark.parametrize("case", list(CASES))
def test_bus_voltages_agree_with_pandapower(case: str) -> None:
    model = CASES[case]()
    result = run_power_flow(model)
    net = _pandapower_results(model)
    bus = result.bus
    theirs = net.res_bus.loc[bus["id"]]
    energized = bus["energized"]
    # the same buses are dead in both (pandapower reports NaN there)
    np.testing.assert_array_equal(theirs["vm_pu"].isna().to_numpy(), ~energized)
    np.testing.assert_allclose(
        bus["u_pu"][energized],
        theirs["vm_pu"].to_numpy()[energized],
        rtol=0,
        atol=U_TOLERANCE_PU,
    )
    np.testing.assert_allclose(
        bus["u_angle_deg"][energized],
        theirs["va_degree"].to_numpy()[energized],
        rtol=0,
        atol=ANGLE_TOLERANCE_DEG,
    )


@pytest.mark.parametrize("case", list(CASES))
def test_branch_currents_and_flows_agree_with_pandapower(case: str) -> None:
    model = CASES[case]()
    result = run_power_flow(model)
    net = _pandapower_results(model)
    for kind, table, ends in (
        (BranchKind.LINE, "line", ("from", "to")),
        (BranchKind.TRANSFORMER, "trafo", ("hv", "lv")),
    ):
        branch = result.branch[result.branch["kind"] == kind]
        theirs = net[f"res_{table}"].loc[branch["id"]].fillna(0.0)
        for our_end, their_end in zip(("from", "to"), ends, strict=True):
            _assert_currents_close(
                branch[f"i_{our_end}_ka"],
                theirs[f"i_{their_end}_ka"].to_numpy(),
                f"{case} {table} i_{our_end}",
            )
        np.testing.assert_allclose(
            branch["p_from_mw"], theirs[f"p_{ends[0]}_mw"].to_numpy(), rtol=0, atol=1e-4
        )
        np.testing.assert_allclose(
            branch["q_from_mvar"], theirs[f"q_{ends[0]}_mvar"].to_numpy(), rtol=0, atol=1e-4
        )
