"""Network impairment emulation: the twin's metropolitan network between devices and brokers.

Seed 003 (Section V) runs its 3SMA platform over a Mininet model of a metropolitan area network
congested by iPerf cross traffic and reports the latency at each congestion level. This package
puts such a network under the platform's *real* MQTT traffic: :class:`NetworkEmulator` is a TCP relay
in front of a broker that understands MQTT 3.1.1 and 5 framing, classifies every PUBLISH by its
topic (message class and device), and applies delay, jitter, loss (as TCP retransmission or, for
QoS 0, as a drop), bandwidth limits and congestion per class, device and direction, changeable at
run time.

- ``config``: :class:`Impairment`, the rule keys and their layering, :class:`NetworkConfig` (the
  scenario's ``[network]`` table).
- ``link``: the per-connection link model (shaper, delay, congestion queue, retransmissions,
  in-order release) and the :class:`CongestionModel` calibrated to seed 003.
- ``frames``: MQTT framing and packet classification.
- ``stats``: counters per class and direction.
- ``relay``: the emulator (asyncio, own thread).
"""

from openfeeder.sim.netem.config import (
    CONTROL_CLASS,
    OTHER_CLASS,
    TRAFFIC_CLASSES,
    Direction,
    EffectiveImpairment,
    Impairment,
    JitterDistribution,
    LossMode,
    NetworkConfig,
    RuleKey,
    resolve,
)
from openfeeder.sim.netem.frames import device_of_client
from openfeeder.sim.netem.link import (
    DEFAULT_CONGESTION_MODEL,
    MAX_RETRANSMISSIONS,
    CongestionModel,
    LinkDecision,
    LinkState,
)
from openfeeder.sim.netem.relay import NetworkEmulator
from openfeeder.sim.netem.stats import ClassStats, NetemStats

__all__ = [
    "CONTROL_CLASS",
    "DEFAULT_CONGESTION_MODEL",
    "MAX_RETRANSMISSIONS",
    "OTHER_CLASS",
    "TRAFFIC_CLASSES",
    "ClassStats",
    "CongestionModel",
    "Direction",
    "EffectiveImpairment",
    "Impairment",
    "JitterDistribution",
    "LinkDecision",
    "LinkState",
    "LossMode",
    "NetemStats",
    "NetworkConfig",
    "NetworkEmulator",
    "RuleKey",
    "device_of_client",
    "resolve",
]
