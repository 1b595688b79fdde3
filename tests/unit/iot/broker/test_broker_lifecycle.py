"""Start, stop and bind errors of the broker, its asyncio API, and ``openfeeder broker``."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys

import pytest
from broker_testkit import TIMEOUT_S, PeerPool, RawPeer, unique
from click.testing import CliRunner

from openfeeder.cli.broker_cmd import broker_command
from openfeeder.errors import ConfigError, OpenFeederError
from openfeeder.iot.broker import Broker, BrokerBindError, BrokerLimits, BrokerThread, serve
from openfeeder.iot.broker.codec import Connack, Connect, decode_packet, encode


def test_stop_closes_clients_and_listener_without_wills() -> None:
    broker = BrokerThread(port=0).start()
    port = broker.port
    assert port > 0
    pool = PeerPool(port)
    try:
        device = pool()
        device.client.will_set(f"{unique()}/status", b"dead")
        device.connect()
        broker.stop()
        # the client sees the connection end
        assert device.disconnects.get(timeout=TIMEOUT_S) is not None
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S).close()
        assert broker.broker.stats()["wills_published"] == 0
        broker.stop()  # a second stop is harmless
    finally:
        pool.close()


def test_port_in_use_is_a_clear_error() -> None:
    with BrokerThread(port=0) as first:
        second = BrokerThread(port=first.port)
        with pytest.raises(BrokerBindError) as caught:
            second.start()
        assert isinstance(caught.value, ConfigError)
        assert caught.value.port == first.port
        assert "address already in use" in str(caught.value)


def test_async_broker_in_the_callers_loop() -> None:
    async def main() -> tuple[int, dict[str, int]]:
        async with Broker(port=0) as broker:
            reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
            writer.write(encode(Connect("async-client", 5)))
            await writer.drain()
            header = await reader.readexactly(2)
            body = await reader.readexactly(header[1])
            connack = decode_packet(header + body)
            stats = broker.stats()
            writer.close()
            await writer.wait_closed()
        assert isinstance(connack, Connack)
        return connack.reason_code, stats

    code, stats = asyncio.run(main())
    assert code == 0
    assert stats["connections_current"] == 1


def test_serve_runs_until_the_stop_event() -> None:
    async def main() -> dict[str, int]:
        stop = asyncio.Event()
        ports: list[int] = []

        def listening(broker: Broker) -> None:
            ports.append(broker.port)

        task = asyncio.create_task(serve("127.0.0.1", 0, stop, on_listening=listening))
        while not ports:
            await asyncio.sleep(0.01)
        _, writer = await asyncio.open_connection("127.0.0.1", ports[0])
        writer.close()
        await writer.wait_closed()
        stop.set()
        return await asyncio.wait_for(task, TIMEOUT_S)

    stats = asyncio.run(main())
    assert stats["connections_total"] == 1


def test_cli_runs_until_sigterm() -> None:
    code = "from openfeeder.cli.broker_cmd import broker_command; broker_command()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("openfeeder broker listening on mqtt://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        raw = RawPeer(port)
        try:
            raw.send(Connect("cli-smoke", 4), version=4)
            assert raw.read(version=4) == Connack(False, 0)
        finally:
            raw.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped" in out


def test_cli_reports_a_port_in_use() -> None:
    with BrokerThread(port=0) as running:
        result = CliRunner().invoke(broker_command, ["--port", str(running.port)])
    assert result.exit_code != 0
    assert isinstance(result.exception, OpenFeederError)
    assert str(result.exception) == (
        f"cannot listen on 127.0.0.1:{running.port}: address already in use"
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"max_packet_bytes": 0},
        {"max_queued_messages": -1},
        {"receive_maximum": 70_000},
        {"inflight_v311": 0},
        {"connect_timeout_s": 0.0},
    ],
)
def test_limits_refuse_unusable_values(changes: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BrokerLimits(**changes)
