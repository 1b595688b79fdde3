"""The ``cigre-mv`` case: the CIGRE MV benchmark network (CIGRE TB 575) as pandapower ships it.

:func:`build_cigre_mv` imports ``pandapower.networks.create_cigre_network_mv(with_der="pv_wind")``
through :func:`openfeeder.model.pandapower_io.from_pandapower` and so needs pandapower. The built-in
case reads the same model from ``data/cigre_mv.json``, written by this module
(``python -m openfeeder.model.cases.cigre_mv``), so pandapower is not needed at run time; a unit test
checks that the shipped file equals a fresh import.

What the import gives: the 110 kV source bus 0 and the 20 kV buses 1-14 (ids = pandapower indices),
15 lines (ids 100-114), two 25 MVA 110/20 kV transformers (200, 201; Dyn1 from their 30 degree
shift), the three normally-open tie switches S1-S3 and the closed ones (300-307), 18 loads (400-417),
8 PV units and one wind park (500-508), the external grid (800). Switches at line and transformer ends
become auxiliary buses 1000-1007 (see :mod:`~openfeeder.model.pandapower_io`).

What this module adds: the name and description, loads "R..." as residential and "CI..." as
commercial customers, and bus coordinates scaled from the benchmark's schematic units to metres at
1 unit = 1 km (the diagram is not to scale: distances do not match the line lengths).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

import numpy as np

from openfeeder.model.components import CustomerClass, enum_code
from openfeeder.model.grid import GridModel

__all__ = ["DATA_FILE", "DESCRIPTION", "build_cigre_mv", "write_data_file"]

DATA_FILE: Final = Path(__file__).with_name("data") / "cigre_mv.json"
"""The shipped case file that the built-in ``cigre-mv`` case loads."""

DESCRIPTION: Final = (
    "CIGRE MV benchmark (TB 575, European variant) from pandapower's "
    "create_cigre_network_mv(with_der='pv_wind'): 110/20 kV, two feeders with three "
    "normally-open ties, 8 PV units and a 1.5 MW wind park"
)

_M_PER_UNIT: Final = 1000.0


def build_cigre_mv() -> GridModel:
    """Import the CIGRE MV benchmark from pandapower (needs ``openfeeder[pandapower]``)."""
    from openfeeder.errors import DependencyError
    from openfeeder.model.pandapower_io import from_pandapower

    try:
        import pandapower.networks as pn
    except ImportError as err:
        raise DependencyError(
            "building cigre-mv needs pandapower: install openfeeder[pandapower]"
        ) from err
    net = pn.create_cigre_network_mv(with_der="pv_wind")
    model = from_pandapower(net, name="cigre-mv")
    names = net.load["name"].astype(str).to_numpy()
    load = model.load.copy()
    commercial = np.char.startswith(names.astype(str), "Load CI")
    load["customer_class"] = np.where(
        commercial,
        enum_code(CustomerClass.COMMERCIAL),
        enum_code(CustomerClass.RESIDENTIAL),
    )
    bus = model.bus.copy()
    bus["x_m"] *= _M_PER_UNIT
    bus["y_m"] *= _M_PER_UNIT
    return model.replace(description=DESCRIPTION, load=load, bus=bus)


def write_data_file(path: str | Path = DATA_FILE) -> None:
    """Regenerate the shipped case file from pandapower."""
    from openfeeder.model.case_file import save_case

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_case(build_cigre_mv(), path)


if __name__ == "__main__":
    write_data_file(sys.argv[1] if len(sys.argv) > 1 else DATA_FILE)
