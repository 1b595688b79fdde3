"""Publishing committed marks: a retained ``Committed`` per device on the grid_ops broker.

After each committed batch the writer hands over the devices whose mark advanced. A device's mark
is published at most every ``committed_interval_ms``; a mark that advanced within the interval is
published when the interval ends (the latest one, never a stale one), so the last mark of a stream
always goes out. A device that sends again what its mark already covers has evidently missed the
mark: it is *reminded* (its mark published again, same throttle). After every (re)connect all marks
are published again, since publishes in flight when a connection dropped are not re-sent. Marks due
together go out in one write; publication runs on its own thread so that the writer never waits
for MQTT. ``seq`` is this historian's own counter per device (from 0 at each start).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

from openfeeder.errors import MessagingError
from openfeeder.iot.schema import Committed, encode
from openfeeder.iot.topics import committed_topic
from openfeeder.services.historian.lean_link import LeanLink, OutgoingMessage, PublishAck
from openfeeder.services.historian.records import BatchResult

__all__ = ["CommittedPublisher"]

_LOG = logging.getLogger("openfeeder.services.historian")
_TICK_S: Final = 0.02


class CommittedPublisher:
    """Publishes each device's latest committed mark, throttled per device."""

    def __init__(
        self,
        link: LeanLink,
        *,
        interval_ms: int,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._link = link
        self._interval_s = interval_ms / 1000
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}  # device -> mark waiting to be published
        self._due: list[tuple[float, str]] = []  # (monotonic time, device) heap of pending ones
        self._last_sent_s: dict[str, float] = {}
        self._published: dict[str, int] = {}  # device -> last mark published (or being)
        self._seq: dict[str, int] = {}
        self._last_ack: PublishAck | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="historian-marks", daemon=True)
        self.published = 0
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def on_batch(self, result: BatchResult) -> None:
        """From the writer's thread after a commit."""
        self.update(result.advanced)
        self.update(result.resent, remind=True)

    def update(self, marks: Mapping[str, int], *, remind: bool = False) -> None:
        """Schedule these marks; negative ones (nothing committed) are skipped.

        Without ``remind`` a mark is published only if it is above the last one published.
        """
        now = time.monotonic()
        with self._lock:
            for device_id, mark in marks.items():
                published = self._published.get(device_id, -1)
                if mark < 0 or mark < published or (mark == published and not remind):
                    continue
                if device_id not in self._pending:
                    last = self._last_sent_s.get(device_id)
                    due = now if last is None else max(now, last + self._interval_s)
                    heapq.heappush(self._due, (due, device_id))
                self._pending[device_id] = max(mark, self._pending.get(device_id, -1))
        self._wake.set()

    def seed(self, marks: Mapping[str, int]) -> None:
        """Marks already committed (at start): published at the next :meth:`republish_all`."""
        with self._lock:
            self._published.update({d: m for d, m in marks.items() if m >= 0})

    def republish_all(self) -> None:
        """Publish every mark again at once (after a reconnect)."""
        with self._lock:
            marks = dict(self._published)
            self._last_sent_s.clear()
        self.update(marks, remind=True)

    def published_mark(self, device_id: str) -> int | None:
        return self._published.get(device_id)

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Publish everything pending now, wait (bounded) for the broker's ack, end the thread."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._publish_due(flush=True)
        ack = self._last_ack
        if ack is not None and not ack.wait(timeout_s):
            _LOG.warning("last committed marks not acknowledged by the broker before stopping")

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(_TICK_S)
            self._wake.clear()
            self._publish_due(flush=False)

    def _publish_due(self, *, flush: bool) -> None:
        now = time.monotonic()
        batch: list[tuple[str, int]] = []
        with self._lock:
            while self._due and (flush or self._due[0][0] <= now):
                _, device_id = heapq.heappop(self._due)
                mark = self._pending.pop(device_id, None)
                if mark is not None:
                    batch.append((device_id, mark))
                    self._last_sent_s[device_id] = now
                    self._published[device_id] = mark
        if not batch:
            return
        t_ns = self._clock_ns()
        messages: list[OutgoingMessage] = []
        for device_id, mark in batch:
            seq = self._seq.get(device_id, 0)
            self._seq[device_id] = seq + 1
            payload = Committed(device_id=device_id, seq=seq, t_ns=t_ns, high_water_seq=mark)
            messages.append((committed_topic(device_id), encode(payload), True))
        try:
            self._last_ack = self._link.publish_many(messages)
        except MessagingError as err:  # not connected: all marks go out again on connect
            self.errors += 1
            _LOG.warning(
                "%d committed marks not published: %s",
                len(messages),
                err,
                extra={"size": len(messages)},
            )
            return
        self.published += len(messages)
