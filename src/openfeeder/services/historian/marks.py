"""Committed high-water marks: per device, how far every sequence number is durably accounted for.

A device's mark is the highest ``seq`` such that every ``seq`` from 0 up to it is either stored or
declared lost by the device (a ``data_dropped`` event). Sequence numbers arrive in any order and
more than once (QoS 1 redelivery, a meter re-sending its buffer, several historians splitting one
device's messages), so each device keeps, above its mark, the *runs* of sequence numbers it knows
to be accounted for: sorted, disjoint, non-adjacent closed intervals. The mark moves when the first
run starts right after it. Memory grows with the number of holes, not of messages.

:class:`MarkBook` holds every device's state; a batch works on copies (:meth:`MarkBook.stage`) that
replace the book's only once the database transaction that justified them has committed. Pure: no
clocks (times are passed in), no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["NO_MARK", "Hole", "MarkBook", "MarkChanges", "SeqRuns"]

NO_MARK = -1
"""The mark of a device none of whose sequence numbers is accounted for yet (seq 0 is missing)."""


@dataclass(frozen=True, slots=True)
class Hole:
    """Sequence numbers strictly between ``after`` and ``before`` are not known to be stored."""

    device_id: str
    after: int
    before: int


class SeqRuns:
    """One device: its mark and the runs of accounted-for sequence numbers above it."""

    __slots__ = ("_his", "_los", "mark")

    def __init__(self, mark: int = NO_MARK) -> None:
        self.mark = mark
        self._los: list[int] = []  # run starts, ascending; all > mark + 1
        self._his: list[int] = []  # run ends, _his[i] >= _los[i]; _los[i + 1] > _his[i] + 1

    def copy(self) -> SeqRuns:
        other = SeqRuns(self.mark)
        other._los = self._los.copy()
        other._his = self._his.copy()
        return other

    @property
    def has_runs(self) -> bool:
        """Something above the mark is accounted for: the mark waits at a hole."""
        return bool(self._los)

    @property
    def runs(self) -> list[tuple[int, int]]:
        """The runs above the mark as closed intervals ``(first, last)``, ascending."""
        return list(zip(self._los, self._his, strict=True))

    def add(self, first: int, last: int) -> None:
        """Sequence numbers ``first..last`` (inclusive) are accounted for."""
        first = max(first, self.mark + 1)
        if last < first:
            return
        los, his = self._los, self._his
        if first == self.mark + 1 and (not los or last < los[0] - 1):  # the usual, in-order case
            self.mark = last
            return
        # runs that touch or overlap [first - 1, last + 1] merge with it
        start = bisect.bisect_left(his, first - 1)
        stop = bisect.bisect_right(los, last + 1)
        if start < stop:
            first = min(first, los[start])
            last = max(last, his[stop - 1])
        los[start:stop] = [first]
        his[start:stop] = [last]
        if los[0] == self.mark + 1:
            self.mark = his[0]
            del los[0], his[0]

    def raise_mark(self, mark: int) -> None:
        """Everything up to ``mark`` is accounted for (e.g. another historian persisted it)."""
        if mark > self.mark:
            self.add(self.mark + 1, mark)

    def holes(self, device_id: str, *, limit: int) -> list[Hole]:
        """The first ``limit`` gaps between the mark and the runs (none without runs)."""
        holes: list[Hole] = []
        after = self.mark
        for first, last in zip(self._los, self._his, strict=True):
            if len(holes) >= limit:
                break
            holes.append(Hole(device_id, after, first))
            after = last
        return holes


@dataclass(slots=True)
class _HoleCheck:
    checked_before: int = NO_MARK  # holes ending at or below this were already looked up
    checked_ns: int = 0


@dataclass(slots=True)
class MarkChanges:
    """Working copies of some devices' states for one batch; see :meth:`MarkBook.stage`."""

    book: MarkBook
    states: dict[str, SeqRuns]
    known: frozenset[str]
    """Devices the book had before this batch (the others are new)."""
    hole_checks: dict[str, _HoleCheck] = field(default_factory=dict)

    def raise_marks(self, persisted: Mapping[str, int]) -> None:
        """Merge marks read from the database (written by this or another historian)."""
        for device_id, mark in persisted.items():
            self.states[device_id].raise_mark(mark)

    def add(self, device_id: str, first: int, last: int) -> None:
        self.states[device_id].add(first, last)

    def holes_to_check(
        self, *, now_ns: int, recheck_after_ns: int, per_device: int = 64
    ) -> list[Hole]:
        """Holes worth looking up in the database: new ones, and old ones not checked lately.

        Another historian in the same shared-subscription group may have stored what a hole
        lacks; a single historian finds nothing there except after a restart.
        """
        result: list[Hole] = []
        for device_id, state in self.states.items():
            holes = state.holes(device_id, limit=per_device)
            if not holes:
                continue
            check = self.book.hole_check(device_id)
            if now_ns - check.checked_ns >= recheck_after_ns:
                chosen, checked_ns = holes, now_ns
            else:
                chosen = [h for h in holes if h.before > check.checked_before]
                checked_ns = check.checked_ns
            if chosen:  # holes ascend, so the last chosen one ends highest
                result.extend(chosen)
                before = max(check.checked_before, chosen[-1].before)
                self.hole_checks[device_id] = _HoleCheck(before, checked_ns)
        return result

    def advanced(self) -> dict[str, int]:
        """Devices whose mark is above the book's (or that are new to it), with the new mark."""
        result: dict[str, int] = {}
        for device_id, state in self.states.items():
            if device_id not in self.known or state.mark > self.book.mark(device_id):
                result[device_id] = state.mark
        return result

    def apply(self) -> None:
        """The batch committed: the copies become the book's state."""
        self.book.replace(self.states, self.hole_checks)


