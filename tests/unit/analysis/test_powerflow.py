"""Power flow: physics checks on the built-in case and behaviour at the edges."""

from __future__ import annotations

import numpy as np
import pytest

from openfeeder.analysis.powerflow import BranchKind, run_power_flow, run_time_series
from openfeeder.errors import NotConvergedError
from openfeeder.model.cases import load_builtin


def test_energy_balance() -> None:
    model = load_builtin("turin")
    result = run_power_flow(model)
    supplied = result.source["p_mw"].sum()
    losses = result.branch["p_loss_mw"][result.branch["kind"] != BranchKind.SWITCH].sum()
    assert supplied == pytest.approx(model.load["p_mw"].sum() + losses, rel=1e-6)
    assert result.bus["energized"].all()
    assert 0.95 < result.bus["u_pu"].min() < result.bus["u_pu"].max() <= 1.0 + 1e-9


def test_open_breaker_deenergizes_its_feeder_without_error() -> None:
    model = load_builtin("turin")
    breaker = int(model.switch["id"][model.switch["kind"] == 0][0])
    opened = model.with_switch_states({breaker: False})
    result = run_power_flow(opened)
    dead = result.bus[~result.bus["energized"]]
    assert dead.size > 0
    assert (dead["u_pu"] == 0).all()
    # the other feeder keeps its voltage profile
    alive = result.bus["energized"]
    assert alive.sum() + dead.size == model.bus.size
    # the source of the opened feeder now only covers its primary transformer's iron losses
    assert result.source["p_mw"].min() == pytest.approx(0.025, rel=1e-3)


def test_non_convergence_names_iterations_and_worst_bus() -> None:
    model = load_builtin("turin")
    load = model.load.copy()
    load["p_mw"] *= 400.0  # far beyond what the transformers can deliver
    with pytest.raises(NotConvergedError) as info:
        run_power_flow(model.replace(load=load))
    err = info.value
    assert err.iterations is not None
    assert err.iterations > 0
    assert err.worst_bus in set(model.bus["id"].tolist())
    assert f"bus {err.worst_bus}" in str(err)


def test_asymmetric_with_balanced_loads_equals_symmetric() -> None:
    model = load_builtin("turin")
    load = model.load.copy()
    load["share_a"] = load["share_b"] = load["share_c"] = 1 / 3
    balanced = model.replace(load=load)
    sym = run_power_flow(balanced)
    asym = run_power_flow(balanced, symmetric=False)
    np.testing.assert_allclose(
        asym.bus["u_pu"], np.repeat(sym.bus["u_pu"][:, None], 3, 1), atol=1e-6
    )
    np.testing.assert_allclose(asym.branch["i_ka"], sym.branch["i_ka"], rtol=1e-5, atol=1e-9)


def test_unbalanced_loads_give_unequal_phase_voltages() -> None:
    result = run_power_flow(load_builtin("turin"), symmetric=False)
    u = result.bus["u_pu"][result.bus["energized"]]
    assert (u.max(axis=1) - u.min(axis=1)).max() > 1e-4


def test_time_series_matches_single_snapshots() -> None:
    model = load_builtin("turin")
    scale = np.array([0.3, 1.0, 1.4])
    series = run_time_series(model, load_p_mw=np.outer(scale, model.load["p_mw"]))
    assert series.steps == 3
    for step, factor in enumerate(scale):
        load = model.load.copy()
        load["p_mw"] *= factor
        load["q_mvar"] *= factor
        single = run_power_flow(model.replace(load=load))
        np.testing.assert_allclose(series.u_pu[step], single.bus["u_pu"], atol=1e-10)
        np.testing.assert_allclose(series.i_ka[step], single.branch["i_ka"], atol=1e-10)


def test_time_series_rejects_wrong_shape() -> None:
    model = load_builtin("turin")
    with pytest.raises(Exception, match="shape"):
        run_time_series(model, load_p_mw=np.ones((4, model.load.size + 1)))


def test_source_impedance_lowers_voltages() -> None:
    model = load_builtin("turin")
    ideal = run_power_flow(model)
    real = run_power_flow(model, source_impedance=True)
    assert real.bus["u_pu"].min() < ideal.bus["u_pu"].min()
