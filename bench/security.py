"""What security costs on the wire: end-to-end latency per traffic class and throughput, plain MQTT
against mutual TLS 1.3 with topic ACLs, and against TLS 1.3 + ACL + end-to-end payload encryption,
with the broker, the sender and the receiver each in its own process, as the platform runs.

``python -m bench.security [--broker {embedded,mosquitto}] [--messages N] [--burst N]
[--rounds N] [--idle-samples N] [--json FILE]``

The broker runs as its own process (:mod:`bench._security_procs`): ``openfeeder broker`` (the
embedded broker, ``--broker embedded``, the default) or the machine's Mosquitto with a generated
configuration (``--broker mosquitto``); under TLS both require a client certificate of a
throwaway CA, take the identity from it and enforce the same topic ACL. This process sends; a
second one (:mod:`bench._security_receiver`) receives with its own certificate and the same key
ring, opening messages through ``MessageProtection.guard`` as a service or a device does.

Each column is one way of carrying the messages: plain MQTT on one broker; TLS 1.3 + ACL and
TLS 1.3 + ACL + payload encryption on another (:data:`SETUPS`). The payload column seals through
:class:`~openfeeder.iot.protection.MessageProtection` under the default policy: control (``cmd``)
AES-256-GCM, protection (``event``) SM4-GCM, monitoring (``meas``) TLS only (it still passes the
receiver's protection checks, unsealed, so its row is the noise floor of the comparison).

Latency is one way: the sender puts its send time (``CLOCK_MONOTONIC``, one clock for every
process on Linux) in the plaintext before sealing, the receiver takes the arrival time after
opening. Per traffic class the sender sends ``--messages`` QoS 1 messages one at a time, each
after the receiver said (on its stdout pipe, not over MQTT) that the one before arrived (median,
p99); then bursts of ``--burst`` messages measure throughput, ``burst / (last arrival - first
send)`` (median of :data:`BURSTS`). TLS alone and TLS + payload use the same broker and
connections and alternate message by message (and burst by burst), the order flipping every
pair, so they are paired at the finest grain: the only difference between the two is the sealing
and opening. The receiver tells them apart by the envelope's magic bytes (monitoring, never
sealed, by the mode byte at the start of the plaintext). The setups run
``--rounds`` times, the order rotating each round; the table gives the median over rounds, and
the cost of encryption over TLS alone is the median of the per-round ratios. Seed 000 reports
8 ms end to end unencrypted and 22 ms encrypted; the issue's targets are encryption adding under
10 % to p50 latency and under 15 % to throughput cost. Beside the end-to-end figures the
benchmark times the seal and the open of one message per traffic class (``crypto_us``): in a
tight loop (hot caches: the CPU the protection itself costs) and each after 1 ms asleep, as a
process waiting for its next message is between two messages of the closed loop.

Where the added latency goes: for each message of the closed loop the sender notes when the
message was ready to publish (after sealing) and the receiver when it came in (before opening),
so each column's latency splits into three medians, ``seal_us`` (send time to ready), ``wire_us``
(ready to in: publishing, TLS, the broker) and ``open_us`` (in to arrival: opening and handing
on); the verdict gives what the payload column adds to each, paired per round as above. They are
the costs inside the running loop, where every process has just been woken and its caches were
used by the others; the ``crypto_us`` figures are the same calls in isolation.

Progress goes to stderr, the table to stdout, everything to ``--json`` (default
``bench/results/security.json``, ``security-mosquitto.json`` for Mosquitto).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench._security_procs import BROKERS, BrokerTls, ReceiverProcess, broker
from bench._security_receiver import (
    MODES,
    PLAINTEXT,
    mqtt_client,
    now_ns,
    protection,
    write_keys,
)
from openfeeder.iot.access import build_access_table
from openfeeder.iot.protection import MessageProtection
from openfeeder.security.payload import (
    DEFAULT_ALGORITHMS,
    Algorithm,
    SymmetricKey,
    TrafficClass,
)
from openfeeder.security.pki import CertificateAuthority
from openfeeder.security.tls import issued_files

CLASSES = {"control": "cmd", "protection": "event", "monitoring": "meas"}
DEVICE = "bench-meter"
SERVICE = "bench-ops"
PLAIN, TLS, TLS_PAYLOAD = MODES
P50_TARGET = 0.10  # encryption may add under 10 % to p50 latency ...
THROUGHPUT_TARGET = 0.15  # ... and cost under 15 % of throughput
METRICS = ("latency_median_ms", "latency_p99_ms", "throughput_msg_s")
#: The closed loop's latency in stages (medians, us): the sender making the message (sealing
#: it, for the payload column), the way to the receiver (publish, TLS, broker), the receiver
#: opening it and handing it on.
STAGES = ("seal_us", "wire_us", "open_us")
RESULTS = Path(__file__).parent / "results"
MESSAGE_BYTES: Final = 200
_PADDING: Final = b"x" * (MESSAGE_BYTES - PLAINTEXT.size)

Results = dict[str, dict[str, dict[str, float]]]  # column -> traffic class -> metric -> value


def bench_keys() -> list[SymmetricKey]:
    """Throwaway per-device keys under the default policy: control AES-256-GCM, protection
    SM4-GCM."""
    return [
        SymmetricKey(f"control/{DEVICE}@1", Algorithm.AES_256_GCM, secrets.token_bytes(32), DEVICE),
        SymmetricKey(f"protection/{DEVICE}@1", Algorithm.SM4_GCM, secrets.token_bytes(16), DEVICE),
    ]


def protections(keys: list[SymmetricKey]) -> dict[str, MessageProtection]:
    """The device's and the service's protections over ``keys`` (each its own end)."""
    return {name: protection(keys, name) for name in (DEVICE, SERVICE)}


@dataclass(frozen=True)
class Material:
    """What a run makes once: the CA and identities, the ACL file and the key-ring file."""

    directory: Path
    ca: CertificateAuthority
    acl_file: Path
    keys_file: Path
    keys: list[SymmetricKey]

    @classmethod
    def make(cls, directory: Path) -> Material:
        ca = CertificateAuthority.init(directory / "pki")
        ca.issue("broker", role="broker", hosts=["127.0.0.1"])
        ca.issue(DEVICE, role="device")
        ca.issue(SERVICE, role="operator")
        table = build_access_table(devices={DEVICE: ()}, services={SERVICE: "operator"})
        acl_file = directory / "acl"
        acl_file.write_text(table.mosquitto_acl())
        keys = bench_keys()
        keys_file = directory / "keys.json"
        write_keys(keys_file, keys)
        return cls(directory, ca, acl_file, keys_file, keys)

    def broker_tls(self) -> BrokerTls:
        files = issued_files(self.ca, "broker")
        assert files.cert_file is not None
        assert files.key_file is not None
        return BrokerTls(self.ca.cert_file, files.cert_file, files.key_file, self.acl_file)

    def client_tls(self, name: str) -> dict[str, str]:
        files = issued_files(self.ca, name)
        return {"ca": str(files.ca_file), "cert": str(files.cert_file), "key": str(files.key_file)}


@dataclass(frozen=True)
class Setup:
    """One setup: whether it is TLS, and the columns measured on it (TLS alone and TLS +
    payload share one broker and one pair of connections, message by message)."""

    tls: bool
    modes: tuple[str, ...]


#: The columns of the table, in order.
COLUMNS: Final = (PLAIN, TLS, TLS_PAYLOAD)

#: Each setup (a broker and its client settings) with the columns measured on it.
SETUPS: Final = {PLAIN: Setup(False, (PLAIN,)), TLS: Setup(True, (TLS, TLS_PAYLOAD))}
BURSTS: Final = 4  # bursts per mode and traffic class in a round, alternating between the modes


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Link:
    """One traffic class on one setup: the sender's client and how it makes a payload."""

    client: Any
    topic: str
    seal: Callable[[str, bytes], bytes] | None

    def payload(self, mode: str, sent_ns: int | None = None) -> bytes:
        """The message for ``mode``: the send time (``sent_ns``, else now) taken first, then
        sealed for the payload mode; the time it takes to seal is part of the latency."""
        sent = now_ns() if sent_ns is None else sent_ns
        plaintext = PLAINTEXT.pack(MODES.index(mode), sent) + _PADDING
        if mode == TLS_PAYLOAD and self.seal is not None:
            return self.seal(self.topic, plaintext)
        return plaintext


