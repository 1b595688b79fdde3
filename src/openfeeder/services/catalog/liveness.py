"""Disconnect detection: last-seen times, the watchdog, and the announcements on MQTT.

Every poll or boot moves the device to the back of an ordered map with its new deadline
(``now + timeout`` on a monotonic clock, so a jump of the wall clock changes nothing); since the
timeout is the same for every device the map stays sorted by deadline, so a poll costs O(1) and
finding the silent devices costs O(silent): the watchdog pops from the front while the front's
deadline has passed, then sleeps until the next deadline (at most 0.25 s).

A silent device is marked disconnected and an ``Event`` ``device_disconnected`` (warning) is
published on its event topic; its next poll marks it connected again and publishes
``device_reconnected`` (info). The events count their own ``seq`` per device from 0 at each start
of the catalog. Status changes are written at once (without waiting), last-seen times of devices
that stay connected about once a second.

Devices that were connected when the catalog stopped get a full timeout from the restart before
they are declared disconnected: the catalog could not hear them while it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Final

from openfeeder.iot.catalog_client import DeviceStatus
from openfeeder.iot.schema import Event, Severity
from openfeeder.services.catalog.publishing import Publisher
from openfeeder.services.catalog.records import Liveness
from openfeeder.services.catalog.store import TouchDevices
from openfeeder.services.catalog.writer import StoreWriter

__all__ = ["NEVER_SEEN", "DeadlineQueue", "LivenessMonitor"]

_LOG = logging.getLogger(__name__)
NEVER_SEEN: Final = Liveness(DeviceStatus.NEVER, None)
_FLUSH_INTERVAL_S: Final = 1.0
_WATCHDOG_MAX_SLEEP_S: Final = 0.25


class DeadlineQueue:
    """Deadlines of the devices believed connected, earliest first (monotonic seconds)."""

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._deadlines: OrderedDict[str, float] = OrderedDict()

    def seen(self, device_id: str, now_s: float) -> None:
        """The device was heard from at ``now_s``: its deadline is ``now_s + timeout``."""
        self._deadlines[device_id] = now_s + self.timeout_s
        self._deadlines.move_to_end(device_id)

    def forget(self, device_id: str) -> None:
        self._deadlines.pop(device_id, None)

    def expired(self, now_s: float) -> list[str]:
        """Remove and return the devices whose deadline is at or before ``now_s``."""
        silent: list[str] = []
        deadlines = self._deadlines
        while deadlines:
            device_id, deadline = next(iter(deadlines.items()))
            if deadline > now_s:
                break
            deadlines.popitem(last=False)
            silent.append(device_id)
        return silent

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when no device is tracked."""
        if not self._deadlines:
            return None
        return next(iter(self._deadlines.values()))

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._deadlines

    def __len__(self) -> int:
        return len(self._deadlines)


class LivenessMonitor:
    """The liveness of every device: what polls report, what the watchdog concludes."""

    def __init__(
        self,
        *,
        timeout_s: float,
        writer: StoreWriter,
        publisher: Publisher,
        clock_ns: Callable[[], int],
        monotonic: Callable[[], float],
    ) -> None:
        self._writer = writer
        self._publisher = publisher
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._liveness: dict[str, Liveness] = {}
        self._dirty: set[str] = set()
        self._deadlines = DeadlineQueue(timeout_s=timeout_s)
        self._event_seq: Counter[str] = Counter()

    def load(self, stored: Mapping[str, Liveness]) -> None:
        """The liveness read at start; connected devices get a full timeout from now."""
        now_s = self._monotonic()
        for device_id, liveness in stored.items():
            self._liveness[device_id] = liveness
            if liveness.status is DeviceStatus.CONNECTED:
                self._deadlines.seen(device_id, now_s)

    def get(self, device_id: str) -> Liveness:
        return self._liveness.get(device_id, NEVER_SEEN)

    def register(self, device_id: str) -> None:
        """A new device (never seen unless :meth:`seen` says otherwise)."""
        self._liveness.setdefault(device_id, NEVER_SEEN)

    def forget(self, device_id: str) -> None:
        self._liveness.pop(device_id, None)
        self._dirty.discard(device_id)
        self._deadlines.forget(device_id)

    def counts(self) -> Counter[DeviceStatus]:
        return Counter(liveness.status for liveness in self._liveness.values())

    def seen(self, device_id: str, now_ns: int, *, persisted: bool = False) -> None:
        """The device was heard from; ``persisted``: its new liveness is already stored."""
        previous = self.get(device_id)
        current = Liveness(DeviceStatus.CONNECTED, now_ns)
        self._liveness[device_id] = current
        self._deadlines.seen(device_id, self._monotonic())
        if previous.status is DeviceStatus.CONNECTED:
            self._dirty.add(device_id)
            return
        self._dirty.discard(device_id)
        if not persisted:
            self._writer.write_later([TouchDevices(((device_id, current),))])
        if previous.status is DeviceStatus.DISCONNECTED:
            silent_s = (now_ns - (previous.last_seen_ns or now_ns)) / 1e9
            self._announce(
                device_id,
                kind="device_reconnected",
                severity=Severity.INFO,
                message=f"device {device_id} polled again after {silent_s:.1f} s of silence",
                now_ns=now_ns,
            )

    def check(self) -> list[str]:
        """Mark the devices silent past the timeout disconnected and announce it; their ids."""
        now_s = self._monotonic()
        now_ns = self._clock_ns()
        rows: list[tuple[str, Liveness]] = []
        for device_id in self._deadlines.expired(now_s):
            previous = self._liveness.get(device_id)
            if previous is None or previous.status is not DeviceStatus.CONNECTED:
                continue
            current = Liveness(DeviceStatus.DISCONNECTED, previous.last_seen_ns)
            self._liveness[device_id] = current
            self._dirty.discard(device_id)
            rows.append((device_id, current))
            self._announce(
                device_id,
                kind="device_disconnected",
                severity=Severity.WARNING,
                message=f"device {device_id} has not polled for {self._deadlines.timeout_s:g} s",
                now_ns=now_ns,
            )
        if rows:
            self._writer.write_later([TouchDevices(tuple(rows))])
            _LOG.info("devices disconnected count=%d", len(rows), extra={"devices": len(rows)})
        return [device_id for device_id, _ in rows]

    def flush(self) -> None:
        """Queue the last-seen times changed since the previous flush."""
        if not self._dirty:
            return
        rows = tuple(
            (device_id, self._liveness[device_id])
            for device_id in self._dirty
            if device_id in self._liveness
        )
        self._dirty.clear()
        self._writer.write_later([TouchDevices(rows)])

    async def run(self, stop: asyncio.Event) -> None:
        """The watchdog and the last-seen writer, until ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watchdog(stop))
            group.create_task(self._flusher(stop))

    def _announce(
        self, device_id: str, *, kind: str, severity: Severity, message: str, now_ns: int
    ) -> None:
        seq = self._event_seq[device_id]
        self._event_seq[device_id] += 1
        self._publisher.publish(
            Event(
                device_id=device_id,
                seq=seq,
                t_ns=now_ns,
                kind=kind,
                severity=severity,
                message=message,
            )
        )

    async def _watchdog(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.check()
            deadline = self._deadlines.next_deadline()
            delay = _WATCHDOG_MAX_SLEEP_S
            if deadline is not None:
                delay = min(max(deadline - self._monotonic(), 0.005), _WATCHDOG_MAX_SLEEP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _flusher(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _FLUSH_INTERVAL_S)
            self.flush()
