"""One FLISR incident: its timeline on the shared clock, its plans and its outcome; and the log.

Every step the coordinator takes is a :class:`Step` with the time of the shared (domain) clock at
which the coordinator saw or did it, plus, for what a device reported, the device's own timestamp.
The kinds, in the order they normally occur:

``fault_inception``   the earliest fault indicator or fault record of the incident (device time)
``trip``              the feeder-head breaker opened without a command from the coordinator
``detected``          the coordinator acts on the trip (after the reclosing wait)
``located``           the faulted section (and distance) is known; ``variant`` central or edge
``isolation_planned`` / ``restoration_planned``   a plan (again after a failure: ``replan``)
``command``           a command sent (switch, action, command id)
``ack``               its acknowledgement (status, detail)
``command_failed``    no DONE in time, a refusal or a ``switch_failed`` alarm
``isolated``          the faulted zone is dead and its switches locked out
``restored``          the last restoration operation is done (or nothing could be restored)
``topology_published``  the catalog has the new switch states
``cleared`` / ``normal``  the operator cleared the fault; the grid is back in its normal state

:class:`IncidentLog` appends each finished incident as one JSON line to a file and keeps them in
memory for the REST API.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Incident", "IncidentLog", "Step"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Step:
    t_ns: int
    """Shared (domain) clock when the coordinator saw or did it."""
    kind: str
    detail: dict[str, Any]

    def as_dict(self, start_ns: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"t_ns": self.t_ns, "kind": self.kind, **self.detail}
        if start_ns is not None:
            out["t_ms"] = round((self.t_ns - start_ns) / 1e6, 3)
        return out


@dataclass(slots=True)
class Incident:
    """A fault from trip to restoration (and, later, to the operator's clear)."""

    incident_id: str
    breaker: int
    variant: str
    status: str = "open"
    """open -> isolated -> restored -> cleared; or transient (cleared by reclosing), or failed."""
    steps: list[Step] = field(default_factory=list)
    location: dict[str, Any] | None = None
    isolation: dict[str, Any] | None = None
    restoration: dict[str, Any] | None = None
    opened_switches: list[int] = field(default_factory=list)
    closed_switches: list[int] = field(default_factory=list)
    locked_switches: list[int] = field(default_factory=list)
    failed_switches: list[int] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def first(self, kind: str) -> Step | None:
        return next((s for s in self.steps if s.kind == kind), None)

    def last(self, kind: str) -> Step | None:
        return next((s for s in reversed(self.steps) if s.kind == kind), None)

    @property
    def start_ns(self) -> int | None:
        inception = self.first("fault_inception")
        if inception is not None:
            return int(inception.detail.get("device_t_ns", inception.t_ns))
        trip = self.first("trip")
        return None if trip is None else trip.t_ns

    def durations_ms(self) -> dict[str, float]:
        """Milliseconds from fault inception to each milestone (those reached)."""
        start = self.start_ns
        if start is None:
            return {}
        out = {}
        for kind in ("trip", "detected", "located", "isolated", "restored"):
            step = self.first(kind) if kind != "restored" else self.last(kind)
            if step is not None:
                out[kind] = round((step.t_ns - start) / 1e6, 3)
        return out

    def as_dict(self) -> dict[str, Any]:
        start = self.start_ns
        return {
            "incident_id": self.incident_id,
            "breaker": self.breaker,
            "variant": self.variant,
            "status": self.status,
            "location": self.location,
            "isolation": self.isolation,
            "restoration": self.restoration,
            "opened_switches": self.opened_switches,
            "closed_switches": self.closed_switches,
            "locked_switches": self.locked_switches,
            "failed_switches": self.failed_switches,
            "durations_ms": self.durations_ms(),
            "summary": self.summary,
            "timeline": [step.as_dict(start) for step in self.steps],
        }


class IncidentLog:
    """Finished incidents: appended to a JSON-lines file, kept in memory (thread-safe)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._incidents: dict[str, Incident] = {}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, incident: Incident) -> None:
        with self._lock:
            self._incidents[incident.incident_id] = incident

    def write(self, incident: Incident) -> None:
        """Append the incident's present state to the file (once when it is handled, again when it
        is cleared; the last line of an incident id is its latest state)."""
        if self._path is None:
            return
        line = json.dumps(incident.as_dict(), default=_json_default)
        with self._lock, self._path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def get(self, incident_id: str) -> Incident | None:
        with self._lock:
            return self._incidents.get(incident_id)

    def all(self) -> list[Incident]:
        with self._lock:
            return list(self._incidents.values())


def _json_default(value: object) -> object:
    item = getattr(value, "item", None)
    if callable(item):  # numpy scalars
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)
