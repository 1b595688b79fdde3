"""The simulation clock: one notion of domain time for the twin and every service.

Domain time is UTC integer nanoseconds since the epoch (ARCHITECTURE.md). Code that stamps or paces
domain events asks a :class:`Clock` instead of calling :func:`time.time`, so the same code runs

- in **real time** (:class:`RealClock`: wall-clock UTC, as in production),
- **accelerated** by a factor (:class:`ScaledClock`: simulated time runs ``factor`` times faster than
  the wall clock from a chosen start instant; a factor of 1 replays a chosen day in real time), or
- **as fast as possible** (:class:`SteppedClock`: time stands still until its driver, the twin,
  advances it; threads sleeping on it wake when the time they wait for has been reached).

A clock is shared by threads; every method is thread-safe. Waits take an optional
:class:`threading.Event` so that a stopping service never sleeps through its shutdown.

Network timeouts (MQTT keepalive, HTTP requests) stay in wall time: they are about the machine,
not about the grid.
"""

from __future__ import annotations

import abc
import math
import threading
import time
from typing import Final, Protocol, runtime_checkable

__all__ = [
    "NS_PER_S",
    "Clock",
    "RealClock",
    "ScaledClock",
    "SteppedClock",
    "clock_for_speed",
]

NS_PER_S: Final = 1_000_000_000
_MAX_WAIT_S: Final = 0.25
"""Longest single wall-clock wait: bounds how late a stop request is noticed."""


@runtime_checkable
class Clock(Protocol):
    """Domain time for the twin and the services."""

    @property
    def speed(self) -> float:
        """Simulated seconds per wall-clock second (``math.inf``: as fast as possible)."""
        ...

    def now_ns(self) -> int:
        """Current domain time, UTC ns since the epoch."""
        ...

    def sleep_until(self, t_ns: int, stop: threading.Event | None = None) -> bool:
        """Block until domain time reaches ``t_ns``; False if ``stop`` was set first."""
        ...

    def sleep(self, duration_s: float, stop: threading.Event | None = None) -> bool:
        """Block for ``duration_s`` of domain time; False if ``stop`` was set first."""
        ...


class _WallPaced(abc.ABC):
    """Shared waiting logic of the clocks that follow the wall clock at a fixed speed."""

    speed: float

    @abc.abstractmethod
    def now_ns(self) -> int: ...

    def sleep_until(self, t_ns: int, stop: threading.Event | None = None) -> bool:
        while True:
            remaining_ns = t_ns - self.now_ns()
            if remaining_ns <= 0:
                return True
            wait_s = min(remaining_ns / NS_PER_S / self.speed, _MAX_WAIT_S)
            if stop is None:
                time.sleep(wait_s)
            elif stop.wait(wait_s):
                return False

    def sleep(self, duration_s: float, stop: threading.Event | None = None) -> bool:
        return self.sleep_until(self.now_ns() + round(duration_s * NS_PER_S), stop)


class RealClock(_WallPaced):
    """Wall-clock UTC: production, and the default everywhere."""

    speed = 1.0

    def now_ns(self) -> int:
        return time.time_ns()

    def __repr__(self) -> str:
        return "RealClock()"


class ScaledClock(_WallPaced):
    """Domain time that starts at ``start_ns`` now and runs ``factor`` times faster than the wall.

    ``factor`` 1 replays from ``start_ns`` in real time; 60 runs a minute per second. Time follows
    :func:`time.monotonic`, so a wall-clock adjustment (NTP) never makes it jump.
    """

    def __init__(self, start_ns: int, factor: float = 1.0) -> None:
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"clock speed factor must be positive and finite, got {factor}")
        self.speed = float(factor)
        self.start_ns = int(start_ns)
        self._origin_s = time.monotonic()

    def now_ns(self) -> int:
        return self.start_ns + round((time.monotonic() - self._origin_s) * self.speed * NS_PER_S)

    def __repr__(self) -> str:
        return f"ScaledClock(start_ns={self.start_ns}, factor={self.speed:g})"


class SteppedClock:
    """As fast as possible: time moves only when :meth:`advance_to` is called (by the twin).

    Sleepers wake as soon as the time they wait for is reached, so services paced by this clock do
    exactly the work of each simulated instant and no more; the result depends on the seed and the
    scenario, never on how fast the machine is.
    """

    speed = math.inf

    def __init__(self, start_ns: int) -> None:
        self._now_ns = int(start_ns)
        self._changed = threading.Condition()

    def now_ns(self) -> int:
        return self._now_ns

    def advance_to(self, t_ns: int) -> None:
        """Move time forward to ``t_ns`` (never backward) and wake the sleepers it concerns."""
        with self._changed:
            if t_ns < self._now_ns:
                raise ValueError(
                    f"a clock cannot go back: now {self._now_ns} ns, asked for {t_ns} ns"
                )
            self._now_ns = int(t_ns)
            self._changed.notify_all()

    def advance(self, duration_s: float) -> None:
        self.advance_to(self._now_ns + round(duration_s * NS_PER_S))

    def sleep_until(self, t_ns: int, stop: threading.Event | None = None) -> bool:
        with self._changed:
            while self._now_ns < t_ns:
                if stop is not None and stop.is_set():
                    return False
                self._changed.wait(_MAX_WAIT_S)
        return True

    def sleep(self, duration_s: float, stop: threading.Event | None = None) -> bool:
        return self.sleep_until(self._now_ns + round(duration_s * NS_PER_S), stop)

    def __repr__(self) -> str:
        return f"SteppedClock(now_ns={self._now_ns})"


def clock_for_speed(speed: float | str, start_ns: int | None = None) -> Clock:
    """The clock a scenario or command line asks for.

    ``speed`` is ``"realtime"`` (wall-clock UTC), a positive factor (accelerated from ``start_ns``,
    or from now), or ``"max"`` / ``math.inf`` (stepped, from ``start_ns`` or now).
    """
    if isinstance(speed, str):
        word = speed.strip().lower()
        if word in ("realtime", "real-time", "real_time", "wall"):
            return RealClock()
        if word in ("max", "fastest", "asap", "inf"):
            speed = math.inf
        else:
            try:
                speed = float(word.removesuffix("x"))
            except ValueError:
                raise ValueError(
                    f"clock speed must be 'realtime', 'max' or a positive factor, got {speed!r}"
                ) from None
    start = time.time_ns() if start_ns is None else int(start_ns)
    if math.isinf(speed) and speed > 0:
        return SteppedClock(start)
    return ScaledClock(start, speed)
