"""Supply voltage variations after EN 50160: the mean phase voltage over a window against nominal.

EN 50160 asks that the 10-minute mean RMS supply voltage stay within nominal +/- 10 % (for 95 % of
a week in LV). This monitor averages each phase's RMS voltage (``u_a``, ``u_b``, ``u_c``) over
``window_s`` (600 s by default; shorter for demonstrations), publishes the means and the largest
relative deviation ``u_dev_max`` (pu of nominal) at the end of each window, and raises events:

- ``overvoltage`` / ``undervoltage`` (severity warning) when a phase's window mean leaves
  ``[1 - tolerance, 1 + tolerance] * u_nominal_v``, naming the phases, with their means as values;
- ``voltage_restored`` (severity info) when all phases are back inside.

``u_nominal_v`` (phase-to-neutral) may be given; when it is null the monitor takes the standard
nominal voltage closest to the first window's mean (230 V LV, or 10, 15, 20 or 22 kV MV phase
voltages), which suits meters placed anywhere on a model without per-device parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from openfeeder.iot.schema import Quality, Reading, Severity, Unit

if TYPE_CHECKING:
    from openfeeder.iot.agent.plugins import AlgorithmContext

_STANDARD_PHASE_V = (230.0, *(kv * 1000 / math.sqrt(3) for kv in (10.0, 15.0, 20.0, 22.0)))
_PHASES = ("a", "b", "c")


class VoltageMonitor:
    """Window means of the phase voltages, checked against nominal +/- tolerance."""

    def __init__(self) -> None:
        self._context: AlgorithmContext | None = None
        self._u_nominal_v: float | None = None
        self._tolerance = 0.10
        self._window_ns = 600 * 1_000_000_000
        self._window_start_ns: int | None = None
        self._sums = [0.0, 0.0, 0.0]
        self._count = 0
        self._violated: frozenset[str] = frozenset()

    def start(self, context: AlgorithmContext) -> None:
        self._context = context
        self._configure(context)

    def reconfigure(self, context: AlgorithmContext) -> None:
        self._context = context
        self._configure(context)

    def _configure(self, context: AlgorithmContext) -> None:
        nominal = context.parameters.get("u_nominal_v")
        tolerance = context.parameters.get("tolerance", 0.10)
        window_s = context.parameters.get("window_s", 600.0)
        if nominal is not None and (not isinstance(nominal, int | float) or nominal <= 0):
            raise ValueError("parameter u_nominal_v must be a positive number or null")
        if not isinstance(tolerance, int | float) or not 0 < tolerance < 1:
            raise ValueError("parameter tolerance must be in (0, 1)")
        if not isinstance(window_s, int | float) or window_s <= 0:
            raise ValueError("parameter window_s must be a positive number")
        self._u_nominal_v = float(nominal) if nominal is not None else None
        self._tolerance = float(tolerance)
        self._window_ns = int(window_s * 1_000_000_000)

    def on_measurement(self, readings: Sequence[Reading], t_ns: int) -> list[Reading] | None:
        values = {r.channel: r.value for r in readings if r.quality is not Quality.INVALID}
        phase_values = [values.get(f"u_{phase}") for phase in _PHASES]
        if any(value is None for value in phase_values):
            return None
        if self._window_start_ns is None:
            self._window_start_ns = t_ns
        for index, value in enumerate(phase_values):
            self._sums[index] += float(value or 0.0)
        self._count += 1
        if t_ns - self._window_start_ns < self._window_ns:
            return None
        means = [total / self._count for total in self._sums]
        self._sums, self._count, self._window_start_ns = [0.0, 0.0, 0.0], 0, None
        return self._assess(means)

    def _assess(self, means: list[float]) -> list[Reading]:
        if self._u_nominal_v is None:
            average = sum(means) / 3
            self._u_nominal_v = min(_STANDARD_PHASE_V, key=lambda u: abs(u - average))
        nominal = self._u_nominal_v
        deviations = [mean / nominal - 1.0 for mean in means]
        over = [p for p, d in zip(_PHASES, deviations, strict=True) if d > self._tolerance]
        under = [p for p, d in zip(_PHASES, deviations, strict=True) if d < -self._tolerance]
        mean_readings = [
            Reading(channel=f"u_mean_{p}", value=m, unit=Unit.V, quality=Quality.GOOD)
            for p, m in zip(_PHASES, means, strict=True)
        ]
        violated = frozenset(over) | frozenset(under)
        if self._context is not None and violated != self._violated:
            for kind, phases in (("overvoltage", over), ("undervoltage", under)):
                if phases and not set(phases) <= self._violated:
                    self._context.emit_event(
                        kind,
                        Severity.WARNING,
                        f"{kind} on phase(s) {', '.join(phases)}: window mean outside "
                        f"{nominal:.1f} V +/- {self._tolerance:.0%} (EN 50160)",
                        mean_readings,
                    )
            if not violated:
                self._context.emit_event(
                    "voltage_restored",
                    Severity.INFO,
                    f"all phase voltages back within {nominal:.1f} V +/- {self._tolerance:.0%}",
                    mean_readings,
                )
        self._violated = violated
        worst = max(deviations, key=abs)
        return [
            *mean_readings,
            Reading(channel="u_dev_max", value=worst, unit=Unit.PU, quality=Quality.GOOD),
        ]

    def stop(self) -> None:
        self._context = None
