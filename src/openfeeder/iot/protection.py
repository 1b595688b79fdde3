"""Payload protection on the messaging path: what a :class:`~openfeeder.iot.mqtt.Messenger` seals
when it publishes, opens when it receives, and what it does about a message that fails.

:class:`MessageProtection` wraps a :class:`~openfeeder.security.payload.PayloadProtector` for one
device or service. Publishing seals a payload when its message class's traffic class is protected
(by default control and protection traffic; monitoring stays TLS only) and passes it unchanged
otherwise. Receiving opens it before the subscriber's handler sees it; a message that fails (a
replay, a reorder beyond the window, a flipped bit, a plaintext or downgraded message, an unknown
key) is dropped, counted by reason, logged, written to the audit log when one is configured, and
answered with a security :class:`~openfeeder.iot.schema.Event` (kind ``payload_rejected``) on this
end's own event topic. Events are limited to one per sender and reason every ``event_interval_s``;
the next one carries how many were suppressed in between.

Topics outside the scheme (``$SYS/...``) pass through untouched; ``status`` is never sealed (a last
will is fixed at connection time, see :mod:`openfeeder.security.payload`); an empty payload on a
retained class (``config``, ``topology``, ``committed``) passes too: it is how MQTT clears a retained
message (the catalog does when a device is deleted), and it carries no content.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from openfeeder.config import PayloadProtectionSettings
from openfeeder.errors import ConfigError, SecurityError
from openfeeder.iot.schema import Event, Payload, Quality, Reading, Severity, Unit
from openfeeder.iot.topics import MESSAGE_SPECS, TOPIC_PREFIX, Topic
from openfeeder.security.audit import AuditKind, AuditLog
from openfeeder.security.keys import (
    KeyStore,
    StoreResolver,
    load_master_key,
    open_issued_bundle,
)
from openfeeder.security.payload import (
    Algorithm,
    KeyResolver,
    PayloadProtector,
    PayloadRejectedError,
    ProtectionPolicy,
    Route,
    TrafficClass,
)

__all__ = ["SECURITY_EVENT_KIND", "MessageProtection", "protection_from_settings"]

_LOG = logging.getLogger(__name__)
SECURITY_EVENT_KIND = "payload_rejected"
_PREFIX_LEVELS = TOPIC_PREFIX.split("/")
_RETAINED = frozenset(str(c) for c, spec in MESSAGE_SPECS.items() if spec.retain)

Handler = Callable[[str, bytes], None]

#: Topics a protection remembers the routes of; emptied when full (topics are per device, so a
#: service that hears many devices refills it as it goes).
_TOPIC_CACHE_SIZE: Final = 4096


class MessageProtection:
    """Seal, open and react, for one device or service (``event_device_id`` names it)."""

    def __init__(
        self,
        protector: PayloadProtector,
        *,
        event_device_id: str,
        event_interval_s: float = 1.0,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.protector = protector
        self.event_device_id = event_device_id
        self._event_interval_s = event_interval_s
        self._audit = audit
        self._clock = clock
        self._publish: Callable[[Payload], object] | None = None
        self._lock = threading.Lock()
        self._last_event: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._event_seq = itertools.count()
        self._routes: dict[str, Route | None] = {}
        self.events_published = 0

    def attach(self, publish: Callable[[Payload], object]) -> None:
        """Where security events go (the owning Messenger's ``publish``)."""
        self._publish = publish

    def _route(self, topic: str) -> Route | None:
        """The protector's route for a scheme topic (kept), None for other topics."""
        if topic in self._routes:
            return self._routes[topic]
        route = None
        levels = topic.split("/")
        if len(levels) >= 3 and levels[:2] == _PREFIX_LEVELS:
            message_class = levels[2]
            route = self.protector.route(
                topic=topic,
                message_class=message_class,
                device_id=levels[3] if len(levels) > 3 else "",
                retained=message_class in _RETAINED,
            )
        if len(self._routes) >= _TOPIC_CACHE_SIZE:
            self._routes.clear()
        self._routes[topic] = route
        return route

    def seal(self, topic: Topic | str, data: bytes) -> bytes:
        """``data`` sealed for ``topic`` when its class is protected, else ``data`` itself."""
        name = topic.value if isinstance(topic, Topic) else topic
        route = self._routes.get(name) or self._route(name)
        if route is None:
            return data
        return self.protector.seal_routed(data, route)

    def guard(self, handler: Handler) -> Handler:
        """``handler`` behind the checks: it is called with opened payloads only."""
        open_routed = self.protector.open_routed
        routes = self._routes
        route_of = self._route

        def guarded(topic: str, data: bytes) -> None:
            route = routes.get(topic) or route_of(topic)
            if route is None or (not data and route.retained):
                # outside the scheme, or a retained message being cleared (an empty payload
                # carries nothing; handlers take it as "no current message")
                handler(topic, data)
                return
            try:
                plaintext = open_routed(data, route)[0]
            except PayloadRejectedError as err:
                self._rejected(err, size_bytes=len(data))
                return
            handler(topic, plaintext)

        return guarded

    def _rejected(self, err: PayloadRejectedError, *, size_bytes: int) -> None:
        sender = err.sender_id or "?"
        _LOG.warning(
            "protected payload rejected reason=%s topic=%s sender=%s: %s",
            err.reason,
            err.topic,
            sender,
            err,
            extra={
                "reason": str(err.reason),
                "topic": err.topic,
                "sender": sender,
                "size_bytes": size_bytes,
            },
        )
        if self._audit is not None:
            try:
                self._audit.append(
                    AuditKind.SECURITY,
                    self.event_device_id,
                    SECURITY_EVENT_KIND,
                    err.topic,
                    {"reason": str(err.reason), "sender": sender, "detail": str(err)},
                )
            except SecurityError:
                _LOG.exception("audit log not written for a rejected payload topic=%s", err.topic)
        key = (sender, str(err.reason))
        now = self._clock()
        with self._lock:
            last = self._last_event.get(key)
            if last is not None and now - last < self._event_interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last_event[key] = now
            suppressed = self._suppressed.pop(key, 0)
            seq = next(self._event_seq)
        self._emit(err, sender=sender, suppressed=suppressed, seq=seq)

    def _emit(self, err: PayloadRejectedError, *, sender: str, suppressed: int, seq: int) -> None:
        if self._publish is None:
            return
        total = self.protector.rejected_total
        event = Event(
            device_id=self.event_device_id,
            seq=seq,
            t_ns=time.time_ns(),
            kind=SECURITY_EVENT_KIND,
            severity=Severity.ALARM,
            message=f"{err.reason} from {sender}: {err}"[:2048],
            values=(
                Reading(channel="rejected_total", value=total, unit=Unit.ONE, quality=Quality.GOOD),
                Reading(
                    channel="suppressed", value=suppressed, unit=Unit.ONE, quality=Quality.GOOD
                ),
            ),
        )
        try:
            self._publish(event)
            self.events_published += 1
        except (SecurityError, ValueError) as publish_error:
            _LOG.error(
                "security event not published device=%s: %s", self.event_device_id, publish_error
            )

    @property
    def rejected(self) -> dict[str, int]:
        """Rejections so far by reason."""
        return {str(reason): count for reason, count in self.protector.rejected.items()}


def _policy(settings: PayloadProtectionSettings) -> ProtectionPolicy:
    return ProtectionPolicy(
        algorithms={
            TrafficClass.CONTROL: Algorithm(settings.control),
            TrafficClass.PROTECTION: Algorithm(settings.protection),
            TrafficClass.MONITORING: Algorithm(settings.monitoring),
        }
    )


def protection_from_settings(
    settings: PayloadProtectionSettings,
    *,
    sender_id: str,
    event_device_id: str | None = None,
    keys: KeyResolver | None = None,
    environ: Mapping[str, str] | None = None,
) -> MessageProtection | None:
    """The protection ``settings`` describe for ``sender_id``; None when it is disabled.

    ``sender_id`` names this end in every envelope (receivers keep a replay window per sender):
    a service passes its MQTT client id, unique per run. ``event_device_id`` is where security
    events go (``event/<id>``, default ``sender_id``): a service passes its identity (certificate
    CN), whose event topic the ACL lets it publish on. ``keys`` overrides where keys come from (a
    device whose bundle the catalog delivers, :mod:`openfeeder.iot.agent.payload_keys`); otherwise
    with ``key_dir`` they come from the key store (services), with ``key_bundle`` and ``kek_file``
    from the bundle issued to a device.
    """
    if not settings.enabled:
        return None
    audit = AuditLog(settings.audit_log) if settings.audit_log is not None else None
    if keys is None:
        keys = _configured_keys(settings, audit=audit, environ=environ)
    protector = PayloadProtector(
        keys, sender_id=sender_id, policy=_policy(settings), replay_window=settings.replay_window
    )
    return MessageProtection(
        protector,
        event_device_id=event_device_id or sender_id,
        event_interval_s=settings.event_interval_s,
        audit=audit,
    )


def _configured_keys(
    settings: PayloadProtectionSettings,
    *,
    audit: AuditLog | None,
    environ: Mapping[str, str] | None,
) -> KeyResolver:
    """The key store (``key_dir``) or the issued bundle (``key_bundle`` + ``kek_file``)."""
    try:
        if settings.key_dir is not None:
            master = load_master_key(settings.master_key_file, environ=environ)
            return StoreResolver(KeyStore(settings.key_dir, master_key=master, audit=audit))
        if settings.key_bundle is not None and settings.kek_file is not None:
            return open_issued_bundle(
                _read_json(settings.key_bundle), kek=_read_kek(settings.kek_file)
            )
    except SecurityError as err:
        raise ConfigError(f"payload_protection: {err}") from err
    raise ConfigError(
        "payload_protection: enabled, but neither key_dir (services) nor key_bundle and "
        "kek_file (devices) is set"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"payload_protection.key_bundle: cannot read {path}: {err}") from err
    if not isinstance(document, dict):
        raise ConfigError(f"payload_protection.key_bundle: {path} is not a JSON object")
    return document


def _read_kek(path: Path) -> bytes:
    try:
        raw = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"payload_protection.kek_file: cannot read {path}: {err}") from err
    if len(raw) != 32:
        raise ConfigError(f"payload_protection.kek_file: {path} must hold 32 bytes (base64)")
    return raw
