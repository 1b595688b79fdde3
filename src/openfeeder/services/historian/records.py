"""What the historian stores and answers: rows, channel layouts, loss ranges, query results.

A measurement message becomes one row: device, ``seq``, ``t_ns``, the id of its *channel layout*
(the ordered channels with their units) and the values in that order, with the qualities as one
character per channel (``None`` when every value is good, the usual case). Layout ids are derived
from the layout's content, so every historian (and every restart) gives one layout the same id
without asking the database.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NamedTuple

from openfeeder.iot.schema import Measurement, Quality, Unit

__all__ = [
    "QUALITY_CODES",
    "BatchResult",
    "Bucket",
    "ChannelInfo",
    "DeviceSummary",
    "Layout",
    "LayoutRegistry",
    "LossRange",
    "MessageRow",
    "RawPoint",
    "quality_at",
]

QUALITY_CODES: Final[Mapping[Quality, str]] = MappingProxyType(
    {Quality.GOOD: "g", Quality.SUSPECT: "s", Quality.INVALID: "i", Quality.SUBSTITUTED: "x"}
)
"""One character per reading in the ``quality`` column; the column is NULL when all are good."""
_QUALITY_BY_CODE: Final = {code: quality for quality, code in QUALITY_CODES.items()}


def quality_at(codes: str | None, position: int) -> Quality:
    """The quality of the reading at ``position`` (0-based) from a row's ``quality`` column."""
    if codes is None:
        return Quality.GOOD
    return _QUALITY_BY_CODE[codes[position]]


@dataclass(frozen=True, slots=True)
class Layout:
    """The channels of a message, in order, with their units; ``layout_id`` derives from them."""

    layout_id: int
    channels: tuple[str, ...]
    units: tuple[str, ...]

    @classmethod
    def of(cls, pairs: tuple[tuple[str, str], ...]) -> Layout:
        text = ";".join(f"{channel}:{unit}" for channel, unit in pairs)
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        layout_id = int.from_bytes(digest[:8], "big") & (2**63 - 1)  # a positive int64
        return cls(layout_id, tuple(c for c, _ in pairs), tuple(u for _, u in pairs))


class MessageRow(NamedTuple):
    """One measurement message as stored."""

    device_id: str
    seq: int
    t_ns: int
    layout_id: int
    values: list[float]
    quality: str | None


@dataclass(frozen=True, slots=True)
class LossRange:
    """A device announced that it dropped ``first_seq..last_seq`` for good (``data_dropped``)."""

    device_id: str
    first_seq: int
    last_seq: int
    t_ns: int


class LayoutRegistry:
    """Layouts seen so far, by channel/unit pairs and by id; safe to share between threads."""

    def __init__(self) -> None:
        self._by_pairs: dict[tuple[tuple[str, Unit], ...], Layout] = {}
        self._by_id: dict[int, Layout] = {}
        self._lock = threading.Lock()

    def row_of(self, message: Measurement) -> MessageRow:
        """The stored form of a decoded measurement (on the hot path: kept lean)."""
        readings = message.values
        pairs = tuple([(r.channel, r.unit) for r in readings])
        layout = self._by_pairs.get(pairs)
        if layout is None:
            layout = self._register(pairs)
        qualities = [r.quality for r in readings]
        quality: str | None = None
        if qualities.count(Quality.GOOD) != len(qualities):
            quality = "".join([QUALITY_CODES[q] for q in qualities])
        return MessageRow(
            message.device_id,
            message.seq,
            message.t_ns,
            layout.layout_id,
            [r.value for r in readings],
            quality,
        )

    def _register(self, pairs: tuple[tuple[str, Unit], ...]) -> Layout:
        layout = Layout.of(tuple((channel, unit.value) for channel, unit in pairs))
        with self._lock:
            self._by_pairs[pairs] = layout
            self._by_id[layout.layout_id] = layout
        return layout

    def get(self, layout_id: int) -> Layout:
        return self._by_id[layout_id]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed batch did."""

    messages: int
    """Messages in the batch (after dropping repeats within it)."""
    inserted: int
    duplicates: int
    """Messages already stored before (redelivered or re-sent): ignored."""
    losses: int
    advanced: Mapping[str, int]
    """Devices whose committed mark moved, with the new mark."""
    resent: Mapping[str, int]
    """Devices that sent again what their mark already covered (they may have missed the mark),
    with their mark."""


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    device_id: str
    message_count: int
    first_t_ns: int | None
    last_t_ns: int | None
    high_water_seq: int | None
    """None while seq 0 is not accounted for."""


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    channel: str
    unit: str


@dataclass(frozen=True, slots=True)
class RawPoint:
    t_ns: int
    value: float
    quality: Quality


@dataclass(frozen=True, slots=True)
class Bucket:
    """Aggregates of one channel over ``[start_ns, start_ns + bucket)``; invalid values excluded."""

    start_ns: int
    avg: float | None
    min: float | None
    max: float | None
    count: int
