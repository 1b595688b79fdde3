"""Disconnect detection: which devices have been silent longer than the timeout.

Every poll or boot moves the device to the back of an ordered map with its new deadline
(``now + timeout`` on a monotonic clock); since the timeout is the same for every device, the map
stays sorted by deadline, so a poll costs O(1) and finding the silent devices costs O(silent): the
watchdog pops from the front while the front's deadline has passed.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["DeadlineQueue"]


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
