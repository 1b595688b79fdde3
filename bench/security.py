"""What security costs on the wire: end-to-end latency per traffic class and throughput, plain MQTT
against mutual TLS 1.3 with topic ACLs, and against TLS 1.3 + ACL + end-to-end payload encryption,
through the embedded broker on loopback.

``python -m bench.security [--messages N] [--burst N] [--rounds N] [--json FILE]``

Each column is one way of carrying the messages (:data:`COLUMNS`; a column is one function from a
throwaway PKI to the broker and client settings, so another can be added). The payload column
seals and opens through :class:`~openfeeder.iot.protection.MessageProtection` under the default
policy: control (``cmd``) AES-256-GCM, protection (``event``) SM4-GCM, monitoring (``meas``) TLS
only (it still passes the protection's checks, unsealed).

Per traffic class a publisher sends ``--messages`` QoS 1 messages one at a time to a subscriber
on the other connection and the round publish -> delivery is timed (median, p99); then a burst of
``--burst`` messages measures throughput. The columns run interleaved, ``--rounds`` times, the
order rotating each round, so drifting load on a shared machine hits them alike; the table gives
the median over rounds, and the cost of encryption over TLS alone is the median of the per-round
ratios (paired, so a slow round does not count against one column only). Seed 000 reports 8 ms
end to end unencrypted and 22 ms encrypted; the issue's targets are encryption adding under 10 %
to p50 latency and under 15 % to throughput cost.
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
from typing import Any

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
    """One column: how the broker listens, how each client connects, and (for the payload
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


def _tls_payload(ca: CertificateAuthority) -> Setup:
    """TLS + ACL, and payloads sealed end to end under the default policy (per-device keys)."""
    ring = KeyRing.of(
        SymmetricKey(f"control/{DEVICE}@1", Algorithm.AES_256_GCM, secrets.token_bytes(32), DEVICE),
        SymmetricKey(f"protection/{DEVICE}@1", Algorithm.SM4_GCM, secrets.token_bytes(16), DEVICE),
    )
    protections = {
        name: MessageProtection(PayloadProtector(ring, sender_id=name), event_device_id=name)
        for name in (DEVICE, SERVICE)
    }
    tls = _tls(ca)
    return Setup(tls.broker, tls.contexts, protections)


COLUMNS: dict[str, Callable[[CertificateAuthority], Setup]] = {
    PLAIN: _plain,
    TLS: _tls,
    TLS_PAYLOAD: _tls_payload,
}


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


def _measure(setup: Setup, *, messages: int, burst: int) -> dict[str, dict[str, float]]:
    port = setup.broker.port
    receiver = _Receiver()
    results: dict[str, dict[str, float]] = {}
    for traffic, message_class in CLASSES.items():
        device_sends = message_class != "cmd"
        sender_name, receiver_name = (DEVICE, SERVICE) if device_sends else (SERVICE, DEVICE)
        topic = f"openfeeder/v1/{message_class}/{DEVICE}"
        sealer = setup.protections.get(sender_name)
        opener = setup.protections.get(receiver_name)
        handler = opener.guard(receiver.arrived) if opener is not None else receiver.arrived
        sink = _client(port, receiver_name, setup.contexts[receiver_name])
        subscribed = threading.Event()
        sink.on_subscribe = lambda *_args, done=subscribed: done.set()
        sink.on_message = lambda _c, _u, message, deliver=handler: deliver(
            message.topic, message.payload
        )
        sink.subscribe(topic, qos=1)
        subscribed.wait(10)
        source = _client(port, sender_name, setup.contexts[sender_name])
        seal = sealer.seal if sealer is not None else None
        payload = b"x" * 200
        latencies_ms: list[float] = []
        for _ in range(messages):
            receiver.expect(1)
            start = time.perf_counter()
            source.publish(topic, seal(topic, payload) if seal else payload, qos=1)
            if not receiver.event.wait(10):
                raise RuntimeError(f"{traffic}: a message was not delivered")
            latencies_ms.append((time.perf_counter() - start) * 1000)
        receiver.expect(burst)
        start = time.perf_counter()
        for _ in range(burst):
            source.publish(topic, seal(topic, payload) if seal else payload, qos=1)
        if not receiver.event.wait(60):
            raise RuntimeError(f"{traffic}: the burst was not delivered")
        elapsed_s = time.perf_counter() - start
        latencies_ms.sort()
        results[traffic] = {
            "latency_median_ms": statistics.median(latencies_ms),
            "latency_p99_ms": latencies_ms[int(0.99 * (len(latencies_ms) - 1))],
            "throughput_msg_s": burst / elapsed_s,
        }
        for client in (source, sink):
            client.disconnect()
            client.loop_stop()
        if opener is not None and opener.rejected:
            raise RuntimeError(f"{traffic}: the receiver rejected messages: {opener.rejected}")
    return results


def run(*, messages: int, burst: int, rounds: int = 1) -> list[Results]:
    """One {column: {traffic class: {metric: value}}} per round; the columns interleaved, the
    first column rotating from round to round."""
    names = list(COLUMNS)
    out: list[Results] = []
    with tempfile.TemporaryDirectory() as directory:
        ca = CertificateAuthority.init(Path(directory) / "pki")
        ca.issue("broker", role="broker", hosts=["127.0.0.1"])
        ca.issue(DEVICE, role="device")
        ca.issue(SERVICE, role="operator")
        for number in range(rounds):
            this_round: Results = {}
            for column in names[number % len(names) :] + names[: number % len(names)]:
                setup = COLUMNS[column](ca)
                setup.broker.start()
                try:
                    this_round[column] = _measure(setup, messages=messages, burst=burst)
                finally:
                    setup.broker.stop()
            out.append({column: this_round[column] for column in names})
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


def _verdict(cost: dict[str, dict[str, Any]], *, rounds: int) -> str:
    lines = [
        f"payload encryption over TLS 1.3 + ACL alone (median of {rounds} paired rounds; "
        f"targets: p50 < +{P50_TARGET:.0%}, throughput lost < {THROUGHPUT_TARGET:.0%})",
        f"{'traffic class':<14}{'algorithm':<13}{'p50 added':>10}{'us':>8}{'':>6}"
        f"{'throughput lost':>16}{'':>6}",
    ]
    for traffic, row in cost.items():
        lines.append(
            f"{traffic:<14}{_algorithm(traffic):<13}{row['p50_added']:>+10.1%}"
            f"{row['p50_added_us']:>+8.1f}{'met' if row['meets_p50_target'] else 'MISSED':>6}"
            f"{row['throughput_lost']:>+16.1%}"
            f"{'met' if row['meets_throughput_target'] else 'MISSED':>6}"
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
    print(_table(summary))
    print()
    print(_verdict(payload_cost, rounds=args.rounds))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "messages": args.messages,
        "burst": args.burst,
        "rounds": args.rounds,
        "algorithms": {traffic: _algorithm(traffic) for traffic in CLASSES},
        "medians": summary,
        "tls_over_plain": tls_cost,
        "payload_over_tls": payload_cost,
        "per_round": rounds,
    }
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
