"""A meter agent's MQTT side: its two broker connections, what it subscribes to, what it publishes.

:class:`AgentLinks` holds the agent's :class:`~openfeeder.iot.mqtt.Messenger` (one connection per
broker context, client ids ``<device>.grid_ops`` and ``<device>.monitoring``, each with the last
will ``Status(OFFLINE, reason="connection lost")``), built from the broker endpoints the catalog
hands out, with this machine's credentials, CA file and timeouts for each context, and on
``mqtts://`` the device's own certificate (mutual TLS). It

- subscribes to the device's filters (config, cmd, committed, topology) and to the input topics of
  its algorithms, each on the broker its message class travels on, and routes every incoming
  message through one handler (paho gives a message to the first matching subscription only):
  committed marks and configurations go to the agent; a command is taken once per ``command_id``
  (at-least-once delivery repeats it), answered ``rejected`` / ``expired`` when its ``deadline_ns``
  has passed in domain time, and otherwise handed to ``on_command`` (the agent's command worker,
  never run on the network thread) or, for a device with nothing to operate, answered ``rejected``;
  topology versions are noted, and everything is offered to the algorithms; payloads the codec
  refuses are counted, never fatal;
- publishes the retained birth ``Status(ONLINE, firmware, capabilities)`` on each connection as soon
  as it is (re)established, before any data on it (:meth:`AgentLinks.new_connections`), events,
  command acknowledgements, algorithm outputs and, on a clean stop,
  ``Status(OFFLINE, reason="shutdown")``;
- moves to other brokers when a new configuration names other endpoints;
- with payload protection (:mod:`openfeeder.iot.protection`), seals what it publishes as the policy
  says (acks as control, events as protection traffic; measurements only if monitoring is sealed)
  and opens every message it receives before anything else sees it.

Sequence numbers of events, statuses, acknowledgements and each algorithm's outputs count from 0 for
each run of the agent (measurements are numbered by the store, across runs).
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from pydantic import ValidationError

from openfeeder.config import BrokerSettings, BrokersSettings
from openfeeder.errors import MessagingError, SecurityError
from openfeeder.iot.agent.store import PublishTracker
from openfeeder.iot.device_settings import DeviceSettings
from openfeeder.iot.mqtt import MessageHandler, Messenger, NetworkLoop
from openfeeder.iot.protection import MessageProtection
from openfeeder.iot.schema import (
    AckStatus,
    AlgorithmOutput,
    Command,
    CommandAck,
    Committed,
    ConfigChange,
    Event,
    LinkState,
    Payload,
    Reading,
    RejectCounter,
    Severity,
    Status,
    TopologyChange,
    encode,
)
from openfeeder.iot.topics import (
    MESSAGE_SPECS,
    BrokerContext,
    MessageClass,
    QoS,
    measurement_topic,
    parse_topic,
    status_topic,
)

__all__ = ["AgentLinks"]

_LOG = logging.getLogger(__name__)


class AgentLinks:
    """The broker connections of one meter agent (see the module docstring)."""

    def __init__(
        self,
        local: BrokersSettings,
        *,
        device_id: str,
        firmware: str,
        capabilities: tuple[str, ...],
        clock_ns: Callable[[], int],
        on_committed: Callable[[int], None],
        on_config: Callable[[DeviceSettings], None],
        route: Callable[[str, bytes], None],
        on_monitoring_ack: Callable[[], None],
        on_command: Callable[[Command], None] | None = None,
        network: NetworkLoop | None = None,
        tls: ssl.SSLContext | None = None,
        protection: MessageProtection | None = None,
    ) -> None:
        """``clock_ns`` gives domain time (payload stamps, command deadlines); ``on_command``
        receives the commands this device must act on (None: it has nothing to operate);
        ``network``: the shared loop the connections run on (None: paho's threads); ``tls``: the
        context of ``mqtts://`` connections (the device's certificate; settable until
        :meth:`connect`); ``protection``: payload sealing and opening (settable until
        :meth:`connect`, :mod:`openfeeder.iot.protection`)."""
        self._network = network
        self.tls = tls
        self.protection = protection
        self.device_id = device_id
        self._local = local
        self._firmware = firmware
        self._capabilities = capabilities
        self._clock_ns = clock_ns
        self._on_committed = on_committed
        self._on_config = on_config
        self._route = route
        self._on_monitoring_ack = on_monitoring_ack
        self._on_command = on_command
        self._lock = threading.RLock()
        self._messenger: Messenger | None = None
        self._endpoints: object = None
        self._subscribed: set[tuple[BrokerContext, str]] = set()
        self._wanted: list[str] = []
        self._seen_connects: dict[BrokerContext, int] = {}
        self._rejects = RejectCounter(logger=_LOG)
        self._event_seq = itertools.count()
        self._status_seq = itertools.count()
        self._ack_seq = itertools.count()
        # events and acks come from several threads (loop, command worker, the twin's): numbering
        # and publishing under one lock keeps each topic's seq in the order of publication
        self._numbering = threading.Lock()
        self._algo_seq: dict[str, itertools.count[int]] = {}
        self._seen_commands: deque[str] = deque(maxlen=256)
        self.topology_version: int | None = None
        self._measurement_topic = str(measurement_topic(device_id))  # built (validated) once
        self.outputs_dropped = 0

    # -- connections ---------------------------------------------------------------------------

    def connect(self, settings: DeviceSettings) -> None:
        """Connect to the settings' brokers (in the background), or move there if they changed."""
        with self._lock:
            if self._messenger is not None and settings.brokers == self._endpoints:
                return
            old = self._messenger
            self._messenger = self._new_messenger(settings)
            self._endpoints = settings.brokers
            self._seen_connects = {}
            self._subscribed = set()
            self._sync_subscriptions()
            self._messenger.start()
        if old is not None:
            self._publish_status(old, LinkState.OFFLINE, reason="moved to other brokers", wait_s=1)
            old.stop()

    def wait_connected(self, context: BrokerContext, timeout_s: float) -> bool:
        messenger = self._messenger
        return messenger is not None and messenger.link(context).wait_connected(timeout_s)

    def wait_subscribed(self, context: BrokerContext, timeout_s: float) -> bool:
        """Connected to ``context`` and every subscription sent there answered (a command
        published before the SUBACK would find no subscription)."""
        messenger = self._messenger
        return messenger is not None and messenger.link(context).wait_subscribed(timeout_s)

    def connected(self, context: BrokerContext) -> bool:
        messenger = self._messenger
        return messenger is not None and messenger.link(context).connected

    @property
    def connection_states(self) -> Mapping[str, bool]:
        return {str(context): self.connected(context) for context in BrokerContext}

    @property
    def rejected(self) -> int:
        """Incoming payloads the codec refused."""
        return self._rejects.total

    def new_connections(self) -> list[BrokerContext]:
        """Contexts (re)connected since the last call; the birth is published on each first."""
        with self._lock:
            messenger = self._messenger
            if messenger is None:
                return []
            fresh = []
            for context, link in messenger.links.items():
                connects = link.connects
                if connects == self._seen_connects.get(context, 0) or not link.connected:
                    continue
                self._seen_connects[context] = connects
                status = self._status(LinkState.ONLINE)
                link.publish(status_topic(self.device_id), encode(status), retain=True)
                fresh.append(context)
            return fresh

    def close(self) -> None:
        """Publish the shutdown status (waiting briefly for the broker) and disconnect."""
        with self._lock:
            messenger, self._messenger = self._messenger, None
        if messenger is not None:
            self._publish_status(messenger, LinkState.OFFLINE, reason="shutdown", wait_s=2.0)
            messenger.stop()

    def _new_messenger(self, settings: DeviceSettings) -> Messenger:
        will = Status(
            device_id=self.device_id,
            seq=0,
            t_ns=self._clock_ns(),
            state=LinkState.OFFLINE,
            reason="connection lost",
        )
        return Messenger(
            self._brokers(settings),
            client_id=self.device_id,
            will=will,
            on_published={BrokerContext.MONITORING: lambda _mid: self._on_monitoring_ack()},
            network=self._network,
            tls=self.tls,
            protection=self.protection,
        )

    def _brokers(self, settings: DeviceSettings) -> BrokersSettings:
        """The catalog's endpoints, with this machine's credentials and timeouts per context."""
        contexts: dict[str, BrokerSettings] = {}
        for context in BrokerContext:
            mine: BrokerSettings = getattr(self._local, context.value)
            endpoint = settings.brokers.get(context)
            contexts[context.value] = (
                mine
                if endpoint is None
                else mine.model_copy(
                    update={"url": endpoint.url, "username": endpoint.username or mine.username}
                )
            )
        return BrokersSettings(**contexts)

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, filters: Iterable[str]) -> None:
        """Subscribe to exactly ``filters`` (each on its message class's broker); diff applied."""
        with self._lock:
            self._wanted = list(dict.fromkeys(filters))
            self._sync_subscriptions()

    def _sync_subscriptions(self) -> None:
        messenger = self._messenger
        if messenger is None:
            return
        wanted: set[tuple[BrokerContext, str]] = set()
        for flt in self._wanted:
            try:
                message_class = MessageClass(flt.split("/")[2])
            except (ValueError, IndexError):
                _LOG.warning("%s: cannot subscribe to %r (outside the scheme)", self.device_id, flt)
                continue
            wanted.add((MESSAGE_SPECS[message_class].contexts[0], flt))
        for context, flt in self._subscribed - wanted:
            messenger.link(context).unsubscribe(flt)
        handler: MessageHandler = self._on_message
        if self.protection is not None:  # opened (or dropped) before the agent sees it
            handler = self.protection.guard(handler)
        for context, flt in wanted - self._subscribed:
            messenger.link(context).subscribe(flt, handler, qos=QoS.AT_LEAST_ONCE)
        self._subscribed = wanted

    def _on_message(self, topic: str, payload: bytes) -> None:
        """The one handler of every subscription (paho's thread): the agent's, then plug-ins'."""
        try:
            parsed = parse_topic(topic)
        except MessagingError:
            self._route(topic, payload)
            return
        kind = parsed.message_class
        if parsed.device_id in (None, self.device_id) and payload:
            if kind is MessageClass.COMMITTED:
                committed = self._rejects.safe_decode(kind, payload, topic=topic)
                if isinstance(committed, Committed):
                    self._on_committed(committed.high_water_seq)
            elif kind is MessageClass.CONFIG:
                self._handle_config(topic, payload)
            elif kind is MessageClass.COMMAND:
                self._handle_command(topic, payload)
            elif kind is MessageClass.TOPOLOGY:
                change = self._rejects.safe_decode(kind, payload, topic=topic)
                if isinstance(change, TopologyChange):
                    self.topology_version = change.topology_version
        self._route(topic, payload)

    def _handle_config(self, topic: str, payload: bytes) -> None:
        decoded = self._rejects.safe_decode(MessageClass.CONFIG, payload, topic=topic)
        if not isinstance(decoded, ConfigChange):
            return
        try:
            settings = DeviceSettings.model_validate(decoded.settings)
        except ValidationError as err:
            _LOG.warning("%s: pushed configuration refused: %s", self.device_id, err)
            return
        if settings.device_id != self.device_id:
            _LOG.warning("%s: pushed configuration is for %s", self.device_id, settings.device_id)
            return
        self._on_config(settings)

    def _handle_command(self, topic: str, payload: bytes) -> None:
        decoded = self._rejects.safe_decode(MessageClass.COMMAND, payload, topic=topic)
        if not isinstance(decoded, Command) or decoded.command_id in self._seen_commands:
            return
        self._seen_commands.append(decoded.command_id)
        now_ns = self._clock_ns()
        log_extra = {"device_id": self.device_id, "command_id": decoded.command_id}
        if decoded.deadline_ns is not None and decoded.deadline_ns < now_ns:
            _LOG.warning(
                "%s: command %s (%s) expired %.3f s ago (domain time)",
                self.device_id,
                decoded.command_id,
                decoded.action,
                (now_ns - decoded.deadline_ns) / 1e9,
                extra=log_extra,
            )
            self.publish_ack(decoded.command_id, AckStatus.REJECTED, "expired")
            return
        if self._on_command is None:
            self.publish_ack(
                decoded.command_id, AckStatus.REJECTED, "a meter has nothing to operate"
            )
            return
        _LOG.info(
            "%s: command %s: %s %d",
            self.device_id,
            decoded.command_id,
            decoded.action,
            decoded.target_id,
            extra=log_extra,
        )
        self._on_command(decoded)

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, payload: Payload) -> None:
        """Publish where the message class goes; queued by paho while a broker is away."""
        messenger = self._messenger
        if messenger is None:
            _LOG.warning(
                "%s: not connected, %s not published", self.device_id, payload.message_class
            )
            return
        try:
            messenger.publish(payload)
        except (MessagingError, SecurityError) as err:  # SecurityError: no key to seal it
            _LOG.warning("%s: not published: %s", self.device_id, err)

    def emit_event(
        self, kind: str, severity: Severity, message: str, values: Sequence[Reading] = ()
    ) -> None:
        """Publish an ``Event`` about this meter on the grid_ops broker (any thread)."""
        with self._numbering:
            self.publish(
                Event(
                    device_id=self.device_id,
                    seq=next(self._event_seq),
                    t_ns=self._clock_ns(),
                    kind=kind,
                    severity=severity,
                    message=message[:2048],
                    values=tuple(values),
                )
            )

    def publish_ack(self, command_id: str, status: AckStatus, detail: str = "") -> None:
        """Publish a ``CommandAck`` for ``command_id`` on the grid_ops broker (any thread)."""
        with self._numbering:
            self.publish(
                CommandAck(
                    device_id=self.device_id,
                    seq=next(self._ack_seq),
                    t_ns=self._clock_ns(),
                    command_id=command_id,
                    status=status,
                    detail=detail[:2048],
                )
            )

    def publish_measurement(self, payload: bytes) -> PublishTracker:
        """One encoded measurement on the monitoring broker (the store-and-forward path)."""
        messenger = self._messenger
        if messenger is None:
            raise MessagingError("not connected", topic="", reason="not_connected")
        link = messenger.link(BrokerContext.MONITORING)
        if self.protection is not None:  # sealed only when the policy seals monitoring traffic
            payload = self.protection.seal(self._measurement_topic, payload)
        return link.publish(self._measurement_topic, payload).info

    def publish_outputs(
        self, algorithm: str, version: str, readings: tuple[Reading, ...], t_ns: int | None
    ) -> None:
        """An algorithm's outputs; dropped (counted) while the monitoring broker is away."""
        if not self.connected(BrokerContext.MONITORING):
            self.outputs_dropped += 1  # outputs are not store-and-forwarded
            return
        counter = self._algo_seq.setdefault(algorithm, itertools.count())
        self.publish(
            AlgorithmOutput(
                device_id=self.device_id,
                seq=next(counter),
                t_ns=t_ns if t_ns is not None else self._clock_ns(),
                algorithm=algorithm,
                algorithm_version=version,
                outputs=readings,
            )
        )

    def _status(self, state: LinkState, reason: str = "") -> Status:
        return Status(
            device_id=self.device_id,
            seq=next(self._status_seq),
            t_ns=self._clock_ns(),
            state=state,
            reason=reason,
            firmware=self._firmware,
            capabilities=self._capabilities,
        )

    def _publish_status(
        self, messenger: Messenger, state: LinkState, *, reason: str, wait_s: float
    ) -> None:
        data = encode(self._status(state, reason))
        for link in messenger.links.values():
            if link.connected:
                link.publish(status_topic(self.device_id), data, retain=True).wait(wait_s)