@contextmanager
def _link(
    receiver: ReceiverProcess, material: Material, *, port: int, setup: Setup, traffic: str
) -> Iterator[_Link]:
    """The receiver subscribed and the sender connected for ``traffic``; both closed after."""
    message_class = CLASSES[traffic]
    sender, receiving = (DEVICE, SERVICE) if message_class != "cmd" else (SERVICE, DEVICE)
    topic = f"openfeeder/v1/{message_class}/{DEVICE}"
    payload = TLS_PAYLOAD in setup.modes
    receiver.open(
        port=port,
        name=receiving,
        tls=material.client_tls(receiving) if setup.tls else None,
        keys=str(material.keys_file) if payload else None,
        topic=topic,
    )
    context: ssl.SSLContext | None = None
    if setup.tls:
        context = issued_files(material.ca, sender).client_context()
    client = mqtt_client(port, sender, context, suffix="bench-tx")
    seal = protection(material.keys, sender).seal if payload else None
    try:
        yield _Link(client, topic, seal)
    finally:
        client.disconnect()
        client.loop_stop()


def _summary(
    latencies_ns: list[int],
    throughputs: list[float],
    stages_ns: list[list[int]],
    ready_ns: dict[int, int],
) -> dict[str, float]:
    """The latency and throughput figures, and the median of each stage of the closed loop's
    messages (``stages_ns``: send time, when it came in at the receiver, arrival after opening;
    ``ready_ns``: by send time, when the sender had the message ready to publish)."""
    latencies = sorted(latencies_ns)
    stages = [(ready_ns[sent], sent, entry, arrival) for sent, entry, arrival in stages_ns]
    return {
        "latency_median_ms": statistics.median(latencies) / 1e6,
        "latency_p99_ms": latencies[int(0.99 * (len(latencies) - 1))] / 1e6,
        "throughput_msg_s": statistics.median(throughputs),
        "seal_us": statistics.median(ready - sent for ready, sent, _, _ in stages) / 1e3,
        "wire_us": statistics.median(entry - ready for ready, _, entry, _ in stages) / 1e3,
        "open_us": statistics.median(arrival - entry for _, _, entry, arrival in stages) / 1e3,
    }


