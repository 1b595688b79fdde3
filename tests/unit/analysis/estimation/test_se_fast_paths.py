"""The shortcuts of a new placement give what the general code gives: pseudo-measurements located
from the rows they were made for, measurement tables joined and filled as bytes."""

from __future__ import annotations

import numpy as np
import pytest
from se_cases import feeder, metered

from openfeeder.analysis.estimation import MeasurementSet, estimate_state, locate_measurements
from openfeeder.analysis.estimation.estimator import clear_caches
from openfeeder.analysis.estimation.measurement_set import (
    END_NONE,
    MEASUREMENT_DTYPE,
    Quantity,
    empty_rows,
)
from openfeeder.analysis.estimation.observability import (
    PseudoOptions,
    PseudoPolicy,
    check_observability,
    located_pseudo_measurements,
    pseudo_measurements,
)
from openfeeder.errors import MeasurementError
from openfeeder.model.components import NO_ID


@pytest.mark.parametrize("policy", [PseudoPolicy.ALL, PseudoPolicy.NEEDED, PseudoPolicy.NONE])
@pytest.mark.parametrize("voltages", [True, False])
def test_located_pseudo_measurements_are_located_as_locate_does(
    policy: PseudoPolicy, voltages: bool
) -> None:
    model, flow = feeder(buses=200, seed=7)
    given = metered(model, flow, seed=5, load_share=0.3, voltage_every=7)
    if not voltages:  # no voltage magnitude: the source's setpoint comes in as pseudo `u`
        given = given.select(given.quantity != 0)
    located = locate_measurements(model, given)
    options = PseudoOptions(policy=policy)
    first = check_observability(model, located)
    fast = located_pseudo_measurements(model, located, first, options)
    added = pseudo_measurements(model, located, first, options)
    assert fast.measurements.ids == added.ids
    assert fast.measurements.table.tobytes() == added.table.tobytes()
    if policy is PseudoPolicy.ALL:
        assert len(added) > 0
        assert (added.quantity == 0).any() != voltages
    slow = locate_measurements(model, added)
    np.testing.assert_array_equal(fast.target, slow.target, strict=True)
    np.testing.assert_array_equal(fast.target_row, slow.target_row, strict=True)
    np.testing.assert_array_equal(fast.bus_row, slow.bus_row, strict=True)
    assert fast.branches is located.branches


def test_concat_and_empty_rows_are_what_numpy_field_by_field_gives() -> None:
    model, flow = feeder(buses=120)
    given = metered(model, flow, seed=3)
    tail = given.select(np.arange(len(given))[::-3])  # not contiguous in the original
    renamed = MeasurementSet(tuple(f"b-{mid}" for mid in tail.ids), tail.table)
    joined = given.concat(MeasurementSet.empty(), renamed)
    expected = np.concatenate([given.table, renamed.table])
    assert joined.table.dtype == MEASUREMENT_DTYPE
    assert joined.table.tobytes() == expected.tobytes()
    assert joined.ids == given.ids + renamed.ids
    with pytest.raises(MeasurementError, match="id used twice"):
        given.concat(given.select([0]))

    table = empty_rows(5)
    assert table.flags.writeable
    assert table.shape == (5,)
    for name in MEASUREMENT_DTYPE.names or ():
        if MEASUREMENT_DTYPE[name].kind == "f":
            assert np.isnan(table[name]).all(), name
    assert (table["bus"] == NO_ID).all()
    assert (table["element"] == NO_ID).all()
    assert (table["end"] == END_NONE).all()
    assert not table["pseudo"].any()
    assert (table["quantity"] == 0).all()
    assert empty_rows(0).shape == (0,)
    table["u_kv"][0] = 1.0  # its own memory: the next empty table is untouched
    assert np.isnan(empty_rows(5)["u_kv"]).all()
    one = MeasurementSet.from_columns(["a"], Quantity.U, bus=1, u_kv=20.0, u_sigma_kv=0.1)
    assert one.table["u_kv"][0] == 20.0
    assert np.isnan(one.table["p_mw"][0])


def test_a_new_placement_checks_its_ids_against_each_other_and_the_pseudo_names() -> None:
    """The given ids and the pseudo-measurements' are joined with one check: an id given twice,
    or one that is the name of a pseudo-measurement the estimate adds, is refused; one that only
    starts like a pseudo-measurement name is not."""
    model, flow = feeder(buses=120)
    given = metered(model, flow, seed=8, load_share=0.5)
    measured = set(given.table["element"][given.quantity == 2].tolist())
    unmeasured = next(int(i) for i in model.load["id"].tolist() if i not in measured)
    ids = list(given.ids)

    ids[0] = f"pseudo-load-{unmeasured}"  # the name of a pseudo-measurement that is added
    clear_caches()
    with pytest.raises(MeasurementError, match="id used twice") as taken:
        estimate_state(model, MeasurementSet(tuple(ids), given.table), uncertainty=False)
    assert taken.value.measurement_id == f"pseudo-load-{unmeasured}"

    ids[0] = ids[1]  # the same id twice among the given ones
    with pytest.raises(MeasurementError, match="id used twice"):
        estimate_state(model, MeasurementSet(tuple(ids), given.table), uncertainty=False)

    ids[0] = "pseudo-load-not-a-load"  # starts like one, is none of them
    estimate = estimate_state(model, MeasurementSet(tuple(ids), given.table), uncertainty=False)
    assert estimate.measurements.ids[0] == "pseudo-load-not-a-load"
    assert len(set(estimate.measurements.ids)) == len(estimate.measurements.ids)
