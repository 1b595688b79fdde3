"""What every virtual device reports: the true phasors at its location, seen through its instruments.

A :class:`MeasurementModel` holds the twin's placed devices (:mod:`openfeeder.sim.placements`) and
turns a solved :class:`~openfeeder.analysis.phasors.PhasorState` into :class:`DeviceReadings`: per
device the voltage phasors of its bus, the current phasors of its element (into a branch at the
device's end, or into a load), ``P + jQ = V I*`` per phase, the frequency and the timestamp it would
report, together with the true values for estimation studies. All devices are measured at once with
array operations; the twin measures thousands of devices per step.

Instrument errors (per device, per reading, each of the three phases of V and of I independently)::

    X_reported = X_true * (1 + eps) * exp(j delta) * exp(-j 2 pi f e_t)
    eps   ~ N(0, sigma_ratio),  sigma_ratio = (class / 100) / limit_sigmas
    delta ~ N(0, sigma_phase),  sigma_phase = (phase_crad_per_percent * class / 100) / limit_sigmas  [rad]
    e_t   = offset(device) + N(0, jitter_std_s)                     t_reported = t + e_t

- The accuracy class ``c`` (%) is read as a *limit* of the ratio error that ``limit_sigmas`` standard
  deviations reach: with the default 2, 95.4 % of readings are within the class. Accuracy classes
  of IEC 61869 are limits a healthy transformer stays within, not standard deviations.
- Phase displacement limits grow with the class; IEC 61869-2 (CTs) and -3 (VTs) give 0.15 crad for
  class 0.1 and 0.3 crad for 0.2 (1.5 crad per %), 0.6 to 0.9 crad for class 0.5 and 1.2 to
  1.8 crad for class 1. The default 1.5 crad per % sits between the CT and VT figures.
- Timing: every device has a fixed clock offset (drawn once from ``clock_offset_std_s`` of its kind:
  10 ms for NTP-synchronized smart meters, 1 ms for FTUs, 1 us for GPS-disciplined PMUs) and a
  jitter per reading. A phasor's angle is referenced to the device's own clock, so a timing error
  rotates V and I together (P and Q do not change): only synchronized devices (PMUs) have angles
  comparable across the grid, as in the field. For a PMU of class 0.1 the total vector error
  ``|X_reported - X_true| / |X_true|`` is about 0.09 % RMS from the instruments plus 0.03 % per us
  of timing error at 50 Hz, far inside IEEE C37.118.1's 1 %.
- Frequency: the grid's frequency plus N(0, ``frequency_std_hz`` of the kind) (IEC 61000-4-30
  class A allows 10 mHz, IEEE C37.118.1 5 mHz).
- Dropouts: each reading is lost with ``dropout_probability``; lost readings are NaN and
  ``valid`` is False (a voltage-only device's current, P and Q are NaN as well).
- Not modelled: the fixed (systematic) part of an instrument transformer's error and its dependence
  on the load, quantization, and a dead meter's silence: every error here is drawn afresh for each
  reading, and a device on a de-energized bus reports zeros (as its agent would see them).

Cost: about 2 ms per step for 2,000 devices on a shared 2-core machine, mostly the sines, cosines
and logarithms of the normal draws; one device alone about 0.13 ms (numpy call overhead).

Determinism: every random number is a counter-based hash (splitmix64) of the seed, the device id,
the true time ``t_ns`` and the quantity, never a stream consumed in call order. The same seed and
scenario therefore give bit-identical measurements whether devices are measured all at once, one by
one from their agents' threads (:class:`~openfeeder.sim.sources.TwinSource`) or as a whole series
(:meth:`MeasurementModel.measure_series`); adding a device does not change the others' noise.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from openfeeder.analysis.phasors import PhasorSeries, PhasorState
from openfeeder.model.components import NO_ID, BranchEnd, MeasurementKind
from openfeeder.model.grid import lookup
from openfeeder.sim.placements import DevicePlacement, PlacementError

__all__ = [
    "DEFAULT_KIND_ERRORS",
    "DeviceReadings",
    "KindErrors",
    "MeasurementModel",
    "ReadingSeries",
]

ComplexArray = npt.NDArray[np.complex128]
FloatArray = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
U64Array = npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class KindErrors:
    """Timing and frequency errors of one kind of device (standard deviations)."""

    clock_offset_std_s: float
    """Spread of the fixed clock offsets over devices of this kind."""
    jitter_std_s: float
    """Timestamp error of each reading around the device's offset."""
    frequency_std_hz: float
    """Error of each frequency reading."""

    def __post_init__(self) -> None:
        for name in ("clock_offset_std_s", "jitter_std_s", "frequency_std_hz"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"KindErrors.{name} must be finite and >= 0, got {value!r}")


