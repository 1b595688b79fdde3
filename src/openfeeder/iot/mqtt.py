"""MQTT connections: one paho-mqtt (v5) client per broker context, with the scheme's QoS and retain.

:class:`MqttLink` is one connection to one broker: it connects in the background, reconnects with
back-off, re-subscribes after every reconnect, sets the last will, and dispatches each incoming
message to the handler of the first subscription whose filter matches. Handlers run on paho's network
thread and must be quick (hand the message to a queue and return); one that raises is logged and the
link keeps going.

:class:`Messenger` holds the two links of a device or service (``grid_ops`` and ``monitoring``,
:mod:`openfeeder.iot.topics`) and publishes each payload on the broker, QoS and retain flag its
message class prescribes; a status (birth) goes to both brokers, and each link's last will announces
the death of that connection. When both contexts name the same broker there are still two
connections, as in production, so the two traffic classes never share a TCP queue.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from openfeeder.config import BrokerSettings, BrokersSettings
from openfeeder.errors import MessagingError
from openfeeder.iot.schema import Payload, encode, publish_topic
from openfeeder.iot.topics import MESSAGE_SPECS, BrokerContext, QoS, Topic, TopicFilter

__all__ = ["MessageHandler", "Messenger", "MqttLink", "PublishHandle"]

_LOG = logging.getLogger(__name__)
_IDS = itertools.count()

MessageHandler = Callable[[str, bytes], None]
"""Called with the topic and the payload of each message a subscription receives."""

PublishCallback = Callable[[int], None]
"""Called on paho's thread with the message id once the broker acknowledged it (PUBACK)."""


@dataclass(frozen=True, slots=True)
class PublishHandle:
    """What :meth:`MqttLink.publish` queued: the MQTT message id and paho's delivery tracker."""

    mid: int
    info: paho.MQTTMessageInfo

    def wait(self, timeout_s: float) -> bool:
        """Block until the broker acknowledged the message; False on timeout."""
        try:
            self.info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            return False
        return self.info.is_published()


@dataclass(frozen=True, slots=True)
class _Subscription:
    topic_filter: TopicFilter
    qos: QoS
    handler: MessageHandler


