"""Shared test fixtures: the machine's real Mosquitto and PostgreSQL, and private Mosquitto brokers.

Tests marked ``integration`` need the Mosquitto broker at 127.0.0.1:1883 and the PostgreSQL server
at 127.0.0.1:5432 (trust auth, database ``test``), or the addresses in ``OPENFEEDER_TEST_MQTT`` /
``OPENFEEDER_TEST_POSTGRES``. Where they are missing the tests are skipped with the reason, except
under ``CI=true``, where a missing service is a failure: CI must never pass by skipping.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

MQTT_URL = os.environ.get("OPENFEEDER_TEST_MQTT", "mqtt://127.0.0.1:1883")
POSTGRES_URL = os.environ.get(
    "OPENFEEDER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_reachable: dict[str, str | None] = {}


def _check_tcp(name: str, url: str, default_port: int) -> str | None:
    """None if ``url``'s host:port accepts a TCP connection, else why not (cached per session)."""
    if name not in _reachable:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port
        try:
            with socket.create_connection((host, port), timeout=2):
                _reachable[name] = None
        except OSError as err:
            _reachable[name] = f"{name} is not reachable at {host}:{port} ({err.strerror or err})"
    return _reachable[name]


def _unavailable(reason: str) -> None:
    if _IN_CI:
        pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip")
    pytest.skip(f"{reason} (integration test; start the service or run under CI=true to fail)")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Code under test may configure logging for a service run in process (root level and
    handlers, levels of named loggers); the next test starts from what pytest set up."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    named = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            logger.setLevel(named.get(name, logging.NOTSET))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is None:
        return
    for name, url, port in (
        ("Mosquitto", MQTT_URL, 1883),
        ("PostgreSQL", POSTGRES_URL, 5432),
    ):
        reason = _check_tcp(name, url, port)
        if reason is not None:
            _unavailable(reason)


@pytest.fixture
def mqtt_url() -> str:
    """The shared real Mosquitto (use unique device ids: other test runs may share it)."""
    return MQTT_URL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(
    port: int, process: subprocess.Popen[bytes], name: str, log: Callable[[], str]
) -> None:
    """Return once ``port`` accepts connections; raise with the log if ``process`` died or hung."""
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited: {log()}") from None
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port}: {log()}")


@dataclass
class PrivateMosquitto:
    """A real Mosquitto process of the test's own, on a free port, that the test may kill."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        config = self.directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.directory}/\n"
            "max_queued_messages 1000000\nmax_inflight_messages 100\n"
            f"log_dest file {self.directory}/mosquitto.log\n"
        )
        self.process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_listening(self.port, self.process, "mosquitto", self.log)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop it: SIGTERM is a clean stop (it saves its state), SIGKILL a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@dataclass
class EmbeddedBrokerProcess:
    """OpenFeeder's embedded broker (``openfeeder broker``) as a process the test may kill."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        program = "import sys; from openfeeder.cli import main; sys.exit(main())"
        log = (self.directory / "broker.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", program, "broker", "--port", str(self.port)],
            stdout=log,
            stderr=log,
        )
        log.close()
        _wait_listening(self.port, self.process, "the embedded broker", self.log)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM: clean stop; SIGKILL: a crash (it keeps everything in memory: all is lost)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        path = self.directory / "broker.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
def embedded_broker(tmp_path: Path) -> Iterator[Callable[[], EmbeddedBrokerProcess]]:
    """Factory: ``broker = embedded_broker()`` runs ``openfeeder broker`` on a free port."""
    started: list[EmbeddedBrokerProcess] = []

    def make() -> EmbeddedBrokerProcess:
        directory = tmp_path / f"embedded-{len(started)}"
        directory.mkdir()
        broker = EmbeddedBrokerProcess(directory)
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop(signal.SIGKILL)


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[Callable[[], PrivateMosquitto]]:
    """Factory: ``broker = private_mosquitto()`` starts a private Mosquitto; all stop at teardown."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        _unavailable("the mosquitto binary is not installed")
    started: list[PrivateMosquitto] = []

    def make() -> PrivateMosquitto:
        directory = tmp_path / f"mosquitto-{len(started)}"
        directory.mkdir()
        broker = PrivateMosquitto(directory)
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop(signal.SIGKILL)