class MarkBook:
    """Every device's mark and runs; changed only through :meth:`stage` / :meth:`MarkChanges.apply`."""

    def __init__(self, states: Mapping[str, SeqRuns] | None = None) -> None:
        self._states: dict[str, SeqRuns] = dict(states or {})
        self._hole_checks: dict[str, _HoleCheck] = {}
        self._holed = {device_id for device_id, state in self._states.items() if state.has_runs}

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def mark(self, device_id: str) -> int:
        state = self._states.get(device_id)
        return NO_MARK if state is None else state.mark

    def marks(self) -> dict[str, int]:
        """Every device's mark (a snapshot)."""
        return {device_id: state.mark for device_id, state in self._states.items()}

    def runs(self, device_id: str) -> list[tuple[int, int]]:
        state = self._states.get(device_id)
        return [] if state is None else state.runs

    def stage(self, device_ids: Iterable[str]) -> MarkChanges:
        """Copies of the states of ``device_ids`` (fresh ones for devices not seen yet)."""
        states: dict[str, SeqRuns] = {}
        known: set[str] = set()
        for device_id in device_ids:
            state = self._states.get(device_id)
            if state is None:
                states[device_id] = SeqRuns()
            else:
                states[device_id] = state.copy()
                known.add(device_id)
        return MarkChanges(self, states, frozenset(known))

    def hole_check(self, device_id: str) -> _HoleCheck:
        return self._hole_checks.get(device_id) or _HoleCheck()

    def replace(self, states: Mapping[str, SeqRuns], hole_checks: Mapping[str, _HoleCheck]) -> None:
        self._states.update(states)
        self._hole_checks.update(hole_checks)
        for device_id, state in states.items():
            if state.has_runs:
                self._holed.add(device_id)
            else:
                self._holed.discard(device_id)

    def stale_holes(self, *, now_ns: int, recheck_after_ns: int, limit: int) -> list[str]:
        """Devices whose mark waits at a hole not looked up in the database lately.

        Another historian of the group may have filled it since; without new messages from
        the device nothing else would look again.
        """
        stale: list[str] = []
        for device_id in self._holed:
            if now_ns - self.hole_check(device_id).checked_ns >= recheck_after_ns:
                stale.append(device_id)
                if len(stale) >= limit:
                    break
        return stale
