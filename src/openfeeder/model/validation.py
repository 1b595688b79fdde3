"""Validation of a grid model, vectorized over the component tables.

Two forms, as in power-grid-model: :func:`validate_model` returns every problem found as a list of
:class:`~openfeeder.errors.CaseIssue` (table, component id, field, message), and
:func:`assert_valid_model` raises :class:`~openfeeder.errors.CaseValidationError` carrying them.

Checks: unique ids across all tables; references to existing components of the right table;
physically meaningful values (positive lengths, ratings, voltages); plausible units (a bus voltage of
20000 "kV" was written in volts); lines joining buses of one voltage level and transformers whose
rated voltages match their buses; tap and step positions within their ranges; load phase shares
summing to one; measurement devices placed consistently; at least one in-service source.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.errors import CaseIssue, CaseValidationError
from openfeeder.model.components import NO_ID, TABLES, BranchEnd, enum_code
from openfeeder.model.grid import GridModel, lookup

__all__ = ["MAX_ISSUES_PER_CHECK", "assert_valid_model", "validate_model"]

MAX_ISSUES_PER_CHECK: Final = 20
"""At most this many issues are reported per check, so a broken 100,000-row table stays readable."""

Table = npt.NDArray[np.void]


def assert_valid_model(model: GridModel, *, file: str | None = None) -> None:
    """Raise :class:`CaseValidationError` with every issue if the model is invalid."""
    issues = validate_model(model)
    if issues:
        if file is not None:
            issues = [
                CaseIssue(i.message, i.component, i.component_id, i.field, file) for i in issues
            ]
        raise CaseValidationError(issues)


def validate_model(model: GridModel) -> list[CaseIssue]:
    """Every problem in ``model``; an empty list means it is valid."""
    issues: list[CaseIssue] = []
    issues += _check_ids(model)
    issues += _check_references(model)
    structure_ok = not issues
    issues += _check_values(model)
    if structure_ok:  # these checks index through references, so they need them intact
        issues += _check_voltage_levels(model)
        issues += _check_measurements(model)
    if not (model.source["in_service"]).any():
        issues.append(CaseIssue("the model has no in-service source (external grid)", "source"))
    return issues


def _issues(
    mask: npt.NDArray[np.bool_],
    table_name: str,
    table: Table,
    field: str | None,
    message: str | Any,
) -> list[CaseIssue]:
    """Issues for the rows of ``table`` where ``mask`` holds; ``message`` may be a row formatter."""
    rows = np.flatnonzero(mask)[:MAX_ISSUES_PER_CHECK]
    out = []
    for row in rows:
        text = message(int(row)) if callable(message) else str(message)
        out.append(CaseIssue(text, table_name, int(table["id"][row]), field))
    return out


def _check_ids(model: GridModel) -> list[CaseIssue]:
    issues: list[CaseIssue] = []
    all_ids = model.all_ids()
    owners = np.concatenate([np.full(t.size, i) for i, (_, t) in enumerate(model.tables())])
    names = list(TABLES)
    negative = np.flatnonzero(all_ids < 0)[:MAX_ISSUES_PER_CHECK]
    issues += [
        CaseIssue("ids must be >= 0", names[owners[i]], int(all_ids[i]), "id") for i in negative
    ]
    order = np.argsort(all_ids, kind="stable")
    sorted_ids = all_ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])[:MAX_ISSUES_PER_CHECK]
    for d in dup:
        first, second = order[d], order[d + 1]
        other = names[owners[first]]
        issues.append(
            CaseIssue(
                f"duplicate id (also used by a {other}; ids are unique across all components)",
                names[owners[second]],
                int(all_ids[second]),
                "id",
            )
        )
    return issues


def _check_references(model: GridModel) -> list[CaseIssue]:
    issues: list[CaseIssue] = []
    for name, table in model.tables():
        for column in TABLES[name].columns:
            if not column.refers_to or table.size == 0:
                continue
            values = table[column.name].astype(np.int64)
            ok = np.zeros(values.shape, dtype=bool)
            for target in column.refers_to:
                ok |= lookup(model.table(target)["id"], values) >= 0
            if column.optional_ref:
                ok |= values == NO_ID
            targets = " or ".join(column.refers_to)
            issues += _issues(
                ~ok,
                name,
                table,
                column.name,
                lambda r, v=values, t=targets: f"refers to unknown {t} {v[r]}",
            )
    for name in ("line", "switch"):
        table = model.table(name)
        issues += _issues(
            table["from_bus"] == table["to_bus"],
            name,
            table,
            "to_bus",
            "connects a bus to itself",
        )
    trafo = model.transformer
    issues += _issues(
        trafo["hv_bus"] == trafo["lv_bus"],
        "transformer",
        trafo,
        "lv_bus",
        "connects a bus to itself",
    )
    return issues


def _positive(model: GridModel, table: str, fields: Iterable[str]) -> list[CaseIssue]:
    t = model.table(table)
    out: list[CaseIssue] = []
    for field in fields:
        values = t[field]
        out += _issues(
            ~(values > 0), table, t, field, lambda r, v=values: f"must be > 0, got {v[r]:g}"
        )
    return out


def _at_least_zero(model: GridModel, table: str, fields: Iterable[str]) -> list[CaseIssue]:
    t = model.table(table)
    out: list[CaseIssue] = []
    for field in fields:
        values = t[field]
        out += _issues(
            ~(values >= 0), table, t, field, lambda r, v=values: f"must be >= 0, got {v[r]:g}"
        )
    return out


def _implausible(
    model: GridModel, table: str, field: str, limit: float, hint: str
) -> list[CaseIssue]:
    t = model.table(table)
    values = t[field]
    return _issues(
        np.abs(values) > limit,
        table,
        t,
        field,
        lambda r: f"implausible value {values[r]:g}: {hint}",
    )


def _check_values(model: GridModel) -> list[CaseIssue]:
    issues: list[CaseIssue] = []
    issues += _positive(model, "bus", ["u_rated_kv"])
    issues += _implausible(model, "bus", "u_rated_kv", 1000.0, "the field is in kV, not V")
    issues += _positive(model, "line", ["length_km", "i_rated_ka"])
    issues += _implausible(model, "line", "length_km", 500.0, "the field is in km, not m")
    issues += _implausible(model, "line", "i_rated_ka", 20.0, "the field is in kA, not A")
    issues += _at_least_zero(model, "line", ["r1_ohm_per_km", "x1_ohm_per_km", "c1_nf_per_km"])
    line = model.line
    issues += _issues(
        (line["r1_ohm_per_km"] == 0) & (line["x1_ohm_per_km"] == 0),
        "line",
        line,
        "x1_ohm_per_km",
        "zero impedance: model a zero-impedance connection as a switch",
    )
    for field in ("r0_ohm_per_km", "x0_ohm_per_km", "c0_nf_per_km"):
        values = line[field]
        issues += _issues(
            values < 0, "line", line, field, lambda r, v=values: f"must be >= 0, got {v[r]:g}"
        )

    issues += _positive(model, "transformer", ["sn_mva", "u_hv_kv", "u_lv_kv", "uk_percent"])
    issues += _at_least_zero(model, "transformer", ["pk_kw", "i0_percent", "p0_kw"])
    trafo = model.transformer
    issues += _issues(
        trafo["uk_percent"] >= 100, "transformer", trafo, "uk_percent", "must be < 100 %"
    )
    pk_percent = trafo["pk_kw"] / np.maximum(trafo["sn_mva"] * 10.0, 1e-12)
    issues += _issues(
        pk_percent >= trafo["uk_percent"],
        "transformer",
        trafo,
        "pk_kw",
        "copper losses imply a resistance above the short-circuit impedance (uk_percent)",
    )
    low, high = (
        np.minimum(trafo["tap_min"], trafo["tap_max"]),
        np.maximum(trafo["tap_min"], trafo["tap_max"]),
    )
    issues += _issues(
        (trafo["tap_pos"] < low) | (trafo["tap_pos"] > high),
        "transformer",
        trafo,
        "tap_pos",
        lambda r: (
            f"tap position {trafo['tap_pos'][r]} outside "
            f"{trafo['tap_min'][r]}..{trafo['tap_max'][r]}"
        ),
    )
    issues += _issues(
        (trafo["tap_nom"] < low) | (trafo["tap_nom"] > high),
        "transformer",
        trafo,
        "tap_nom",
        "neutral tap position outside tap_min..tap_max",
    )
    issues += _issues(
        (trafo["clock"] < 0) | (trafo["clock"] > 11),
        "transformer",
        trafo,
        "clock",
        "clock number must be 0..11",
    )

    switch = model.switch
    rating = switch["i_rated_ka"]
    issues += _issues(
        rating <= 0, "switch", switch, "i_rated_ka", lambda r: f"must be > 0, got {rating[r]:g}"
    )

    load = model.load
    issues += _implausible(model, "load", "p_mw", 1000.0, "the field is in MW, not kW")
    issues += _implausible(model, "load", "q_mvar", 1000.0, "the field is in Mvar, not kvar")
    issues += _issues(
        load["customers"] < 0, "load", load, "customers", "number of customers must be >= 0"
    )
    shares = np.stack([load["share_a"], load["share_b"], load["share_c"]], axis=1)
    issues += _issues(
        np.asarray((shares < 0).any(axis=1)), "load", load, "share_a", "phase shares must be >= 0"
    )
    issues += _issues(
        np.abs(shares.sum(axis=1) - 1.0) > 1e-6,
        "load",
        load,
        "share_c",
        lambda r: f"phase shares must sum to 1, got {shares[r].sum():.6g}",
    )
    issues += _issues(
        (load["priority"] < 0) | (load["priority"] > 3), "load", load, "priority", "must be 0..3"
    )
    for table, fields in (
        ("load", ("p_mw", "q_mvar")),
        ("generator", ("p_mw", "q_mvar")),
        ("shunt", ("q_step_mvar", "p_step_mw")),
    ):
        t = model.table(table)
        for field in fields:
            issues += _issues(~np.isfinite(t[field]), table, t, field, "must be a finite number")
    issues += _implausible(model, "generator", "p_mw", 1000.0, "the field is in MW, not kW")

    shunt = model.shunt
    issues += _issues(shunt["steps"] < 1, "shunt", shunt, "steps", "must be >= 1")
    issues += _issues(
        (shunt["step"] < 0) | (shunt["step"] > shunt["steps"]),
        "shunt",
        shunt,
        "step",
        lambda r: f"step {shunt['step'][r]} outside 0..{shunt['steps'][r]}",
    )
    issues += _positive(model, "source", ["u_ref_pu", "sk_mva", "z01_ratio"])
    issues += _at_least_zero(model, "source", ["rx_ratio"])
    source = model.source
    issues += _issues(
        (source["u_ref_pu"] < 0.5) | (source["u_ref_pu"] > 1.5),
        "source",
        source,
        "u_ref_pu",
        "voltage setpoint must be within 0.5..1.5 pu",
    )
    meas = model.measurement
    issues += _issues(
        ~(meas["accuracy_class"] > 0),
        "measurement",
        meas,
        "accuracy_class",
        "must be > 0 (in %)",
    )
    return issues


def _check_voltage_levels(model: GridModel) -> list[CaseIssue]:
    issues: list[CaseIssue] = []
    bus_ids = model.bus["id"]
    u_kv = model.bus["u_rated_kv"]
    for name in ("line", "switch"):
        t = model.table(name)
        u_from = u_kv[lookup(bus_ids, t["from_bus"])]
        u_to = u_kv[lookup(bus_ids, t["to_bus"])]
        issues += _issues(
            np.abs(u_from - u_to) > 0.05 * np.maximum(u_from, u_to),
            name,
            t,
            "to_bus",
            lambda r, a=u_from, b=u_to: (
                f"joins buses of different voltage ({a[r]:g} kV and {b[r]:g} kV)"
            ),
        )
    trafo = model.transformer
    for side in ("hv", "lv"):
        bus_u = u_kv[lookup(bus_ids, trafo[f"{side}_bus"])]
        rated = trafo[f"u_{side}_kv"]
        issues += _issues(
            np.abs(bus_u - rated) > 0.2 * bus_u,
            "transformer",
            trafo,
            f"u_{side}_kv",
            lambda r, b=bus_u, u=rated, s=side: (
                f"rated {u[r]:g} kV does not match its "
                f"{s.upper()} bus ({b[r]:g} kV): check the side or the units"
            ),
        )
    return issues


def _check_measurements(model: GridModel) -> list[CaseIssue]:
    meas = model.measurement
    if meas.size == 0:
        return []
    issues: list[CaseIssue] = []
    element = meas["element"].astype(np.int64)
    has_element = element != NO_ID
    issues += _issues(
        ~has_element & (meas["measures_current"] | meas["measures_power"]),
        "measurement",
        meas,
        "element",
        "measures current or power but names no element",
    )
    # a device measuring a branch must sit at one of its ends
    at_end = np.ones(meas.size, dtype=bool)
    is_branch = np.zeros(meas.size, dtype=bool)
    for name, a, b in (
        ("line", "from_bus", "to_bus"),
        ("switch", "from_bus", "to_bus"),
        ("transformer", "hv_bus", "lv_bus"),
    ):
        t = model.table(name)
        rows = lookup(t["id"], element)
        hit = rows >= 0
        is_branch |= hit
        if hit.any():
            from_end = meas["element_end"][hit] == enum_code(BranchEnd.FROM)
            expected = np.where(from_end, t[a][rows[hit]], t[b][rows[hit]])
            at_end[hit] = meas["bus"][hit] == expected
    issues += _issues(
        is_branch & ~at_end,
        "measurement",
        meas,
        "bus",
        "a device on a branch must sit at the bus of the measured end (element_end)",
    )
    load = model.load
    load_rows = lookup(load["id"], element)
    is_load = load_rows >= 0
    load_bus = np.where(is_load, load["bus"][np.maximum(load_rows, 0)] if load.size else -1, -1)
    issues += _issues(
        is_load & (meas["bus"] != load_bus),
        "measurement",
        meas,
        "bus",
        "a meter of a load must sit at the load's bus",
    )
    return issues
