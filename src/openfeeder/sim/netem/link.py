"""The emulated link: when a packet that entered the emulator at time t leaves it, and whether it does.

One :class:`LinkState` exists per TCP connection and direction. For each packet it decides, in
this order (all times on the event loop's monotonic clock, in seconds):

1. **Drop** (``loss_mode = drop``, QoS 0 PUBLISH only): with probability ``loss`` (combined with the
   congestion loss) the packet vanishes. QoS 1/2 PUBLISHes and control packets are never dropped:
   MQTT has no retransmission of its own inside a connection, so a missing PUBACK or PUBLISH would
   stall the session until a reconnect; those losses are retransmitted as below.
2. **Serialization** (``bandwidth_kbps``): a token bucket per connection and direction, implemented
   as GCRA (the virtual-scheduling form of a token bucket): each packet costs ``bytes x 8 / rate``
   seconds of link time; a packet leaves the shaper when the bucket holds its bytes, so a burst
   beyond ``burst_bytes`` is spread out at the link rate and the serialization delay appears.
   MQTT bytes are counted, not TCP/IP headers.
3. **Propagation**: ``delay_ms`` plus jitter (normal with standard deviation ``jitter_ms`` or
   uniform in +/- ``jitter_ms``), cut at zero.
4. **Congestion queueing** (``congestion``): the waiting time in a shared congested router, drawn
   from :class:`CongestionModel`.
5. **Loss as retransmission** (``loss_mode = retransmit``, and every packet that must not be dropped):
   MQTT runs on TCP, so a segment lost on a real link is retransmitted by TCP after a retransmission
   timeout and the application sees delay, never a gap. Each transmission is lost with probability
   ``p = 1 - (1 - loss)(1 - p_congestion)``; the k-th retransmission waits ``RTO x 2^(k-1)``
   (exponential backoff, RFC 6298), ``RTO = max(rto_min_ms, 2 x delay_ms + 4 x jitter_ms)``. The
   number of retransmissions is counted in the statistics. At most :data:`MAX_RETRANSMISSIONS`
   are drawn (Linux's ``tcp_retries2``); a real stack would give up on the connection there.
6. **Order**: a packet is never released before the previous packet of the same connection and
   direction (TCP delivers in order), so a retransmitted or slow packet holds back the ones behind
   it, as head-of-line blocking does on a real TCP connection. Jitter therefore never reorders.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from openfeeder.sim.netem.config import EffectiveImpairment, JitterDistribution, LossMode

__all__ = [
    "DEFAULT_CONGESTION_MODEL",
    "MAX_RETRANSMISSIONS",
    "CongestionModel",
    "LinkDecision",
    "LinkState",
]

MAX_RETRANSMISSIONS: Final = 15
"""Retransmissions drawn for one packet at most (Linux ``net.ipv4.tcp_retries2``)."""


@dataclass(frozen=True, slots=True)
class CongestionModel:
    """Queueing delay and loss of a shared, congested link: an M/M/1/K queue.

    The congestion level ``c`` (0..100 %) is the background utilization ``rho = c / 100`` of the
    bottleneck link that our packets share with cross traffic (seed 003 congests a Mininet MAN with
    iPerf flows). The bottleneck serves one packet in ``service_ms`` and buffers at most
    ``buffer_packets``. By PASTA an arriving packet finds ``n`` packets with probability
    proportional to ``rho^n`` (n = 0..K):

    - ``n = K``: the buffer is full and the packet is lost,
      ``P_loss = (1 - rho) rho^K / (1 - rho^(K+1))`` (``1 / (K+1)`` at rho = 1): zero at moderate
      load, rising steeply near saturation;
    - otherwise it waits for ``n`` exponential service times: ``Gamma(n, service_ms)``, with mean
      ``service_ms x (rho/(1-rho) - K rho^K/(1-rho^K))`` (``service_ms x (K-1)/2`` at rho = 1) -
      the M/M/1 ``rho/(1-rho)`` growth, bounded by the finite buffer.

    **Calibration to seed 003** (Section V-VI: 1.4 KB packets, 10 Mbit/s access links; at 100 %
    congestion the request/response latency had a mean of 0.49 s and a maximum of 1 s; below 90 %
    the maximum never exceeded 0.5 s). The service time is one 1.4 KB packet at 10 Mbit/s,
    ``1400 x 8 / 10e6 = 1.12 ms``; the buffer is chosen so that a full buffer is 0.5 s of waiting
    (K = 446), half of the reported maximum round trip. A request/response crosses the congested
    network twice (device uplink, device downlink), which gives at 100 %: mean
    ``2 x 1.12 x 222.5 = 0.498 s`` (seed: 0.49 s) and maximum ``2 x K x 1.12 ms = 1.0 s``
    (seed: 1 s); at 90 %: mean ``2 x 10 ms``, with the 500 ms maximum practically never reached
    (seed: below 500 ms). Seed 003 gives no other points of its Figure 10, so the shape between
    them is the queueing model's, not a fit.
    """

    service_ms: float = 1400 * 8 / 10e6 * 1e3
    buffer_packets: int = 446

    def utilization(self, congestion: float) -> float:
        """rho for a congestion level in percent."""
        return min(max(congestion / 100.0, 0.0), 1.0)

    def loss_probability(self, congestion: float) -> float:
        """Probability that the congested buffer is full when a packet arrives."""
        rho = self.utilization(congestion)
        k = self.buffer_packets
        if rho <= 0.0:
            return 0.0
        if rho >= 1.0 - 1e-12:
            return 1.0 / (k + 1)
        return (1.0 - rho) * rho**k / (1.0 - rho ** (k + 1))

    def mean_wait_ms(self, congestion: float) -> float:
        """Mean queueing delay of a packet that is not lost."""
        return self.service_ms * self._mean_queue(self.utilization(congestion))

    def _mean_queue(self, rho: float) -> float:
        k = self.buffer_packets
        if rho <= 0.0:
            return 0.0
        if rho >= 1.0 - 1e-9:
            return (k - 1) / 2.0
        return rho / (1.0 - rho) - k * rho**k / (1.0 - rho**k)

    def sample_wait_ms(self, congestion: float, rng: random.Random) -> float:
        """One queueing delay: ``n`` from the geometric law truncated to 0..K-1, then Gamma(n, S)."""
        rho = self.utilization(congestion)
        if rho <= 0.0:
            return 0.0
        k = self.buffer_packets
        if rho >= 1.0 - 1e-9:
            n = rng.randrange(k)
        else:
            # inverse CDF of P(n) ~ rho^n on 0..K-1: F(n) = (1 - rho^(n+1)) / (1 - rho^K)
            u = rng.random()
            n = int(math.log1p(-u * (1.0 - rho**k)) / math.log(rho))
            n = min(max(n, 0), k - 1)
        return rng.gammavariate(n, self.service_ms) if n else 0.0


DEFAULT_CONGESTION_MODEL: Final = CongestionModel()


@dataclass(frozen=True, slots=True)
class LinkDecision:
    """What happens to one packet: released at ``release_s`` (loop time) unless ``dropped``."""

    release_s: float
    dropped: bool = False
    retransmissions: int = 0
    added_delay_ms: float = 0.0


class LinkState:
    """The state of one direction of one connection: shaper, last release time, random draws.

    Used only on the relay's event loop (not thread-safe by design: one owner).
    """

    __slots__ = ("_last_release_s", "_rng", "_tat_s", "congestion_model")

    def __init__(
        self, rng: random.Random, congestion_model: CongestionModel = DEFAULT_CONGESTION_MODEL
    ) -> None:
        self._rng = rng
        self.congestion_model = congestion_model
        self._last_release_s = -math.inf
        self._tat_s = -math.inf
        """GCRA theoretical arrival time: when the bucket would be full again."""

    def decide(
        self, now_s: float, size_bytes: int, impairment: EffectiveImpairment, *, droppable: bool
    ) -> LinkDecision:
        """Schedule one packet of ``size_bytes`` arriving at ``now_s``."""
        if impairment.is_neutral:
            release = max(now_s, self._last_release_s)
            self._last_release_s = release
            return LinkDecision(release, added_delay_ms=(release - now_s) * 1e3)
        rng = self._rng
        p_loss = impairment.loss
        if impairment.congestion > 0.0:
            p_block = self.congestion_model.loss_probability(impairment.congestion)
            p_loss = 1.0 - (1.0 - p_loss) * (1.0 - p_block)
        depart = self._shape(now_s, size_bytes, impairment)
        if droppable and impairment.loss_mode is LossMode.DROP:
            # the loss draw decides this packet's fate once: lost is gone, never retransmitted
            if rng.random() < p_loss:
                return LinkDecision(now_s, dropped=True)
            p_loss = 0.0
        one_way_ms = impairment.delay_ms
        if impairment.jitter_ms > 0.0:
            if impairment.jitter is JitterDistribution.UNIFORM:
                one_way_ms += rng.uniform(-impairment.jitter_ms, impairment.jitter_ms)
            else:
                one_way_ms += rng.gauss(0.0, impairment.jitter_ms)
            one_way_ms = max(one_way_ms, 0.0)
        if impairment.congestion > 0.0:
            one_way_ms += self.congestion_model.sample_wait_ms(impairment.congestion, rng)
        retransmissions = 0
        if p_loss > 0.0:
            while retransmissions < MAX_RETRANSMISSIONS and rng.random() < p_loss:
                retransmissions += 1
            # k retransmissions with backoff wait RTO x (1 + 2 + ... + 2^(k-1))
            one_way_ms += impairment.rto_ms * (2**retransmissions - 1)
        release = max(depart + one_way_ms / 1e3, self._last_release_s)
        self._last_release_s = release
        return LinkDecision(
            release,
            retransmissions=retransmissions,
            added_delay_ms=(release - now_s) * 1e3,
        )

    def _shape(self, now_s: float, size_bytes: int, impairment: EffectiveImpairment) -> float:
        """GCRA: the time the packet's last bit leaves the shaper."""
        if impairment.bandwidth_kbps is None:
            return now_s
        rate_bps = impairment.bandwidth_kbps * 1000.0 / 8.0
        cost_s = size_bytes / rate_bps
        tolerance_s = impairment.burst_bytes / rate_bps
        self._tat_s = max(self._tat_s, now_s) + cost_s
        return max(now_s, self._tat_s - tolerance_s)
