"""A placement's readings straight into the engine and into the chi-square objective.

A periodic estimate of a known placement (:mod:`.prepared`) changes nothing but the readings. A
:class:`ReadingPlan`, made once per placement, holds what each estimate then needs, by index:

- the engine's sensor values as column buffers (pseudo-measurements' values written once; per
  estimate the given readings are written in, with the same unit conversions as
  :func:`.engine_wls.solve_wls`, and handed to the engine as one columnar ``update``);
- the rows of the WLS problem the engine solved (the ones :func:`.residuals.scalar_rows` writes
  with ``engine_powers``) as gathers from the engine's output: voltage magnitudes and angles,
  branch-end and bus-injection powers, summed appliance injections, zero injections, current
  phasors; the power factor (:attr:`.engine_wls.EngineEstimate.power_factor`) only at the buses
  with a voltage sensor. Their weighted sum of squares is the chi-square objective
  (:func:`.bad_data.chi_square_of_objective`), without building the rows themselves.

Placements with magnitude-only currents (their pinned angles take repeated solves) or with
voltage magnitudes at a bus that also has a phasor (merged into it) have no plan: they take the
general path of :mod:`.estimator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from power_grid_model import CalculationMethod, ComponentType

from openfeeder.analysis.estimation.engine_wls import (
    PreparedEngine,
    branch_order,
    prepare_engine,
    run_engine,
)
from openfeeder.analysis.estimation.locate import LocatedMeasurements, Target, appliance_bus_rows
from openfeeder.analysis.estimation.measurement_set import END_TO, Quantity
from openfeeder.analysis.estimation.observability import appliance_counts, covered_appliances
from openfeeder.analysis.estimation.prepared import Placement
from openfeeder.analysis.estimation.residuals import ZERO_INJECTION_SIGMA_PU
from openfeeder.model.grid import GridModel

__all__ = ["ReadingPlan", "ReadingRun", "reading_plan"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Output = dict[Any, dict[str, Any]]

_SCALE: Final = {"u": 1e3, "pq": 1e6, "i": 1e3}
_APPLIANCES: Final = (
    (Target.LOAD, "load", -1.0),
    (Target.GENERATOR, "generator", 1.0),
    (Target.SOURCE, "source", 1.0),
)


@dataclass(frozen=True, slots=True, eq=False)
class _Sensor:
    """One sensor attribute: ``buffer = column[rows] * scale`` (or in radians from degrees)."""

    kind: ComponentType
    attribute: str
    column: str
    rows: IntArray
    scale: float
    degrees: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class _Pq:
    """Power rows (branch ends or bus injections): measurement rows and the factor's index."""

    k: IntArray
    factor_at: IntArray
    """Position among the voltage-sensor buses of the row's bus, -1 without one."""


@dataclass(frozen=True, slots=True, eq=False)
class _AppliancePart:
    """One appliance table's measured appliances and where their values go."""

    k: IntArray
    """Measurement rows."""
    appliance: IntArray
    """Per measurement row: its appliance (compact index)."""
    size: int
    """Measured appliances."""
    keep: BoolArray
    """Per measured appliance: it is at a bus whose sum is a row."""
    at: IntArray
    """Per kept appliance: the index of its bus among those (:attr:`_ApplianceSums.full`)."""
    sign: float
    single_k: IntArray | None
    """With one measurement per appliance: the measurement row of each kept appliance."""


@dataclass(frozen=True, slots=True, eq=False)
class _ApplianceSums:
    """Per appliance table with measurements: rows, their appliance (compact) and sign."""

    parts: tuple[_AppliancePart, ...]
    full: IntArray
    """Buses whose every in-service appliance is measured (their sums are rows)."""
    factor_at: IntArray
    single: bool
    """Each of those buses has exactly one measured appliance."""


@dataclass(frozen=True, slots=True, eq=False)
class ReadingRun:
    """One estimate through a plan: the engine's output and the objective of its problem."""

    output: Output
    objective: float
    rows: int


