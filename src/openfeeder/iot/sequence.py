"""Sequence tracking: tell loss, duplicates, reordering and restarts apart from sequence numbers.

Every payload carries ``seq``, counting from 0 at each birth of its publisher. A subscriber keeps one
:class:`SequenceTracker` per message class (keyed by device, or device and algorithm for algorithm
outputs) and counts what it observes. Pure: no clocks, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["SeqKind", "SeqObservation", "SequenceTracker"]


class SeqKind(StrEnum):
    NEW = "new"  # the next one expected, or the first seen from this device
    DUPLICATE = "duplicate"  # seen before (or too old to tell: older than the window)
    GAP = "gap"  # ahead of the next expected; ``missing`` were skipped
    REORDERED = "reordered"  # a late arrival filling an earlier gap
    RESET = "reset"  # seq 0 again: the device started a new session


@dataclass(frozen=True, slots=True)
class SeqObservation:
    kind: SeqKind
    missing: int = 0
    """Messages skipped, for GAP; 0 otherwise."""


@dataclass(slots=True)
class _Stream:
    last_seq: int | None = None  # highest seq of the current session; None before the first
    seen_mask: int = 0  # bit i set: seq last_seq - i was received (i < window)
    birth_pending: bool = False  # a birth was announced; the next message starts a session


class SequenceTracker:
    """Per device, classifies each message's ``seq``: new, duplicate, gap, reordered or reset.

    Each topic has its own sequence, so use one tracker per message class, and key algorithm
    outputs by device and algorithm (any string works as the key). Pure: no clock, no I/O. Remembers which of the last ``window`` sequence numbers arrived, so a late
    message inside the window is told apart from a duplicate; older ones count as duplicates.

    A new session starts at seq 0. After :meth:`birth` (the device's ONLINE status), the next
    message opens the session: seq 0 is RESET (NEW for a device never seen), seq n > 0 a GAP of n.
    Without a birth seen, seq 0 after higher numbers is still taken as a RESET (the birth may have
    been lost); a duplicate of seq 0 arriving after later messages would be mistaken for one, which
    MQTT's in-order delivery per topic makes unlikely.
    """

    def __init__(self, *, window: int = 1024) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._window = window
        self._full_mask = (1 << window) - 1
        self._streams: dict[str, _Stream] = {}
        self._gaps_total = 0
        self._missing_total = 0
        self._duplicates_total = 0
        self._reordered_total = 0
        self._resets_total = 0

    def birth(self, device_id: str) -> None:
        """The device announced a new session: its next message restarts the sequence."""
        self._streams.setdefault(device_id, _Stream()).birth_pending = True

    def observe(self, device_id: str, seq: int) -> SeqObservation:
        """Classify ``seq`` from ``device_id`` and update the counters."""
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        stream = self._streams.setdefault(device_id, _Stream())
        if stream.birth_pending or stream.last_seq is None:
            return self._start(stream, seq)
        last = stream.last_seq
        if seq > last:
            shift = seq - last
            stream.last_seq = seq
            if shift >= self._window:  # nothing remembered survives; and never shift by 10**12
                stream.seen_mask = 1
            else:
                stream.seen_mask = ((stream.seen_mask << shift) | 1) & self._full_mask
            return SeqObservation(SeqKind.NEW) if shift == 1 else self._gap(shift - 1)
        if seq == 0 and last > 0:
            return self._start(stream, seq)
        offset = last - seq
        if offset >= self._window or stream.seen_mask >> offset & 1:
            self._duplicates_total += 1
            return SeqObservation(SeqKind.DUPLICATE)
        stream.seen_mask |= 1 << offset
        self._reordered_total += 1
        return SeqObservation(SeqKind.REORDERED)

    def _start(self, stream: _Stream, seq: int) -> SeqObservation:
        """Begin a session at ``seq``: after a birth, a first sighting, or seq 0 again."""
        previous, announced = stream.last_seq, stream.birth_pending
        stream.last_seq, stream.seen_mask, stream.birth_pending = seq, 1, False
        if announced and seq > 0:
            return self._gap(seq)
        if previous is not None and seq == 0:
            self._resets_total += 1
            return SeqObservation(SeqKind.RESET)
        return SeqObservation(SeqKind.NEW)

    def _gap(self, missing: int) -> SeqObservation:
        self._gaps_total += 1
        self._missing_total += missing
        return SeqObservation(SeqKind.GAP, missing=missing)

    def last_seq(self, device_id: str) -> int | None:
        """Highest seq seen in the device's current session, None if none yet."""
        stream = self._streams.get(device_id)
        return None if stream is None else stream.last_seq

    @property
    def gaps_total(self) -> int:
        """GAP observations so far."""
        return self._gaps_total

    @property
    def missing_total(self) -> int:
        """Messages reported missing by gaps (late arrivals do not lower it; see reordered_total)."""
        return self._missing_total

    @property
    def duplicates_total(self) -> int:
        return self._duplicates_total

    @property
    def reordered_total(self) -> int:
        """Late arrivals that filled a gap: ``missing_total - reordered_total`` were lost."""
        return self._reordered_total

    @property
    def resets_total(self) -> int:
        return self._resets_total
