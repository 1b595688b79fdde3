"""The receiving end of ``bench.security``, in its own process as a service or a device is.

``python -m bench._security_receiver`` (started by :mod:`bench.security`, never by hand). It reads
one JSON command per line on stdin and answers on stdout, so the benchmark's own signalling stays
off MQTT and outside the measured path:

- ``{"op": "open", "port", "name", "tls": {"ca", "cert", "key"} | null, "keys": file | null,
  "topic"}``: connect to the broker as ``name`` (with its own certificate under TLS), with a
  :class:`~openfeeder.iot.protection.MessageProtection` over the key ring in ``keys`` when given,
  subscribe to ``topic`` at QoS 1; answers ``ready`` once the SUBACK is in.
- each message that arrives while no burst is expected: its one-way latency is recorded under its
  mode, with when it came in (before the opening) for the stage figures, and ``a`` answered (the sender's closed loop waits for it before the next message).
- ``{"op": "burst", "mode", "n"}``: the next ``n`` messages are a burst of ``mode``; answers
  ``ok`` at once and ``b`` when the last one arrived.
- ``{"op": "close"}``: disconnect; answers one JSON line with everything recorded.
- ``{"op": "quit"}`` or the end of stdin: exit.

What arrives is ``PLAINTEXT`` (the mode's number and the sender's send time,
``CLOCK_MONOTONIC`` in ns: the same clock for every process on Linux) padded to the message size,
sealed for the payload mode. A message that starts with the envelope's
:data:`~openfeeder.security.payload.MAGIC` (or whose plaintext says payload mode: monitoring is not
sealed) goes through ``MessageProtection.guard`` exactly as a Messenger hands it on; the others go
to the handler directly, as they would without payload protection. The arrival time is taken
after the opening, in the handler.
"""

from __future__ import annotations

import json
import os
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from openfeeder.iot.protection import MessageProtection
from openfeeder.security.keys import KeyRing
from openfeeder.security.payload import MAGIC, Algorithm, PayloadProtector, SymmetricKey
from openfeeder.security.tls import TlsFiles

#: The modes a message can be carried in, by number (the first byte of the plaintext).
MODES: Final = ("plain", "tls1.3+acl", "tls1.3+acl+payload")
PAYLOAD_MODE: Final = 2
#: The start of every plaintext: mode number, send time (CLOCK_MONOTONIC, ns).
PLAINTEXT: Final = struct.Struct(">Bq")
_PAYLOAD_TAG: Final = bytes([PAYLOAD_MODE])
TIMEOUT_S: Final = 10.0


def now_ns() -> int:
    """The benchmark's clock: CLOCK_MONOTONIC, shared by every process on the machine."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def write_keys(path: Path, keys: list[SymmetricKey]) -> None:
    """Throwaway bench keys to a file the receiver reads (mode 0600)."""
    document = [
        {
            "key_id": key.key_id,
            "algorithm": str(key.algorithm),
            "material": key.material.hex(),
            "scope": key.scope,
        }
        for key in keys
    ]
    path.touch(mode=0o600)
    path.write_text(json.dumps(document))


def read_keys(path: Path) -> list[SymmetricKey]:
    return [
        SymmetricKey(
            entry["key_id"],
            Algorithm(entry["algorithm"]),
            bytes.fromhex(entry["material"]),
            entry["scope"],
        )
        for entry in json.loads(path.read_text())
    ]


def protection(keys: list[SymmetricKey], name: str) -> MessageProtection:
    """What a device or service named ``name`` seals and opens with (default policy)."""
    return MessageProtection(
        PayloadProtector(KeyRing.of(*keys), sender_id=name), event_device_id=name
    )


def mqtt_client(
    port: int, name: str, context: ssl.SSLContext | None, *, suffix: str
) -> mqtt.Client:
    """A connected MQTT v5 client with its network thread running."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{name}.{suffix}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    if context is not None:
        client.tls_set_context(context)
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(TIMEOUT_S):
        client.loop_stop()
        raise RuntimeError(f"{name} did not connect to 127.0.0.1:{port}")
    return client


