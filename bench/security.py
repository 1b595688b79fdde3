"""What security costs on the wire: end-to-end latency per traffic class and throughput, plain MQTT
against mutual TLS 1.3 with topic ACLs, and against TLS 1.3 + ACL + end-to-end payload encryption,
through the embedded broker on loopback.

``python -m bench.security [--messages N] [--burst N] [--rounds N] [--json FILE]``

Each column is one way of carrying the messages: plain MQTT on one broker; TLS 1.3 + ACL and
TLS 1.3 + ACL + payload encryption on another (:data:`SETUPS`). The payload column seals and opens
through :class:`~openfeeder.iot.protection.MessageProtection` under the default policy: control
(``cmd``) AES-256-GCM, protection (``event``) SM4-GCM, monitoring (``meas``) TLS only (it still
passes the protection's checks, unsealed, so its row is the noise floor of the comparison).

Per traffic class a publisher sends ``--messages`` QoS 1 messages one at a time to a subscriber
on the other connection and the round publish -> delivery is timed (median, p99); then bursts of
``--burst`` messages measure throughput (median of :data:`BURSTS`). TLS alone and TLS + payload
use the same broker and connections and alternate message by message (and burst by burst), the
order flipping every pair, so they are paired at the finest grain: the only difference between
the two is the sealing and opening. The setups run ``--rounds`` times, the order rotating each
round; the table gives the median over rounds, and the cost of encryption over TLS alone is the
median of the per-round ratios. Seed 000 reports 8 ms end to end unencrypted and 22 ms
encrypted; the issue's targets are encryption adding under 10 % to p50 latency and under 15 % to
throughput cost. Beside the end-to-end figures the benchmark times the seal and the open of one
message per traffic class in a tight loop (``crypto_us``): the CPU the protection itself costs.
"""

from __future__ import annotations

import argparse
import json
import secrets
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from openfeeder.iot.access import build_access_table
from openfeeder.iot.broker import BrokerThread
from openfeeder.iot.protection import MessageProtection
from openfeeder.security.keys import KeyRing
from openfeeder.security.payload import (
    DEFAULT_ALGORITHMS,
    Algorithm,
    PayloadProtector,
    SymmetricKey,
    TrafficClass,
)
from openfeeder.security.pki import CertificateAuthority
from openfeeder.security.tls import issued_files

CLASSES = {"control": "cmd", "protection": "event", "monitoring": "meas"}
DEVICE = "bench-meter"
SERVICE = "bench-ops"
PLAIN = "plain"
TLS = "tls1.3+acl"
TLS_PAYLOAD = "tls1.3+acl+payload"
P50_TARGET = 0.10  # encryption may add under 10 % to p50 latency ...
THROUGHPUT_TARGET = 0.15  # ... and cost under 15 % of throughput
METRICS = ("latency_median_ms", "latency_p99_ms", "throughput_msg_s")
RESULTS = Path(__file__).parent / "results"

Results = dict[str, dict[str, dict[str, float]]]  # column -> traffic class -> metric -> value


@dataclass(frozen=True)
class Setup:
    """One setup: how the broker listens, how each client connects, and (for the payload
    column) the protection each client seals and opens with."""

    broker: BrokerThread
    contexts: dict[str, ssl.SSLContext | None]
    protections: dict[str, MessageProtection] = field(default_factory=dict)


def _plain(_ca: CertificateAuthority) -> Setup:
    return Setup(BrokerThread(port=0), {DEVICE: None, SERVICE: None})


def _tls(ca: CertificateAuthority) -> Setup:
    table = build_access_table(devices={DEVICE: ()}, services={SERVICE: "operator"})
    broker = BrokerThread(
        port=0, ssl_context=issued_files(ca, "broker").server_context(), access=table
    )
    contexts: dict[str, ssl.SSLContext | None] = {
        name: issued_files(ca, name).client_context() for name in (DEVICE, SERVICE)
    }
    return Setup(broker, contexts)


