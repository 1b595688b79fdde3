"""The importer's id scheme: one OpenFeeder id per pandapower row (kept indices or per-table
offsets), and the auxiliary buses that switches at line and transformer ends become (see the
``Ids`` and ``Switches`` paragraphs of the package documentation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from openfeeder.errors import CaseError, CaseIssue
from openfeeder.model.grid import lookup
from openfeeder.model.pandapower_io.frames import check_bus_refs, fail, floats, strings
from openfeeder.model.pandapower_io.mapping import SLOTS, Bools, Ints

if TYPE_CHECKING:
    import pandas as pd

_INT32_MAX: Final = int(np.iinfo(np.int32).max)


@dataclass(frozen=True, slots=True)
class Switches:
    """pandapower switches resolved against their elements, with the auxiliary buses they need."""

    bus: Ints
    """pandapower bus index of each switch (its ``bus`` column)."""
    other_bus: Ints
    """pandapower bus index of the other side for et='b', -1 for line and transformer switches."""
    aux_switch_index: Ints
    """pandapower index of the switches that need an auxiliary bus, in switch order."""
    aux_rows: Ints
    """row positions (in the switch table) of those switches."""
    line_rows: Ints
    """for each auxiliary bus: the row of the line it connects (-1: a transformer)."""
    trafo_rows: Ints
    """for each auxiliary bus: the row of the transformer it connects (-1: a line)."""
    at_first_end: Bools
    """for each auxiliary bus: it replaces the line's from_bus / the transformer's hv_bus."""


def split_switches(frames: dict[str, pd.DataFrame]) -> Switches:
    sw = frames["switch"]
    n = len(sw)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Switches(empty, empty, empty, empty, empty, empty, np.zeros(0, dtype=bool))
    et = strings(sw, "et")
    bus = sw["bus"].to_numpy(dtype=np.int64)
    element = sw["element"].to_numpy(dtype=np.int64)
    unknown = ~np.isin(et, ["b", "l", "t"])
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        reason = "three-winding transformers are not modelled" if et[row] == "t3" else "unknown"
        fail("switch", sw.index[row], f"unsupported element type et='{et[row]}' ({reason})", "et")
    z_ohm = floats(sw, "z_ohm", 0.0)
    bad_z = (et == "b") & (z_ohm != 0)
    if bad_z.any():
        row = int(np.flatnonzero(bad_z)[0])
        fail("switch", sw.index[row], "switch impedance is not modelled (must be 0)", "z_ohm")
    is_b = et == "b"
    check_bus_refs(frames["bus"], "switch", sw[is_b], "element")
    other_bus = np.where(is_b, element, -1)

    line_rows = np.full(n, -1, dtype=np.int64)
    trafo_rows = np.full(n, -1, dtype=np.int64)
    first_end = np.zeros(n, dtype=bool)
    for kind, table, ends in (
        ("l", "line", ("from_bus", "to_bus")),
        ("t", "trafo", ("hv_bus", "lv_bus")),
    ):
        mask = et == kind
        if not mask.any():
            continue
        df = frames[table]
        rows = lookup(df.index.to_numpy(dtype=np.int64), element[mask])
        if (rows < 0).any():
            row = int(np.flatnonzero(mask)[int(np.flatnonzero(rows < 0)[0])])
            fail("switch", sw.index[row], f"no {table} with index {element[row]}", "element")
        end_a = df[ends[0]].to_numpy(dtype=np.int64)[rows]
        end_b = df[ends[1]].to_numpy(dtype=np.int64)[rows]
        is_a = bus[mask] == end_a
        if (~is_a & (bus[mask] != end_b)).any():
            row = int(np.flatnonzero(mask)[int(np.flatnonzero(~is_a & (bus[mask] != end_b))[0])])
            fail("switch", sw.index[row], f"bus {bus[row]} is not an end of {table} {element[row]}")
        (line_rows if kind == "l" else trafo_rows)[mask] = rows
        first_end[mask] = is_a
    aux = ~is_b
    # two switches at the same end of the same branch would need two auxiliary buses in series
    key = np.stack([np.where(et == "t", 1, 0), element, first_end.astype(np.int64)], axis=1)[aux]
    _, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = key[first[counts > 1][0]]
        rows = np.flatnonzero(aux)[(key == dup).all(axis=1)]
        fail("switch", sw.index[rows[1]], "second switch at the same branch end (not supported)")
    aux_rows = np.flatnonzero(aux).astype(np.int64)
    return Switches(
        bus=bus,
        other_bus=other_bus,
        aux_switch_index=sw.index.to_numpy(dtype=np.int64)[aux_rows],
        aux_rows=aux_rows,
        line_rows=line_rows[aux_rows],
        trafo_rows=trafo_rows[aux_rows],
        at_first_end=first_end[aux_rows],
    )


@dataclass(frozen=True, slots=True)
class Ids:
    """Id of each pandapower row: ``offsets[table] + index``; auxiliary buses separately."""

    offsets: dict[str, int]
    aux: Ints

    @staticmethod
    def assign(frames: dict[str, pd.DataFrame], aux_switch_index: Ints) -> Ids:
        indices = {t: frames[t].index.to_numpy(dtype=np.int64) for t in SLOTS}
        everything = np.concatenate(list(indices.values()))
        if everything.size and everything.min() < 0:
            table = next(t for t in SLOTS if indices[t].size and indices[t].min() < 0)
            fail(table, int(indices[table].min()), "negative pandapower index")
        top = int(everything.max()) if everything.size else -1
        n_aux = aux_switch_index.size
        if np.unique(everything).size == everything.size and top + n_aux <= _INT32_MAX:
            aux = np.arange(top + 1, top + 1 + n_aux, dtype=np.int64)
            return Ids(dict.fromkeys(SLOTS, 0), aux)
        step = 10 ** len(str(max(top, 0)))
        if (len(SLOTS) + 1) * step > _INT32_MAX:
            raise CaseError(CaseIssue("pandapower indices too large to renumber into int32 ids"))
        offsets = {t: slot * step for slot, t in enumerate(SLOTS)}
        return Ids(offsets, len(SLOTS) * step + aux_switch_index)

    def of(self, table: str, index: npt.ArrayLike) -> Ints:
        return self.offsets[table] + np.asarray(index, dtype=np.int64)

    def rows(self, table: str, df: pd.DataFrame) -> Ints:
        return self.of(table, df.index.to_numpy(dtype=np.int64))


def branch_ends(
    df: pd.DataFrame, table: str, ends: tuple[str, str], ids: Ids, switches: Switches
) -> tuple[Ints, Ints]:
    """Bus ids at both ends of lines or transformers, moved to the auxiliary buses of switches."""
    first = ids.of("bus", df[ends[0]].to_numpy(dtype=np.int64))
    second = ids.of("bus", df[ends[1]].to_numpy(dtype=np.int64))
    rows = switches.line_rows if table == "line" else switches.trafo_rows
    mine = rows >= 0
    at_first = mine & switches.at_first_end
    at_second = mine & ~switches.at_first_end
    first[rows[at_first]] = ids.aux[at_first]
    second[rows[at_second]] = ids.aux[at_second]
    return first, second
