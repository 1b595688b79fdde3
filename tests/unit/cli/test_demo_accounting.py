"""The demo's summary: the switch mechanisms' share of the end-to-end time."""

from __future__ import annotations

from openfeeder.cli.demo_flisr import _mechanism_ms
from openfeeder.services.flisr.incident import Incident, Step

MS = 1_000_000


def _ack(t_ms: int, command: str, status: str) -> Step:
    return Step(
        t_ns=t_ms * MS + 2 * MS,
        kind="ack",
        detail={"command_id": command, "status": status, "device_t_ns": t_ms * MS},
    )


def _command(t_ms: int, command: str) -> Step:
    return Step(t_ns=t_ms * MS, kind="command", detail={"command_id": command})


def test_commands_sent_together_count_once_even_with_an_ack_between_them() -> None:
    incident = Incident(incident_id="inc-1", breaker=300, variant="central")
    incident.steps = [
        _command(0, "a"),
        _ack(1, "a", "accepted"),  # arrives before the second command of the batch is logged
        _command(2, "b"),
        _ack(3, "b", "accepted"),
        _ack(1001, "a", "done"),
        _ack(1103, "b", "done"),
        _command(1200, "c"),  # then one more, alone
        _ack(1201, "c", "accepted"),
        _ack(1301, "c", "done"),
    ]
    # a and b operate together from 1 to 1103 ms, c from 1201 to 1301 ms
    assert _mechanism_ms(incident) == 1102 + 100