def _tls_payload_protections() -> dict[str, MessageProtection]:
    """The device's and the service's protections under the default policy (per-device keys)."""
    ring = KeyRing.of(
        SymmetricKey(f"control/{DEVICE}@1", Algorithm.AES_256_GCM, secrets.token_bytes(32), DEVICE),
        SymmetricKey(f"protection/{DEVICE}@1", Algorithm.SM4_GCM, secrets.token_bytes(16), DEVICE),
    )
    return {
        name: MessageProtection(PayloadProtector(ring, sender_id=name), event_device_id=name)
        for name in (DEVICE, SERVICE)
    }


def _tls_payload(ca: CertificateAuthority) -> Setup:
    """TLS + ACL, and the protections that seal payloads end to end for the payload mode."""
    tls = _tls(ca)
    return Setup(tls.broker, tls.contexts, _tls_payload_protections())


#: The columns of the table, in order.
COLUMNS: Final = (PLAIN, TLS, TLS_PAYLOAD)

#: Each setup (a broker and its client settings) with the columns measured on it: TLS alone and
#: TLS + payload share one broker and one pair of connections, message by message.
SETUPS: dict[str, tuple[Callable[[CertificateAuthority], Setup], tuple[str, ...]]] = {
    PLAIN: (_plain, (PLAIN,)),
    TLS: (_tls_payload, (TLS, TLS_PAYLOAD)),
}
BURSTS: Final = 4  # bursts per mode and traffic class in a round, alternating between the modes


class _Receiver:
    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()
        self.target = 1
        self.lock = threading.Lock()

    def arrived(self, _topic: str, _data: bytes) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.target:
                self.event.set()

    def expect(self, target: int) -> None:
        with self.lock:
            self.count = 0
            self.target = target
            self.event.clear()


def _client(port: int, name: str, context: ssl.SSLContext | None) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{name}.bench", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    if context is not None:
        client.tls_set_context(context)
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"{name} did not connect")
    return client


def _measure(
    setup: Setup, modes: tuple[str, ...], *, messages: int, burst: int
) -> dict[str, dict[str, dict[str, float]]]:
    """{mode: {traffic class: {metric: value}}} for the modes sharing ``setup``'s broker and
    connections. With two modes (TLS alone and TLS + payload) the messages alternate between
    them one by one, the order flipping every pair, and so do the bursts: the two see the same
    broker, connections and moment, and differ only in the sealing."""
    port = setup.broker.port
    receiver = _Receiver()
    results: dict[str, dict[str, dict[str, float]]] = {mode: {} for mode in modes}
    for traffic, message_class in CLASSES.items():
        device_sends = message_class != "cmd"
        sender_name, receiver_name = (DEVICE, SERVICE) if device_sends else (SERVICE, DEVICE)
        topic = f"openfeeder/v1/{message_class}/{DEVICE}"
        sealer = setup.protections.get(sender_name)
        opener = setup.protections.get(receiver_name)
        # per mode: how the sender makes the payload and who the receiver hands it to
        plain: tuple[Callable[[str, bytes], bytes] | None, Callable[[str, bytes], None]] = (
            None,
            receiver.arrived,
        )
        ways = dict.fromkeys(modes, plain)
        if TLS_PAYLOAD in modes and sealer is not None and opener is not None:
            ways[TLS_PAYLOAD] = (sealer.seal, opener.guard(receiver.arrived))
        deliver = [receiver.arrived]
        sink = _client(port, receiver_name, setup.contexts[receiver_name])
        subscribed = threading.Event()
        sink.on_subscribe = lambda *_args, done=subscribed: done.set()
        sink.on_message = lambda _c, _u, message, slot=deliver: slot[0](
            message.topic, message.payload
        )
        sink.subscribe(topic, qos=1)
        subscribed.wait(10)
        source = _client(port, sender_name, setup.contexts[sender_name])
        payload = b"x" * 200
        latencies_ms: dict[str, list[float]] = {mode: [] for mode in modes}
        for number in range(messages):
            for mode in modes if number % 2 == 0 else modes[::-1]:
                seal, deliver[0] = ways[mode]
                receiver.expect(1)
                start = time.perf_counter()
                source.publish(topic, seal(topic, payload) if seal else payload, qos=1)
                if not receiver.event.wait(10):
                    raise RuntimeError(f"{traffic}/{mode}: a message was not delivered")
                latencies_ms[mode].append((time.perf_counter() - start) * 1000)
        throughputs: dict[str, list[float]] = {mode: [] for mode in modes}
        for number in range(BURSTS):
            for mode in modes if number % 2 == 0 else modes[::-1]:
                seal, deliver[0] = ways[mode]
                receiver.expect(burst)
                start = time.perf_counter()
                for _ in range(burst):
                    source.publish(topic, seal(topic, payload) if seal else payload, qos=1)
                if not receiver.event.wait(60):
                    raise RuntimeError(f"{traffic}/{mode}: the burst was not delivered")
                throughputs[mode].append(burst / (time.perf_counter() - start))
        for mode in modes:
            latencies = sorted(latencies_ms[mode])
            results[mode][traffic] = {
                "latency_median_ms": statistics.median(latencies),
                "latency_p99_ms": latencies[int(0.99 * (len(latencies) - 1))],
                "throughput_msg_s": statistics.median(throughputs[mode]),
            }
        for client in (source, sink):
            client.disconnect()
            client.loop_stop()
        if opener is not None and opener.rejected:
            raise RuntimeError(f"{traffic}: the receiver rejected messages: {opener.rejected}")
    return results


