"""Virtual devices' data sources: a meter agent acquiring from the twin instead of a DAQ board.

:class:`TwinSource` implements :class:`~openfeeder.iot.agent.source.DataSource` for one placed device:
each acquisition reads the twin's present state (:meth:`GridWorld.phasors`) and hands back the
:class:`~openfeeder.iot.agent.source.PhasorFrame` that device's instruments report
(:class:`~openfeeder.sim.measurements.MeasurementModel`), so the unchanged meter agent computes,
buffers and publishes twin measurements exactly as it does field ones.

A lost reading (a dropout of the measurement model) raises :class:`ReadingLostError`. The agent counts
a source error and skips that interval: nothing is published and no sequence number is used, which
is what a real meter that failed to acquire does. Returning ``complete=False`` instead would publish
numbers the device never measured, merely flagged SUSPECT.
"""

from __future__ import annotations

import numpy as np

from openfeeder.errors import OpenFeederError
from openfeeder.iot.agent.source import PhasorFrame
from openfeeder.sim.measurements import MeasurementModel
from openfeeder.sim.world import GridWorld

__all__ = ["ReadingLostError", "TwinSource"]


class ReadingLostError(OpenFeederError):
    """The device lost this reading (the measurement model's dropout); ``t_ns`` is the true time."""

    def __init__(self, device_id: str, t_ns: int) -> None:
        super().__init__(
            f"device {device_id!r} lost its reading at t_ns={t_ns} (simulated dropout)"
        )
        self.device_id = device_id
        self.t_ns = t_ns


class TwinSource:
    """The phasors one placed device measures in the twin's grid (a PMU-style source).

    The frame's ``t_ns`` is the device's own timestamp (true time plus its clock offset and
    jitter); its currents flow into the measured element (zero for a voltage-only device, which
    has nothing connected to its current inputs).
    """

    def __init__(self, world: GridWorld, model: MeasurementModel, device_id: str) -> None:
        model.index([device_id])  # PlacementError now, not at the first acquisition
        self.world = world
        self.model = model
        self.device_id = device_id
        self._ids = (device_id,)

    def acquire(self, *, t_ns: int, sampling_rate_hz: float) -> PhasorFrame:
        """The device's reading of the present state at ``t_ns`` (ReadingLostError if lost).

        ``sampling_rate_hz`` does not matter: the device delivers phasors its own DSP computed.
        """
        del sampling_rate_hz
        readings = self.model.measure(self.world.phasors(), t_ns, device_ids=self._ids)
        if not readings.valid[0]:
            raise ReadingLostError(self.device_id, t_ns)
        current = readings.i_a[0] if readings.measures_current[0] else np.zeros(3, np.complex128)
        return PhasorFrame(
            t_ns=int(readings.t_ns[0]),
            voltage_v=readings.u_v[0].copy(),
            current_a=current.copy(),
            frequency_hz=float(readings.frequency_hz[0]),
        )
