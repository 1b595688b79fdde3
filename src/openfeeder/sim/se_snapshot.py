"""A state-estimation snapshot of the twin: what the devices measured at one instant, and the truth.

:func:`se_snapshot` solves the twin's grid (three-phase) at one instant of its scenario, lets every
placed device measure it through its instruments (:mod:`openfeeder.sim.measurements`) and turns the
readings into a :class:`~openfeeder.analysis.estimation.MeasurementSet` of positive-sequence
quantities, with the true positive-sequence state alongside. :func:`readings_to_measurements` is
the conversion alone.

Per device (readings that were lost are left out):

- meters and FTUs: the voltage magnitude of their bus (``u``): the positive-sequence component
  of the three phase voltages, line to line;
- meters and FTUs (clocks not synchronized): the power of their element (``pq``, three-phase total
  ``P + jQ = sum V I*``, which a clock error does not change): a load's consumption or the flow into
  a branch at the device's end;
- PMUs (GPS time): the voltage phasor (``u_phasor``) and the current phasor of their element
  (``i_phasor``, a branch), angles against the grid's reference.

Standard deviations follow the instrument model: each phase's ratio error ``c / (100 k)`` (class
``c``, ``k = limit_sigmas``) and phase error ``1.5 c / (100 k)`` crad average down over three phases
(``1/sqrt(3)``); a power's variance is ``sum_phases 2 (r P_ph)^2 + 2 (phi Q_ph)^2``; a phasor's angle
adds the clock error of its kind (offset and jitter, ``2 pi f sigma_t``).

Pseudo-measurements for what no device measures: each unmetered in-service load gets its class's
noise-free profile at that instant (what a forecaster knows: :meth:`LoadProfiles.class_shape`) and
each unmetered PV generator the mean output of all PV sites of the twin at that instant (a regional
nowcast, as from a reference cell), with standard deviation ``pseudo_sigma_fraction`` of the value
(at least 1 kW). Scenario events are not applied: the snapshot is the grid in its case's switching
state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.estimation import MeasurementSet, Quantity, measurement_document
from openfeeder.analysis.phasors import solve_phasors
from openfeeder.model.components import NO_ID, DerKind, MeasurementKind, enum_code
from openfeeder.model.grid import lookup
from openfeeder.sim.measurements import DeviceReadings
from openfeeder.sim.profiles import LoadProfiles
from openfeeder.sim.twin import Twin

__all__ = ["SeSnapshot", "readings_to_measurements", "se_snapshot"]

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

_A: Final = np.exp(2j * np.pi / 3.0)
_SQRT3: Final = math.sqrt(3.0)
_FLOOR: Final = 1e-6
_PSEUDO_FLOOR_MW: Final = 1e-3


@dataclass(frozen=True, slots=True, eq=False)
class SeSnapshot:
    """Measurements of one instant and the true positive-sequence state (model order)."""

    case: str
    t_ns: int
    measurements: MeasurementSet
    bus_id: npt.NDArray[np.int64]
    u_pu: FloatArray
    u_angle_deg: FloatArray
    load_id: npt.NDArray[np.int64]
    load_p_mw: FloatArray
    load_q_mvar: FloatArray

    def truth(self) -> dict[str, Any]:
        return {
            "buses": [
                {"id": int(i), "u_pu": float(u), "u_angle_deg": float(a)}
                for i, u, a in zip(self.bus_id, self.u_pu, self.u_angle_deg, strict=True)
            ],
            "loads": [
                {"id": int(i), "p_mw": float(p), "q_mvar": float(q)}
                for i, p, q in zip(self.load_id, self.load_p_mw, self.load_q_mvar, strict=True)
            ],
        }

    def document(self) -> dict[str, Any]:
        """The measurement file's document, with the truth (``docs/estimation.md``)."""
        return measurement_document(
            self.measurements, case=self.case, t_ns=self.t_ns, truth=self.truth()
        )


