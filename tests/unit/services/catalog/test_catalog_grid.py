"""A device's part of the grid model on the turin case, and how switching moves it."""

from __future__ import annotations

import pytest

from openfeeder.iot.device_settings import Location
from openfeeder.model.cases import load_builtin
from openfeeder.services.catalog.grid_view import CaseGrid, LocationError


@pytest.fixture
def turin() -> CaseGrid:
    return CaseGrid.build(load_builtin("turin"), case="turin")


def test_part_is_the_switching_section_and_feeder_of_the_bus(turin: CaseGrid) -> None:
    view = turin.view(turin.normally_closed, version=0)
    part = view.part(Location(bus_id=7), previous=None)
    assert part is not None
    assert part.case == "turin"
    assert part.bus_ids == (5, 7)
    assert part.feeder_id == 300
    # the transformer inside, the two switches bounding it, the load and the meter on bus 7
    assert part.element_ids == (201, 301, 302, 400, 601)
    assert part.topology_version == 0


def test_an_element_locates_the_device_when_no_bus_is_given(turin: CaseGrid) -> None:
    view = turin.view(turin.normally_closed, version=0)
    by_load = view.part(Location(element_id=400), previous=None)  # load 400 is on bus 7
    assert by_load is not None
    assert by_load.bus_ids == (5, 7)
    assert view.part(Location(), previous=None) is None
    assert view.part(None, previous=None) is None


def test_switching_moves_feeders_and_keeps_unchanged_parts(turin: CaseGrid) -> None:
    normal = turin.view(turin.normally_closed, version=0)
    upstream = normal.part(Location(bus_id=7), previous=None)
    downstream = normal.part(Location(bus_id=15), previous=None)
    assert downstream is not None
    assert downstream.feeder_id == 300

    isolated = turin.view({**turin.normally_closed, 305: False}, version=1)
    assert isolated.part(Location(bus_id=15), previous=downstream).feeder_id is None  # type: ignore[union-attr]
    # upstream of the open switch nothing changed: the very same part, version 0 included
    assert isolated.part(Location(bus_id=7), previous=upstream) is upstream

    restored = turin.view({**turin.normally_closed, 305: False, 325: True}, version=2)
    fed_by_tie = restored.part(Location(bus_id=15), previous=downstream)
    assert fed_by_tie is not None
    assert fed_by_tie.feeder_id == 313  # now supplied through the tie from the other feeder
    assert fed_by_tie.topology_version == 2
    assert fed_by_tie.bus_ids == downstream.bus_ids


@pytest.mark.parametrize(
    ("location", "field"),
    [
        (Location(bus_id=999), "location.bus_id"),
        (Location(bus_id=7, element_id=123_456), "location.element_id"),
        (Location(case="cigre-mv", bus_id=7), "location.case"),
    ],
)
def test_locations_outside_the_case_name_the_field(
    turin: CaseGrid, location: Location, field: str
) -> None:
    with pytest.raises(LocationError) as caught:
        turin.check_location(location)
    assert caught.value.field == field


def test_a_location_naming_the_case_is_accepted(turin: CaseGrid) -> None:
    turin.check_location(Location(case="turin", bus_id=7, element_id=400))
