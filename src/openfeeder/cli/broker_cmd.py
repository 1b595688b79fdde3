"""``openfeeder broker``: run the embedded MQTT broker in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import logging

import click

from openfeeder.iot.broker import DEFAULT_LIMITS, Broker, BrokerLimits, run_broker

__all__ = ["broker_command"]

_LOG_LEVELS = ("debug", "info", "warning", "error")


@click.command("broker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=1883,
    show_default=True,
    help="TCP port (0 picks a free one and prints it).",
)
@click.option(
    "--max-packet-bytes",
    type=click.IntRange(64, 268_435_455),
    default=DEFAULT_LIMITS.max_packet_bytes,
    show_default=True,
    help="Largest MQTT packet accepted from a client; a larger one closes its connection.",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS),
    default="info",
    show_default=True,
    help="Level of the broker's log lines (stderr).",
)
def broker_command(host: str, port: int, max_packet_bytes: int, log_level: str) -> None:
    """Run the embedded MQTT broker (MQTT 3.1.1 and 5) until interrupted.

    For tests, demos and single-machine installs; production uses Mosquitto.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    logging.getLogger("openfeeder.iot.broker").setLevel(log_level.upper())
    limits = BrokerLimits(max_packet_bytes=max_packet_bytes)

    def announce(broker: Broker) -> None:
        click.echo(f"openfeeder broker listening on mqtt://{broker.host}:{broker.port}")

    stats = run_broker(host, port, limits=limits, on_listening=announce)
    click.echo(
        f"openfeeder broker stopped: {stats['messages_received']} messages received, "
        f"{stats['messages_sent']} sent, {stats['connections_total']} connections"
    )
