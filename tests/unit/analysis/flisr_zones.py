"""Test helper shared by the FISO and SRES tests: one fault case per switching zone."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import analyze_topology


def one_bus_per_zone(model: GridModel) -> list[int]:
    """A feeder bus of every zone that remote switching can separate: faults in one such zone
    give the same plan, so these are all the distinct fault cases."""
    bus_ids = model.bus["id"]
    switch = model.switch
    fixed = switch["closed"] & ~switch["remote_controllable"]
    a = np.concatenate(
        [model.line["from_bus"], model.transformer["hv_bus"], switch["from_bus"][fixed]]
    )
    b = np.concatenate([model.line["to_bus"], model.transformer["lv_bus"], switch["to_bus"][fixed]])
    n = bus_ids.size
    graph = coo_matrix((np.ones(a.size), (lookup(bus_ids, a), lookup(bus_ids, b))), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    feeder = analyze_topology(model).feeder_of_bus
    _, first = np.unique(label, return_index=True)
    return [int(bus_ids[row]) for row in sorted(first) if feeder[row] >= 0]