def _measure(
    receiver: ReceiverProcess,
    material: Material,
    *,
    port: int,
    setup: Setup,
    messages: int,
    burst: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """{mode: {traffic class: {metric: value}}} for the modes sharing one broker and one pair
    of connections. With two modes (TLS alone and TLS + payload) the messages alternate between
    them one by one, the order flipping every pair, and so do the bursts: the two see the same
    broker, connections and moment, and differ only in the sealing and opening."""
    modes = setup.modes
    results: dict[str, dict[str, dict[str, float]]] = {mode: {} for mode in modes}
    for traffic, message_class in CLASSES.items():
        ready_ns: dict[int, int] = {}
        with _link(receiver, material, port=port, setup=setup, traffic=traffic) as link:
            for number in range(messages):
                for mode in modes if number % 2 == 0 else modes[::-1]:
                    sent = now_ns()
                    data = link.payload(mode, sent)
                    ready_ns[sent] = now_ns()
                    link.client.publish(link.topic, data, qos=1)
                    receiver.arrived()
            for number in range(BURSTS):
                for mode in modes if number % 2 == 0 else modes[::-1]:
                    receiver.expect_burst(mode, burst)
                    for _ in range(burst):
                        link.client.publish(link.topic, link.payload(mode), qos=1)
                    receiver.burst_arrived()
        got = receiver.close()
        if got["errors"] or got["rejected"]:
            raise RuntimeError(f"{traffic}: {got['errors'][:5]} rejected: {got['rejected']}")
        sealed = TLS_PAYLOAD in modes and message_class != "meas"
        expected_opened = messages + BURSTS * burst if sealed else 0
        if got["opened_sealed"] != expected_opened:
            raise RuntimeError(
                f"{traffic}: the receiver opened {got['opened_sealed']} sealed messages, "
                f"not {expected_opened}"
            )
        for mode in modes:
            results[mode][traffic] = _summary(
                got["latencies_ns"][mode],
                got["throughputs"][mode],
                got["stages_ns"][mode],
                ready_ns,
            )
    return results


def run(
    *, messages: int, burst: int, rounds: int = 1, broker_kind: str = "embedded"
) -> list[Results]:
    """One {column: {traffic class: {metric: value}}} per round; the setups interleaved, the
    first one rotating from round to round, each on a fresh broker process."""
    names = list(SETUPS)
    out: list[Results] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        material = Material.make(Path(directory))
        receiver = ReceiverProcess()
        try:
            for number in range(rounds):
                this_round: Results = {}
                for name in names[number % len(names) :] + names[: number % len(names)]:
                    setup = SETUPS[name]
                    tls = material.broker_tls() if setup.tls else None
                    where = Path(directory) / f"broker-{number}-{name}"
                    with broker(broker_kind, where, tls) as port:
                        this_round.update(
                            _measure(
                                receiver,
                                material,
                                port=port,
                                setup=setup,
                                messages=messages,
                                burst=burst,
                            )
                        )
                    _progress(
                        f"round {number + 1}/{rounds}: {broker_kind} {name} done "
                        f"({time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.2f})"
                    )
                out.append({column: this_round[column] for column in COLUMNS})
        finally:
            receiver.stop()
    return out


IDLE_S: Final = 0.001  # the pause before each call of the idle measurement (as in the closed loop)


def _after_idle_us(call: Callable[[str, bytes], object], topic: str, data: list[bytes]) -> float:
    """The median time of ``call(topic, item)`` for each item of ``data``, in microseconds, each
    call after :data:`IDLE_S` asleep."""
    times_ns: list[int] = []
    for item in data:
        time.sleep(IDLE_S)
        start = time.perf_counter_ns()
        call(topic, item)
        times_ns.append(time.perf_counter_ns() - start)
    return statistics.median(times_ns) / 1e3


def crypto_cost(*, messages: int = 20_000, idle_samples: int = 1000) -> dict[str, dict[str, float]]:
    """Per traffic class, the seal and the open of one ~200-byte message in microseconds, no
    network, through the same calls as the end-to-end column: ``seal_us``/``open_us`` the mean
    of ``messages`` in a tight loop (hot caches), ``seal_idle_us``/``open_idle_us`` the median of
    ``idle_samples`` calls each made after the process slept :data:`IDLE_S`, as a process that
    waits for its next message does (caches and predictors cold)."""
    setup = protections(bench_keys())
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
        seal_idle_us = _after_idle_us(seal, topic, [payload] * idle_samples)
        more = [seal(topic, payload) for _ in range(idle_samples)]
        open_idle_us = _after_idle_us(guarded, topic, more)
        if opened != messages + idle_samples:
            raise RuntimeError(f"{traffic}: opened {opened} of {messages + idle_samples} messages")
        out[traffic] = {
            "seal_us": seal_s / messages * 1e6,
            "open_us": open_s / messages * 1e6,
            "seal_idle_us": seal_idle_us,
            "open_idle_us": open_idle_us,
        }
    return out


def medians(rounds: list[Results]) -> Results:
    """The median of each figure over the rounds."""
    return {
        column: {
            traffic: {
                metric: statistics.median(r[column][traffic][metric] for r in rounds)
                for metric in (*METRICS, *STAGES)
            }
            for traffic in CLASSES
        }
        for column in rounds[0]
    }


def added_cost(rounds: list[Results], *, over: str, column: str) -> dict[str, dict[str, Any]]:
    """What ``column`` adds to ``over`` per traffic class: the medians over rounds of the paired
    per-round p50 ratio (``p50_added``), difference (``p50_added_us``) and share of throughput
    lost (``throughput_lost``: 1 - msg/s with / msg/s without), each round's ratio and share
    (the spread), and whether the targets are met."""
    out: dict[str, dict[str, Any]] = {}
    for traffic in CLASSES:
        pairs = [(r[over][traffic], r[column][traffic]) for r in rounds]
        p50_rounds = [w["latency_median_ms"] / b["latency_median_ms"] - 1 for b, w in pairs]
        lost_rounds = [1 - w["throughput_msg_s"] / b["throughput_msg_s"] for b, w in pairs]
        p50_added = statistics.median(p50_rounds)
        throughput_lost = statistics.median(lost_rounds)
        out[traffic] = {
            "p50_added": p50_added,
            "p50_added_us": statistics.median(
                (w["latency_median_ms"] - b["latency_median_ms"]) * 1e3 for b, w in pairs
            ),
            "throughput_lost": throughput_lost,
            "stages_added_us": {
                stage: statistics.median(w[stage] - b[stage] for b, w in pairs) for stage in STAGES
            },
            "p50_added_per_round": p50_rounds,
            "throughput_lost_per_round": lost_rounds,
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
    cost: dict[str, dict[str, Any]],
    crypto: dict[str, dict[str, float]],
    *,
    rounds: int,
    broker_kind: str,
) -> str:
    lines = [
        f"payload encryption over TLS 1.3 + ACL alone ({broker_kind} broker, broker, sender and "
        f"receiver in separate processes; median of {rounds} paired rounds; "
        f"targets: p50 < +{P50_TARGET:.0%}, throughput lost < {THROUGHPUT_TARGET:.0%}); "
        "seal / open: CPU per message, no network, hot (tight loop) and after 1 ms idle",
        f"{'traffic class':<14}{'algorithm':<13}{'p50 added':>10}{'us':>8}{'':>7}"
        f"{'throughput lost':>16}{'':>7}{'seal / open us':>16}{'after idle':>16}"
        f"{'in the loop: seal / wire / open added us':>44}",
    ]
    for traffic, row in cost.items():
        lines.append(
            f"{traffic:<14}{_algorithm(traffic):<13}{row['p50_added']:>+10.1%}"
            f"{row['p50_added_us']:>+8.1f}{'met' if row['meets_p50_target'] else 'MISSED':>7}"
            f"{row['throughput_lost']:>+16.1%}"
            f"{'met' if row['meets_throughput_target'] else 'MISSED':>7}"
            f"{crypto[traffic]['seal_us']:>9.1f} / {crypto[traffic]['open_us']:<5.1f}"
            f"{crypto[traffic]['seal_idle_us']:>10.1f} / {crypto[traffic]['open_idle_us']:<5.1f}"
            f"{'':>16}{' / '.join(f'{v:+.1f}' for v in row['stages_added_us'].values())}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--broker", choices=BROKERS, default="embedded")
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--idle-samples",
        type=int,
        default=1000,
        help="seals and opens timed after 1 ms idle, per traffic class (crypto_us)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    if args.json is None:
        suffix = "" if args.broker == "embedded" else f"-{args.broker}"
        args.json = RESULTS / f"security{suffix}.json"
    rounds = run(
        messages=args.messages, burst=args.burst, rounds=args.rounds, broker_kind=args.broker
    )
    summary = medians(rounds)
    tls_cost = added_cost(rounds, over=PLAIN, column=TLS)
    payload_cost = added_cost(rounds, over=TLS, column=TLS_PAYLOAD)
    crypto = crypto_cost(idle_samples=args.idle_samples)
    load_after = os.getloadavg()
    _progress(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(_table(summary))
    print()
    print(_verdict(payload_cost, crypto, rounds=args.rounds, broker_kind=args.broker))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "broker": args.broker,
        "processes": "broker, sender and receiver each in its own process",
        "messages": args.messages,
        "burst": args.burst,
        "rounds": args.rounds,
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
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