DEFAULT_KIND_ERRORS: Final[Mapping[MeasurementKind, KindErrors]] = MappingProxyType(
    {
        # NTP over a utility WAN or cellular keeps meters within about 10 ms of UTC.
        MeasurementKind.METER: KindErrors(10e-3, 1e-3, 5e-3),
        # FTUs synchronize by SNTP / IEC 61850 on the substation network: about 1 ms.
        MeasurementKind.FTU: KindErrors(1e-3, 100e-6, 5e-3),
        # PMUs are GPS-disciplined: IEEE C37.118.1 budgets 1 us; frequency error 5 mHz as 2 sigma.
        MeasurementKind.PMU: KindErrors(1e-6, 100e-9, 2.5e-3),
    }
)
"""Timing and frequency errors per kind when the caller gives none."""

_NS_PER_S: Final = 1_000_000_000
_KINDS: Final = tuple(MeasurementKind)
_BLOCK_VALUES: Final = 1 << 17
"""Readings (steps x devices) measured per block in a series: bounds the random draws' memory
(about 15 x 8 bytes each) while keeping the Python loop over blocks short."""

# Normal draws per reading, by position: ratio and phase errors of the three voltages and the
# three currents, the timestamp jitter, the frequency error.
_V_RATIO, _V_PHASE, _I_RATIO, _I_PHASE = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)
_JITTER, _FREQUENCY, _NORMALS = 12, 13, 14
_UNIFORMS: Final = _NORMALS + 1  # Box-Muller needs one uniform per normal; the last is the dropout

# splitmix64 (Steele, Lea, Flood 2014): a golden-ratio counter step and a bijective 64-bit finalizer.
_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)
_STREAM_OFFSET: Final = np.uint64(0x6F66667365740001)  # "offset" stream: fixed per device
_STREAM_STEP: Final = np.uint64(0x7265616469677302)  # per-reading stream: keyed by t_ns


@dataclass(frozen=True, slots=True, eq=False)
class DeviceReadings:
    """What every device reported at one instant; arrays are (devices,) or (devices, 3 phases)."""

    device_id: tuple[str, ...]
    t_true_ns: int
    """The instant the grid was in the measured state (UTC ns)."""
    t_ns: Int64Array
    """The timestamp each device reports: ``t_true_ns`` plus its clock offset and jitter."""
    u_v: ComplexArray
    """Phase-to-ground voltage phasors (RMS), angle referenced to the device's clock."""
    i_a: ComplexArray
    """Current phasors into the measured element (RMS); NaN for voltage-only devices."""
    p_w: FloatArray
    q_var: FloatArray
    frequency_hz: FloatArray
    valid: BoolArray
    """False where the reading was lost (its values are NaN)."""
    measures_current: BoolArray
    u_true_v: ComplexArray
    i_true_a: ComplexArray
    frequency_true_hz: float

    @property
    def p_true_w(self) -> FloatArray:
        return _power(self.u_true_v, self.i_true_a)[0]

    @property
    def q_true_var(self) -> FloatArray:
        return _power(self.u_true_v, self.i_true_a)[1]


