"""Import and export of pandapower networks (optional dependency: ``openfeeder[pandapower]``).

:func:`from_pandapower` turns a pandapower net into a :class:`GridModel`, :func:`to_pandapower` does
the reverse, and :func:`import_pandapower_json` / :func:`export_pandapower_json` read and write nets
saved with ``pandapower.to_json``. pandapower is imported inside the functions, so the rest of
OpenFeeder runs without it. Both directions work column by column on the DataFrames.

**Ids.** pandapower numbers each table on its own; OpenFeeder has one id space. The importer keeps
the pandapower indices as ids when they are unique across all imported tables (nets written by
:func:`to_pandapower` always are: the exporter uses the OpenFeeder ids as DataFrame indices).
Otherwise it renumbers with per-table offsets: with ``step`` the smallest power of ten above every
index, the id is ``slot * step + index`` with the slots bus 0, line 1, trafo 2, switch 3, load 4,
sgen 5, storage 6, shunt 7, ext_grid 8, of_measurement 9 -- so buses keep their index, and line 7 of a
net with indices below 100 becomes id 107. Auxiliary buses (see switches) get ``max id + 1, ...`` in
switch order in the first scheme and ``10 * step + switch index`` in the second.

**Switches.** A pandapower bus-bus switch (``et='b'``) becomes a switch between the two buses. A
switch at the end of a line (``et='l'``) or transformer (``et='t'``) becomes an auxiliary bus (the
voltage and coordinates of the switch's bus) that the line or transformer end moves to, plus a switch
from the bus to the auxiliary bus -- the same circuit pandapower builds internally. pandapower types
map ``CB`` -> breaker, ``LBS``/``LS`` -> load_break, ``DS`` -> disconnector, others -> load_break;
open switches are marked ``normally_open``. The exporter writes every switch as a bus-bus switch, so
auxiliary buses stay explicit buses of the exported net.

**Round trips.** ``from_pandapower(to_pandapower(m))`` equals ``m`` table by table. Fields pandapower
has no column for are written to extra columns (``of_kind``, ``of_normally_open``,
``of_remote_controllable``, ``of_fault_indicator``, ``of_customers``, ``of_customer_class``,
``of_share_a``/``_b``/``_c``, ``of_priority``, ``of_pk_kw``, ``of_z01_ratio``), measurement devices to
the extra DataFrame ``net["of_measurement"]`` and the model description to ``net["of_description"]``.
The importer uses an extra column only where it agrees with the pandapower columns (e.g. ``of_kind``
only where it maps to the switch's ``type``), so edits made in pandapower win. In memory the round
trip is exact; pandapower's JSON writer keeps 15 decimals, so a trip through a file gives the floats
back to about 1e-15.

**Conversions.** Lines: ``parallel`` divides the impedances and multiplies capacitance and rating,
``i_rated_ka = max_i_ka * df * parallel``, ``g_us_per_km`` must be 0. Transformers: ``pk_kw =
vkr_percent / 100 * sn_mva * 1000``, ``p0_kw = pfe_kw``, ``parallel`` multiplies ``sn_mva`` and the
losses; the vector group (``"Dyn5"``) gives the windings, ``shift_degree / 30`` the clock (without a
vector group: Dyn for odd clocks, YNyn for even ones); a tap changer counts only with
``tap_changer_type`` 'Ratio' (or 'Symmetrical' without ``tap_step_degree``), as in pandapower's power
flow, else all tap fields are 0. Loads and sgens: powers times ``scaling``; loads must be constant
power (``const_z_*``/``const_i_*`` = 0). sgen ``type`` 'PV' -> pv, 'WP' -> wind, 'CHP...' -> chp,
others -> other. Storage (load convention in pandapower) becomes a generator of kind storage with the
signs of p and q (and of the limits) flipped. Shunts: ``q_step_mvar = -q_mvar`` (pandapower counts
consumption), scaled to the bus voltage when ``vn_kv`` differs. External grids become sources:
``s_sc_max_mva`` (NaN: 1000) -> ``sk_mva``, ``rx_max`` (NaN: 0.1) -> ``rx_ratio``, ``x0x_max`` ->
``z01_ratio``. Bus coordinates (the GeoJSON ``geo`` column) are copied as they are, in whatever unit
the net uses (CIGRE: schematic units, mv_oberrhein: degrees of longitude and latitude).

**Not imported.** Out-of-service buses (OpenFeeder buses have no such flag: drop them in pandapower
first), and rows of the tables gen, trafo3w, impedance, ward, xward, dcline, motor, asymmetric
loads/sgens and the DC and FACTS elements raise :class:`~openfeeder.errors.CaseError` naming the
pandapower table and index. pandapower's ``measurement`` table (state-estimation values, not devices)
is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.errors import CaseError, CaseIssue, DependencyError
from openfeeder.model.components import (
    NO_ID,
    BranchEnd,
    CustomerClass,
    DerKind,
    LineKind,
    MeasurementKind,
    SwitchKind,
    TapSide,
    WindingType,
    empty_table,
    enum_code,
    enum_codes,
    enum_from_code,
)
from openfeeder.model.grid import GridModel, lookup

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["export_pandapower_json", "from_pandapower", "import_pandapower_json", "to_pandapower"]

Table = npt.NDArray[np.void]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_INSTALL_HINT: Final = "pandapower is needed for this: install openfeeder[pandapower]"

_SLOTS: Final = (
    "bus",
    "line",
    "trafo",
    "switch",
    "load",
    "sgen",
    "storage",
    "shunt",
    "ext_grid",
    "of_measurement",
)
"""Imported pandapower tables, in the order of their id slots (auxiliary buses come last)."""

_BUS_REFERENCES: Final = {
    "line": ("from_bus", "to_bus"),
    "trafo": ("hv_bus", "lv_bus"),
    "switch": ("bus",),
    "load": ("bus",),
    "sgen": ("bus",),
    "storage": ("bus",),
    "shunt": ("bus",),
    "ext_grid": ("bus",),
}

_INT32_MAX: Final = int(np.iinfo(np.int32).max)

_UNSUPPORTED: Final = {
    "gen": "voltage-controlled generators are not modelled",
    "trafo3w": "three-winding transformers are not modelled",
    "impedance": "impedance elements are not modelled",
    "ward": "ward equivalents are not modelled",
    "xward": "extended ward equivalents are not modelled",
    "dcline": "DC lines are not modelled",
    "motor": "motors are not modelled",
    "asymmetric_load": "asymmetric loads are not modelled",
    "asymmetric_sgen": "asymmetric static generators are not modelled",
    "svc": "static var compensators are not modelled",
    "ssc": "static synchronous compensators are not modelled",
    "tcsc": "thyristor-controlled series capacitors are not modelled",
    "vsc": "voltage source converters are not modelled",
    "vsc_stacked": "voltage source converters are not modelled",
    "vsc_bipolar": "voltage source converters are not modelled",
    "bus_dc": "DC grids are not modelled",
    "line_dc": "DC grids are not modelled",
    "load_dc": "DC grids are not modelled",
    "source_dc": "DC grids are not modelled",
}

_SWITCH_TYPE_OUT: Final = {
    SwitchKind.BREAKER: "CB",
    SwitchKind.RECLOSER: "CB",
    SwitchKind.LOAD_BREAK: "LBS",
    SwitchKind.SECTIONALIZER: "LBS",
    SwitchKind.FUSE: "LS",
    SwitchKind.DISCONNECTOR: "DS",
}
_SWITCH_TYPE_IN: Final = {
    "CB": SwitchKind.BREAKER,
    "LBS": SwitchKind.LOAD_BREAK,
    "LS": SwitchKind.LOAD_BREAK,
    "DS": SwitchKind.DISCONNECTOR,
}
_SGEN_TYPE_OUT: Final = {
    DerKind.PV: "PV",
    DerKind.WIND: "WP",
    DerKind.STORAGE: "storage",
    DerKind.EV_CHARGER: "EV",
    DerKind.CHP: "CHP",
    DerKind.OTHER: "other",
}
_STORAGE_TYPE: Final = "storage"

_VECTOR_GROUP: Final = r"^(YN|Y|D|ZN|Z)(yn|y|d|zn|z)(\d{1,2})$"
_GEO_POINT: Final = r"[\"']coordinates[\"']\s*:\s*[\[(]\s*([^,\s\])]+)\s*,\s*([^,\s\])]+)"


def _pandapower() -> Any:
    try:
        import pandapower
    except ImportError as err:
        raise DependencyError(_INSTALL_HINT) from err
    return pandapower


# --------------------------------------------------------------------------------------------------
# import


def import_pandapower_json(path: str | Path, *, name: str | None = None) -> GridModel:
    """Read a net saved with ``pandapower.to_json`` and import it (see :func:`from_pandapower`)."""
    pp = _pandapower()
    file = str(path)
    if not Path(path).is_file():
        raise CaseError(CaseIssue("no such file", file=file))
    try:
        net = pp.from_json(file)
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise CaseError(CaseIssue(f"not a pandapower net: {err}", file=file)) from err
    try:
        return from_pandapower(net, name=name)
    except CaseError as err:
        issue = err.issue
        raise CaseError(
            CaseIssue(issue.message, issue.component, issue.component_id, issue.field, file)
        ) from err


def from_pandapower(net: Any, *, name: str | None = None) -> GridModel:
    """The OpenFeeder model of a pandapower net (ids and mapping: see the module documentation)."""
    _pandapower()
    for table, reason in _UNSUPPORTED.items():
        frame = net.get(table)
        if frame is not None and len(frame) > 0:
            _fail(
                table, frame.index[0], f"unsupported element: pandapower table '{table}' ({reason})"
            )
    frames = {t: _frame(net, t) for t in _SLOTS}
    bus_df = frames["bus"]
    if "in_service" in bus_df:
        out = ~bus_df["in_service"].to_numpy(dtype=bool)
        if out.any():
            _fail(
                "bus",
                bus_df.index[out][0],
                "bus is out of service; OpenFeeder buses have no in_service flag "
                "(drop it and its elements in pandapower, or put it in service)",
                "in_service",
            )
    for table, columns in _BUS_REFERENCES.items():
        for column in columns:
            _check_bus_refs(bus_df, table, frames[table], column)
    switches = _split_switches(frames)
    ids = _Ids.assign(frames, switches.aux_switch_index)
    bus = _import_buses(frames["bus"], ids, switches)
    line = _import_lines(frames["line"], ids, switches)
    transformer = _import_trafos(frames["trafo"], ids, switches)
    switch = _import_switches(frames["switch"], ids, switches)
    load = _import_loads(frames["load"], ids)
    generator = np.concatenate(
        [_import_sgens(frames["sgen"], ids), _import_storages(frames["storage"], ids)]
    )
    shunt = _import_shunts(frames["shunt"], frames["bus"], ids)
    source = _import_ext_grids(frames["ext_grid"], ids)
    measurement = _import_measurements(frames, ids)
    net_name = net.get("name")
    description = net.get("of_description")
    return GridModel(
        name=name or (str(net_name) if net_name else "unnamed"),
        description=str(description) if isinstance(description, str) else "",
        frequency_hz=float(net.get("f_hz", 50.0)),
        bus=bus,
        line=line,
        transformer=transformer,
        switch=switch,
        load=load,
        generator=generator,
        shunt=shunt,
        source=source,
        measurement=measurement,
    )


def _fail(table: str, index: object, message: str, field: str | None = None) -> None:
    raise CaseError(CaseIssue(message, component=table, component_id=_as_int(index), field=field))


def _as_int(index: object) -> int | None:
    try:
        return int(index)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None


def _frame(net: Any, table: str) -> pd.DataFrame:
    import pandas as pd

    frame = net.get(table)
    if frame is None:
        return pd.DataFrame(index=pd.Index([], dtype=np.int64))
    if not isinstance(frame, pd.DataFrame):
        raise CaseError(CaseIssue(f"pandapower entry '{table}' is not a table", component=table))
    return frame


def _floats(df: pd.DataFrame, column: str, default: float = np.nan) -> Floats:
    """A numeric column as float64 (``default`` where the column is missing or NaN)."""
    if column not in df:
        return np.full(len(df), default, dtype=np.float64)
    values = np.asarray(df[column].to_numpy(dtype=np.float64, na_value=np.nan))
    if not np.isnan(default):
        values = np.where(np.isnan(values), default, values)
    return values


def _strings(df: pd.DataFrame, column: str) -> npt.NDArray[np.object_]:
    """A text column as an object array, with '' for missing values."""
    if column not in df:
        return np.full(len(df), "", dtype=object)
    series = df[column]
    return np.asarray(series.where(series.notna(), "").astype(str).to_numpy(dtype=object))


def _hint(df: pd.DataFrame, column: str) -> tuple[npt.NDArray[np.object_], Bools]:
    """An extra ``of_*`` column written by the exporter: values and where they are present."""
    if column not in df:
        return np.full(len(df), None, dtype=object), np.zeros(len(df), dtype=bool)
    values = df[column].to_numpy(dtype=object)
    present = np.asarray(df[column].notna().to_numpy(dtype=bool))
    return values, present


def _hint_floats(df: pd.DataFrame, column: str) -> tuple[Floats, Bools]:
    values = _floats(df, column)
    return values, ~np.isnan(values)


def _integral(df: pd.DataFrame, table: str, column: str, values: Floats, dtype: str) -> Ints:
    """Float values that must be whole numbers within ``dtype``; fails naming the first bad row."""
    info = np.iinfo(np.dtype(dtype))
    bad = ~np.isfinite(values) | (values != np.round(values))
    bad |= (values < info.min) | (values > info.max)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        _fail(table, df.index[row], f"must be a whole number, got {values[row]}", column)
    return values.astype(np.int64)


@dataclass(frozen=True, slots=True)
class _Switches:
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


def _split_switches(frames: dict[str, pd.DataFrame]) -> _Switches:
    sw = frames["switch"]
    n = len(sw)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Switches(empty, empty, empty, empty, empty, empty, np.zeros(0, dtype=bool))
    et = _strings(sw, "et")
    bus = sw["bus"].to_numpy(dtype=np.int64)
    element = sw["element"].to_numpy(dtype=np.int64)
    unknown = ~np.isin(et, ["b", "l", "t"])
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        reason = "three-winding transformers are not modelled" if et[row] == "t3" else "unknown"
        _fail("switch", sw.index[row], f"unsupported element type et='{et[row]}' ({reason})", "et")
    z_ohm = _floats(sw, "z_ohm", 0.0)
    bad_z = (et == "b") & (z_ohm != 0)
    if bad_z.any():
        row = int(np.flatnonzero(bad_z)[0])
        _fail("switch", sw.index[row], "switch impedance is not modelled (must be 0)", "z_ohm")
    is_b = et == "b"
    _check_bus_refs(frames["bus"], "switch", sw[is_b], "element")
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
            _fail("switch", sw.index[row], f"no {table} with index {element[row]}", "element")
        end_a = df[ends[0]].to_numpy(dtype=np.int64)[rows]
        end_b = df[ends[1]].to_numpy(dtype=np.int64)[rows]
        is_a = bus[mask] == end_a
        if (~is_a & (bus[mask] != end_b)).any():
            row = int(np.flatnonzero(mask)[int(np.flatnonzero(~is_a & (bus[mask] != end_b))[0])])
            _fail(
                "switch", sw.index[row], f"bus {bus[row]} is not an end of {table} {element[row]}"
            )
        (line_rows if kind == "l" else trafo_rows)[mask] = rows
        first_end[mask] = is_a
    aux = ~is_b
    # two switches at the same end of the same branch would need two auxiliary buses in series
    key = np.stack([np.where(et == "t", 1, 0), element, first_end.astype(np.int64)], axis=1)[aux]
    _, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = key[first[counts > 1][0]]
        rows = np.flatnonzero(aux)[(key == dup).all(axis=1)]
        _fail("switch", sw.index[rows[1]], "second switch at the same branch end (not supported)")
    aux_rows = np.flatnonzero(aux).astype(np.int64)
    return _Switches(
        bus=bus,
        other_bus=other_bus,
        aux_switch_index=sw.index.to_numpy(dtype=np.int64)[aux_rows],
        aux_rows=aux_rows,
        line_rows=line_rows[aux_rows],
        trafo_rows=trafo_rows[aux_rows],
        at_first_end=first_end[aux_rows],
    )


def _check_bus_refs(bus_df: pd.DataFrame, table: str, df: pd.DataFrame, column: str) -> None:
    if not len(df):
        return
    if column not in df:
        raise CaseError(CaseIssue("missing column", component=table, field=column))
    refs = df[column].to_numpy(dtype=np.int64)
    missing = ~np.isin(refs, bus_df.index.to_numpy(dtype=np.int64))
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        _fail(table, df.index[row], f"no bus with index {refs[row]}", column)


@dataclass(frozen=True, slots=True)
class _Ids:
    """Id of each pandapower row: ``offsets[table] + index``; auxiliary buses separately."""

    offsets: dict[str, int]
    aux: Ints

    @staticmethod
    def assign(frames: dict[str, pd.DataFrame], aux_switch_index: Ints) -> _Ids:
        indices = {t: frames[t].index.to_numpy(dtype=np.int64) for t in _SLOTS}
        everything = np.concatenate(list(indices.values()))
        if everything.size and everything.min() < 0:
            table = next(t for t in _SLOTS if indices[t].size and indices[t].min() < 0)
            _fail(table, int(indices[table].min()), "negative pandapower index")
        top = int(everything.max()) if everything.size else -1
        n_aux = aux_switch_index.size
        if np.unique(everything).size == everything.size and top + n_aux <= _INT32_MAX:
            aux = np.arange(top + 1, top + 1 + n_aux, dtype=np.int64)
            return _Ids(dict.fromkeys(_SLOTS, 0), aux)
        step = 10 ** len(str(max(top, 0)))
        if (len(_SLOTS) + 1) * step > _INT32_MAX:
            raise CaseError(CaseIssue("pandapower indices too large to renumber into int32 ids"))
        offsets = {t: slot * step for slot, t in enumerate(_SLOTS)}
        return _Ids(offsets, len(_SLOTS) * step + aux_switch_index)

    def of(self, table: str, index: npt.ArrayLike) -> Ints:
        return self.offsets[table] + np.asarray(index, dtype=np.int64)

    def rows(self, table: str, df: pd.DataFrame) -> Ints:
        return self.of(table, df.index.to_numpy(dtype=np.int64))


def _import_buses(df: pd.DataFrame, ids: _Ids, switches: _Switches) -> Table:
    out = empty_table("bus", len(df))
    out["id"] = ids.rows("bus", df)
    out["u_rated_kv"] = _floats(df, "vn_kv")
    if "geo" in df and len(df):
        x, y = _geo_points(df["geo"])
        out["x_m"], out["y_m"] = x, y
    aux = empty_table("bus", switches.aux_rows.size)
    if aux.size:
        rows = lookup(df.index.to_numpy(dtype=np.int64), switches.bus[switches.aux_rows])
        aux["id"] = ids.aux
        aux["u_rated_kv"] = out["u_rated_kv"][rows]
        aux["x_m"] = out["x_m"][rows]
        aux["y_m"] = out["y_m"][rows]
    return np.concatenate([out, aux])


def _geo_points(geo: pd.Series[Any]) -> tuple[Floats, Floats]:
    """x and y of GeoJSON points: text as pandapower 3 stores it (or the repr of a dict)."""
    xy = geo.astype("string").str.extract(_GEO_POINT)
    x = np.asarray(xy[0].astype(float).to_numpy(na_value=np.nan), dtype=np.float64)
    y = np.asarray(xy[1].astype(float).to_numpy(na_value=np.nan), dtype=np.float64)
    return x, y


def _branch_ends(
    df: pd.DataFrame, table: str, ends: tuple[str, str], ids: _Ids, switches: _Switches
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


def _import_lines(df: pd.DataFrame, ids: _Ids, switches: _Switches) -> Table:
    out = empty_table("line", len(df))
    if not len(df):
        return out
    for column in ("g_us_per_km", "g0_us_per_km"):
        g = _floats(df, column, 0.0)
        if (g != 0).any():
            row = int(np.flatnonzero(g != 0)[0])
            _fail("line", df.index[row], "shunt conductance is not modelled (must be 0)", column)
    parallel = _floats(df, "parallel", 1.0)
    out["id"] = ids.rows("line", df)
    out["from_bus"], out["to_bus"] = _branch_ends(df, "line", ("from_bus", "to_bus"), ids, switches)
    overhead = _strings(df, "type") == "ol"
    out["kind"] = np.where(overhead, enum_code(LineKind.OVERHEAD), enum_code(LineKind.CABLE))
    out["length_km"] = _floats(df, "length_km")
    out["r1_ohm_per_km"] = _floats(df, "r_ohm_per_km") / parallel
    out["x1_ohm_per_km"] = _floats(df, "x_ohm_per_km") / parallel
    out["c1_nf_per_km"] = _floats(df, "c_nf_per_km", 0.0) * parallel
    out["r0_ohm_per_km"] = _floats(df, "r0_ohm_per_km") / parallel
    out["x0_ohm_per_km"] = _floats(df, "x0_ohm_per_km") / parallel
    out["c0_nf_per_km"] = _floats(df, "c0_nf_per_km") * parallel
    out["i_rated_ka"] = _floats(df, "max_i_ka") * _floats(df, "df", 1.0) * parallel
    out["in_service"] = _floats(df, "in_service", 1.0) != 0
    return out


def _import_trafos(df: pd.DataFrame, ids: _Ids, switches: _Switches) -> Table:
    out = empty_table("transformer", len(df))
    if not len(df):
        return out
    parallel = _floats(df, "parallel", 1.0)
    sn_mva = _floats(df, "sn_mva") * parallel
    vkr = _floats(df, "vkr_percent", 0.0)
    out["id"] = ids.rows("trafo", df)
    out["hv_bus"], out["lv_bus"] = _branch_ends(df, "trafo", ("hv_bus", "lv_bus"), ids, switches)
    out["sn_mva"] = sn_mva
    out["u_hv_kv"] = _floats(df, "vn_hv_kv")
    out["u_lv_kv"] = _floats(df, "vn_lv_kv")
    out["uk_percent"] = _floats(df, "vk_percent")
    pk_hint, has_pk = _hint_floats(df, "of_pk_kw")
    has_pk &= _vkr_percent(pk_hint, sn_mva) == vkr
    out["pk_kw"] = np.where(has_pk, pk_hint, vkr / 100.0 * sn_mva * 1000.0)
    out["i0_percent"] = _floats(df, "i0_percent", 0.0)
    out["p0_kw"] = _floats(df, "pfe_kw", 0.0) * parallel
    _import_vector_groups(df, out)
    _import_taps(df, out)
    out["in_service"] = _floats(df, "in_service", 1.0) != 0
    return out


def _vkr_percent(pk_kw: Floats, sn_mva: Floats) -> Floats:
    """pandapower's ``vkr_percent`` for copper losses ``pk_kw`` (the exporter's formula)."""
    return pk_kw / (sn_mva * 1000.0) * 100.0


def _import_vector_groups(df: pd.DataFrame, out: Table) -> None:
    shift = _floats(df, "shift_degree", 0.0)
    clock_f = shift / 30.0
    bad = np.abs(clock_f - np.round(clock_f)) > 1e-6
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        _fail(
            "trafo",
            df.index[row],
            f"phase shift {shift[row]} is not a multiple of 30 degrees",
            "shift_degree",
        )
    clock = np.mod(np.round(clock_f).astype(np.int64), 12)
    odd = clock % 2 == 1
    hv = np.where(odd, enum_code(WindingType.D), enum_code(WindingType.YN))
    lv = np.full(len(df), enum_code(WindingType.YN), dtype=np.int64)
    groups = _strings(df, "vector_group")
    given = groups != ""
    if given.any():
        import pandas as pd

        parts = pd.Series(groups[given]).str.extract(_VECTOR_GROUP)
        unparsed = parts[0].isna().to_numpy()
        if unparsed.any():
            row = int(np.flatnonzero(given)[int(np.flatnonzero(unparsed)[0])])
            _fail("trafo", df.index[row], f"unknown vector group '{groups[row]}'", "vector_group")
        group_clock = np.mod(parts[2].astype(int).to_numpy(dtype=np.int64), 12)
        mismatch = group_clock != clock[given]
        if mismatch.any():
            row = int(np.flatnonzero(given)[int(np.flatnonzero(mismatch)[0])])
            _fail(
                "trafo",
                df.index[row],
                f"vector group '{groups[row]}' disagrees with shift_degree {shift[row]}",
                "vector_group",
            )
        hv[given] = enum_codes(WindingType, parts[0].str.lower().to_numpy(dtype=object))
        lv[given] = enum_codes(WindingType, parts[1].to_numpy(dtype=object))
    out["winding_hv"] = hv
    out["winding_lv"] = lv
    out["clock"] = clock


def _import_taps(df: pd.DataFrame, out: Table) -> None:
    for column in ("tap2_pos",):
        if column in df and df[column].notna().any():
            row = int(np.flatnonzero(df[column].notna().to_numpy())[0])
            _fail("trafo", df.index[row], "a second tap changer is not modelled", column)
    if "tap_dependency_table" in df:
        dependent = df["tap_dependency_table"].fillna(False).to_numpy(dtype=bool)
        if dependent.any():
            row = int(np.flatnonzero(dependent)[0])
            _fail(
                "trafo",
                df.index[row],
                "tap-dependent impedance is not modelled",
                "tap_dependency_table",
            )
    changer = _strings(df, "tap_changer_type")
    side = _strings(df, "tap_side")
    pos = _floats(df, "tap_pos")
    step = _floats(df, "tap_step_percent")
    degree = _floats(df, "tap_step_degree", 0.0)
    shifting = np.isin(changer, ["Ideal", "Tabular"]) | ((changer != "") & (degree != 0))
    if shifting.any():
        row = int(np.flatnonzero(shifting)[0])
        _fail(
            "trafo",
            df.index[row],
            "phase-shifting tap changers are not modelled",
            "tap_changer_type",
        )
    active = np.isin(changer, ["Ratio", "Symmetrical"]) & np.isin(side, ["hv", "lv"])
    active &= np.isfinite(pos) & np.isfinite(step)
    neutral = _floats(df, "tap_neutral")
    if (active & np.isnan(neutral)).any():
        row = int(np.flatnonzero(active & np.isnan(neutral))[0])
        _fail("trafo", df.index[row], "tap changer without neutral position", "tap_neutral")
    tap_min = _floats(df, "tap_min")
    tap_max = _floats(df, "tap_max")
    tap_min = np.where(np.isnan(tap_min), np.minimum(pos, neutral), tap_min)
    tap_max = np.where(np.isnan(tap_max), np.maximum(pos, neutral), tap_max)
    zero = np.zeros(len(df))
    out["tap_side"] = np.where(
        active & (side == "lv"), enum_code(TapSide.LV), enum_code(TapSide.HV)
    )
    for field, column, values in (
        ("tap_pos", "tap_pos", pos),
        ("tap_min", "tap_min", tap_min),
        ("tap_max", "tap_max", tap_max),
        ("tap_nom", "tap_neutral", neutral),
    ):
        out[field] = _integral(df, "trafo", column, np.where(active, values, zero), "i1")
    out["tap_step_percent"] = np.where(active, step, 0.0)


def _import_switches(df: pd.DataFrame, ids: _Ids, switches: _Switches) -> Table:
    out = empty_table("switch", len(df))
    if not len(df):
        return out
    out["id"] = ids.rows("switch", df)
    out["from_bus"] = ids.of("bus", switches.bus)
    to_bus = ids.of("bus", switches.other_bus)
    to_bus[switches.aux_rows] = ids.aux
    out["to_bus"] = to_bus
    pp_type = _strings(df, "type")
    kind = np.full(len(df), enum_code(SwitchKind.LOAD_BREAK), dtype=np.int64)
    for pp_name, member in _SWITCH_TYPE_IN.items():
        kind[pp_type == pp_name] = enum_code(member)
    hint, present = _hint(df, "of_kind")
    hinted = enum_codes(SwitchKind, np.where(present, hint, ""))
    agree = np.zeros(len(df), dtype=bool)
    for member, pp_name in _SWITCH_TYPE_OUT.items():
        agree |= (hinted == enum_code(member)) & (pp_type == pp_name)
    out["kind"] = np.where(agree, hinted, kind)
    closed = df["closed"].to_numpy(dtype=bool)
    out["closed"] = closed
    out["normally_open"] = _hint_bools(df, "of_normally_open", ~closed)
    out["remote_controllable"] = _hint_bools(df, "of_remote_controllable", np.zeros(len(df), bool))
    out["fault_indicator"] = _hint_bools(df, "of_fault_indicator", np.zeros(len(df), bool))
    out["i_rated_ka"] = _floats(df, "in_ka")
    return out


def _hint_bools(df: pd.DataFrame, column: str, default: Bools) -> Bools:
    values, present = _hint(df, column)
    return np.where(present, values.astype(bool), default)


def _import_loads(df: pd.DataFrame, ids: _Ids) -> Table:
    out = empty_table("load", len(df))
    if not len(df):
        return out
    for column in (
        "const_z_p_percent",
        "const_i_p_percent",
        "const_z_q_percent",
        "const_i_q_percent",
        "const_z_percent",
        "const_i_percent",
    ):
        share = _floats(df, column, 0.0)
        if (share != 0).any():
            row = int(np.flatnonzero(share != 0)[0])
            _fail(
                "load",
                df.index[row],
                f"voltage-dependent share {share[row]:g} %: loads are modelled as constant power",
                column,
            )
    scaling = _floats(df, "scaling", 1.0)
    out["id"] = ids.rows("load", df)
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    out["p_mw"] = _floats(df, "p_mw") * scaling
    out["q_mvar"] = _floats(df, "q_mvar", 0.0) * scaling
    customers, present = _hint_floats(df, "of_customers")
    out["customers"] = np.where(present, customers, out["customers"])
    classes, present = _hint(df, "of_customer_class")
    codes = enum_codes(CustomerClass, np.where(present, classes, ""))
    out["customer_class"] = np.where(codes >= 0, codes, out["customer_class"])
    for field in ("share_a", "share_b", "share_c", "priority"):
        values, present = _hint_floats(df, f"of_{field}")
        out[field] = np.where(present, values, out[field])
    out["in_service"] = _floats(df, "in_service", 1.0) != 0
    return out


def _import_sgens(df: pd.DataFrame, ids: _Ids) -> Table:
    out = empty_table("generator", len(df))
    if not len(df):
        return out
    scaling = _floats(df, "scaling", 1.0)
    pp_type = _strings(df, "type")
    upper = np.char.upper(pp_type.astype(str))
    kind = np.full(len(df), enum_code(DerKind.OTHER), dtype=np.int64)
    kind[upper == "PV"] = enum_code(DerKind.PV)
    kind[upper == "WP"] = enum_code(DerKind.WIND)
    kind[np.char.startswith(upper, "CHP")] = enum_code(DerKind.CHP)
    hint, present = _hint(df, "of_kind")
    hinted = enum_codes(DerKind, np.where(present, hint, ""))
    agree = np.zeros(len(df), dtype=bool)
    for member, pp_name in _SGEN_TYPE_OUT.items():
        if member is not DerKind.STORAGE:
            agree |= (hinted == enum_code(member)) & (pp_type == pp_name)
    out["id"] = ids.rows("sgen", df)
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    out["kind"] = np.where(agree, hinted, kind)
    out["p_mw"] = _floats(df, "p_mw") * scaling
    out["q_mvar"] = _floats(df, "q_mvar", 0.0) * scaling
    out["sn_mva"] = _floats(df, "sn_mva")
    out["p_min_mw"] = _floats(df, "min_p_mw")
    out["p_max_mw"] = _floats(df, "max_p_mw")
    out["q_min_mvar"] = _floats(df, "min_q_mvar")
    out["q_max_mvar"] = _floats(df, "max_q_mvar")
    out["in_service"] = _floats(df, "in_service", 1.0) != 0
    return out


def _import_storages(df: pd.DataFrame, ids: _Ids) -> Table:
    out = empty_table("generator", len(df))
    if not len(df):
        return out
    scaling = _floats(df, "scaling", 1.0)
    out["id"] = ids.rows("storage", df)
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    out["kind"] = enum_code(DerKind.STORAGE)
    # pandapower storage follows the load convention (p > 0 charges); generators inject
    out["p_mw"] = -(_floats(df, "p_mw") * scaling)
    out["q_mvar"] = -(_floats(df, "q_mvar", 0.0) * scaling)
    out["sn_mva"] = _floats(df, "sn_mva")
    out["p_min_mw"] = -_floats(df, "max_p_mw")
    out["p_max_mw"] = -_floats(df, "min_p_mw")
    out["q_min_mvar"] = -_floats(df, "max_q_mvar")
    out["q_max_mvar"] = -_floats(df, "min_q_mvar")
    out["in_service"] = _floats(df, "in_service", 1.0) != 0
    return out


def _import_shunts(df: pd.DataFrame, bus_df: pd.DataFrame, ids: _Ids) -> Table:
    out = empty_table("shunt", len(df))
    if not len(df):
        return out
    bus = df["bus"].to_numpy(dtype=np.int64)
    bus_kv = _floats(bus_df, "vn_kv")[lookup(bus_df.index.to_numpy(dtype=np.int64), bus)]
    vn_kv = _floats(df, "vn_kv")
    vn_kv = np.where(np.isnan(vn_kv), bus_kv, vn_kv)
    # pandapower gives the power at the shunt's vn_kv; ours is at the bus's rated voltage
    factor = (bus_kv / vn_kv) ** 2
    out["id"] = ids.rows("shunt", df)
    out["bus"] = ids.of("bus", bus)
    out["q_step_mvar"] = -_floats(df, "q_mvar") * factor
    out["p_step_mw"] = _floats(df, "p_mw", 0.0) * factor
    out["steps"] = _integral(df, "shunt", "max_step", _floats(df, "max_step", 1.0), "i2")
    out["step"] = _integral(df, "shunt", "step", _floats(df, "step", 1.0), "i2")
    out["in_service"] = _floats(df, "in_service", 1.0) != 0
    return out


def _import_ext_grids(df: pd.DataFrame, ids: _Ids) -> Table:
    out = empty_table("source", len(df))
    if not len(df):
        return out
    out["id"] = ids.rows("ext_grid", df)
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    out["u_ref_pu"] = _floats(df, "vm_pu", 1.0)
    out["u_ref_angle_deg"] = _floats(df, "va_degree", 0.0)
    out["sk_mva"] = _floats(df, "s_sc_max_mva", 1000.0)
    rx = _floats(df, "rx_max", 0.1)
    out["rx_ratio"] = rx
    x0x = _floats(df, "x0x_max")
    r0x0 = _floats(df, "r0x0_max")
    z01 = np.where(np.isnan(r0x0), x0x, x0x * np.sqrt(1 + r0x0**2) / np.sqrt(1 + rx**2))
    hint, present = _hint_floats(df, "of_z01_ratio")
    present &= (x0x == hint) & (r0x0 == rx)
    out["z01_ratio"] = np.where(present, hint, np.where(np.isnan(z01), 1.0, z01))
    out["in_service"] = _floats(df, "in_service", 1.0) != 0
    return out


def _import_measurements(frames: dict[str, pd.DataFrame], ids: _Ids) -> Table:
    df = frames["of_measurement"]
    out = empty_table("measurement", len(df))
    if not len(df):
        return out
    out["id"] = ids.rows("of_measurement", df)
    kinds = enum_codes(MeasurementKind, _strings(df, "kind"))
    if (kinds < 0).any():
        row = int(np.flatnonzero(kinds < 0)[0])
        _fail("of_measurement", df.index[row], "unknown measurement kind", "kind")
    out["kind"] = kinds
    out["bus"] = ids.of("bus", df["bus"].to_numpy(dtype=np.int64))
    element = _floats(df, "element", float(NO_ID)).astype(np.int64)
    element_table = _strings(df, "element_table")
    ref = np.full(len(df), NO_ID, dtype=np.int64)
    for table in ("line", "trafo", "switch", "load"):
        mask = (element_table == table) & (element != NO_ID)
        ref[mask] = ids.of(table, element[mask])
    out["element"] = ref
    ends = enum_codes(BranchEnd, _strings(df, "element_end"))
    out["element_end"] = np.where(ends >= 0, ends, out["element_end"])
    for field in ("measures_voltage", "measures_current", "measures_power", "phasor"):
        out[field] = _hint_bools(df, field, out[field])
    out["accuracy_class"] = _floats(df, "accuracy_class", 1.0)
    return out


# --------------------------------------------------------------------------------------------------
# export


def export_pandapower_json(model: GridModel, path: str | Path) -> None:
    """Write ``model`` as a pandapower JSON file (``pandapower.from_json`` reads it)."""
    pp = _pandapower()
    pp.to_json(to_pandapower(model), str(path))


def to_pandapower(model: GridModel) -> Any:
    """A pandapower net of ``model``: DataFrame indices are the OpenFeeder ids."""
    pp = _pandapower()
    import pandas as pd

    negative = [t for t, table in model.tables() if table.size and table["id"].min() < 0]
    if negative:
        raise CaseError(CaseIssue("pandapower needs ids >= 0", component=negative[0], field="id"))
    net = pp.create_empty_network(name=model.name, f_hz=model.frequency_hz)
    net["of_description"] = model.description
    bus = model.bus
    if bus.size:
        pp.create_buses(net, bus.size, bus["u_rated_kv"], index=bus["id"])
        net.bus["geo"] = _geo_strings(bus["x_m"], bus["y_m"])
    _export_lines(pp, net, model.line)
    _export_trafos(pp, net, model.transformer)
    _export_switches(pp, net, model.switch)
    _export_loads(pp, net, model.load)
    _export_generators(pp, net, model.generator)
    _export_shunts(pp, net, model)
    for row in model.source:
        rx = float(row["rx_ratio"])
        sk = float(row["sk_mva"])
        pp.create_ext_grid(
            net,
            int(row["bus"]),
            vm_pu=float(row["u_ref_pu"]),
            va_degree=float(row["u_ref_angle_deg"]),
            in_service=bool(row["in_service"]),
            s_sc_max_mva=sk,
            s_sc_min_mva=sk,
            rx_max=rx,
            rx_min=rx,
            x0x_max=float(row["z01_ratio"]),
            r0x0_max=rx,
            index=int(row["id"]),
            of_z01_ratio=float(row["z01_ratio"]),
        )
    net["of_measurement"] = _measurement_frame(pd, model)
    return net


def _geo_strings(x: Floats, y: Floats) -> list[str | None]:
    """GeoJSON points with the shortest exact float text (None where both are unknown)."""
    xs = np.char.replace(x.astype(str), "nan", "NaN")
    ys = np.char.replace(y.astype(str), "nan", "NaN")
    text = np.char.add(np.char.add(np.char.add('{"coordinates": [', xs), ", "), ys)
    text = np.char.add(text, '], "type": "Point"}')
    geo = text.astype(object)
    geo[np.isnan(x) & np.isnan(y)] = None
    points: list[str | None] = geo.tolist()
    return points


def _export_lines(pp: Any, net: Any, line: Table) -> None:
    if not line.size:
        return
    kind = np.where(line["kind"] == enum_code(LineKind.OVERHEAD), "ol", "cs").tolist()
    pp.create_lines_from_parameters(
        net,
        line["from_bus"],
        line["to_bus"],
        length_km=line["length_km"],
        r_ohm_per_km=line["r1_ohm_per_km"],
        x_ohm_per_km=line["x1_ohm_per_km"],
        c_nf_per_km=line["c1_nf_per_km"],
        max_i_ka=line["i_rated_ka"],
        index=line["id"],
        type=kind,
        in_service=line["in_service"],
        r0_ohm_per_km=line["r0_ohm_per_km"],
        x0_ohm_per_km=line["x0_ohm_per_km"],
        c0_nf_per_km=line["c0_nf_per_km"],
        g0_us_per_km=0.0,
    )


def _export_trafos(pp: Any, net: Any, trafo: Table) -> None:
    if not trafo.size:
        return
    hv = np.char.upper(enum_from_code(WindingType, trafo["winding_hv"]))
    lv = enum_from_code(WindingType, trafo["winding_lv"])
    clock = trafo["clock"].astype(np.int64)
    pp.create_transformers_from_parameters(
        net,
        trafo["hv_bus"],
        trafo["lv_bus"],
        sn_mva=trafo["sn_mva"],
        vn_hv_kv=trafo["u_hv_kv"],
        vn_lv_kv=trafo["u_lv_kv"],
        vkr_percent=_vkr_percent(trafo["pk_kw"], trafo["sn_mva"]),
        vk_percent=trafo["uk_percent"],
        pfe_kw=trafo["p0_kw"],
        i0_percent=trafo["i0_percent"],
        shift_degree=clock * 30.0,
        tap_side=enum_from_code(TapSide, trafo["tap_side"]).tolist(),
        tap_neutral=trafo["tap_nom"].astype(np.float64),
        tap_max=trafo["tap_max"].astype(np.float64),
        tap_min=trafo["tap_min"].astype(np.float64),
        tap_pos=trafo["tap_pos"].astype(np.float64),
        tap_step_percent=trafo["tap_step_percent"],
        tap_step_degree=0.0,
        tap_changer_type="Ratio",
        in_service=trafo["in_service"],
        index=trafo["id"],
        of_pk_kw=trafo["pk_kw"],
    )
    # pandapower's create function cannot take a list of vector groups
    net.trafo["vector_group"] = np.char.add(np.char.add(hv, lv), clock.astype(str)).astype(object)


def _export_switches(pp: Any, net: Any, switch: Table) -> None:
    if not switch.size:
        return
    kinds = enum_from_code(SwitchKind, switch["kind"])
    pp_type = np.array([_SWITCH_TYPE_OUT[SwitchKind(k)] for k in SwitchKind])[switch["kind"]]
    pp.create_switches(
        net,
        switch["from_bus"],
        switch["to_bus"],
        et="b",
        closed=switch["closed"],
        type=pp_type.tolist(),
        index=switch["id"],
        in_ka=switch["i_rated_ka"],
        of_kind=kinds.tolist(),
        of_normally_open=switch["normally_open"],
        of_remote_controllable=switch["remote_controllable"],
        of_fault_indicator=switch["fault_indicator"],
    )


def _export_loads(pp: Any, net: Any, load: Table) -> None:
    if not load.size:
        return
    pp.create_loads(
        net,
        load["bus"],
        p_mw=load["p_mw"],
        q_mvar=load["q_mvar"],
        index=load["id"],
        in_service=load["in_service"],
        of_customers=load["customers"],
        of_customer_class=enum_from_code(CustomerClass, load["customer_class"]).tolist(),
        of_share_a=load["share_a"],
        of_share_b=load["share_b"],
        of_share_c=load["share_c"],
        of_priority=load["priority"],
    )


def _export_generators(pp: Any, net: Any, gen: Table) -> None:
    storage = gen["kind"] == enum_code(DerKind.STORAGE)
    sgen = gen[~storage]
    if sgen.size:
        pp_type = np.array([_SGEN_TYPE_OUT[DerKind(k)] for k in DerKind])[sgen["kind"]]
        pp.create_sgens(
            net,
            sgen["bus"],
            p_mw=sgen["p_mw"],
            q_mvar=sgen["q_mvar"],
            sn_mva=sgen["sn_mva"],
            index=sgen["id"],
            type=pp_type.tolist(),
            in_service=sgen["in_service"],
            min_p_mw=sgen["p_min_mw"],
            max_p_mw=sgen["p_max_mw"],
            min_q_mvar=sgen["q_min_mvar"],
            max_q_mvar=sgen["q_max_mvar"],
            of_kind=enum_from_code(DerKind, sgen["kind"]).tolist(),
        )
    store = gen[storage]
    if store.size:
        pp.create_storages(
            net,
            store["bus"],
            p_mw=-store["p_mw"],
            max_e_mwh=np.nan,
            q_mvar=-store["q_mvar"],
            sn_mva=store["sn_mva"],
            index=store["id"],
            type=_STORAGE_TYPE,
            in_service=store["in_service"],
            min_p_mw=-store["p_max_mw"],
            max_p_mw=-store["p_min_mw"],
            min_q_mvar=-store["q_max_mvar"],
            max_q_mvar=-store["q_min_mvar"],
        )


def _export_shunts(pp: Any, net: Any, model: GridModel) -> None:
    shunt = model.shunt
    if not shunt.size:
        return
    bus_kv = model.bus["u_rated_kv"][lookup(model.bus["id"], shunt["bus"])]
    pp.create_shunts(
        net,
        shunt["bus"],
        q_mvar=-shunt["q_step_mvar"],
        p_mw=shunt["p_step_mw"],
        vn_kv=bus_kv,
        step=shunt["step"],
        max_step=shunt["steps"],
        index=shunt["id"],
        in_service=shunt["in_service"],
    )


def _measurement_frame(pd: Any, model: GridModel) -> Any:
    meas = model.measurement
    element = meas["element"].astype(np.int64)
    element_table = np.full(meas.size, "", dtype=object)
    for ours, theirs in (
        ("line", "line"),
        ("transformer", "trafo"),
        ("switch", "switch"),
        ("load", "load"),
    ):
        found = lookup(model.table(ours)["id"], element) >= 0
        element_table[found & (element != NO_ID)] = theirs
    return pd.DataFrame(
        {
            "kind": enum_from_code(MeasurementKind, meas["kind"]).astype(object),
            "bus": meas["bus"].astype(np.int64),
            "element_table": element_table,
            "element": element,
            "element_end": enum_from_code(BranchEnd, meas["element_end"]).astype(object),
            "measures_voltage": meas["measures_voltage"],
            "measures_current": meas["measures_current"],
            "measures_power": meas["measures_power"],
            "phasor": meas["phasor"],
            "accuracy_class": meas["accuracy_class"],
        },
        index=pd.Index(meas["id"].astype(np.int64)),
    )
