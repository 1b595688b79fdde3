"""How the catalog announces on MQTT: retained configurations and topology, liveness events.

The catalog never fails a request because a publish failed: the broker may be down, and a device
that misses a pushed configuration gets it at its next poll. :class:`MessengerPublisher` therefore
logs what it cannot send; paho keeps QoS 1 messages queued while disconnected and sends them after
reconnecting.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Protocol

from openfeeder.errors import MessagingError
from openfeeder.iot.mqtt import Messenger, PublishHandle
from openfeeder.iot.schema import Payload
from openfeeder.iot.topics import BrokerContext, QoS, Topic

__all__ = ["MessengerPublisher", "Publisher"]

_LOG = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where the catalog's MQTT messages go; never raises on a failed publish."""

    def publish(self, payload: Payload) -> None:
        """Publish on the topic, broker, QoS and retain flag of the payload's class."""

    def clear_retained(self, topic: Topic) -> None:
        """Remove the retained message of ``topic`` (an empty retained payload)."""

    def connected(self) -> dict[str, bool]:
        """Connection state per broker context."""


class MessengerPublisher:
    """A :class:`Publisher` over the catalog's :class:`~openfeeder.iot.mqtt.Messenger`."""

    def __init__(self, messenger: Messenger) -> None:
        self._messenger = messenger
        self._pending: collections.deque[PublishHandle] = collections.deque()
        self.failures = 0

    def publish(self, payload: Payload) -> None:
        try:
            handles = self._messenger.publish(payload)
        except MessagingError as err:
            self.failures += 1
            _LOG.warning(
                "catalog publish failed topic=%s: %s",
                err.topic,
                err,
                extra={"topic": err.topic, "reason": err.reason},
            )
            return
        self._track(handles)

    def clear_retained(self, topic: Topic) -> None:
        link = self._messenger.link(BrokerContext.GRID_OPS)
        try:
            handle = link.publish(topic, b"", qos=QoS.AT_LEAST_ONCE, retain=True)
        except MessagingError as err:
            self.failures += 1
            _LOG.warning("catalog could not clear %s: %s", topic, err, extra={"topic": str(topic)})
            return
        self._track([handle])

    def connected(self) -> dict[str, bool]:
        return {str(context): link.connected for context, link in self._messenger.links.items()}

    def drain(self, timeout_s: float) -> bool:
        """Block until the broker acknowledged what was published (False after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self._pending:
            if not all(self.connected().values()):
                return False  # nothing will be acknowledged before a reconnect
            if _settled(self._pending[0]):
                self._pending.popleft()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._pending[0].wait(remaining):
                return False
            self._pending.popleft()
        return True

    def _track(self, handles: list[PublishHandle]) -> None:
        pending = self._pending
        pending.extend(handles)
        while pending and _settled(pending[0]):
            pending.popleft()
        while len(pending) > 100_000:  # bounded: a broker that is down for long is not waited for
            pending.popleft()


def _settled(handle: PublishHandle) -> bool:
    """Acknowledged, or published while disconnected (paho resends it, but this handle never
    reports it: its ``is_published`` raises)."""
    try:
        return handle.info.is_published()
    except (RuntimeError, ValueError):
        return True
