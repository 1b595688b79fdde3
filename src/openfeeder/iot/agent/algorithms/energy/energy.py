"""Energy registers of a meter: active energy imported and exported (Wh), reactive energy (varh).

Inputs: the total active power ``p`` (W, > 0 when the load consumes) and reactive power ``q`` (var)
of each measurement message. Between two messages the energy is the trapezoid of the two powers
over the time between them; a gap longer than ``max_gap_s`` is not bridged (the registers hold, so
an outage of the meter does not invent energy). The registers start at 0 when the algorithm starts
and are published every ``publish_every`` measurements. Quality: GOOD, or SUSPECT once an input was
not GOOD or a gap was skipped since the start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from openfeeder.iot.schema import Quality, Reading, Unit

if TYPE_CHECKING:
    from openfeeder.iot.agent.plugins import AlgorithmContext

_NS_PER_H = 3600 * 1_000_000_000


class EnergyMeter:
    """Integrates ``p`` and ``q`` into energy registers."""

    def __init__(self) -> None:
        self.e_p_import_wh = 0.0
        self.e_p_export_wh = 0.0
        self.e_q_varh = 0.0
        self._last: tuple[int, float, float] | None = None
        self._quality = Quality.GOOD
        self._max_gap_ns = 10 * 1_000_000_000
        self._publish_every = 1
        self._count = 0

    def start(self, context: AlgorithmContext) -> None:
        max_gap_s = context.parameters.get("max_gap_s", 10.0)
        every = context.parameters.get("publish_every", 1)
        if not isinstance(max_gap_s, int | float) or max_gap_s <= 0:
            raise ValueError("parameter max_gap_s must be a positive number")
        if not isinstance(every, int) or every < 1:
            raise ValueError("parameter publish_every must be a positive integer")
        self._max_gap_ns = int(max_gap_s * 1_000_000_000)
        self._publish_every = every

    def on_measurement(self, readings: Sequence[Reading], t_ns: int) -> list[Reading] | None:
        values = {reading.channel: reading for reading in readings}
        p, q = values.get("p"), values.get("q")
        if p is None or q is None or Quality.INVALID in (p.quality, q.quality):
            self._quality = Quality.SUSPECT
            return None
        if p.quality is not Quality.GOOD or q.quality is not Quality.GOOD:
            self._quality = Quality.SUSPECT
        if self._last is not None:
            t0, p0, q0 = self._last
            dt_ns = t_ns - t0
            if 0 < dt_ns <= self._max_gap_ns:
                hours = dt_ns / _NS_PER_H
                energy_p = (p0 + p.value) / 2 * hours
                if energy_p >= 0:
                    self.e_p_import_wh += energy_p
                else:
                    self.e_p_export_wh -= energy_p
                self.e_q_varh += (q0 + q.value) / 2 * hours
            elif dt_ns > self._max_gap_ns:
                self._quality = Quality.SUSPECT
        self._last = (t_ns, p.value, q.value)
        self._count += 1
        if self._count % self._publish_every:
            return None
        return [
            Reading(
                channel="e_p_import", value=self.e_p_import_wh, unit=Unit.WH, quality=self._quality
            ),
            Reading(
                channel="e_p_export", value=self.e_p_export_wh, unit=Unit.WH, quality=self._quality
            ),
            Reading(channel="e_q", value=self.e_q_varh, unit=Unit.VARH, quality=self._quality),
        ]

    def stop(self) -> None:
        self._last = None
