"""The processes of ``bench.security`` besides the sender: the broker and the receiver.

- :func:`broker`: the embedded broker as its own process (``openfeeder broker``, with
  ``--cert/--key/--ca/--acl-file`` for TLS) or the machine's Mosquitto with a generated
  ``mosquitto.conf`` (:func:`~openfeeder.security.mosquitto.mosquitto_config`: mutual TLS 1.3,
  ``require_certificate``, ``use_identity_as_username``, the same ACL file), on a free port,
  stopped (SIGTERM, then SIGKILL) when the block ends, on errors too.
- :class:`ReceiverProcess`: ``python -m bench._security_receiver`` and its stdin/stdout pipes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from bench._processes import free_port, stop_process
from openfeeder.security.mosquitto import MosquittoFiles, mosquitto_config

BROKERS: Final = ("embedded", "mosquitto")
START_TIMEOUT_S: Final = 20.0
_ROOT: Final = Path(__file__).resolve().parent.parent
_EMBEDDED: Final = "import sys; from openfeeder.cli import main; sys.exit(main())"
_LISTENING: Final = re.compile(rb"listening on mqtts?://[^:]+:(\d+)")
#: Mosquitto's default queue (1,000 messages per client) would drop QoS 1 messages of a burst.
_MOSQUITTO_QUEUE: Final = "max_queued_messages 1000000\n"


class LineReader:
    """Lines from a pipe with a timeout (select on the file descriptor, no reader thread)."""

    def __init__(self, stream: IO[bytes], what: str) -> None:
        self._fd = stream.fileno()
        self._buffer = b""
        self._what = what

    def read(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise TimeoutError(f"{self._what}: nothing within {timeout_s:g} s")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise EOFError(f"{self._what}: the pipe closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS material and the topic ACL (Mosquitto format) it enforces."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    acl_file: Path


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _embedded(directory: Path, tls: BrokerTls | None) -> tuple[subprocess.Popen[bytes], int]:
    command = [sys.executable, "-c", _EMBEDDED, "broker", "--host", "127.0.0.1", "--port", "0"]
    if tls is not None:
        command += ["--cert", str(tls.cert_file), "--key", str(tls.key_file)]
        command += ["--ca", str(tls.ca_file), "--acl-file", str(tls.acl_file)]
    log_file = directory / "broker.log"
    with log_file.open("ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
    assert process.stdout is not None
    try:
        line = LineReader(process.stdout, "the embedded broker").read(START_TIMEOUT_S)
        found = _LISTENING.search(line)
        if found is None:
            raise RuntimeError(f"the embedded broker said {line!r}: {_log(log_file)}")
    except BaseException:
        stop_process(process)
        raise
    return process, int(found.group(1))


def _mosquitto(directory: Path, tls: BrokerTls | None) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise RuntimeError("--broker mosquitto: the mosquitto binary is not installed")
    port = free_port()
    if tls is None:
        text = f"listener {port} 127.0.0.1\nallow_anonymous true\n"
    else:
        files = MosquittoFiles(tls.ca_file, tls.cert_file, tls.key_file, acl_file=tls.acl_file)
        user = pwd.getpwuid(os.geteuid()).pw_name
        text = mosquitto_config(files, port=port, host="127.0.0.1", run_as_user=user)
    config = directory / "mosquitto.conf"
    config.write_text(text + _MOSQUITTO_QUEUE)
    log_file = directory / "broker.log"
    with log_file.open("ab") as log:
        process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() >= deadline:
                stop_process(process)
                raise RuntimeError(
                    f"mosquitto did not listen on {port}: {_log(log_file)}"
                ) from None
            time.sleep(0.05)


@contextlib.contextmanager
def broker(kind: str, directory: Path, tls: BrokerTls | None) -> Iterator[int]:
    """A broker of ``kind`` in its own process for the block; yields its port."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "embedded":
        process, port = _embedded(directory, tls)
    elif kind == "mosquitto":
        process, port = _mosquitto(directory, tls)
    else:
        raise ValueError(f"broker {kind!r} is not one of {BROKERS}")
    try:
        yield port
    finally:
        stop_process(process)


class ReceiverProcess:
    """``python -m bench._security_receiver``, driven over its stdin and stdout."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench._security_receiver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_ROOT,
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._stdin = self._process.stdin
        self._lines = LineReader(self._process.stdout, "the receiver")

    def _send(self, command: dict[str, Any]) -> None:
        self._stdin.write(json.dumps(command).encode() + b"\n")
        self._stdin.flush()

    def _expect(self, answer: bytes, timeout_s: float) -> None:
        line = self._lines.read(timeout_s)
        if line != answer:
            raise RuntimeError(f"the receiver answered {line[:200]!r}, not {answer!r}")

    def open(self, **command: Any) -> None:
        """Connect and subscribe (see the receiver's ``open``); returns once subscribed."""
        self._send({"op": "open", **command})
        self._expect(b"ready", START_TIMEOUT_S)

    def arrived(self) -> None:
        """Wait until the receiver says the message sent last arrived."""
        self._expect(b"a", 10)

    def expect_burst(self, mode: str, size: int) -> None:
        self._send({"op": "burst", "mode": mode, "n": size})
        self._expect(b"ok", 10)

    def burst_arrived(self) -> None:
        self._expect(b"b", 120)

    def close(self) -> dict[str, Any]:
        """Disconnect; what the receiver recorded since ``open``."""
        self._send({"op": "close"})
        result: dict[str, Any] = json.loads(self._lines.read(START_TIMEOUT_S))
        return result

    def stop(self) -> None:
        """Ask it to quit (it ends at the end of its stdin too); SIGTERM after 10 s."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                self._send({"op": "quit"})
            with contextlib.suppress(OSError):
                self._stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
        stop_process(self._process)
