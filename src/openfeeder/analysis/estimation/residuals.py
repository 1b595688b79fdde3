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

``kind`` says what a row belongs to (:class:`RowKind`); ``ref`` is then the measurement's position
in the set, or for appliance and zero-injection rows the bus row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from openfeeder.analysis.estimation.engine_wls import EngineEstimate
from openfeeder.analysis.estimation.jacobian import StateJacobian
from openfeeder.analysis.estimation.locate import LocatedMeasurements, Target
from openfeeder.analysis.estimation.measurement_set import END_TO, Quantity
from openfeeder.model.grid import GridModel, lookup

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
    h: sp.csr_matrix
    """Real Jacobian rows over all 2N bus states (angles, then magnitudes)."""
    kind: npt.NDArray[np.int8]
    ref: IntArray
    pseudo: BoolArray
    """The row holds pseudo-measurements only (never reported or removed as bad data)."""

    def __len__(self) -> int:
        return int(self.residual.size)


class _Rows:
    def __init__(self, n_states: int) -> None:
        self.n_states = n_states
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
        h: sp.csr_matrix,
        kind: RowKind,
        ref: IntArray,
        *,
        pseudo: BoolArray,
    ) -> None:
        if residual.size == 0:
            return
        self.residual.append(residual)
        self.sigma.append(sigma)
        self.h.append(h)
        self.kind.append(np.full(residual.size, kind, dtype=np.int8))
        self.ref.append(ref.astype(np.int64))
        self.pseudo.append(pseudo.astype(bool))

    def build(self) -> ScalarRows:
        if not self.residual:
            return ScalarRows(
                np.zeros(0),
                np.zeros(0),
                sp.csr_matrix((0, self.n_states)),
                np.zeros(0, np.int8),
                np.zeros(0, np.int64),
                np.zeros(0, bool),
            )
        return ScalarRows(
            residual=np.concatenate(self.residual),
            sigma=np.concatenate(self.sigma),
            h=sp.vstack(self.h).tocsr(),
            kind=np.concatenate(self.kind).astype(np.int8),
            ref=np.concatenate(self.ref),
            pseudo=np.concatenate(self.pseudo),
        )