def run(*, messages: int, burst: int, rounds: int = 1) -> list[Results]:
    """One {column: {traffic class: {metric: value}}} per round; the setups interleaved, the
    first one rotating from round to round."""
    names = list(SETUPS)
    out: list[Results] = []
    with tempfile.TemporaryDirectory() as directory:
        ca = CertificateAuthority.init(Path(directory) / "pki")
        ca.issue("broker", role="broker", hosts=["127.0.0.1"])
        ca.issue(DEVICE, role="device")
        ca.issue(SERVICE, role="operator")
        for number in range(rounds):
            this_round: Results = {}
            for name in names[number % len(names) :] + names[: number % len(names)]:
                make, modes = SETUPS[name]
                setup = make(ca)
                setup.broker.start()
                try:
                    this_round.update(_measure(setup, modes, messages=messages, burst=burst))
                finally:
                    setup.broker.stop()
            out.append({column: this_round[column] for column in COLUMNS})
    return out


def crypto_cost(*, messages: int = 20_000) -> dict[str, dict[str, float]]:
    """Per traffic class, the seal and the open of one ~200-byte message in microseconds (mean of
    ``messages`` in a tight loop, no network): what the protection itself costs the sender and the
    receiver, through the same calls as the end-to-end column."""
    setup = _tls_payload_protections()
    out: dict[str, dict[str, float]] = {}
    payload = b"x" * 200
    for traffic, message_class in CLASSES.items():
        sender, receiver = (DEVICE, SERVICE) if message_class != "cmd" else (SERVICE, DEVICE)
        topic = f"openfeeder/v1/{message_class}/{DEVICE}"
        seal = setup[sender].seal
        opened = 0

        def count(_topic: str, _data: bytes) -> None:
            nonlocal opened
            opened += 1

        guarded = setup[receiver].guard(count)
        start = time.perf_counter()
        sealed = [seal(topic, payload) for _ in range(messages)]
        seal_s = time.perf_counter() - start
        start = time.perf_counter()
        for data in sealed:
            guarded(topic, data)
        open_s = time.perf_counter() - start
        if opened != messages:
            raise RuntimeError(f"{traffic}: opened {opened} of {messages} sealed messages")
        out[traffic] = {"seal_us": seal_s / messages * 1e6, "open_us": open_s / messages * 1e6}
    return out


def medians(rounds: list[Results]) -> Results:
    """The median of each figure over the rounds."""
    return {
        column: {
            traffic: {
                metric: statistics.median(r[column][traffic][metric] for r in rounds)
                for metric in METRICS
            }
            for traffic in CLASSES
        }
        for column in rounds[0]
    }


