"""Observability: what the measurements determine, the pseudo-measurements added, and unobservable
islands reported as such (NaN, or NotObservableError when asked), never estimated from nothing."""

from __future__ import annotations

import numpy as np
import pytest
from se_cases import feeder, metered

from openfeeder.analysis.estimation import (
    MeasurementSet,
    PseudoOptions,
    check_observability,
    estimate_state,
    locate_measurements,
)
from openfeeder.analysis.powerflow import run_power_flow
from openfeeder.errors import NotObservableError
from openfeeder.model.grid import GridModel


def test_every_load_and_generator_metered_is_observable_without_pseudo_measurements() -> None:
    model, flow = feeder()
    measurements = metered(model, flow, seed=1)
    observability = check_observability(model, locate_measurements(model, measurements))
    assert observability.fully_observable
    estimate = estimate_state(model, measurements, pseudo="needed")
    assert len(estimate.pseudo) == 0
    assert estimate.bus["observable"].all()


def test_missing_meters_make_the_island_unobservable_and_pseudo_measurements_fix_it() -> None:
    model, flow = feeder()
    measurements = metered(model, flow, seed=2, load_share=0.4)
    located = locate_measurements(model, measurements)
    observability = check_observability(model, located)
    assert not observability.fully_observable
    assert observability.unobservable_bus_ids.size == model.bus.size
    report = observability.as_dict()
    assert report["islands"][0]["components"] > 1

    estimate = estimate_state(model, measurements, pseudo="needed")
    unmetered = ~np.isin(model.load["id"], measurements.table["element"])
    unmetered_gen = ~np.isin(model.generator["id"], measurements.table["element"])
    assert len(estimate.pseudo) == int(unmetered.sum() + unmetered_gen.sum())
    assert all(mid.startswith(("pseudo-load-", "pseudo-gen-")) for mid in estimate.pseudo.ids)
    assert estimate.bus["observable"].all()
    assert estimate.initial_observability is not None
    assert estimate.initial_observability.fully_observable is False
    # the default policy fills every island without asking: the same pseudo-measurements here
    default = estimate_state(model, measurements)
    assert default.initial_observability is None
    assert default.pseudo.ids == estimate.pseudo.ids
    assert estimate.load["pseudo"].sum() == unmetered.sum()
    # pseudo-measurements are from the model's loads here, i.e. right: the estimate is close
    assert np.abs(estimate.bus["u_pu"] - flow.bus["u_pu"]).max() < 2e-3


def _second_feeder_buses(model: GridModel) -> np.ndarray:
    from openfeeder.model.topology import analyze_topology

    topology = analyze_topology(model)
    feeders = np.unique(topology.feeder_of_bus[topology.feeder_of_bus >= 0])
    return model.bus["id"][topology.feeder_of_bus == feeders[-1]]


def test_island_of_its_own_source_without_measurements_is_unobservable_others_estimated() -> None:
    model, _ = feeder()
    # open the second feeder's head breaker and feed it from a second source at its bay bus
    topology_buses = _second_feeder_buses(model)
    head = _head_breaker(model, topology_buses)
    bay = int(head["to_bus"]) if int(head["to_bus"]) in topology_buses else int(head["from_bus"])
    source = np.concatenate([model.source, model.source[:1]])
    source["id"][-1] = int(model.all_ids().max()) + 1
    source["bus"][-1] = bay
    split = model.replace(source=source).with_switch_states({int(head["id"]): False})
    flow = run_power_flow(split)
    measurements = metered(split, flow, seed=4)
    located = locate_measurements(split, measurements)
    cut = np.isin(split.bus["id"][np.maximum(located.bus_row, 0)], topology_buses)
    island_without_data = measurements.select(~cut)
    estimate = estimate_state(split, island_without_data, pseudo="none")
    in_b = np.isin(split.bus["id"], topology_buses)
    assert estimate.bus["energized"].all()
    assert not estimate.bus["observable"][in_b].any()
    assert estimate.bus["observable"][~in_b].all()
    assert np.isnan(estimate.bus["u_pu"][in_b]).all()
    assert np.isfinite(estimate.bus["u_pu"][~in_b]).all()
    error = np.abs(estimate.bus["u_pu"] - flow.bus["u_pu"])[~in_b]
    assert (error <= 4.0 * estimate.bus["u_sigma_pu"][~in_b]).all()
    # with pseudo-measurements the island gets a forecast and a voltage reference at its source
    assert estimate.as_dict()["summary"]["unobservable_buses"] == split.bus["id"][in_b].tolist()
    load_in_b = np.isin(split.load["bus"], topology_buses)
    assert np.isnan(estimate.load["p_mw"][load_in_b]).all()
    assert np.isfinite(estimate.load["p_mw"][~load_in_b]).all()
    with pytest.raises(NotObservableError) as caught:
        estimate_state(split, island_without_data, pseudo="none", on_unobservable="raise")
    assert set(caught.value.buses) == set(split.bus["id"][in_b].tolist())
    assert "do not determine the state" in str(caught.value)
    with_pseudo = estimate_state(split, island_without_data, pseudo=PseudoOptions(policy="needed"))
    assert with_pseudo.bus["observable"].all()
    assert any(mid.startswith("pseudo-u-") for mid in with_pseudo.pseudo.ids)


def _head_breaker(model: GridModel, buses: np.ndarray) -> np.void:
    switch = model.switch
    touching = np.isin(switch["from_bus"], buses) ^ np.isin(switch["to_bus"], buses)
    return switch[np.flatnonzero(touching & switch["closed"])[0]]


def test_nothing_observable_raises() -> None:
    model, _ = feeder()
    empty = MeasurementSet.empty()
    with pytest.raises(NotObservableError):
        estimate_state(model, empty, pseudo="none")