@dataclass(slots=True, eq=False)
class ReadingPlan:
    """See the module docstring; :meth:`run` is one estimate."""

    prepared: PreparedEngine
    fresh: bool
    """The engine holds the first estimate's readings already (no update for it)."""
    given: int
    columns: dict[str, FloatArray]
    """The readings by measurement column (given measurements first). Until the first run
    with new readings these are the placement's own, read only (:meth:`_own_buffers`)."""
    sensors: tuple[_Sensor, ...]
    update: dict[ComponentType, dict[str, FloatArray]]
    """The sensor values handed to the engine, by attribute (until then: views of the sensors
    the engine was converted with)."""
    own_buffers: bool
    voltage_bus: IntArray
    """Buses with a voltage sensor (compact index of the power factor)."""
    voltage_inverse: IntArray
    voltage_rated_v: FloatArray
    voltage_phasors: bool
    """Some voltage sensors have an angle (PMUs)."""
    u_rated_kv: FloatArray
    u_rows: tuple[IntArray, IntArray]
    u_rated_at: FloatArray
    """Rated voltage (kV) of each :attr:`u_rows` bus."""
    angle_rows: tuple[IntArray, IntArray]
    branch_pq: _Pq
    branch_position: IntArray | None
    branch_to: BoolArray
    bus_pq: _Pq
    bus_pq_bus: IntArray
    appliances: _ApplianceSums
    empty: IntArray
    current: tuple[IntArray, IntArray, BoolArray, IntArray]
    rows: int

    def run(
        self,
        table: npt.NDArray[np.void],
        *,
        method: CalculationMethod,
        error_tolerance: float,
        max_iterations: int,
    ) -> ReadingRun:
        """Estimate with the readings of ``table`` (the given measurements, same placement)."""
        with self.prepared.lock:
            fresh, self.fresh = self.fresh, False
            if not fresh:
                self._own_buffers()
                for name, column in self.columns.items():
                    column[: self.given] = table[name]
                for sensor in self.sensors:
                    out = self.update[sensor.kind][sensor.attribute]
                    if sensor.degrees:
                        np.deg2rad(self.columns[sensor.column][sensor.rows], out=out)
                    else:
                        np.multiply(self.columns[sensor.column][sensor.rows], sensor.scale, out=out)
            # the readings' side of the objective while they are in cache (the engine's run
            # evicts them on a large grid), the estimate's side after
            terms = self._reading_terms()
            output = run_engine(
                self.prepared,
                None if fresh else self.update,
                method=method,
                error_tolerance=error_tolerance,
                max_iterations=max_iterations,
            )
            objective = self._objective(output, terms)
        return ReadingRun(output=output, objective=objective, rows=self.rows)

    def _own_buffers(self) -> None:
        """Copies of :attr:`columns` and :attr:`update` that runs can write readings into
        (made by the first run that needs them: an estimate of a new placement does not)."""
        if self.own_buffers:
            return
        self.columns = {name: np.array(c, dtype=np.float64) for name, c in self.columns.items()}
        self.update = {
            kind: {name: np.array(v, dtype=np.float64) for name, v in values.items()}
            for kind, values in self.update.items()
        }
        self.own_buffers = True

    def _reading_terms(self) -> _Terms:
        """What the objective takes from the readings alone (scaled values and sigmas)."""
        col = self.columns
        k, rated = self.u_rows[0], self.u_rated_at
        u = (
            _gathered(col["u_kv"], k, np.divide, rated),
            _gathered(col["u_sigma_kv"], k, np.divide, rated),
        )
        k = self.angle_rows[0]
        angle = (_NONE, _NONE)
        if k.size:
            angle = (np.deg2rad(col["u_angle_deg"][k]), np.deg2rad(col["angle_sigma_deg"][k]))
        return _Terms(
            u=u,
            angle=angle,
            voltage=self._voltage_means(),
            branch=self._pq_terms(self.branch_pq),
            bus=self._pq_terms(self.bus_pq),
            appliances=self._appliance_terms(),
            current=self._current_terms(),
        )

    def _objective(self, output: Output, terms: _Terms) -> float:
        node = output[ComponentType.node]
        energized = node["energized"].astype(bool)
        u_pu, angle = node["u_pu"], node["u_angle"]

        def voltage(b: IntArray) -> tuple[FloatArray, FloatArray]:
            on = energized[b]
            return np.where(on, u_pu[b], np.nan), np.where(on, angle[b], np.nan)

        # each part's weighted residuals are a temporary of its own, squared in place and summed
        # (the same sums as squaring a copy; no second array per part)
        squares: list[float] = []
        b = self.u_rows[1]
        u = np.where(energized[b], u_pu[b], np.nan)
        np.subtract(terms.u[0], u, out=u)
        squares.append(_square_sum(np.divide(u, terms.u[1], out=u)))
        b = self.angle_rows[1]
        if b.size:
            a = np.where(energized[b], angle[b], np.nan)
            np.subtract(terms.angle[0], a, out=a)
            squares.append(_square_sum(np.divide(_wrap(a), terms.angle[1], out=a)))

        # the factor per voltage-sensor bus, then 1 for the index -1 (a bus without one)
        factor = np.append(self._power_factor(voltage, terms.voltage), 1.0 + 0.0j)
        p_end, q_end = self._branch_ends(output, self.branch_position, self.branch_to)
        squares.extend(self._pq(self.branch_pq, terms.branch, factor, p_end, q_end))
        p_bus = node["p"][self.bus_pq_bus]
        p_bus *= 1e-6
        q_bus = node["q"][self.bus_pq_bus]
        q_bus *= 1e-6
        squares.extend(self._pq(self.bus_pq, terms.bus, factor, p_bus, q_bus))
        squares.extend(self._appliance_parts(node, terms.appliances, factor))
        empty = self.empty
        for name in ("p", "q"):
            z = node[name][empty]
            z *= -1e-6
            squares.append(_square_sum(np.divide(z, ZERO_INJECTION_SIGMA_PU, out=z)))
        squares.extend(_square_sum(z) for z in self._current_parts(output, terms.current, voltage))
        # element-wise, not np.dot: a threaded BLAS would spin on cores the engine needs
        return float(sum(squares))

    def _voltage_means(self) -> _VoltageMeans | None:
        """Per voltage-sensor bus: the inverse-variance mean of its measured magnitudes (pu) and,
        with PMUs, of its phasors (as the engine combines them)."""
        n = self.voltage_bus.size
        if n == 0:
            return None
        sensor = self.update[ComponentType.sym_voltage_sensor]
        rows, rated = self.voltage_inverse, self.voltage_rated_v
        weight = 1.0 / (sensor["u_sigma"] / rated) ** 2
        magnitude = sensor["u_measured"] / rated
        total = np.bincount(rows, weight, n)
        mean_magnitude = np.bincount(rows, weight * magnitude, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            means = _VoltageMeans(mean_magnitude / total)
            if self.voltage_phasors:  # buses with phasors only: their weighted mean phasor
                measured_angle = sensor["u_angle_measured"]
                no_angle = np.bincount(rows, np.isnan(measured_angle), n) > 0
                phasor = magnitude * np.exp(1j * np.nan_to_num(measured_angle))
                mean_re = np.bincount(rows, weight * phasor.real, n)
                mean_im = np.bincount(rows, weight * phasor.imag, n)
                phasor_mean = cast(npt.NDArray[np.complex128], (mean_re + 1j * mean_im) / total)
                means = _VoltageMeans(means.magnitude, no_angle, phasor_mean)
        return means

    def _power_factor(
        self, voltage: Any, means: _VoltageMeans | None
    ) -> npt.NDArray[np.complex128]:
        """:attr:`.engine_wls.EngineEstimate.power_factor` at the voltage-sensor buses."""
        if means is None:
            return np.ones(0, dtype=np.complex128)
        u, a = voltage(self.voltage_bus)
        turn = np.exp(1j * a)
        estimated = u * turn
        with np.errstate(divide="ignore", invalid="ignore"):
            linearized = means.magnitude * turn
            if means.no_angle is not None:
                linearized = np.where(means.no_angle, linearized, means.phasor)
            ratio = estimated / linearized
        out: npt.NDArray[np.complex128] = np.where(np.isfinite(ratio), ratio, 1.0 + 0.0j)
        return out

    def _branch_ends(
        self, output: Output, position: IntArray | None, to: BoolArray
    ) -> tuple[FloatArray, FloatArray]:
        """P and Q (MW, Mvar) at the measured branch ends (engine positions, ``to`` ends)."""
        if position is None or position.size == 0:
            return np.zeros(0), np.zeros(0)

        groups = []  # per engine branch component: which positions are its, its own rows
        start = 0
        for kind, size in self.prepared.branch_parts:
            mine = np.flatnonzero((position >= start) & (position < start + size))
            if mine.size:
                groups.append((output[kind], mine, position[mine] - start))
            start += size

        def column(name: str) -> FloatArray:
            """``name`` of the engine's branch outputs joined, at ``position``."""
            out = np.empty(position.size)
            for values, mine, rows in groups:
                out[mine] = values[name][rows]
            return out

        p_to, p_from, q_to, q_from = (column(c) for c in ("p_to", "p_from", "q_to", "q_from"))
        p_mw = np.where(to, p_to, p_from)
        p_mw *= 1e-6
        q_mvar = np.where(to, q_to, q_from)
        q_mvar *= 1e-6
        return p_mw, q_mvar

    @staticmethod
    def _factor_at(factor: npt.NDArray[np.complex128], at: IntArray) -> npt.NDArray[Any]:
        """``factor`` (ending with 1) at ``at``: 1 where ``at`` is -1."""
        return factor[at]

    def _pq_terms(self, rows: _Pq) -> _PowerTerms:
        col = self.columns
        k = rows.k
        if k.size == 0:
            return _PowerTerms(np.zeros(0, dtype=np.complex128), _NONE, _NONE)
        s = col["p_mw"][k] + 1j * col["q_mvar"][k]
        return _PowerTerms(s, col["p_sigma_mw"][k], col["q_sigma_mvar"][k])

    def _pq(
        self,
        rows: _Pq,
        terms: _PowerTerms,
        factor: npt.NDArray[np.complex128],
        p_est: FloatArray,
        q_est: FloatArray,
    ) -> list[float]:
        """The squared sums of the rows' residuals (``p_est`` and ``q_est``: temporaries of the
        caller's, written)."""
        if rows.k.size == 0:
            return []
        s = terms.s * self._factor_at(factor, rows.factor_at)
        np.subtract(s.real, p_est, out=p_est)
        np.subtract(s.imag, q_est, out=q_est)
        return [
            _square_sum(np.divide(p_est, terms.p_sigma, out=p_est)),
            _square_sum(np.divide(q_est, terms.q_sigma, out=q_est)),
        ]

    def _appliance_terms(self) -> _PowerTerms | None:
        """Per summed bus: the measured appliances' summed power and its standard deviations."""
        sums = self.appliances
        n = sums.full.size
        if n == 0:
            return None
        col = self.columns
        p_sum, q_sum, p_var, q_var = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        for part in sums.parts:
            k, b, sign = part.k, part.at, part.sign
            if part.single_k is not None:  # one measurement per appliance: nothing to merge
                ks = part.single_k
                p, q = col["p_mw"][ks], col["q_mvar"][ks]
                vp = _gathered(col["p_sigma_mw"], ks, np.square)
                vq = _gathered(col["q_sigma_mvar"], ks, np.square)
            else:
                appliance, size, keep = part.appliance, part.size, part.keep
                wp = np.bincount(appliance, 1.0 / col["p_sigma_mw"][k] ** 2, size)
                wq = np.bincount(appliance, 1.0 / col["q_sigma_mvar"][k] ** 2, size)
                zp = np.bincount(appliance, col["p_mw"][k] / col["p_sigma_mw"][k] ** 2, size)
                zq = np.bincount(appliance, col["q_mvar"][k] / col["q_sigma_mvar"][k] ** 2, size)
                p, q, vp, vq = (
                    zp[keep] / wp[keep],
                    zq[keep] / wq[keep],
                    1.0 / wp[keep],
                    1.0 / wq[keep],
                )
            if sums.single:  # one appliance per summed bus: a scatter, not a sum
                p_sum[b], q_sum[b] = np.multiply(p, sign, out=p), np.multiply(q, sign, out=q)
                p_var[b], q_var[b] = vp, vq
                continue
            p_sum += np.bincount(b, sign * p, n)
            q_sum += np.bincount(b, sign * q, n)
            p_var += np.bincount(b, vp, n)
            q_var += np.bincount(b, vq, n)
        return _PowerTerms(p_sum + 1j * q_sum, np.sqrt(p_var, out=p_var), np.sqrt(q_var, out=q_var))

    def _appliance_parts(
        self,
        node: dict[str, Any],
        terms: _PowerTerms | None,
        factor: npt.NDArray[np.complex128],
    ) -> list[float]:
        if terms is None:
            return []
        sums = self.appliances
        s = terms.s * self._factor_at(factor, sums.factor_at)
        out = []
        for name, measured, sigma in (("p", s.real, terms.p_sigma), ("q", s.imag, terms.q_sigma)):
            z = node[name][sums.full]
            z *= 1e-6
            np.subtract(measured, z, out=z)
            out.append(_square_sum(np.divide(z, sigma, out=z)))
        return out

    def _current_terms(self) -> tuple[FloatArray, ...] | None:
        k, _, _, end_bus = self.current
        if k.size == 0:
            return None
        col = self.columns
        i_base_ka = 1.0 / (math.sqrt(3.0) * self.u_rated_kv[end_bus])
        return (
            col["i_ka"][k] / i_base_ka,
            col["i_sigma_ka"][k] / i_base_ka,
            np.deg2rad(col["i_angle_deg"][k]),
            np.deg2rad(col["angle_sigma_deg"][k]),
        )

    def _current_parts(
        self, output: Output, terms: tuple[FloatArray, ...] | None, voltage: Any
    ) -> list[FloatArray]:
        if terms is None:
            return []
        _, position, to, end_bus = self.current
        p, q = self._branch_ends(output, position, to)
        u, a = voltage(end_bus)
        v = u * np.exp(1j * a)
        with np.errstate(divide="ignore", invalid="ignore"):
            current = np.where(v != 0, np.conj((p + 1j * q) / v), 0.0)
        magnitude = np.abs(current)
        i_pu, sigma_pu, angle_rad, angle_sigma_rad = terms
        return [
            (i_pu - magnitude) / sigma_pu,
            _wrap(angle_rad - np.angle(current)) / angle_sigma_rad,
        ]


_NONE: Final = np.zeros(0)


@dataclass(frozen=True, slots=True, eq=False)
class _PowerTerms:
    """Measured complex powers (MW, Mvar) and their standard deviations."""

    s: npt.NDArray[np.complex128]
    p_sigma: FloatArray
    q_sigma: FloatArray


@dataclass(frozen=True, slots=True, eq=False)
class _VoltageMeans:
    magnitude: FloatArray
    no_angle: BoolArray | None = None
    """With PMUs: the buses with a magnitude-only sensor (they take :attr:`magnitude`)."""
    phasor: npt.NDArray[np.complex128] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _Terms:
    """The readings' side of one run's objective (:meth:`ReadingPlan._reading_terms`)."""

    u: tuple[FloatArray, FloatArray]
    angle: tuple[FloatArray, FloatArray]
    voltage: _VoltageMeans | None
    branch: _PowerTerms
    bus: _PowerTerms
    appliances: _PowerTerms | None
    current: tuple[FloatArray, ...] | None


def reading_plan(model: GridModel, placement: Placement) -> ReadingPlan | None:
    """The plan of ``placement`` (converting the engine model if it is not kept), or None for a
    placement that takes the general path (module docstring)."""
    located = placement.located
    if located.of_quantity(Quantity.I).any():
        return None
    magnitude = located.rows_of_quantity(Quantity.U)
    phasor = located.rows_of_quantity(Quantity.U_PHASOR)
    phasor_bus = np.zeros(model.bus.size, dtype=bool)
    phasor_bus[located.bus_row[phasor]] = True
    if phasor_bus[located.bus_row[magnitude]].any():
        return None
    estimated = placement.estimated
    prepared, first, fresh = prepare_engine(
        model,
        located,
        excluded_bus=~estimated,
        local_angle_rad=np.zeros(len(located.measurements)),
        # the placement determines where every sensor goes: its key is the engine layout's
        layout=("placement", placement.key),
        columnar=True,  # contiguous columns, kept as the update's buffers
    )
    given = len(placement.given_ids)

    voltage_rows = np.concatenate([magnitude, phasor])
    power = located.rows_of_quantity(Quantity.PQ)
    current = located.rows_of_quantity(Quantity.I_PHASOR)
    volt, pq, amp = (
        ComponentType.sym_voltage_sensor,
        ComponentType.sym_power_sensor,
        ComponentType.sym_current_sensor,
    )
    specs: list[_Sensor] = []
    if voltage_rows.size:
        specs += [
            _Sensor(volt, "u_measured", "u_kv", voltage_rows, _SCALE["u"]),
            _Sensor(volt, "u_sigma", "u_sigma_kv", voltage_rows, _SCALE["u"]),
            _Sensor(volt, "u_angle_measured", "u_angle_deg", voltage_rows, 1.0, degrees=True),
        ]
    if power.size:
        specs += [
            _Sensor(pq, "p_measured", "p_mw", power, _SCALE["pq"]),
            _Sensor(pq, "q_measured", "q_mvar", power, _SCALE["pq"]),
            _Sensor(pq, "p_sigma", "p_sigma_mw", power, _SCALE["pq"]),
            _Sensor(pq, "q_sigma", "q_sigma_mvar", power, _SCALE["pq"]),
        ]
    if current.size:
        specs += [
            _Sensor(amp, "i_measured", "i_ka", current, _SCALE["i"]),
            _Sensor(amp, "i_sigma", "i_sigma_ka", current, _SCALE["i"]),
            _Sensor(amp, "i_angle_measured", "i_angle_deg", current, 1.0, degrees=True),
            _Sensor(amp, "i_angle_sigma", "angle_sigma_deg", current, 1.0, degrees=True),
        ]
    update: dict[ComponentType, dict[str, FloatArray]] = {}
    for spec in specs:
        update.setdefault(spec.kind, {})[spec.attribute] = first[spec.kind][spec.attribute]
    names = {spec.column for spec in specs} | ({"angle_sigma_deg"} if phasor.size else set())
    columns = {name: located.measurements.column(name) for name in sorted(names)}

    n = model.bus.size
    u_rated_kv = np.asarray(model.bus["u_rated_kv"], dtype=np.float64)
    voltage_bus_rows = located.bus_row[voltage_rows]
    voltage_bus, voltage_inverse = _unique_rows(voltage_bus_rows, n)
    factor_position = np.full(n, -1, dtype=np.int64)
    factor_position[voltage_bus] = np.arange(voltage_bus.size)

    if estimated.all() and located.bus_row.min(initial=0) >= 0:
        # every measurement is at an estimated bus: the rows per quantity are the located set's
        u_k, angle_k, current_k = voltage_rows, phasor, current
        at_power = located.target[power]
        branch_k = power[at_power == Target.BRANCH]
        bus_k = power[at_power == Target.BUS]
    else:
        here = estimated[np.maximum(located.bus_row, 0)] & (located.bus_row >= 0)
        u_k = np.concatenate(
            [np.flatnonzero(located.of_quantity(q) & here) for q in (Quantity.U, Quantity.U_PHASOR)]
        )
        angle_k = np.flatnonzero(located.of_quantity(Quantity.U_PHASOR) & here)
        pq_here = located.of_quantity(Quantity.PQ) & here
        branch_k = np.flatnonzero(pq_here & (located.target == Target.BRANCH))
        bus_k = np.flatnonzero(pq_here & (located.target == Target.BUS))
        current_k = np.flatnonzero(located.of_quantity(Quantity.I_PHASOR) & here)
    branch_rows = np.concatenate([located.target_row[branch_k], located.target_row[current_k]])
    position = _engine_positions(prepared, located, branch_rows)
    appliances, empty = _appliance_sums(model, located, estimated, factor_position)
    plan = ReadingPlan(
        prepared=prepared,
        fresh=fresh,
        given=given,
        columns=columns,
        sensors=tuple(specs),
        update=update,
        own_buffers=False,
        voltage_bus=voltage_bus.astype(np.int64),
        voltage_inverse=voltage_inverse.astype(np.int64).ravel(),
        voltage_rated_v=_gathered(u_rated_kv, voltage_bus_rows, np.multiply, 1e3),
        voltage_phasors=bool(phasor.size),
        u_rated_kv=u_rated_kv,
        u_rows=(u_k, located.bus_row[u_k]),
        u_rated_at=u_rated_kv[located.bus_row[u_k]],
        angle_rows=(angle_k, located.bus_row[angle_k]),
        branch_pq=_Pq(branch_k, factor_position[located.bus_row[branch_k]]),
        branch_position=position[: branch_k.size],
        branch_to=located.measurements.column("end")[branch_k] == END_TO,
        bus_pq=_Pq(bus_k, factor_position[located.bus_row[bus_k]]),
        bus_pq_bus=located.bus_row[bus_k],
        appliances=appliances,
        empty=empty,
        current=(
            current_k,
            position[branch_k.size :],
            located.measurements.column("end")[current_k] == END_TO,
            located.bus_row[current_k],
        ),
        rows=0,
    )
    plan.rows = (
        u_k.size
        + angle_k.size
        + 2 * (branch_k.size + bus_k.size + appliances.full.size + empty.size + current_k.size)
    )
    return plan


def _engine_positions(
    prepared: PreparedEngine, located: LocatedMeasurements, rows: IntArray
) -> IntArray:
    """Positions of branch-table ``rows`` in the engine's branch outputs, concatenated in
    :data:`.engine_wls.BRANCH_TYPES` order."""
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    return branch_order(prepared, located)[rows]


def _appliance_sums(
    model: GridModel,
    located: LocatedMeasurements,
    estimated: BoolArray,
    factor_position: IntArray,
) -> tuple[_ApplianceSums, IntArray]:
    """The appliance sums of :func:`.residuals.scalar_rows` by index; the zero-injection buses."""
    n = model.bus.size
    counts = appliance_counts(model)
    appliances = counts.appliances + counts.shunts
    covered = covered_appliances(model, located)
    with_pq = located.measured_appliances()
    power = located.rows_of_quantity(Quantity.PQ)
    power_target = located.target[power]
    measured_parts = []
    for target, name, sign in _APPLIANCES:
        unique = with_pq[target]  # the appliances measured, sorted
        if unique.size == 0:
            continue
        k = power[power_target == target]
        on = np.asarray(model.table(name)["in_service"], dtype=bool)
        rank = np.zeros(on.size, dtype=np.int64)
        rank[unique] = np.arange(unique.size)
        compact = rank[located.target_row[k]]
        measured_parts.append(
            (k, compact, unique, on[unique], appliance_bus_rows(model, name), sign)
        )
    full = np.flatnonzero(estimated & (appliances > 0) & (covered >= appliances))
    full_position = np.full(n, -1, dtype=np.int64)
    full_position[full] = np.arange(full.size)
    parts = []
    for k, compact, unique, measured, bus_rows, sign in measured_parts:
        at = np.where(measured, full_position[bus_rows[unique]], -1)
        keep = at >= 0
        single_k = None
        if unique.size == k.size:
            order = np.empty(unique.size, dtype=np.int64)
            order[compact] = np.arange(unique.size)
            single_k = k[order][keep]
        parts.append(_AppliancePart(k, compact, int(unique.size), keep, at[keep], sign, single_k))
    empty = np.flatnonzero(estimated & (appliances == 0))
    summed = np.zeros(full.size, dtype=np.int64)
    for part in parts:
        summed += np.bincount(part.at, minlength=full.size)
    single = bool((summed == 1).all())
    return _ApplianceSums(tuple(parts), full, factor_position[full], single), empty


def _unique_rows(rows: IntArray, size: int) -> tuple[IntArray, IntArray]:
    """``np.unique(rows, return_inverse=True)`` of rows of a table of ``size`` rows, by a mask
    over the table instead of a sort."""
    hit = np.zeros(size, dtype=bool)
    hit[rows] = True
    unique = np.flatnonzero(hit)
    rank = np.cumsum(hit, dtype=np.int64) - 1
    return unique.astype(np.int64), rank[rows]


def _gathered(column: FloatArray, rows: IntArray, ufunc: Any, *args: Any) -> FloatArray:
    """``ufunc(column[rows], *args)`` written into the gathered copy (no second array)."""
    out = column[rows]
    result: FloatArray = ufunc(out, *args, out=out)
    return result


def _square_sum(z: FloatArray) -> float:
    """The sum of the squares of ``z`` (a temporary: squared in place)."""
    return float(np.square(z, out=z).sum())


def _wrap(angle_rad: FloatArray) -> FloatArray:
    out: FloatArray = (angle_rad + np.pi) % (2.0 * np.pi) - np.pi
    return out