def se_snapshot(twin: Twin, t_ns: int, *, pseudo_sigma_fraction: float = 0.5) -> SeSnapshot:
    """Solve, measure and convert the twin's grid at ``t_ns`` (see the module docstring)."""
    model = twin.model
    times = np.array([int(t_ns)], dtype=np.int64)
    load_p, load_q, gen_p = twin.operating_points(times)
    series = solve_phasors(
        model,
        load_p_mw=load_p,
        load_q_mvar=load_q,
        generator_p_mw=gen_p if model.generator.size else None,
    )
    state = series.state(0)
    readings = twin.measurement.measure(state, int(t_ns))
    measured = readings_to_measurements(twin, readings)
    u1 = _positive(state.u_v)
    u_rated_v = model.bus["u_rated_kv"] * 1e3 / _SQRT3
    s_load = (state.u_v[lookup(state.bus_id, model.load["bus"])] * np.conj(state.i_load_a)).sum(
        axis=1
    )
    pseudo = _pseudo(twin, measured, times, gen_p[0], pseudo_sigma_fraction)
    return SeSnapshot(
        case=model.name,
        t_ns=int(t_ns),
        measurements=measured.concat(pseudo) if len(pseudo) else measured,
        bus_id=model.bus["id"].astype(np.int64),
        u_pu=np.abs(u1) / u_rated_v,
        u_angle_deg=np.rad2deg(np.angle(u1)),
        load_id=model.load["id"].astype(np.int64),
        load_p_mw=s_load.real / 1e6,
        load_q_mvar=s_load.imag / 1e6,
    )


def readings_to_measurements(
    twin: Twin,
    readings: DeviceReadings,
    *,
    limit_sigmas: float = 2.0,
    phase_crad_per_percent: float = 1.5,
) -> MeasurementSet:
    """Positive-sequence measurements of the valid readings (see the module docstring)."""
    placements = {p.device_id: p for p in twin.placements}
    rows = [k for k, d in enumerate(readings.device_id) if readings.valid[k]]
    devices = [placements[readings.device_id[k]] for k in rows]
    if not rows:
        return MeasurementSet.empty()
    index = np.array(rows, dtype=np.int64)
    accuracy = np.array([d.accuracy_class for d in devices]) / 100.0
    ratio = accuracy / limit_sigmas
    phase = accuracy * phase_crad_per_percent / limit_sigmas
    kind = [d.kind for d in devices]
    ids = [readings.device_id[k] for k in rows]
    bus = np.array([d.bus_id for d in devices], dtype=np.int64)
    element = np.array([d.element_id for d in devices], dtype=np.int64)
    end = np.array([0 if d.element_end.value == "from" else 1 for d in devices], dtype=np.int8)
    u1 = _positive(readings.u_v[index])
    u_kv = np.abs(u1) * _SQRT3 / 1e3
    live = u_kv > 0.0
    pmu = np.array([k is MeasurementKind.PMU for k in kind])
    k = np.flatnonzero(live & ~pmu)
    parts = [
        MeasurementSet.from_columns(
            [f"{ids[j]}:u" for j in k.tolist()],
            Quantity.U,
            bus=bus[k],
            u_kv=u_kv[k],
            u_sigma_kv=np.maximum(ratio[k] / _SQRT3 * u_kv[k], _FLOOR),
        )
    ]
    with_element = element != NO_ID
    unsynchronized = live & with_element & ~pmu
    if unsynchronized.any():
        k = np.flatnonzero(unsynchronized)
        p_ph = readings.p_w[index[k]] / 1e6
        q_ph = readings.q_var[index[k]] / 1e6
        r, f = ratio[k][:, None], phase[k][:, None]
        p_sigma = np.sqrt((2.0 * (r * p_ph) ** 2 + 2.0 * (f * q_ph) ** 2).sum(axis=1))
        q_sigma = np.sqrt((2.0 * (r * q_ph) ** 2 + 2.0 * (f * p_ph) ** 2).sum(axis=1))
        is_branch = lookup(_branch_ids(twin), element[k]) >= 0
        parts.append(
            MeasurementSet.from_columns(
                [f"{ids[j]}:pq" for j in k.tolist()],
                Quantity.PQ,
                element=element[k],
                end=np.where(is_branch, end[k], -1),
                p_mw=p_ph.sum(axis=1),
                q_mvar=q_ph.sum(axis=1),
                p_sigma_mw=np.maximum(p_sigma, _FLOOR),
                q_sigma_mvar=np.maximum(q_sigma, _FLOOR),
            )
        )
    if (pmu & live).any():
        k = np.flatnonzero(pmu & live)
        errors = twin.measurement.kind_errors[MeasurementKind.PMU]
        timing_rad = (
            2.0
            * math.pi
            * readings.frequency_true_hz
            * math.hypot(errors.clock_offset_std_s, errors.jitter_std_s)
        )
        angle_sigma_deg = np.rad2deg(np.hypot(phase[k] / _SQRT3, timing_rad))
        parts.append(
            MeasurementSet.from_columns(
                [f"{ids[j]}:u_phasor" for j in k.tolist()],
                Quantity.U_PHASOR,
                bus=bus[k],
                u_kv=u_kv[k],
                u_angle_deg=np.rad2deg(np.angle(u1[k])),
                u_sigma_kv=np.maximum(ratio[k] / _SQRT3 * u_kv[k], _FLOOR),
                angle_sigma_deg=angle_sigma_deg,
            )
        )
        k = k[with_element[k]]
        if k.size:
            i1 = _positive(readings.i_a[index[k]])
            i_ka = np.abs(i1) / 1e3
            parts.append(
                MeasurementSet.from_columns(
                    [f"{ids[j]}:i_phasor" for j in k.tolist()],
                    Quantity.I_PHASOR,
                    element=element[k],
                    end=end[k],
                    i_ka=i_ka,
                    i_angle_deg=np.rad2deg(np.angle(i1)),
                    i_sigma_ka=np.maximum(ratio[k] / _SQRT3 * i_ka, _FLOOR),
                    angle_sigma_deg=np.rad2deg(np.hypot(phase[k] / _SQRT3, timing_rad)),
                )
            )
    parts = [p for p in parts if len(p)]
    return parts[0].concat(*parts[1:]) if parts else MeasurementSet.empty()


