"""``python -m bench.payload``: what end-to-end payload protection costs.

1. Per-message cost of sealing and opening (AES-256-GCM, SM4-GCM) for a command, an event and a
   measurement of 96 readings, in microseconds (median of many).
2. Through the real Mosquitto (``--mqtt``, default 127.0.0.1:1883): a service's Messenger sends
   commands to a device's Messenger, plain and sealed (control: AES-256-GCM; and the same command
   class forced to SM4-GCM). Latency: one command at a time, publish to the device's handler having
   opened and decoded it (p50, p99). Throughput: ``--burst`` commands as fast as they go, until the
   last one is handled.

Prints a table and writes ``bench/results/payload.json``. Run with ``nice -n 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from openfeeder.config import BrokerSettings, BrokersSettings
from openfeeder.iot import Command, CommandAction, Event, Measurement, Reading
from openfeeder.iot.mqtt import Messenger
from openfeeder.iot.protection import MessageProtection
from openfeeder.iot.schema import Payload, decode, encode, publish_topic
from openfeeder.iot.topics import BrokerContext, MessageClass, command_filter
from openfeeder.security.keys import KeyRing
from openfeeder.security.payload import (
    Algorithm,
    PayloadProtector,
    ProtectionPolicy,
    SymmetricKey,
    TrafficClass,
)

RESULTS = Path(__file__).parent / "results"


def _ring(device: str) -> KeyRing:
    return KeyRing.of(
        SymmetricKey(f"control/{device}@1", Algorithm.AES_256_GCM, secrets.token_bytes(32), device),
        SymmetricKey(f"protection/{device}@1", Algorithm.SM4_GCM, secrets.token_bytes(16), device),
    )


def _samples(device: str) -> dict[str, Payload]:
    readings = tuple(
        Reading(channel=f"c{i}", value=230.0 + i, unit="V", quality="good") for i in range(96)
    )
    return {
        "command": Command(
            device_id=device,
            seq=1,
            t_ns=time.time_ns(),
            command_id="c-1",
            action=CommandAction.OPEN,
            target_id=17,
        ),
        "event": Event(
            device_id=device,
            seq=1,
            t_ns=time.time_ns(),
            kind="fault_detected",
            severity="alarm",
            message="phase-to-ground fault, indicator latched",
            values=readings[:4],
        ),
        "measurement": Measurement(device_id=device, seq=1, t_ns=time.time_ns(), values=readings),
    }


def crypto_costs(repeat: int) -> list[dict[str, Any]]:
    device = "bench-dev"
    ring = _ring(device)
    rows = []
    for algorithm in (Algorithm.AES_256_GCM, Algorithm.SM4_GCM):
        key_class = "control" if algorithm is Algorithm.AES_256_GCM else "protection"
        traffic = TrafficClass(key_class)
        policy = ProtectionPolicy(
            algorithms={traffic: algorithm},
            traffic={"cmd": traffic, "event": traffic, "meas": traffic},
        )
        for name, payload in _samples(device).items():
            data = encode(payload)
            topic = str(publish_topic(payload))
            message_class = topic.split("/")[2]
            sender = PayloadProtector(ring, sender_id="bench", policy=policy)
            receiver = PayloadProtector(ring, sender_id=device, policy=policy, replay_window=repeat)
            sealed_all = []
            seal_ns = []
            for _ in range(repeat):
                started = time.perf_counter_ns()
                sealed = sender.seal(
                    data, topic=topic, message_class=message_class, device_id=device
                )
                seal_ns.append(time.perf_counter_ns() - started)
                sealed_all.append(sealed)
            open_ns = []
            for sealed in sealed_all:
                started = time.perf_counter_ns()
                receiver.open(sealed, topic=topic, message_class=message_class, device_id=device)
                open_ns.append(time.perf_counter_ns() - started)
            encode_ns = []
            for _ in range(repeat):
                started = time.perf_counter_ns()
                encode(payload)
                encode_ns.append(time.perf_counter_ns() - started)
            rows.append(
                {
                    "algorithm": algorithm.value,
                    "message": name,
                    "plain_bytes": len(data),
                    "sealed_bytes": len(sealed_all[0]),
                    "seal_us_p50": statistics.median(seal_ns) / 1e3,
                    "open_us_p50": statistics.median(open_ns) / 1e3,
                    "encode_us_p50": statistics.median(encode_ns) / 1e3,
                }
            )
    return rows


def _pair(
    mqtt_url: str, variant: str
) -> tuple[Messenger, Messenger, str, queue.Queue[tuple[int, float]]]:
    device = f"bench-{uuid.uuid4().hex[:10]}"
    brokers = BrokersSettings(
        grid_ops=BrokerSettings(url=mqtt_url), monitoring=BrokerSettings(url=mqtt_url)
    )
    sender_protection = receiver_protection = None
    if variant != "plain":
        ring = _ring(device)
        algorithm = Algorithm(variant)
        traffic = (
            TrafficClass.CONTROL if algorithm is Algorithm.AES_256_GCM else TrafficClass.PROTECTION
        )
        policy = ProtectionPolicy(algorithms={traffic: algorithm}, traffic={"cmd": traffic})
        sender_protection = MessageProtection(
            PayloadProtector(ring, sender_id=f"svc-{device}", policy=policy),
            event_device_id=f"svc-{device}",
        )
        receiver_protection = MessageProtection(
            PayloadProtector(ring, sender_id=device, policy=policy, replay_window=4096),
            event_device_id=device,
        )
    service = Messenger(brokers, client_id=f"svc-{device}", protection=sender_protection)
    field = Messenger(brokers, client_id=device, protection=receiver_protection, max_inflight=1000)
    received: queue.Queue[tuple[int, float]] = queue.Queue()

    def on_command(topic: str, data: bytes) -> None:
        command = decode(MessageClass.COMMAND, data, topic=topic)
        received.put((command.seq, time.perf_counter()))

    field.subscribe(command_filter(device), on_command, context=BrokerContext.GRID_OPS)
    return service, field, device, received


VARIANTS = ("plain", "aes-256-gcm", "sm4-gcm")


def messaging(mqtt_url: str, *, pings: int, burst: int, rounds: int) -> list[dict[str, Any]]:
    """Each variant once per round, interleaved (the machine's load drifts); medians over rounds."""
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            runs[variant].append(_flow(mqtt_url, variant, pings=pings, burst=burst))
    rows = []
    for variant, results in runs.items():
        row: dict[str, Any] = {"variant": variant, "rounds": rounds}
        for name in results[0]:
            if name != "variant":
                row[name] = statistics.median(result[name] for result in results)
        rows.append(row)
    return rows


def _flow(mqtt_url: str, variant: str, *, pings: int, burst: int) -> dict[str, Any]:
    service, field, device, received = _pair(mqtt_url, variant)
    service.start()
    field.start()
    try:
        # the field's SUBACK in before the first command (wait_connected returns before it)
        if not (service.wait_connected(10) and field.wait_subscribed(10)):
            raise SystemExit(f"cannot connect to {mqtt_url}")
        latencies_ms = []
        for seq in range(pings):
            command = Command(
                device_id=device,
                seq=seq,
                t_ns=time.time_ns(),
                command_id=f"p-{seq}",
                action=CommandAction.OPEN,
                target_id=17,
            )
            started = time.perf_counter()
            service.publish(command)
            got, at = received.get(timeout=10)
            if got != seq:
                raise SystemExit(f"{variant}: expected command {seq}, got {got}")
            latencies_ms.append((at - started) * 1e3)
        commands = [
            Command(
                device_id=device,
                seq=pings + i,
                t_ns=time.time_ns(),
                command_id=f"b-{i}",
                action=CommandAction.OPEN,
                target_id=17,
            )
            for i in range(burst)
        ]
        cpu_started = time.process_time()
        started = time.perf_counter()
        for command in commands:
            service.publish(command)
        last = started
        delivered = 0
        try:
            for _ in range(burst):
                _, last = received.get(timeout=10)
                delivered += 1
        except queue.Empty:
            print(f"{variant}: {burst - delivered} of {burst} burst commands never arrived")
        cpu_s = time.process_time() - cpu_started
        elapsed_s = last - started
        latencies_ms.sort()
        return {
            "variant": variant,
            "pings": pings,
            "latency_ms_p50": statistics.median(latencies_ms),
            "latency_ms_p99": latencies_ms[int(0.99 * (len(latencies_ms) - 1))],
            "burst": burst,
            "delivered": delivered,
            "throughput_msg_per_s": delivered / elapsed_s,
            "cpu_us_per_msg": cpu_s / burst * 1e6,
        }
    finally:
        service.stop()
        field.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.payload", description=__doc__)
    parser.add_argument(
        "--mqtt", default=os.environ.get("OPENFEEDER_TEST_MQTT", "mqtt://127.0.0.1:1883")
    )
    parser.add_argument("--repeat", type=int, default=5000)
    parser.add_argument("--pings", type=int, default=1000)
    parser.add_argument(
        "--burst",
        type=int,
        default=800,
        help="Below Mosquitto's default max_queued_messages (1000).",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="Small counts (smoke test).")
    parser.add_argument("--out", type=Path, default=RESULTS / "payload.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.pings, args.burst, args.rounds = 200, 30, 200, 1
    crypto = crypto_costs(args.repeat)
    print(
        f"{'algorithm':<12} {'message':<12} {'bytes':>6} {'sealed':>7} {'encode us':>10} {'seal us':>8} {'open us':>8}"
    )
    for row in crypto:
        print(
            f"{row['algorithm']:<12} {row['message']:<12} {row['plain_bytes']:>6} "
            f"{row['sealed_bytes']:>7} {row['encode_us_p50']:>10.1f} {row['seal_us_p50']:>8.1f} "
            f"{row['open_us_p50']:>8.1f}"
        )
    flows = messaging(args.mqtt, pings=args.pings, burst=args.burst, rounds=args.rounds)
    plain = flows[0]
    print()
    print(
        f"{'variant':<12} {'p50 ms':>8} {'p99 ms':>8} {'vs plain':>9} {'msg/s':>8} {'vs plain':>9} "
        f"{'cpu us/msg':>11}"
    )
    for row in flows:
        row["latency_p50_vs_plain"] = row["latency_ms_p50"] / plain["latency_ms_p50"] - 1
        row["throughput_vs_plain"] = row["throughput_msg_per_s"] / plain["throughput_msg_per_s"] - 1
        print(
            f"{row['variant']:<12} {row['latency_ms_p50']:>8.3f} {row['latency_ms_p99']:>8.3f} "
            f"{row['latency_p50_vs_plain']:>+9.1%} {row['throughput_msg_per_s']:>8.0f} "
            f"{row['throughput_vs_plain']:>+9.1%} {row['cpu_us_per_msg']:>11.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"mqtt": args.mqtt, "crypto": crypto, "messaging": flows}, indent=1)
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