def scalar_rows(
    model: GridModel,
    located: LocatedMeasurements,
    estimate: EngineEstimate,
    jacobian: StateJacobian,
    estimated_bus: BoolArray,
) -> ScalarRows:
    """The rows of the module docstring for measurements at ``estimated_bus`` buses."""
    n = model.bus.size
    rows = _Rows(2 * n)
    table = located.measurements.table
    pseudo = table["pseudo"]
    u_rated = model.bus["u_rated_kv"]
    here = estimated_bus[np.maximum(located.bus_row, 0)] & (located.bus_row >= 0)

    # voltage magnitudes and angles
    for quantity in (Quantity.U, Quantity.U_PHASOR):
        k = np.flatnonzero(located.of_quantity(quantity) & here)
        b = located.bus_row[k]
        rows.add(
            table["u_kv"][k] / u_rated[b] - estimate.u_pu[b],
            table["u_sigma_kv"][k] / u_rated[b],
            _unit_rows(n + b, 2 * n),
            RowKind.MEASUREMENT,
            k,
            pseudo=pseudo[k],
        )
        if quantity is Quantity.U_PHASOR:
            rows.add(
                _wrap(np.deg2rad(table["u_angle_deg"][k]) - estimate.u_angle_rad[b]),
                np.deg2rad(table["angle_sigma_deg"][k]),
                _unit_rows(b, 2 * n),
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
    ds = _pick_rows(jacobian.ds_from, jacobian.ds_to, br, to)
    _add_pq(
        rows,
        table["p_mw"][k] - p_est,
        table["q_mvar"][k] - q_est,
        table=table,
        k=k,
        ds=ds,
        pseudo=pseudo[k],
    )

    # bus injections measured as such
    k = np.flatnonzero(pq & (located.target == Target.BUS))
    b = located.bus_row[k]
    ds = jacobian.ds_bus[b]
    p_res = table["p_mw"][k] - estimate.injection_p_mw[b]
    q_res = table["q_mvar"][k] - estimate.injection_q_mvar[b]
    _add_pq(rows, p_res, q_res, table=table, k=k, ds=ds, pseudo=pseudo[k])

    _appliance_rows(
        model, located, estimate, jacobian=jacobian, estimated_bus=estimated_bus, rows=rows
    )

    # currents
    for quantity in (Quantity.I, Quantity.I_PHASOR):
        k = np.flatnonzero(located.of_quantity(quantity) & here)
        br = located.target_row[k]
        to = table["end"][k] == END_TO
        end_bus = located.bus_row[k]
        i_base_ka = _base_current_ka(u_rated[end_bus])
        current = np.where(to, jacobian.i_to[br], jacobian.i_from[br])
        magnitude = np.abs(current)
        safe = np.where(magnitude > 0, magnitude, 1.0)
        di = _pick_rows(jacobian.di_from, jacobian.di_to, br, to)
        conj_i = sp.diags(np.conj(current) / safe)
        rows.add(
            table["i_ka"][k] / i_base_ka - magnitude,
            table["i_sigma_ka"][k] / i_base_ka,
            sp.csr_matrix((conj_i @ di).real),
            RowKind.MEASUREMENT,
            k,
            pseudo=pseudo[k],
        )
        if quantity is Quantity.I_PHASOR:
            rows.add(
                _wrap(np.deg2rad(table["i_angle_deg"][k]) - np.angle(current)),
                np.deg2rad(table["angle_sigma_deg"][k]),
                sp.csr_matrix((sp.diags(np.conj(current) / safe**2) @ di).imag),
                RowKind.MEASUREMENT,
                k,
                pseudo=pseudo[k],
            )
    return rows.build()


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
    ds: sp.csr_matrix,
    pseudo: BoolArray,
) -> None:
    rows.add(
        p_residual,
        table["p_sigma_mw"][k],
        sp.csr_matrix(ds.real),
        RowKind.MEASUREMENT,
        k,
        pseudo=pseudo,
    )
    rows.add(
        q_residual,
        table["q_sigma_mvar"][k],
        sp.csr_matrix(ds.imag),
        RowKind.MEASUREMENT,
        k,
        pseudo=pseudo,
    )


def _appliance_rows(
    model: GridModel,
    located: LocatedMeasurements,
    estimate: EngineEstimate,
    *,
    jacobian: StateJacobian,
    estimated_bus: BoolArray,
    rows: _Rows,
) -> None:
    """Summed appliance injections at fully measured buses, and zero-injection rows."""
    n = model.bus.size
    table = located.measurements.table
    bus_id = model.bus["id"]
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
        bus_rows = lookup(bus_id, element["bus"])
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
    full = np.flatnonzero(estimated_bus & (appliances > 0) & (covered >= appliances))
    ds = jacobian.ds_bus[full]
    rows.add(
        p_sum[full] - estimate.injection_p_mw[full],
        np.sqrt(p_var[full]),
        sp.csr_matrix(ds.real),
        RowKind.APPLIANCES,
        full,
        pseudo=~real[full],
    )
    rows.add(
        q_sum[full] - estimate.injection_q_mvar[full],
        np.sqrt(q_var[full]),
        sp.csr_matrix(ds.imag),
        RowKind.APPLIANCES,
        full,
        pseudo=~real[full],
    )
    empty = np.flatnonzero(estimated_bus & (appliances == 0))
    ds = jacobian.ds_bus[empty]
    sigma = np.full(empty.size, ZERO_INJECTION_SIGMA_PU)
    for residual, part in (
        (-estimate.injection_p_mw[empty], ds.real),
        (-estimate.injection_q_mvar[empty], ds.imag),
    ):
        rows.add(
            residual,
            sigma,
            sp.csr_matrix(part),
            RowKind.ZERO_INJECTION,
            empty,
            pseudo=np.ones(empty.size, dtype=bool),
        )


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