class Receiver:
    """One subscription at a time; what arrived, by mode."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._client: mqtt.Client | None = None
        self._protection: MessageProtection | None = None
        self._reset()

    def _reset(self) -> None:
        self.latencies_ns: dict[str, list[int]] = {mode: [] for mode in MODES}
        self.stages_ns: dict[str, list[tuple[int, int, int]]] = {mode: [] for mode in MODES}
        self._entry_ns = 0
        self.throughputs: dict[str, list[float]] = {mode: [] for mode in MODES}
        self.errors: list[str] = []
        self._burst_mode = -1
        self._burst_size = 0
        self._burst_left = 0
        self._burst_first_sent_ns = 0

    def open(self, command: dict[str, Any]) -> None:
        name, topic = command["name"], command["topic"]
        tls = command["tls"]
        context = (
            TlsFiles(Path(tls["ca"]), Path(tls["cert"]), Path(tls["key"])).client_context()
            if tls
            else None
        )
        self._reset()
        keys = command["keys"]
        self._protection = protection(read_keys(Path(keys)), name) if keys else None
        raw = self._arrived_raw
        guarded = self._protection.guard(self._arrived_opened) if self._protection else None

        def on_message(_client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
            self._entry_ns = now_ns()  # the message is in: what follows is the opening
            data = bytes(message.payload)  # as the Messenger hands it on
            if guarded is not None and (data[:2] == MAGIC or data[:1] == _PAYLOAD_TAG):
                guarded(message.topic, data)
            else:
                raw(message.topic, data)

        client = mqtt_client(command["port"], name, context, suffix="bench-rx")
        subscribed = threading.Event()
        client.on_subscribe = lambda *_args: subscribed.set()
        client.on_message = on_message
        self._client = client
        client.subscribe(topic, qos=1)
        if not subscribed.wait(TIMEOUT_S):
            raise RuntimeError(f"{name}: no SUBACK for {topic}")

    def _arrived_opened(self, _topic: str, plaintext: bytes) -> None:
        arrival_ns = now_ns()
        self._record(plaintext, arrival_ns, opened=True)

    def _arrived_raw(self, _topic: str, plaintext: bytes) -> None:
        arrival_ns = now_ns()
        self._record(plaintext, arrival_ns, opened=False)

    def _record(self, plaintext: bytes, arrival_ns: int, *, opened: bool) -> None:
        mode, sent_ns = PLAINTEXT.unpack_from(plaintext)
        if opened != (mode == PAYLOAD_MODE):
            path = "guarded" if opened else "unguarded"
            self.errors.append(f"a {MODES[mode]} message took the {path} path")
        if self._burst_left:
            if self._burst_left == self._burst_size:
                self._burst_first_sent_ns = sent_ns
            if mode != self._burst_mode:
                self.errors.append(f"a {MODES[mode]} message in a {MODES[self._burst_mode]} burst")
            self._burst_left -= 1
            if not self._burst_left:
                elapsed_s = (arrival_ns - self._burst_first_sent_ns) / 1e9
                self.throughputs[MODES[mode]].append(self._burst_size / elapsed_s)
                self._write(b"b\n")
            return
        self.latencies_ns[MODES[mode]].append(arrival_ns - sent_ns)
        self.stages_ns[MODES[mode]].append((sent_ns, self._entry_ns, arrival_ns))
        self._write(b"a\n")

    def expect_burst(self, mode: str, size: int) -> None:
        self._burst_mode = MODES.index(mode)
        self._burst_size = size
        self._burst_left = size

    def close(self) -> dict[str, Any]:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        protector = self._protection.protector if self._protection else None
        return {
            "latencies_ns": {mode: values for mode, values in self.latencies_ns.items() if values},
            "stages_ns": {mode: values for mode, values in self.stages_ns.items() if values},
            "throughputs": {mode: values for mode, values in self.throughputs.items() if values},
            "opened_sealed": protector.opened if protector else 0,
            "rejected": {str(k): v for k, v in protector.rejected.items()} if protector else {},
            "errors": self.errors,
        }


def main() -> int:
    def write(line: bytes) -> None:
        os.write(1, line)

    receiver = Receiver(write)
    for line in sys.stdin.buffer:
        command = json.loads(line)
        op = command["op"]
        if op == "open":
            receiver.open(command)
            write(b"ready\n")
        elif op == "burst":
            receiver.expect_burst(command["mode"], int(command["n"]))
            write(b"ok\n")
        elif op == "close":
            write(json.dumps(receiver.close()).encode() + b"\n")
        elif op == "quit":
            break
        else:
            raise ValueError(f"unknown command {op!r}")
    receiver.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