@dataclass(frozen=True, slots=True, eq=False)
class ReadingSeries:
    """:class:`DeviceReadings` of many steps: the same arrays with a leading step axis."""

    device_id: tuple[str, ...]
    t_true_ns: Int64Array
    """(steps,)"""
    t_ns: Int64Array
    u_v: ComplexArray
    i_a: ComplexArray
    p_w: FloatArray
    q_var: FloatArray
    frequency_hz: FloatArray
    valid: BoolArray
    measures_current: BoolArray
    """(devices,): the same for every step."""
    u_true_v: ComplexArray
    i_true_a: ComplexArray
    frequency_true_hz: float

    @property
    def steps(self) -> int:
        return int(self.t_true_ns.shape[0])

    def step(self, k: int) -> DeviceReadings:
        return DeviceReadings(
            device_id=self.device_id,
            t_true_ns=int(self.t_true_ns[k]),
            t_ns=self.t_ns[k],
            u_v=self.u_v[k],
            i_a=self.i_a[k],
            p_w=self.p_w[k],
            q_var=self.q_var[k],
            frequency_hz=self.frequency_hz[k],
            valid=self.valid[k],
            measures_current=self.measures_current,
            u_true_v=self.u_true_v[k],
            i_true_a=self.i_true_a[k],
            frequency_true_hz=self.frequency_true_hz,
        )


class _Located(NamedTuple):
    """Rows of every device in one state layout (bus rows; current source and row)."""

    bus_id: npt.NDArray[np.integer]
    branch_id: npt.NDArray[np.integer]
    load_id: npt.NDArray[np.integer]
    bus_row: Int64Array
    current_kind: npt.NDArray[np.int8]
    """0: branch from end, 1: branch to end, 2: load, 3: none (voltage only)."""
    current_row: Int64Array


class _Block(NamedTuple):
    t_ns: Int64Array
    u_v: ComplexArray
    i_a: ComplexArray
    p_w: FloatArray
    q_var: FloatArray
    frequency_hz: FloatArray
    valid: BoolArray
    u_true_v: ComplexArray
    i_true_a: ComplexArray


