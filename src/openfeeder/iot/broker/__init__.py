"""The embedded MQTT broker: pure asyncio, MQTT 3.1.1 and 5.0, installed with OpenFeeder.

The default install runs this broker so that a demo or a test needs nothing but ``pip``;
production uses Mosquitto. It keeps everything in memory (sessions, retained messages) and
supports QoS 0/1/2, retained messages, wills (with delay), persistent sessions with expiry,
shared subscriptions ``$share/{group}/{filter}``, No Local / Retain As Published / Retain Handling,
Receive Maximum and Maximum Packet Size both ways. Not supported: topic aliases (Topic Alias
Maximum 0), subscription identifiers, enhanced authentication (AUTH), persistence to disk.

``server`` holds :class:`Broker` (run by your event loop), :class:`BrokerThread` (its own thread
and loop, for tests, the demo and single-process tools), :func:`serve` and :func:`run_broker` (the
``openfeeder broker`` command); ``connection`` one client connection (framing, batching of writes,
protocol errors); ``session`` the per-client state, the delivery rules and :class:`BrokerLimits`;
``topic_tree`` the subscription index and retained store; ``packets``, ``codec``, ``properties``
and ``codes`` the MQTT wire format.
"""

from openfeeder.iot.broker.codes import ProtocolError, ReasonCode
from openfeeder.iot.broker.server import (
    DEFAULT_LIMITS,
    Broker,
    BrokerBindError,
    BrokerThread,
    PasswordCheck,
    run_broker,
    serve,
)
from openfeeder.iot.broker.session import BrokerLimits

__all__ = [
    "DEFAULT_LIMITS",
    "Broker",
    "BrokerBindError",
    "BrokerLimits",
    "BrokerThread",
    "PasswordCheck",
    "ProtocolError",
    "ReasonCode",
    "run_broker",
    "serve",
]