def _positive(phasors: ComplexArray) -> ComplexArray:
    """Positive-sequence component of (..., 3) phase phasors (phase a's reference)."""
    out: ComplexArray = (phasors[..., 0] + _A * phasors[..., 1] + _A**2 * phasors[..., 2]) / 3.0
    return out


def _branch_ids(twin: Twin) -> npt.NDArray[np.int64]:
    model = twin.model
    return np.concatenate([model.line["id"], model.transformer["id"], model.switch["id"]]).astype(
        np.int64
    )


def _pseudo(
    twin: Twin,
    measured: MeasurementSet,
    times: npt.NDArray[np.int64],
    gen_p_mw: FloatArray,
    sigma_fraction: float,
) -> MeasurementSet:
    model = twin.model
    metered = set(measured.table["element"][measured.table["quantity"] == 2].tolist())
    parts: list[MeasurementSet] = []
    load = model.load
    rows = np.flatnonzero(load["in_service"] & ~np.isin(load["id"], list(metered)))
    if rows.size:
        profiles = LoadProfiles(
            twin.scenario.scenario.seed,
            resolution_s=twin.scenario.profiles.resolution_s,
            utc_offset_h=twin.scenario.profiles.utc_offset_h,
        )
        shape = profiles.class_shape(load["customer_class"][rows], times)[0]
        p = shape * load["p_mw"][rows]
        ratio = np.divide(
            load["q_mvar"][rows],
            load["p_mw"][rows],
            out=np.zeros(rows.size),
            where=load["p_mw"][rows] != 0,
        )
        q = p * ratio
        sigma = np.maximum(sigma_fraction * np.hypot(p, q), _PSEUDO_FLOOR_MW)
        parts.append(
            MeasurementSet.from_columns(
                [f"forecast-load-{i}" for i in load["id"][rows].tolist()],
                Quantity.PQ,
                element=load["id"][rows],
                p_mw=p,
                q_mvar=q,
                p_sigma_mw=sigma,
                q_sigma_mvar=sigma,
                pseudo=True,
            )
        )
    gen = model.generator
    rows = np.flatnonzero(gen["in_service"] & ~np.isin(gen["id"], list(metered)))
    if rows.size:
        pv = gen["kind"] == enum_code(DerKind.PV)
        p = gen_p_mw[rows].copy()
        if pv.any():
            rating = np.where(np.isfinite(gen["p_max_mw"]), gen["p_max_mw"], gen["p_mw"])
            regional = float(np.mean(gen_p_mw[pv] / np.where(rating[pv] > 0, rating[pv], 1.0)))
            p = np.where(pv[rows], regional * rating[rows], p)
        q = gen["q_mvar"][rows]
        sigma = np.maximum(sigma_fraction * np.hypot(p, q), _PSEUDO_FLOOR_MW)
        parts.append(
            MeasurementSet.from_columns(
                [f"forecast-gen-{i}" for i in gen["id"][rows].tolist()],
                Quantity.PQ,
                element=gen["id"][rows],
                p_mw=p,
                q_mvar=q,
                p_sigma_mw=sigma,
                q_sigma_mvar=sigma,
                pseudo=True,
            )
        )
    return parts[0].concat(*parts[1:]) if parts else MeasurementSet.empty()
