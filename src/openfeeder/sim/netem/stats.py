"""Counters of the emulated network, per traffic class and direction.

The relay's loop records every packet; :meth:`NetemCounters.snapshot` may be called from any thread
(a test, the twin's report) and returns frozen values, so the counters are guarded by a lock held
for a few additions per packet.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from openfeeder.sim.netem.config import Direction
from openfeeder.sim.netem.link import LinkDecision

__all__ = ["ClassStats", "NetemCounters", "NetemStats"]


@dataclass(frozen=True, slots=True)
class ClassStats:
    """What the emulator did to the packets of one class in one direction.

    ``packets``/``bytes`` count every packet that entered (dropped ones included); ``delayed`` the
    packets released later than they arrived; ``retransmitted`` the packets lost at least once (and
    delivered after retransmission), ``retransmissions`` the losses in total; ``dropped`` the QoS 0
    PUBLISHes that vanished (drop mode). Delays are those added by the emulator (serialization,
    propagation, queueing, retransmission, head-of-line waiting) over the released packets.
    """

    packets: int = 0
    bytes: int = 0
    delayed: int = 0
    retransmitted: int = 0
    retransmissions: int = 0
    dropped: int = 0
    total_added_delay_ms: float = 0.0
    max_added_delay_ms: float = 0.0

    @property
    def released(self) -> int:
        """Packets forwarded (entered minus dropped)."""
        return self.packets - self.dropped

    @property
    def mean_added_delay_ms(self) -> float:
        """Mean emulator delay over the forwarded packets (0 when none)."""
        return self.total_added_delay_ms / self.released if self.released else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "delayed": self.delayed,
            "retransmitted": self.retransmitted,
            "retransmissions": self.retransmissions,
            "dropped": self.dropped,
            "mean_added_delay_ms": self.mean_added_delay_ms,
            "max_added_delay_ms": self.max_added_delay_ms,
        }


_EMPTY = ClassStats()


@dataclass(frozen=True, slots=True)
class NetemStats:
    """A snapshot of the emulator's counters."""

    by_class: Mapping[tuple[str, Direction], ClassStats] = field(
        default_factory=lambda: MappingProxyType({})
    )
    connections_total: int = 0
    connections_open: int = 0

    def get(self, message_class: str, direction: Direction) -> ClassStats:
        """The counters of one class and direction (zeros if none of its packets passed)."""
        return self.by_class.get((message_class, direction), _EMPTY)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"connections_total", "connections_open", "classes": {cls: {dir: {...}}}}``."""
        classes: dict[str, dict[str, Any]] = {}
        for (name, direction), values in sorted(self.by_class.items()):
            classes.setdefault(name, {})[direction.value] = values.to_dict()
        return {
            "connections_total": self.connections_total,
            "connections_open": self.connections_open,
            "classes": classes,
        }


class _Accumulator:
    __slots__ = (
        "bytes",
        "delayed",
        "dropped",
        "max_delay_ms",
        "packets",
        "retransmissions",
        "retransmitted",
        "total_delay_ms",
    )

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.delayed = 0
        self.retransmitted = 0
        self.retransmissions = 0
        self.dropped = 0
        self.total_delay_ms = 0.0
        self.max_delay_ms = 0.0


class NetemCounters:
    """Mutable counters written by the relay loop, read as :class:`NetemStats` from anywhere."""

    __slots__ = ("_by_class", "_lock", "connections_open", "connections_total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_class: dict[tuple[str, Direction], _Accumulator] = {}
        self.connections_total = 0
        self.connections_open = 0

    def record(
        self, message_class: str, direction: Direction, size_bytes: int, decision: LinkDecision
    ) -> None:
        with self._lock:
            acc = self._by_class.get((message_class, direction))
            if acc is None:
                acc = self._by_class[(message_class, direction)] = _Accumulator()
            acc.packets += 1
            acc.bytes += size_bytes
            if decision.dropped:
                acc.dropped += 1
                return
            if decision.retransmissions:
                acc.retransmitted += 1
                acc.retransmissions += decision.retransmissions
            delay_ms = decision.added_delay_ms
            if delay_ms > 0.0:
                acc.delayed += 1
                acc.total_delay_ms += delay_ms
                acc.max_delay_ms = max(acc.max_delay_ms, delay_ms)

    def connection_opened(self) -> None:
        with self._lock:
            self.connections_total += 1
            self.connections_open += 1

    def connection_closed(self) -> None:
        with self._lock:
            self.connections_open -= 1

    def reset(self) -> None:
        """Forget the packet counters (connection counts stay)."""
        with self._lock:
            self._by_class.clear()

    def snapshot(self) -> NetemStats:
        with self._lock:
            by_class = {
                key: ClassStats(
                    packets=acc.packets,
                    bytes=acc.bytes,
                    delayed=acc.delayed,
                    retransmitted=acc.retransmitted,
                    retransmissions=acc.retransmissions,
                    dropped=acc.dropped,
                    total_added_delay_ms=acc.total_delay_ms,
                    max_added_delay_ms=acc.max_delay_ms,
                )
                for key, acc in self._by_class.items()
            }
            return NetemStats(
                MappingProxyType(by_class), self.connections_total, self.connections_open
            )