class MeasurementModel:
    """The instruments of all placed devices (see the module docstring for the error model).

    ``kind_errors`` overrides :data:`DEFAULT_KIND_ERRORS` per kind. ``limit_sigmas`` is how many
    standard deviations the accuracy class limit is; ``phase_crad_per_percent`` the phase
    displacement limit per % of class. Thread-safe: measuring never changes the model (the cached
    row lookup is replaced atomically).
    """

    def __init__(
        self,
        placements: Sequence[DevicePlacement],
        *,
        seed: int,
        dropout_probability: float = 0.0,
        kind_errors: Mapping[MeasurementKind, KindErrors] | None = None,
        limit_sigmas: float = 2.0,
        phase_crad_per_percent: float = 1.5,
    ) -> None:
        if not (0.0 <= dropout_probability <= 1.0):
            raise ValueError(f"dropout_probability must be in [0, 1], got {dropout_probability!r}")
        if not (math.isfinite(limit_sigmas) and limit_sigmas > 0.0):
            raise ValueError(f"limit_sigmas must be positive and finite, got {limit_sigmas!r}")
        if not (math.isfinite(phase_crad_per_percent) and phase_crad_per_percent >= 0.0):
            raise ValueError(
                f"phase_crad_per_percent must be finite and >= 0, got {phase_crad_per_percent!r}"
            )
        self.placements: tuple[DevicePlacement, ...] = tuple(placements)
        self.seed = int(seed)
        self.dropout_probability = float(dropout_probability)
        self.kind_errors: Mapping[MeasurementKind, KindErrors] = MappingProxyType(
            {**DEFAULT_KIND_ERRORS, **(kind_errors or {})}
        )
        self.device_ids: tuple[str, ...] = tuple(p.device_id for p in self.placements)
        self._index: dict[str, int] = {}
        for row, device_id in enumerate(self.device_ids):
            if device_id in self._index:
                raise PlacementError("device id used twice", device_id=device_id, field="device_id")
            self._index[device_id] = row
        n = len(self.placements)
        kind_row = np.fromiter((_KINDS.index(p.kind) for p in self.placements), np.int64, n)
        errors = [self.kind_errors[kind] for kind in _KINDS]
        offset_std = np.array([e.clock_offset_std_s for e in errors])[kind_row]
        self._jitter_std_s = np.array([e.jitter_std_s for e in errors])[kind_row]
        self._frequency_std_hz = np.array([e.frequency_std_hz for e in errors])[kind_row]
        limit = np.fromiter((p.accuracy_class for p in self.placements), np.float64, n) / 100.0
        self._ratio_std = limit / limit_sigmas
        self._phase_std_rad = limit * phase_crad_per_percent / limit_sigmas
        self._bus_id = np.fromiter((p.bus_id for p in self.placements), np.int64, n)
        self._element_id = np.fromiter((p.element_id for p in self.placements), np.int64, n)
        self._to_end = np.fromiter(
            (p.element_end is BranchEnd.TO for p in self.placements), bool, n
        )
        self._measures_current = self._element_id != NO_ID
        seed_key = _mix(np.array([self.seed & 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64) + _GOLDEN)
        self._device_key = _mix(seed_key ^ _device_hashes(self.device_ids))
        offset_u = _uniforms(self._device_key ^ _STREAM_OFFSET, 2)
        self._clock_offset_s = offset_std * _box_muller(offset_u)[..., 0]
        self._located: _Located | None = None

    def __len__(self) -> int:
        return len(self.placements)

    @property
    def clock_offset_s(self) -> FloatArray:
        """Each device's fixed clock offset (copy), in device order."""
        return self._clock_offset_s.copy()

    def index(self, device_ids: Sequence[str]) -> Int64Array:
        """Rows of ``device_ids`` in the model (PlacementError naming an unknown one)."""
        rows = np.empty(len(device_ids), dtype=np.int64)
        for k, device_id in enumerate(device_ids):
            row = self._index.get(device_id)
            if row is None:
                raise PlacementError(
                    "no such device in the measurement model",
                    device_id=device_id,
                    field="device_id",
                )
            rows[k] = row
        return rows

    def measure(
        self, state: PhasorState, t_ns: int, *, device_ids: Sequence[str] | None = None
    ) -> DeviceReadings:
        """Readings of all devices (or of ``device_ids``, in that order) of ``state`` at ``t_ns``."""
        rows = self._rows(device_ids)
        located = self._locate(state.bus_id, state.branch_id, state.load_id)
        u_true, i_true = _gather(
            located, rows, state.u_v, (state.i_from_a, state.i_to_a, state.i_load_a)
        )
        t = np.array([int(t_ns)], dtype=np.int64)
        block = self._block(rows, t, u_true[None], i_true[None], state.frequency_hz)
        return DeviceReadings(
            device_id=tuple(self.device_ids[r] for r in rows.tolist()),
            t_true_ns=int(t_ns),
            t_ns=block.t_ns[0],
            u_v=block.u_v[0],
            i_a=block.i_a[0],
            p_w=block.p_w[0],
            q_var=block.q_var[0],
            frequency_hz=block.frequency_hz[0],
            valid=block.valid[0],
            measures_current=self._measures_current[rows],
            u_true_v=block.u_true_v[0],
            i_true_a=block.i_true_a[0],
            frequency_true_hz=state.frequency_hz,
        )

    def measure_series(
        self,
        series: PhasorSeries,
        t_ns: npt.ArrayLike,
        *,
        device_ids: Sequence[str] | None = None,
    ) -> ReadingSeries:
        """Readings of every step of ``series``, step ``k`` at ``t_ns[k]``; equal, step by step, to
        :meth:`measure` of ``series.state(k)`` (the same draws), in blocks of whole arrays."""
        t = np.asarray(t_ns)
        if t.shape != (series.steps,) or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(
                f"t_ns must be {series.steps} integer nanosecond times (one per step of the "
                f"series), got shape {t.shape} of {t.dtype}"
            )
        t = t.astype(np.int64)
        rows = self._rows(device_ids)
        located = self._locate(series.bus_id, series.branch_id, series.load_id)
        steps = series.steps
        per_block = max(1, _BLOCK_VALUES // max(rows.size, 1))
        blocks = []
        for start in range(0, max(steps, 1), per_block):  # one (empty) block for an empty series
            part = slice(start, min(start + per_block, steps))
            u_true, i_true = _gather(
                located,
                rows,
                series.u_v[part],
                (series.i_from_a[part], series.i_to_a[part], series.i_load_a[part]),
            )
            blocks.append(self._block(rows, t[part], u_true, i_true, series.frequency_hz))
        out = _Block(*(np.concatenate(parts, axis=0) for parts in zip(*blocks, strict=True)))
        return ReadingSeries(
            device_id=tuple(self.device_ids[r] for r in rows.tolist()),
            t_true_ns=t,
            t_ns=out.t_ns,
            u_v=out.u_v,
            i_a=out.i_a,
            p_w=out.p_w,
            q_var=out.q_var,
            frequency_hz=out.frequency_hz,
            valid=out.valid,
            measures_current=self._measures_current[rows],
            u_true_v=out.u_true_v,
            i_true_a=out.i_true_a,
            frequency_true_hz=series.frequency_hz,
        )

    # -- internals ------------------------------------------------------------------------------

    def _rows(self, device_ids: Sequence[str] | None) -> Int64Array:
        if device_ids is None:
            return np.arange(len(self.placements), dtype=np.int64)
        return self.index(device_ids)

    def _locate(
        self,
        bus_id: npt.NDArray[np.integer],
        branch_id: npt.NDArray[np.integer],
        load_id: npt.NDArray[np.integer],
    ) -> _Located:
        """Where every device reads in a state with these ids (cached: states of one grid share
        their layout, so the lookups run once per topology, not once per step)."""
        cached = self._located
        if (
            cached is not None
            and _same(cached.bus_id, bus_id)
            and _same(cached.branch_id, branch_id)
            and _same(cached.load_id, load_id)
        ):
            return cached
        bus_row = lookup(bus_id, self._bus_id)
        _raise_first(bus_row < 0, self.device_ids, "bus_id", "bus", self._bus_id)
        element = self._element_id
        has_element = self._measures_current
        branch_row = lookup(branch_id, element)
        load_row = lookup(load_id, element)
        is_branch = has_element & (branch_row >= 0)
        is_load = has_element & ~is_branch & (load_row >= 0)
        _raise_first(
            has_element & ~is_branch & ~is_load,
            self.device_ids,
            "element_id",
            "branch or load",
            element,
        )
        kind = np.full(element.shape, 3, dtype=np.int8)
        kind[is_branch] = np.where(self._to_end[is_branch], 1, 0)
        kind[is_load] = 2
        row = np.where(is_branch, branch_row, np.where(is_load, load_row, 0))
        located = _Located(bus_id, branch_id, load_id, bus_row, kind, row.astype(np.int64))
        self._located = located
        return located

    def _block(
        self,
        rows: Int64Array,
        t_ns: Int64Array,
        u_true: ComplexArray,
        i_true: ComplexArray,
        frequency_hz: float,
    ) -> _Block:
        """Instrument errors applied to true phasors of shape (steps, devices, 3)."""
        uniforms = _uniforms(_step_keys(self._device_key[rows], t_ns), _UNIFORMS)
        z = _box_muller(uniforms[..., :_NORMALS])  # (steps, devices, 14)
        ratio = self._ratio_std[rows][None, :, None]
        phase = self._phase_std_rad[rows][None, :, None]
        error_s = (
            self._clock_offset_s[rows][None, :]
            + self._jitter_std_s[rows][None, :] * z[..., _JITTER]
        )
        timing_rad = (-2.0 * np.pi * frequency_hz * error_s)[..., None]
        u_v = _distort(u_true, ratio * z[..., _V_RATIO], phase * z[..., _V_PHASE] + timing_rad)
        i_a = _distort(i_true, ratio * z[..., _I_RATIO], phase * z[..., _I_PHASE] + timing_rad)
        freq = frequency_hz + self._frequency_std_hz[rows][None, :] * z[..., _FREQUENCY]
        valid = uniforms[..., _NORMALS] >= self.dropout_probability
        t_reported = t_ns[:, None] + np.rint(error_s * _NS_PER_S).astype(np.int64)
        no_current = ~self._measures_current[rows]
        i_a[:, no_current] = np.nan
        i_true = i_true.copy()
        i_true[:, no_current] = np.nan
        lost = ~valid
        u_v[lost] = np.nan
        i_a[lost] = np.nan
        freq[lost] = np.nan
        p_w, q_var = _power(u_v, i_a)
        return _Block(
            t_ns=t_reported,
            u_v=u_v,
            i_a=i_a,
            p_w=p_w,
            q_var=q_var,
            frequency_hz=freq,
            valid=valid,
            u_true_v=u_true,
            i_true_a=i_true,
        )


def _same(a: npt.NDArray[np.integer], b: npt.NDArray[np.integer]) -> bool:
    return a is b or (a.shape == b.shape and bool(np.array_equal(a, b)))


def _raise_first(
    bad: BoolArray, device_ids: Sequence[str], field: str, what: str, ids: Int64Array
) -> None:
    if bad.any():
        first = int(np.argmax(bad))
        raise PlacementError(
            f"the grid state has no {what} with id {int(ids[first])}",
            device_id=device_ids[first],
            field=field,
        )


def _gather(
    located: _Located,
    rows: Int64Array,
    u_v: ComplexArray,
    currents: tuple[ComplexArray, ComplexArray, ComplexArray],
) -> tuple[ComplexArray, ComplexArray]:
    """True voltage and current phasors of the devices ``rows``; works on a state (..., 3) and on
    a series block (steps, ..., 3) alike. ``currents`` are the branch from-end, branch to-end and
    load currents."""
    u_true = u_v[..., located.bus_row[rows], :]
    i_true = np.zeros(u_true.shape, dtype=np.complex128)
    kind = located.current_kind[rows]
    source_row = located.current_row[rows]
    for code, source in enumerate(currents):
        picked = np.flatnonzero(kind == code)
        if picked.size:
            i_true[..., picked, :] = source[..., source_row[picked], :]
    return u_true, i_true


def _distort(x: ComplexArray, ratio_error: FloatArray, angle_rad: FloatArray) -> ComplexArray:
    """``x * (1 + ratio_error) * exp(j angle_rad)``, computed with real multiplications and
    additions only: numpy's SIMD complex loops may fuse multiply-adds differently for different
    array lengths, and one device measured alone must match, bit for bit, the same device measured
    with thousands of others."""
    gain = 1.0 + ratio_error
    cos = gain * np.cos(angle_rad)
    sin = gain * np.sin(angle_rad)
    out = np.empty(np.broadcast_shapes(x.shape, cos.shape), dtype=np.complex128)
    out.real = x.real * cos - x.imag * sin
    out.imag = x.real * sin + x.imag * cos
    return out


def _power(u_v: ComplexArray, i_a: ComplexArray) -> tuple[FloatArray, FloatArray]:
    """``P + jQ = V I*`` per phase, in real arithmetic for the reason given in :func:`_distort`."""
    return (
        u_v.real * i_a.real + u_v.imag * i_a.imag,
        u_v.imag * i_a.real - u_v.real * i_a.imag,
    )


def _mix(x: U64Array) -> U64Array:
    """splitmix64's finalizer: a bijection of 64-bit words whose output bits all depend on every
    input bit (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
        return x ^ (x >> np.uint64(31))


def _device_hashes(device_ids: Sequence[str]) -> U64Array:
    """A 64-bit key per device id (BLAKE2b): stable across processes and Python versions, unlike
    ``hash()``, so a device keeps its noise when others are added or reordered."""
    digests = b"".join(hashlib.blake2b(d.encode(), digest_size=8).digest() for d in device_ids)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _step_keys(device_key: U64Array, t_ns: Int64Array) -> U64Array:
    """(steps, devices) keys of the readings at ``t_ns``: a hash of the device key and the time."""
    time_key = _mix(t_ns.astype(np.int64).view(np.uint64) ^ _STREAM_STEP)
    with np.errstate(over="ignore"):
        return _mix(device_key[None, :] + time_key[:, None] * _GOLDEN)


def _uniforms(keys: U64Array, count: int) -> FloatArray:
    """``count`` uniforms in (0, 1) per key (the splitmix64 sequence started at the key)."""
    with np.errstate(over="ignore"):
        steps = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
        words = _mix(keys[..., None] + steps)
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _box_muller(u: FloatArray) -> FloatArray:
    """Standard normals from pairs of uniforms along the last axis (even length)."""
    # Contiguous inputs: the transcendental functions then take the same (SIMD) path whatever the
    # array's length, so the draws of a device do not depend on how many are measured with it.
    radius = np.sqrt(-2.0 * np.log(np.ascontiguousarray(u[..., 0::2])))
    angle = 2.0 * np.pi * np.ascontiguousarray(u[..., 1::2])
    out = np.empty(u.shape, dtype=np.float64)
    out[..., 0::2] = radius * np.cos(angle)
    out[..., 1::2] = radius * np.sin(angle)
    return out
