"""pandapower transformers to OpenFeeder transformers: ratings and losses, windings and clock from
``vector_group`` and ``shift_degree``, and the tap changer (see *Conversions* in the package
documentation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from openfeeder.model.components import TapSide, WindingType, empty_table, enum_code, enum_codes
from openfeeder.model.pandapower_io.frames import fail, floats, hint_floats, integral, strings
from openfeeder.model.pandapower_io.ids import Ids, Switches, branch_ends
from openfeeder.model.pandapower_io.mapping import VECTOR_GROUP, Table, vkr_percent_from_pk

if TYPE_CHECKING:
    import pandas as pd


def import_trafos(df: pd.DataFrame, ids: Ids, switches: Switches) -> Table:
    out = empty_table("transformer", len(df))
    if not len(df):
        return out
    parallel = floats(df, "parallel", 1.0)
    sn_mva = floats(df, "sn_mva") * parallel
    vkr = floats(df, "vkr_percent", 0.0)
    out["id"] = ids.rows("trafo", df)
    out["hv_bus"], out["lv_bus"] = branch_ends(df, "trafo", ("hv_bus", "lv_bus"), ids, switches)
    out["sn_mva"] = sn_mva
    out["u_hv_kv"] = floats(df, "vn_hv_kv")
    out["u_lv_kv"] = floats(df, "vn_lv_kv")
    out["uk_percent"] = floats(df, "vk_percent")
    pk_hint, has_pk = hint_floats(df, "of_pk_kw")
    has_pk &= vkr_percent_from_pk(pk_hint, sn_mva) == vkr
    out["pk_kw"] = np.where(has_pk, pk_hint, vkr / 100.0 * sn_mva * 1000.0)
    out["i0_percent"] = floats(df, "i0_percent", 0.0)
    out["p0_kw"] = floats(df, "pfe_kw", 0.0) * parallel
    _import_vector_groups(df, out)
    _import_taps(df, out)
    out["in_service"] = floats(df, "in_service", 1.0) != 0
    return out


def _import_vector_groups(df: pd.DataFrame, out: Table) -> None:
    shift = floats(df, "shift_degree", 0.0)
    clock_f = shift / 30.0
    bad = np.abs(clock_f - np.round(clock_f)) > 1e-6
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        fail(
            "trafo",
            df.index[row],
            f"phase shift {shift[row]} is not a multiple of 30 degrees",
            "shift_degree",
        )
    clock = np.mod(np.round(clock_f).astype(np.int64), 12)
    odd = clock % 2 == 1
    hv = np.where(odd, enum_code(WindingType.D), enum_code(WindingType.YN))
    lv = np.full(len(df), enum_code(WindingType.YN), dtype=np.int64)
    groups = strings(df, "vector_group")
    given = groups != ""
    if given.any():
        import pandas as pd

        parts = pd.Series(groups[given]).str.extract(VECTOR_GROUP)
        unparsed = parts[0].isna().to_numpy()
        if unparsed.any():
            row = int(np.flatnonzero(given)[int(np.flatnonzero(unparsed)[0])])
            fail("trafo", df.index[row], f"unknown vector group '{groups[row]}'", "vector_group")
        group_clock = np.mod(parts[2].astype(int).to_numpy(dtype=np.int64), 12)
        mismatch = group_clock != clock[given]
        if mismatch.any():
            row = int(np.flatnonzero(given)[int(np.flatnonzero(mismatch)[0])])
            fail(
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
            fail("trafo", df.index[row], "a second tap changer is not modelled", column)
    if "tap_dependency_table" in df:
        dependent = df["tap_dependency_table"].fillna(False).to_numpy(dtype=bool)
        if dependent.any():
            row = int(np.flatnonzero(dependent)[0])
            fail(
                "trafo",
                df.index[row],
                "tap-dependent impedance is not modelled",
                "tap_dependency_table",
            )
    changer = strings(df, "tap_changer_type")
    side = strings(df, "tap_side")
    pos = floats(df, "tap_pos")
    step = floats(df, "tap_step_percent")
    degree = floats(df, "tap_step_degree", 0.0)
    shifting = np.isin(changer, ["Ideal", "Tabular"]) | ((changer != "") & (degree != 0))
    if shifting.any():
        row = int(np.flatnonzero(shifting)[0])
        fail(
            "trafo",
            df.index[row],
            "phase-shifting tap changers are not modelled",
            "tap_changer_type",
        )
    active = np.isin(changer, ["Ratio", "Symmetrical"]) & np.isin(side, ["hv", "lv"])
    active &= np.isfinite(pos) & np.isfinite(step)
    neutral = floats(df, "tap_neutral")
    if (active & np.isnan(neutral)).any():
        row = int(np.flatnonzero(active & np.isnan(neutral))[0])
        fail("trafo", df.index[row], "tap changer without neutral position", "tap_neutral")
    tap_min = floats(df, "tap_min")
    tap_max = floats(df, "tap_max")
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
        out[field] = integral(df, "trafo", column, np.where(active, values, zero), "i1")
    out["tap_step_percent"] = np.where(active, step, 0.0)
