"""Virtual devices' data sources: a meter agent acquiring from the twin instead of a DAQ board.

:class:`TwinSource` implements :class:`~openfeeder.iot.agent.source.DataSource` for one placed device:
each acquisition reads the twin's present state (:meth:`GridWorld.phasors`) and hands back the
:class:`~openfeeder.iot.agent.source.PhasorFrame` that device's instruments report
(:class:`~openfeeder.sim.measurements.MeasurementModel`), so the unchanged meter agent computes,
buffers and publishes twin measurements exactly as it does field ones.

Sources made by one :class:`TwinSampler` share it as their ``batch``
(:class:`~openfeeder.iot.agent.source.SourceBatch`): an agent host about to tick many devices at
one instant has the sampler measure them all in one array operation, and each source then hands
out its row. The measurement model's noise is a hash of (seed, device, time), so a device's reading
is bit-identical whether it was measured alone or with the others.

A lost reading (a dropout of the measurement model) raises :class:`ReadingLostError`. The agent counts
a source error and skips that interval: nothing is published and no sequence number is used, which
is what a real meter that failed to acquire does. Returning ``complete=False`` instead would publish
numbers the device never measured, merely flagged SUSPECT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from openfeeder.analysis.phasors import PhasorState
from openfeeder.errors import OpenFeederError
from openfeeder.iot.agent.source import DataSource, PhasorFrame
from openfeeder.sim.measurements import DeviceReadings, MeasurementModel
from openfeeder.sim.world import GridWorld

__all__ = ["ReadingLostError", "TwinSampler", "TwinSource"]

_NO_CURRENT: Final = np.zeros(3, np.complex128)
_NO_CURRENT.flags.writeable = False


class ReadingLostError(OpenFeederError):
    """The device lost this reading (the measurement model's dropout); ``t_ns`` is the true time."""

    def __init__(self, device_id: str, t_ns: int) -> None:
        super().__init__(
            f"device {device_id!r} lost its reading at t_ns={t_ns} (simulated dropout)"
        )
        self.device_id = device_id
        self.t_ns = t_ns


@dataclass(frozen=True, slots=True)
class _Prefetched:
    t_ns: int
    state: PhasorState
    rows: dict[str, int]
    readings: DeviceReadings


class TwinSampler:
    """Measures the devices of one twin (world and measurement model), many at once.

    :meth:`source` makes the :class:`TwinSource` of a device; :meth:`prefetch` measures the
    devices of the given sources at ``t_ns`` in one call (on the grid state of that instant) and
    keeps the result for their ``acquire`` at that time.
    """

    def __init__(self, world: GridWorld, model: MeasurementModel) -> None:
        self.world = world
        self.model = model
        self._latest: _Prefetched | None = None

    def source(self, device_id: str) -> TwinSource:
        return TwinSource(self.world, self.model, device_id, sampler=self)

    def prefetch(self, sources: Sequence[DataSource], *, t_ns: int) -> None:
        ids = [s.device_id for s in sources if isinstance(s, TwinSource) and s.batch is self]
        if not ids:
            return
        state = self.world.phasors()
        readings = self.model.measure(state, t_ns, device_ids=ids)
        rows = {device_id: k for k, device_id in enumerate(readings.device_id)}
        self._latest = _Prefetched(t_ns, state, rows, readings)

    def _take(self, device_id: str, t_ns: int) -> tuple[DeviceReadings, int] | None:
        latest = self._latest
        if latest is None or latest.t_ns != t_ns:
            return None
        row = latest.rows.get(device_id)
        return None if row is None else (latest.readings, row)


class TwinSource:
    """The phasors one placed device measures in the twin's grid (a PMU-style source).

    The frame's ``t_ns`` is the device's own timestamp (true time plus its clock offset and
    jitter); its currents flow into the measured element (zero for a voltage-only device, which
    has nothing connected to its current inputs).
    """

    def __init__(
        self,
        world: GridWorld,
        model: MeasurementModel,
        device_id: str,
        *,
        sampler: TwinSampler | None = None,
    ) -> None:
        model.index([device_id])  # PlacementError now, not at the first acquisition
        self.world = world
        self.model = model
        self.device_id = device_id
        self.batch = sampler
        """The sampler that can measure this device together with others (None: alone)."""
        self._ids = (device_id,)

    def acquire(self, *, t_ns: int, sampling_rate_hz: float) -> PhasorFrame:
        """The device's reading of the present state at ``t_ns`` (ReadingLostError if lost).

        ``sampling_rate_hz`` does not matter: the device delivers phasors its own DSP computed.
        """
        del sampling_rate_hz
        taken = self.batch._take(self.device_id, t_ns) if self.batch is not None else None
        if taken is None:
            readings = self.model.measure(self.world.phasors(), t_ns, device_ids=self._ids)
            row = 0
        else:
            readings, row = taken
        if not readings.valid[row]:
            raise ReadingLostError(self.device_id, t_ns)
        # the arrays are the readings' rows: never written again, so no copies
        return PhasorFrame(
            t_ns=int(readings.t_ns[row]),
            voltage_v=readings.u_v[row],
            current_a=readings.i_a[row] if readings.measures_current[row] else _NO_CURRENT,
            frequency_hz=float(readings.frequency_hz[row]),
        )
