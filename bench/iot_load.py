"""Load processes for the IoT benchmarks, each run as ``python -m bench.iot_load <role> ...``.

Each prints one JSON line with what it measured on stdout (and ``ready`` first when the
orchestrator must wait for it). They are separate processes so that the load generator, the broker
and the service under test each have their own interpreter, as they would in production.

Roles:
- ``pub URL PREFIX COUNT SIZE``: publish COUNT QoS 1 messages of SIZE bytes on PREFIX/<n>, as fast
  as the broker acknowledges them; reports the time from first publish to last PUBACK.
- ``sub URL FILTER EXPECTED``: count messages on FILTER until EXPECTED arrived (or 15 s of silence).
- ``meters URL FIRST COUNT MESSAGES RATE``: COUNT virtual meters (ids meter-FIRST..), each sending
  MESSAGES schema-valid three-phase measurements (16 readings) at RATE messages/s per meter (0: as
  fast as possible), QoS 1; records each message's t_ns so the orchestrator can compute latency.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

CHANNELS = (
    ("u_a", "V"), ("u_b", "V"), ("u_c", "V"),
    ("i_a", "A"), ("i_b", "A"), ("i_c", "A"),
    ("p_a", "W"), ("p_b", "W"), ("p_c", "W"),
    ("q_a", "var"), ("q_b", "var"), ("q_c", "var"),
    ("pf_a", "1"), ("pf_b", "1"), ("pf_c", "1"),
    ("f", "Hz"),
)  # fmt: skip
"""The 16 readings of a three-phase meter message."""


def _client(url: str, client_id: str, inflight: int) -> paho.Client:
    parts = urlsplit(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    properties = Properties(PacketTypes.CONNECT)
    properties.ReceiveMaximum = inflight  # Mosquitto sends a v5 client at most this many unacked
    client.connect(
        parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=60, properties=properties
    )
    return client


def publisher(url: str, prefix: str, count: int, size: int) -> dict[str, float]:
    client = _client(url, f"bench-pub-{prefix.rsplit('/', 1)[-1]}-{time.monotonic_ns()}", 1000)
    done = threading.Event()
    acked = 0

    def on_publish(*_args: object) -> None:
        nonlocal acked
        acked += 1
        if acked == count:
            done.set()

    client.on_publish = on_publish
    client.loop_start()
    payload = b"x" * size
    started = time.perf_counter()
    for number in range(count):
        client.publish(f"{prefix}/{number % 100}", payload, qos=1)
    done.wait(120)
    seconds = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return {"sent": count, "acked": acked, "seconds": seconds, "start_ns": time.time_ns()}


def subscriber(url: str, topic_filter: str, expected: int) -> dict[str, float]:
    client = _client(url, f"bench-sub-{time.monotonic_ns()}", 1000)
    lock = threading.Lock()
    state = {"received": 0, "first_ns": 0, "last_ns": 0}
    done = threading.Event()

    def on_message(*_args: object) -> None:
        now = time.time_ns()
        with lock:
            if state["received"] == 0:
                state["first_ns"] = now
            state["received"] += 1
            state["last_ns"] = now
            if state["received"] >= expected:
                done.set()

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.subscribe(topic_filter, qos=1)
    client.loop_start()
    subscribed.wait(10)
    print("ready", flush=True)
    last_seen = -1
    while not done.wait(15):
        if state["received"] == last_seen:
            break  # 15 s without a message: report what arrived
        last_seen = state["received"]
    client.disconnect()
    client.loop_stop()
    return dict(state)


def _measurement(device: str, seq: int, t_ns: int, base: float) -> bytes:
    values = ",".join(
        f'{{"channel":"{name}","value":{base + index:.3f},"unit":"{unit}","quality":"good"}}'
        for index, (name, unit) in enumerate(CHANNELS)
    )
    return (
        f'{{"schema_version":1,"device_id":"{device}","seq":{seq},"t_ns":{t_ns},'
        f'"values":[{values}]}}'
    ).encode()


def meters(url: str, first: int, count: int, messages: int, rate: float) -> dict[str, object]:
    """COUNT meters sharing one connection per process (a load generator, not the agent runtime)."""
    client = _client(url, f"bench-meters-{first}-{time.monotonic_ns()}", 2000)
    client.loop_start()
    devices = [f"meter-{number:05d}" for number in range(first, first + count)]
    sent_ns: list[int] = []
    interval = 1.0 / rate if rate > 0 else 0.0
    started = time.perf_counter()
    for seq in range(messages):
        tick = started + seq * interval
        delay = tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = time.time_ns()
        sent_ns.append(now)
        for device in devices:
            client.publish(
                f"openfeeder/v1/meas/{device}", _measurement(device, seq, now, 230.0), qos=1
            )
    # wait until paho has nothing in flight any more
    deadline = time.monotonic() + 120
    while client._out_messages and time.monotonic() < deadline:
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return {"devices": devices, "messages": messages, "seconds": seconds, "sent_ns": sent_ns}


def storm(catalog_url: str, count: int, concurrency: int) -> dict[str, object]:
    """COUNT devices boot at once (CONCURRENCY requests in flight), then each polls once."""
    import asyncio

    import httpx

    pools = max(1, concurrency // 10)

    async def send(
        client: httpx.AsyncClient, method: str, url: str, **kwargs: object
    ) -> httpx.Response:
        # uvicorn closes idle keep-alive connections after 5 s; a request racing that is retried
        for attempt in range(3):
            try:
                return await client.request(method, url, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def run() -> dict[str, object]:
        # 10 connections per httpx client: one client with hundreds of connections spends ~5 ms
        # of CPU per request in its own pool bookkeeping, which would measure httpx, not the catalog
        limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)
        clients = [
            httpx.AsyncClient(base_url=catalog_url, limits=limits, timeout=60) for _ in range(pools)
        ]
        try:
            gate = asyncio.Semaphore(concurrency)
            versions: dict[str, str] = {}

            async def boot(number: int) -> float:
                device = f"storm-{number:05d}"
                body = {
                    "device_id": device,
                    "device_type": "meter",
                    "firmware": "1.0.0",
                    "capabilities": ["rms", "power"],
                    "location": {"bus_id": 2 + number % 30},
                }
                async with gate:
                    started = time.perf_counter()
                    response = await send(
                        clients[number % pools], "POST", "/v1/devices/boot", json=body
                    )
                    elapsed = time.perf_counter() - started
                response.raise_for_status()
                settings = response.json()
                if not settings.get("brokers") or settings.get("device_id") != device:
                    raise RuntimeError(f"{device}: incomplete settings {settings}")
                versions[device] = response.headers["etag"]
                return elapsed

            async def poll(number: int, device: str) -> float:
                async with gate:
                    started = time.perf_counter()
                    response = await send(
                        clients[number % pools],
                        "GET",
                        f"/v1/devices/{device}/settings",
                        headers={"If-None-Match": versions[device]},
                    )
                    elapsed = time.perf_counter() - started
                if response.status_code != 304:
                    raise RuntimeError(f"{device}: poll answered {response.status_code}")
                return elapsed

            started = time.perf_counter()
            boot_latencies = await asyncio.gather(*(boot(n) for n in range(count)))
            boot_seconds = time.perf_counter() - started
            started = time.perf_counter()
            poll_latencies = await asyncio.gather(*(poll(n, d) for n, d in enumerate(versions)))
            poll_seconds = time.perf_counter() - started
        finally:
            for client in clients:
                await client.aclose()
        return {
            "devices": count,
            "configured": len(versions),
            "boot_seconds": boot_seconds,
            "boot_latency_s": sorted(boot_latencies),
            "poll_seconds": poll_seconds,
            "poll_latency_s": sorted(poll_latencies),
        }

    return asyncio.run(run())


def main(argv: list[str]) -> int:
    role, args = argv[0], argv[1:]
    if role == "pub":
        result: object = publisher(args[0], args[1], int(args[2]), int(args[3]))
    elif role == "sub":
        result = subscriber(args[0], args[1], int(args[2]))
    elif role == "meters":
        result = meters(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]))
    elif role == "storm":
        result = storm(args[0], int(args[1]), int(args[2]))
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
