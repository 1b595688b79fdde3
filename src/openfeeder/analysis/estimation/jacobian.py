"""The measurement Jacobian at an estimate, the gain matrix and what its inverse tells.

The engine returns an estimate but neither its Jacobian nor covariances, so this module rebuilds
them (scipy.sparse, vectorized) in per unit: 1 MVA base power, each bus's rated voltage as its base
voltage, polar states (angle and magnitude of every estimated bus, minus one angle per island
without a phasor measurement).

Branch admittances follow the engine's models: lines as pi sections; transformers with series
impedance from ``uk``/``pk`` and magnetizing admittance from ``i0``/``p0`` split over both ends,
the off-nominal ratio of the tap position and the clock's phase shift (these reproduce the engine's
branch flows to 1e-12 pu, which a unit test checks); a closed switch as a large
admittance. The currents in the derivative formulas are not recomputed from these admittances but
taken from the engine's branch results (``S = V I*``), so the Jacobian is the one at the engine's
own estimate; a switch's admittance then only scales its state direction, which leaves the
residual covariance unchanged.

Rows, with ``H`` the Jacobian and ``W`` the inverse variances: voltage magnitude (and angle),
branch-end P, Q, current magnitude (and angle), and bus injections P, Q as the sum of the bus's
branch-end rows. :class:`GainFactor` factorizes ``G = H^T W H`` once (SuperLU) and gives
``diag(G^-1)`` (the states' variances) and ``diag(H G^-1 H^T)`` (what the residual covariance
``Omega = R - H G^-1 H^T`` needs), both by solving for blocks of unit or Jacobian columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from openfeeder.analysis.estimation.locate import BranchTable
from openfeeder.model.grid import GridModel

__all__ = [
    "BranchAdmittance",
    "GainFactor",
    "StateJacobian",
    "branch_admittance",
    "state_jacobian",
]

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
IntArray = npt.NDArray[np.int64]

S_BASE_MVA: Final = 1.0
SWITCH_ADMITTANCE_PU: Final = 1e4
"""About a short cable's admittance: a switch's state direction is scaled, not changed."""
_BLOCK: Final = 256


@dataclass(frozen=True, slots=True, eq=False)
class BranchAdmittance:
    """Two-port admittances per branch (BranchTable order), per unit: I_f = yff V_f + yft V_t."""

    yff: ComplexArray
    yft: ComplexArray
    ytf: ComplexArray
    ytt: ComplexArray


def branch_admittance(model: GridModel, branches: BranchTable) -> BranchAdmittance:
    u_rated = model.bus["u_rated_kv"]
    n = branches.id.size
    yff = np.zeros(n, dtype=np.complex128)
    yft = np.zeros(n, dtype=np.complex128)
    ytf = np.zeros(n, dtype=np.complex128)
    ytt = np.zeros(n, dtype=np.complex128)
    omega = 2.0 * math.pi * model.frequency_hz

    line = model.line
    k = slice(0, line.size)
    z_base = u_rated[branches.from_row[k]] ** 2 / S_BASE_MVA
    z = (line["r1_ohm_per_km"] + 1j * line["x1_ohm_per_km"]) * line["length_km"] / z_base
    y_series = 1.0 / np.where(z == 0, 1e-12, z)
    y_half = 0.5j * omega * line["c1_nf_per_km"] * 1e-9 * line["length_km"] * z_base
    yff[k], yft[k], ytf[k], ytt[k] = y_series + y_half, -y_series, -y_series, y_series + y_half

    trafo = model.transformer
    k = slice(line.size, line.size + trafo.size)
    if trafo.size:
        on_hv = trafo["tap_side"] == 0
        steps = (trafo["tap_pos"] - trafo["tap_nom"]).astype(np.float64)
        tap_kv = (
            trafo["tap_step_percent"] / 100.0 * np.where(on_hv, trafo["u_hv_kv"], trafo["u_lv_kv"])
        )
        u1 = trafo["u_hv_kv"] + np.where(on_hv, steps * tap_kv, 0.0)
        u2 = trafo["u_lv_kv"] + np.where(on_hv, 0.0, steps * tap_kv)
        ratio = (u1 / u2) / (u_rated[branches.from_row[k]] / u_rated[branches.to_row[k]])
        shift = np.deg2rad(trafo["clock"].astype(np.float64) * 30.0)
        tap = ratio * np.exp(1j * shift)
        base_lv = u_rated[branches.to_row[k]] ** 2 / S_BASE_MVA
        z_abs = trafo["uk_percent"] / 100.0 * u2**2 / trafo["sn_mva"]
        r = trafo["pk_kw"] * 1e-3 * u2**2 / trafo["sn_mva"] ** 2
        x = np.sqrt(np.maximum(z_abs**2 - r**2, 0.0))
        y_series = base_lv / (r + 1j * x)
        y_m_abs = trafo["i0_percent"] / 100.0 * trafo["sn_mva"] / u2**2
        g_m = trafo["p0_kw"] * 1e-3 / u2**2
        y_m = (g_m - 1j * np.sqrt(np.maximum(y_m_abs**2 - g_m**2, 0.0))) * base_lv
        yff[k] = (y_series + 0.5 * y_m) / np.abs(tap) ** 2
        yft[k] = -y_series / np.conj(tap)
        ytf[k] = -y_series / tap
        ytt[k] = y_series + 0.5 * y_m

    k = slice(line.size + trafo.size, n)
    yff[k], yft[k], ytf[k], ytt[k] = (
        SWITCH_ADMITTANCE_PU,
        -SWITCH_ADMITTANCE_PU,
        -SWITCH_ADMITTANCE_PU,
        SWITCH_ADMITTANCE_PU,
    )
    live = branches.connected.astype(np.float64)
    return BranchAdmittance(yff * live, yft * live, ytf * live, ytt * live)


@dataclass(frozen=True, slots=True, eq=False)
class StateJacobian:
    """Derivatives of every branch end's S and I, and of the buses' S, by bus angle and magnitude.

    Each of ``ds_from`` ... is a complex sparse matrix (branches x 2 buses): columns ``0..N-1``
    by angle, ``N..2N-1`` by magnitude. ``i_from`` / ``i_to`` are the branch-end currents (pu).
    """

    ds_from: sp.csr_matrix
    ds_to: sp.csr_matrix
    di_from: sp.csr_matrix
    di_to: sp.csr_matrix
    ds_bus: sp.csr_matrix
    i_from: ComplexArray
    i_to: ComplexArray


def state_jacobian(
    branches: BranchTable,
    y: BranchAdmittance,
    v: ComplexArray,
    s_from: ComplexArray,
    s_to: ComplexArray,
) -> StateJacobian:
    """Complex derivative matrices at bus voltages ``v`` with branch-end powers ``s_from``/``s_to``
    (pu, from the engine); buses without voltage (NaN) contribute zeros."""
    n = v.size
    v = np.where(np.isfinite(v), v, 0.0)
    f, t = np.maximum(branches.from_row, 0), np.maximum(branches.to_row, 0)
    vf, vt = v[f], v[t]
    with np.errstate(divide="ignore", invalid="ignore"):
        i_from = np.where(vf != 0, np.conj(s_from / vf), 0.0)
        i_to = np.where(vt != 0, np.conj(s_to / vt), 0.0)
        unit = np.where(v != 0, v / np.abs(v), 0.0)
    ds_from = _end_derivative(f, t, va=vf, vb=vt, unit=unit, i_a=i_from, yaa=y.yff, yab=y.yft, n=n)
    ds_to = _end_derivative(t, f, va=vt, vb=vf, unit=unit, i_a=i_to, yaa=y.ytt, yab=y.ytf, n=n)
    di_from = _current_derivative(f, t, va=vf, vb=vt, unit=unit, yaa=y.yff, yab=y.yft, n=n)
    di_to = _current_derivative(t, f, va=vt, vb=vf, unit=unit, yaa=y.ytt, yab=y.ytf, n=n)
    m = branches.id.size
    c_from = sp.csr_matrix((np.ones(m), (f, np.arange(m))), shape=(n, m))
    c_to = sp.csr_matrix((np.ones(m), (t, np.arange(m))), shape=(n, m))
    ds_bus = (c_from @ ds_from + c_to @ ds_to).tocsr()
    return StateJacobian(ds_from, ds_to, di_from, di_to, ds_bus, i_from, i_to)


def _end_derivative(
    a: IntArray,
    b: IntArray,
    *,
    va: ComplexArray,
    vb: ComplexArray,
    unit: ComplexArray,
    i_a: ComplexArray,
    yaa: ComplexArray,
    yab: ComplexArray,
    n: int,
) -> sp.csr_matrix:
    """dS_a / d(angle, magnitude) of ``S_a = V_a conj(yaa V_a + yab V_b)`` at end ``a``."""
    m = a.size
    rows = np.arange(m)
    d_angle_a = 1j * (np.conj(i_a) * va - va * np.conj(yaa * va))
    d_angle_b = 1j * (-va * np.conj(yab * vb))
    d_mag_a = va * np.conj(yaa * unit[a]) + np.conj(i_a) * unit[a]
    d_mag_b = va * np.conj(yab * unit[b])
    data = np.concatenate([d_angle_a, d_angle_b, d_mag_a, d_mag_b])
    cols = np.concatenate([a, b, a + n, b + n])
    return sp.csr_matrix((data, (np.tile(rows, 4), cols)), shape=(m, 2 * n))


def _current_derivative(
    a: IntArray,
    b: IntArray,
    *,
    va: ComplexArray,
    vb: ComplexArray,
    unit: ComplexArray,
    yaa: ComplexArray,
    yab: ComplexArray,
    n: int,
) -> sp.csr_matrix:
    """dI_a / d(angle, magnitude) of ``I_a = yaa V_a + yab V_b``."""
    m = a.size
    rows = np.arange(m)
    data = np.concatenate([1j * yaa * va, 1j * yab * vb, yaa * unit[a], yab * unit[b]])
    cols = np.concatenate([a, b, a + n, b + n])
    return sp.csr_matrix((data, (np.tile(rows, 4), cols)), shape=(m, 2 * n))


class GainFactor:
    """``G = H^T W H`` of a real Jacobian ``h`` (rows x states) and weights, factorized once.

    ``G`` is equilibrated (``D G D`` with ``D = diag(G)^-1/2``) before SuperLU factorizes it with a
    symmetric fill-reducing ordering: per-unit gain matrices mix entries from 1e4 (voltage rows) to
    1e18 (tight injection rows), and the scaling keeps the factorization accurate.
    """

    def __init__(self, h: sp.csr_matrix, weight: FloatArray) -> None:
        self.h = h
        gain = (h.T @ sp.diags(weight) @ h).tocsc()
        diagonal = gain.diagonal()
        if (diagonal <= 0.0).any():
            raise np.linalg.LinAlgError("a state has no measurement information")
        self.scale = 1.0 / np.sqrt(diagonal)
        scaled = (sp.diags(self.scale) @ gain @ sp.diags(self.scale)).tocsc()
        self.lu = spla.splu(
            scaled,
            permc_spec="MMD_AT_PLUS_A",
            diag_pivot_thresh=0.0,
            options={"SymmetricMode": True},
        )
        self.n = gain.shape[0]

    def solve(self, rhs: FloatArray) -> FloatArray:
        """``G^-1 rhs`` for a dense (n,) or (n, k) right-hand side."""
        scale = self.scale if rhs.ndim == 1 else self.scale[:, None]
        out: FloatArray = self.lu.solve(rhs * scale) * scale
        return out

    def inverse_diagonal(self) -> FloatArray:
        """``diag(G^-1)`` (the states' variances), in blocks of unit columns."""
        n = self.n
        out = np.empty(n)
        for start in range(0, n, _BLOCK):
            stop = min(start + _BLOCK, n)
            width = stop - start
            rhs = np.zeros((n, width))
            rhs[np.arange(start, stop), np.arange(width)] = 1.0
            out[start:stop] = self.solve(rhs)[np.arange(start, stop), np.arange(width)]
        return out

    def projection_diagonal(self, rows: IntArray) -> FloatArray:
        """``diag(H G^-1 H^T)`` for Jacobian ``rows`` (blocks of rows as right-hand sides)."""
        out = np.empty(rows.size)
        ht = self.h[rows].T.tocsc()
        for start in range(0, rows.size, _BLOCK):
            stop = min(start + _BLOCK, rows.size)
            block = ht[:, start:stop]
            x = self.solve(block.toarray())
            out[start:stop] = np.asarray(block.multiply(x).sum(axis=0)).ravel()
        return out