def added_cost(rounds: list[Results], *, over: str, column: str) -> dict[str, dict[str, Any]]:
    """What ``column`` adds to ``over`` per traffic class: the medians over rounds of the paired
    per-round p50 ratio (``p50_added``), difference (``p50_added_us``) and share of throughput
    lost (``throughput_lost``: 1 - msg/s with / msg/s without), and whether the targets are met."""
    out: dict[str, dict[str, Any]] = {}
    for traffic in CLASSES:
        base = [r[over][traffic] for r in rounds]
        with_it = [r[column][traffic] for r in rounds]
        p50_added = statistics.median(
            w["latency_median_ms"] / b["latency_median_ms"] - 1
            for b, w in zip(base, with_it, strict=True)
        )
        p50_added_us = statistics.median(
            (w["latency_median_ms"] - b["latency_median_ms"]) * 1e3
            for b, w in zip(base, with_it, strict=True)
        )
        throughput_lost = statistics.median(
            1 - w["throughput_msg_s"] / b["throughput_msg_s"]
            for b, w in zip(base, with_it, strict=True)
        )
        out[traffic] = {
            "p50_added": p50_added,
            "p50_added_us": p50_added_us,
            "throughput_lost": throughput_lost,
            "meets_p50_target": p50_added < P50_TARGET,
            "meets_throughput_target": throughput_lost < THROUGHPUT_TARGET,
        }
    return out


def _algorithm(traffic: str) -> str:
    return str(DEFAULT_ALGORITHMS[TrafficClass(traffic)])


def _table(results: Results) -> str:
    columns = list(results)
    lines = [f"{'traffic class / metric':34}" + "".join(f"{c:>20}" for c in columns)]
    for traffic in CLASSES:
        for metric in METRICS:
            cells = "".join(f"{results[c][traffic][metric]:>20.3f}" for c in columns)
            lines.append(f"{traffic + ' ' + metric:34}{cells}")
    return "\n".join(lines)


def _verdict(
    cost: dict[str, dict[str, Any]], crypto: dict[str, dict[str, float]], *, rounds: int
) -> str:
    lines = [
        f"payload encryption over TLS 1.3 + ACL alone (median of {rounds} paired rounds; "
        f"targets: p50 < +{P50_TARGET:.0%}, throughput lost < {THROUGHPUT_TARGET:.0%}); "
        "seal / open: CPU per message, no network",
        f"{'traffic class':<14}{'algorithm':<13}{'p50 added':>10}{'us':>8}{'':>7}"
        f"{'throughput lost':>16}{'':>7}{'seal / open us':>16}",
    ]
    for traffic, row in cost.items():
        lines.append(
            f"{traffic:<14}{_algorithm(traffic):<13}{row['p50_added']:>+10.1%}"
            f"{row['p50_added_us']:>+8.1f}{'met' if row['meets_p50_target'] else 'MISSED':>7}"
            f"{row['throughput_lost']:>+16.1%}"
            f"{'met' if row['meets_throughput_target'] else 'MISSED':>7}"
            f"{crypto[traffic]['seal_us']:>9.1f} / {crypto[traffic]['open_us']:.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS / "security.json")
    args = parser.parse_args(argv)
    rounds = run(messages=args.messages, burst=args.burst, rounds=args.rounds)
    summary = medians(rounds)
    tls_cost = added_cost(rounds, over=PLAIN, column=TLS)
    payload_cost = added_cost(rounds, over=TLS, column=TLS_PAYLOAD)
    crypto = crypto_cost()
    print(_table(summary))
    print()
    print(_verdict(payload_cost, crypto, rounds=args.rounds))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "messages": args.messages,
        "burst": args.burst,
        "rounds": args.rounds,
        "algorithms": {traffic: _algorithm(traffic) for traffic in CLASSES},
        "medians": summary,
        "tls_over_plain": tls_cost,
        "payload_over_tls": payload_cost,
        "crypto_us": crypto,
        "per_round": rounds,
    }
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
