"""The scalar rows of the WLS problem at an estimate: residual, standard deviation, Jacobian row.

The engine solves with the measurements as :mod:`.engine_wls` hands them over; this module writes
down the same problem row by row, in per unit (1 MVA, rated voltages), to test and explain the
estimate:

- one row per voltage magnitude, voltage angle (PMU), branch-end P and Q, current magnitude and
  current angle (PMU), and bus-injection P and Q of a ``pq`` measurement on a bus;
- appliance measurements enter as the engine uses them: where every in-service appliance of a bus
  is measured, their values are summed into one injection (P, Q) of the bus with the variances
  added (several measurements of one appliance are first merged by inverse-variance weighting);
  where one is not measured, the bus's injection is free and those measurements carry no
  information (no rows);
- a bus without any appliance has a zero-injection row (a tight virtual measurement).

With ``engine_powers`` the measured powers (branch ends, bus injections, appliance sums) are taken
as the engine used them: times :attr:`~.engine_wls.EngineEstimate.power_factor` of their bus (the
engine converts them to currents with a measured bus voltage). The objective is then the one of
the problem the engine solved, at its optimum.

``kind`` says what a row belongs to (:class:`RowKind`); ``ref`` is then the measurement's position
in the set, or for appliance and zero-injection rows the bus row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from functools import partial
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from openfeeder.analysis.estimation.engine_wls import EngineEstimate
from openfeeder.analysis.estimation.jacobian import StateJacobian
from openfeeder.analysis.estimation.locate import LocatedMeasurements, Target
from openfeeder.analysis.estimation.measurement_set import END_TO, Quantity
from openfeeder.analysis.estimation.prepared import model_index
from openfeeder.model.grid import GridModel

__all__ = ["ZERO_INJECTION_SIGMA_PU", "RowKind", "ScalarRows", "scalar_rows"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

ZERO_INJECTION_SIGMA_PU: Final = 1e-5
"""Standard deviation of a zero-injection row (10 W / 10 var on the 1 MVA base)."""


class RowKind(IntEnum):
    MEASUREMENT = 0
    APPLIANCES = 1
    ZERO_INJECTION = 2


@dataclass(frozen=True, slots=True, eq=False)
class ScalarRows:
    residual: FloatArray
    sigma: FloatArray
    h: sp.csr_matrix | None
    """Real Jacobian rows over all 2N bus states (angles, then magnitudes); None when not asked."""
    kind: npt.NDArray[np.int8]
    ref: IntArray
    pseudo: BoolArray
    """The row holds pseudo-measurements only (never reported or removed as bad data)."""

    def __len__(self) -> int:
        return int(self.residual.size)


class _Rows:
    def __init__(self, n_states: int, *, with_jacobian: bool) -> None:
        self.n_states = n_states
        self.with_jacobian = with_jacobian
        self.residual: list[FloatArray] = []
        self.sigma: list[FloatArray] = []
        self.h: list[sp.csr_matrix] = []
        self.kind: list[IntArray] = []
        self.ref: list[IntArray] = []
        self.pseudo: list[BoolArray] = []

    def add(
        self,
        residual: FloatArray,
        sigma: FloatArray,
        h: Callable[[], sp.csr_matrix],
        kind: RowKind,
        ref: IntArray,
        *,
        pseudo: BoolArray,
    ) -> None:
        if residual.size == 0:
            return
        self.residual.append(residual)
        self.sigma.append(sigma)
        if self.with_jacobian:
            self.h.append(h())
        self.kind.append(np.full(residual.size, kind, dtype=np.int8))
        self.ref.append(ref.astype(np.int64))
        self.pseudo.append(pseudo.astype(bool))

    def build(self) -> ScalarRows:
        if not self.residual:
            return ScalarRows(
                np.zeros(0),
                np.zeros(0),
                sp.csr_matrix((0, self.n_states)) if self.with_jacobian else None,
                np.zeros(0, np.int8),
                np.zeros(0, np.int64),
                np.zeros(0, bool),
            )
        return ScalarRows(
            residual=np.concatenate(self.residual),
            sigma=np.concatenate(self.sigma),
            h=sp.vstack(self.h).tocsr() if self.with_jacobian else None,
            kind=np.concatenate(self.kind).astype(np.int8),
            ref=np.concatenate(self.ref),
            pseudo=np.concatenate(self.pseudo),
        )


def scalar_rows(
    model: GridModel,
    located: LocatedMeasurements,
    estimate: EngineEstimate,
    jacobian: Callable[[], StateJacobian] | None,
    estimated_bus: BoolArray,
    *,
    engine_powers: bool = False,
) -> ScalarRows:
    """The rows of the module docstring for measurements at ``estimated_bus`` buses; the
    Jacobian (``h``) only when ``jacobian`` (built on first use) is given; ``engine_powers``:
    measured powers as the engine took them (module docstring)."""
    n = model.bus.size
    rows = _Rows(2 * n, with_jacobian=jacobian is not None)
    jac = _Lazy(jacobian)
    table = located.measurements.table
    pseudo = table["pseudo"]
    u_rated = model.bus["u_rated_kv"]
    here = estimated_bus[np.maximum(located.bus_row, 0)] & (located.bus_row >= 0)
    factor = estimate.power_factor if engine_powers else np.ones(n, dtype=np.complex128)

    # voltage magnitudes and angles
    for quantity in (Quantity.U, Quantity.U_PHASOR):
        k = np.flatnonzero(located.of_quantity(quantity) & here)
        b = located.bus_row[k]
        rows.add(
            table["u_kv"][k] / u_rated[b] - estimate.u_pu[b],
            table["u_sigma_kv"][k] / u_rated[b],
            partial(_unit_rows, n + b, 2 * n),
            RowKind.MEASUREMENT,
            k,
            pseudo=pseudo[k],
        )
        if quantity is Quantity.U_PHASOR:
            rows.add(
                _wrap(np.deg2rad(table["u_angle_deg"][k]) - estimate.u_angle_rad[b]),
                np.deg2rad(table["angle_sigma_deg"][k]),
                partial(_unit_rows, b, 2 * n),
                RowKind.MEASUREMENT,
                k,
                pseudo=pseudo[k],
            )

    # branch-end powers
    pq = located.of_quantity(Quantity.PQ) & here
    k = np.flatnonzero(pq & (located.target == Target.BRANCH))
    br = located.target_row[k]
    to = table["end"][k] == END_TO
    p_est = np.where(to, estimate.branch["p_to_mw"][br], estimate.branch["p_from_mw"][br])
    q_est = np.where(to, estimate.branch["q_to_mvar"][br], estimate.branch["q_from_mvar"][br])
    ds = jac.later(partial(_pick_end, power=True, branch=br, to=to))
    p_meas, q_meas = _measured_pq(table, k, factor[located.bus_row[k]])
    _add_pq(
        rows,
        p_meas - p_est,
        q_meas - q_est,
        table=table,
        k=k,
        ds=ds,
        pseudo=pseudo[k],
    )

    # bus injections measured as such
    k = np.flatnonzero(pq & (located.target == Target.BUS))
    b = located.bus_row[k]
    ds = jac.later(partial(_bus_rows, buses=b))
    p_meas, q_meas = _measured_pq(table, k, factor[b])
    p_res = p_meas - estimate.injection_p_mw[b]
    q_res = q_meas - estimate.injection_q_mvar[b]
    _add_pq(rows, p_res, q_res, table=table, k=k, ds=ds, pseudo=pseudo[k])

    _appliance_rows(
        model,
        located,
        estimate,
        jacobian=jac,
        estimated_bus=estimated_bus,
        rows=rows,
        factor=factor,
    )

    # currents
    for quantity in (Quantity.I, Quantity.I_PHASOR):
        k = np.flatnonzero(located.of_quantity(quantity) & here)
        br = located.target_row[k]
        to = table["end"][k] == END_TO
        end_bus = located.bus_row[k]
        i_base_ka = _base_current_ka(u_rated[end_bus])
        current = _end_current(estimate, br, to, end_bus)
        magnitude = np.abs(current)
        safe = np.where(magnitude > 0, magnitude, 1.0)
        di = jac.later(partial(_pick_end, power=False, branch=br, to=to))
        rows.add(
            table["i_ka"][k] / i_base_ka - magnitude,
            table["i_sigma_ka"][k] / i_base_ka,
            partial(_current_rows, di, np.conj(current) / safe, imag=False),
            RowKind.MEASUREMENT,
            k,
            pseudo=pseudo[k],
        )
        if quantity is Quantity.I_PHASOR:
            rows.add(
                _wrap(np.deg2rad(table["i_angle_deg"][k]) - np.angle(current)),
                np.deg2rad(table["angle_sigma_deg"][k]),
                partial(_current_rows, di, np.conj(current) / safe**2, imag=True),
                RowKind.MEASUREMENT,
                k,
                pseudo=pseudo[k],
            )
    return rows.build()


def _measured_pq(
    table: npt.NDArray[np.void], k: IntArray, factor: npt.NDArray[np.complex128]
) -> tuple[FloatArray, FloatArray]:
    s = (table["p_mw"][k] + 1j * table["q_mvar"][k]) * factor
    return s.real, s.imag


def _base_current_ka(u_rated_kv: FloatArray) -> FloatArray:
    """Base current (kA) of the 1 MVA base at a rated line-to-line voltage."""
    out: FloatArray = 1.0 / (math.sqrt(3.0) * u_rated_kv)
    return out


def _add_pq(
    rows: _Rows,
    p_residual: FloatArray,
    q_residual: FloatArray,
    *,
    table: npt.NDArray[np.void],
    k: IntArray,
    ds: Callable[[], sp.csr_matrix],
    pseudo: BoolArray,
) -> None:
    rows.add(
        p_residual,
        table["p_sigma_mw"][k],
        lambda: sp.csr_matrix(ds().real),
        RowKind.MEASUREMENT,
        k,
        pseudo=pseudo,
    )
    rows.add(
        q_residual,
        table["q_sigma_mvar"][k],
        lambda: sp.csr_matrix(ds().imag),
        RowKind.MEASUREMENT,
        k,
        pseudo=pseudo,
    )


def _appliance_rows(
    model: GridModel,
    located: LocatedMeasurements,
    estimate: EngineEstimate,
    *,
    jacobian: _Lazy,
    estimated_bus: BoolArray,
    rows: _Rows,
    factor: npt.NDArray[np.complex128],
) -> None:
    """Summed appliance injections at fully measured buses, and zero-injection rows."""
    n = model.bus.size
    index = model_index(model)
    table = located.measurements.table
    appliances = np.zeros(n, dtype=np.int64)
    covered = np.zeros(n, dtype=np.int64)
    p_sum = np.zeros(n)
    q_sum = np.zeros(n)
    p_var = np.zeros(n)
    q_var = np.zeros(n)
    real = np.zeros(n, dtype=bool)
    pq = located.of_quantity(Quantity.PQ)
    for target, name, sign in (
        (Target.LOAD, "load", -1.0),
        (Target.GENERATOR, "generator", 1.0),
        (Target.SOURCE, "source", 1.0),
    ):
        element = model.table(name)
        on = np.asarray(element["in_service"], dtype=bool)
        bus_rows = index.bus_row[name]
        appliances += np.bincount(bus_rows[on], minlength=n)
        k = np.flatnonzero(pq & (located.target == target))
        if k.size == 0:
            continue
        row = located.target_row[k]
        # merge several measurements of one appliance by inverse-variance weighting
        size = element.size
        wp = np.bincount(row, 1.0 / table["p_sigma_mw"][k] ** 2, size)
        wq = np.bincount(row, 1.0 / table["q_sigma_mvar"][k] ** 2, size)
        zp = np.bincount(row, table["p_mw"][k] / table["p_sigma_mw"][k] ** 2, size)
        zq = np.bincount(row, table["q_mvar"][k] / table["q_sigma_mvar"][k] ** 2, size)
        measured = on & (wp > 0)
        real_appliance = np.bincount(row, ~table["pseudo"][k], size) > 0
        m = np.flatnonzero(measured)
        b = bus_rows[m]
        covered += np.bincount(b, minlength=n)
        p_sum += np.bincount(b, sign * zp[m] / wp[m], n)
        q_sum += np.bincount(b, sign * zq[m] / wq[m], n)
        p_var += np.bincount(b, 1.0 / wp[m], n)
        q_var += np.bincount(b, 1.0 / wq[m], n)
        real[b[real_appliance[m]]] = True
    shunt = model.shunt
    on = np.asarray(shunt["in_service"], dtype=bool)
    appliances += np.bincount(index.bus_row["shunt"][on], minlength=n)  # never measured
    full = np.flatnonzero(estimated_bus & (appliances > 0) & (covered >= appliances))
    ds = jacobian.later(partial(_bus_rows, buses=full))
    s_sum = (p_sum[full] + 1j * q_sum[full]) * factor[full]
    rows.add(
        s_sum.real - estimate.injection_p_mw[full],
        np.sqrt(p_var[full]),
        lambda: sp.csr_matrix(ds().real),
        RowKind.APPLIANCES,
        full,
        pseudo=~real[full],
    )
    rows.add(
        s_sum.imag - estimate.injection_q_mvar[full],
        np.sqrt(q_var[full]),
        lambda: sp.csr_matrix(ds().imag),
        RowKind.APPLIANCES,
        full,
        pseudo=~real[full],
    )
    empty = np.flatnonzero(estimated_bus & (appliances == 0))
    zero = jacobian.later(partial(_bus_rows, buses=empty))
    sigma = np.full(empty.size, ZERO_INJECTION_SIGMA_PU)
    for residual, part in (
        (-estimate.injection_p_mw[empty], lambda: sp.csr_matrix(zero().real)),
        (-estimate.injection_q_mvar[empty], lambda: sp.csr_matrix(zero().imag)),
    ):
        rows.add(
            residual,
            sigma,
            part,
            RowKind.ZERO_INJECTION,
            empty,
            pseudo=np.ones(empty.size, dtype=bool),
        )


class _Lazy:
    """The state Jacobian, built on first use; :meth:`later` defers a selection from it."""

    def __init__(self, build: Callable[[], StateJacobian] | None) -> None:
        self._build = build
        self._value: StateJacobian | None = None

    def get(self) -> StateJacobian:
        if self._value is None:
            if self._build is None:
                raise RuntimeError("no Jacobian was asked for")
            self._value = self._build()
        return self._value

    def later(self, pick: Callable[[StateJacobian], sp.csr_matrix]) -> Callable[[], sp.csr_matrix]:
        return lambda: pick(self.get())


def _pick_end(
    jacobian: StateJacobian, *, power: bool, branch: IntArray, to: BoolArray
) -> sp.csr_matrix:
    if power:
        return _pick_rows(jacobian.ds_from, jacobian.ds_to, branch, to)
    return _pick_rows(jacobian.di_from, jacobian.di_to, branch, to)


def _bus_rows(jacobian: StateJacobian, *, buses: IntArray) -> sp.csr_matrix:
    picked: sp.csr_matrix = jacobian.ds_bus[buses]
    return picked


def _current_rows(
    di: Callable[[], sp.csr_matrix], factor: npt.NDArray[Any], *, imag: bool
) -> sp.csr_matrix:
    """Rows of ``Re`` or ``Im`` of ``factor * dI``: magnitude (conj(I)/|I|) or angle (conj(I)/|I|^2)."""
    product = sp.diags(factor) @ di()
    return sp.csr_matrix(product.imag if imag else product.real)


def _end_current(
    estimate: EngineEstimate, branch: IntArray, to: BoolArray, end_bus: IntArray
) -> npt.NDArray[np.complex128]:
    """Branch-end currents (pu) from the engine's end powers and bus voltages: ``conj(S / V)``."""
    s = np.where(
        to,
        estimate.branch["p_to_mw"][branch] + 1j * estimate.branch["q_to_mvar"][branch],
        estimate.branch["p_from_mw"][branch] + 1j * estimate.branch["q_from_mvar"][branch],
    )
    v = estimate.u_pu[end_bus] * np.exp(1j * estimate.u_angle_rad[end_bus])
    with np.errstate(divide="ignore", invalid="ignore"):
        current: npt.NDArray[np.complex128] = np.where(v != 0, np.conj(s / v), 0.0)
    return current


def _unit_rows(columns: IntArray, width: int) -> sp.csr_matrix:
    return sp.csr_matrix(
        (np.ones(columns.size), (np.arange(columns.size), columns)), shape=(columns.size, width)
    )


def _pick_rows(
    a: sp.csr_matrix, b: sp.csr_matrix, rows: IntArray, use_b: BoolArray
) -> sp.csr_matrix:
    """Row ``rows[i]`` of ``b`` where ``use_b[i]``, else of ``a`` (in order)."""
    both = sp.vstack([a, b]).tocsr()
    picked: sp.csr_matrix = both[np.where(use_b, rows + a.shape[0], rows)]
    return picked


def _wrap(angle_rad: FloatArray) -> FloatArray:
    out: FloatArray = (angle_rad + np.pi) % (2.0 * np.pi) - np.pi
    return out