class MqttLink:
    """One client connection to one broker, kept up in the background (paho network thread)."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str,
        will: tuple[Topic, bytes] | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        max_inflight: int = 100,
        on_published: PublishCallback | None = None,
        on_connection_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._settings = settings
        self.client_id = client_id
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._subscriptions: list[_Subscription] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopped = False
        self._on_published = on_published
        self._on_connection_change = on_connection_change
        self.handler_errors = 0
        self.connects = 0
        self.disconnects = 0
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=True,
        )
        client.max_inflight_messages_set(max_inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=8)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password())
        if settings.tls:
            context = ssl.create_default_context(
                cafile=str(settings.ca_file) if settings.ca_file else None
            )
            client.tls_set_context(context)
        if will is not None:
            topic, payload = will
            client.will_set(str(topic), payload, qos=int(QoS.AT_LEAST_ONCE), retain=True)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = None
        self._client = client

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; returns at once (see :meth:`wait_connected`)."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s
        try:
            self._client.connect_async(
                self._settings.host,
                self._settings.port,
                keepalive=self._settings.keepalive_s,
                clean_start=self._clean_start,
                properties=properties,
            )
        except (OSError, ValueError) as err:
            raise MessagingError(
                f"{self._settings.url}: cannot connect: {err}",
                topic="",
                reason="connect_failed",
            ) from err
        self._client.loop_start()

    def wait_connected(self, timeout_s: float | None = None) -> bool:
        return self._connected.wait(timeout_s if timeout_s is not None else self._timeout())

    def _timeout(self) -> float:
        return self._settings.connect_timeout_s

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, *, publish_will: bool = False) -> None:
        """Disconnect cleanly (no last will unless ``publish_will``) and stop the network thread."""
        self._stopped = True
        if publish_will:  # MQTT v5 reason 0x04: "disconnect with will message"
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        else:
            self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    # -- subscribe / publish -----------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: TopicFilter | str,
        handler: MessageHandler,
        *,
        qos: QoS = QoS.AT_LEAST_ONCE,
    ) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        flt = topic_filter if isinstance(topic_filter, TopicFilter) else TopicFilter(topic_filter)
        with self._lock:
            self._subscriptions.append(_Subscription(flt, qos, handler))
        if self.connected:
            self._client.subscribe(str(flt), qos=int(qos))

    def unsubscribe(self, topic_filter: TopicFilter | str) -> None:
        value = str(topic_filter)
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s.topic_filter.value != value]
        if self.connected:
            self._client.unsubscribe(value)

    def publish(
        self,
        topic: Topic | str,
        payload: bytes,
        *,
        qos: QoS = QoS.AT_LEAST_ONCE,
        retain: bool = False,
    ) -> PublishHandle:
        """Queue a message; paho sends it now or after reconnecting (QoS 1 is kept until acked)."""
        info = self._client.publish(str(topic), payload, qos=int(qos), retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MessagingError(
                f"{topic}: publish refused by the client: {paho.error_string(info.rc)}",
                topic=str(topic),
                reason="publish_failed",
            )
        return PublishHandle(info.mid, info)

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _handle_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            _LOG.warning(
                "mqtt connect refused url=%s client_id=%s reason=%s",
                self._settings.url,
                self.client_id,
                reason_code,
                extra={"url": self._settings.url, "client_id": self.client_id},
            )
            return
        with self._lock:
            subscriptions = list(self._subscriptions)
        if subscriptions:
            client.subscribe([(str(s.topic_filter), int(s.qos)) for s in subscriptions])
        self.connects += 1
        self._connected.set()
        _LOG.info(
            "mqtt connected url=%s client_id=%s",
            self._settings.url,
            self.client_id,
            extra={"url": self._settings.url, "client_id": self.client_id},
        )
        if self._on_connection_change is not None:
            self._on_connection_change(True)

    def _handle_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not was_connected:
            return
        self.disconnects += 1
        if not self._stopped:
            _LOG.warning(
                "mqtt connection lost url=%s client_id=%s reason=%s",
                self._settings.url,
                self.client_id,
                reason_code,
                extra={"url": self._settings.url, "client_id": self.client_id},
            )
        if self._on_connection_change is not None:
            self._on_connection_change(False)

    def _handle_message(
        self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage
    ) -> None:
        topic = message.topic
        with self._lock:
            subscriptions = self._subscriptions
        for subscription in subscriptions:
            if subscription.topic_filter.matches(topic):
                try:
                    subscription.handler(topic, bytes(message.payload))
                except Exception:  # a handler's bug must not take the connection down
                    self.handler_errors += 1
                    _LOG.exception(
                        "mqtt message handler failed topic=%s", topic, extra={"topic": topic}
                    )
                return

    def _handle_publish(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        _reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._on_published is not None:
            self._on_published(mid)


class Messenger:
    """The two broker connections of one device or service, publishing by the topic scheme."""

    def __init__(
        self,
        settings: BrokersSettings,
        *,
        client_id: str,
        will: Payload | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        max_inflight: int = 100,
        on_published: dict[BrokerContext, PublishCallback] | None = None,
    ) -> None:
        will_message = (publish_topic(will), encode(will)) if will is not None else None
        callbacks = on_published or {}
        self.links: dict[BrokerContext, MqttLink] = {
            context: MqttLink(
                getattr(settings, context.value),
                client_id=f"{client_id}.{context.value}",
                will=will_message,
                clean_start=clean_start,
                session_expiry_s=session_expiry_s,
                max_inflight=max_inflight,
                on_published=callbacks.get(context),
            )
            for context in BrokerContext
        }

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def wait_connected(self, timeout_s: float) -> bool:
        return all(link.wait_connected(timeout_s) for link in self.links.values())

    def stop(self) -> None:
        for link in self.links.values():
            link.stop()

    def link(self, context: BrokerContext) -> MqttLink:
        return self.links[context]

    def publish(self, payload: Payload) -> list[PublishHandle]:
        """Encode ``payload`` and publish it where its message class goes (one or both brokers)."""
        spec = MESSAGE_SPECS[payload.message_class]
        data = encode(payload)
        topic = publish_topic(payload)
        return [
            self.links[context].publish(topic, data, qos=spec.qos, retain=spec.retain)
            for context in spec.contexts
        ]

    def subscribe(
        self, topic_filter: TopicFilter, handler: MessageHandler, *, context: BrokerContext
    ) -> None:
        self.links[context].subscribe(topic_filter, handler)
