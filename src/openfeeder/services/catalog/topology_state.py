"""The switch positions the catalog has been told, and the topology version they make.

``PUT /v1/topology`` sets some switches; the others keep their position. The state records only the
switches ever set (``overrides``); every other switch is as in the case file. Each change that moves
at least one switch makes a new ``version``; it is stored in the catalog's meta table as JSON::

    {"version": 3, "switch_states": {"312": "open", "325": "closed"},
     "reason": "FLISR: isolate section 13", "updated_ns": 1763683200000000000}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType

from pydantic import JsonValue

from openfeeder.iot.schema import SwitchPosition

__all__ = ["TopologyState"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopologyState:
    version: int = 0
    overrides: Mapping[int, SwitchPosition] = field(default_factory=lambda: MappingProxyType({}))
    reason: str = ""
    updated_ns: int | None = None

    @classmethod
    def from_json(cls, value: JsonValue | None, *, switch_ids: Set[int]) -> TopologyState:
        """The stored state; switches the case no longer has are dropped (and logged)."""
        if not isinstance(value, dict):
            return cls()
        raw = value.get("switch_states")
        overrides: dict[int, SwitchPosition] = {}
        for key, position in (raw if isinstance(raw, dict) else {}).items():
            switch_id = int(key)
            if switch_id not in switch_ids:
                _LOG.warning(
                    "stored topology names switch %s, which the case does not have", switch_id
                )
                continue
            overrides[switch_id] = SwitchPosition(str(position))
        version = value.get("version")
        updated = value.get("updated_ns")
        return cls(
            version=version if isinstance(version, int) else 0,
            overrides=MappingProxyType(overrides),
            reason=str(value.get("reason") or ""),
            updated_ns=updated if isinstance(updated, int) else None,
        )

    def to_json(self) -> JsonValue:
        return {
            "version": self.version,
            "switch_states": {str(k): str(v) for k, v in sorted(self.overrides.items())},
            "reason": self.reason,
            "updated_ns": self.updated_ns,
        }

    def closed(self, normal: Mapping[int, bool]) -> dict[int, bool]:
        """Every switch: closed or not (the case's position unless overridden)."""
        closed = dict(normal)
        for switch_id, position in self.overrides.items():
            closed[switch_id] = position is SwitchPosition.CLOSED
        return closed

    def positions(self, normal: Mapping[int, bool]) -> dict[int, SwitchPosition]:
        return {
            switch_id: SwitchPosition.CLOSED if is_closed else SwitchPosition.OPEN
            for switch_id, is_closed in sorted(self.closed(normal).items())
        }

    def updated(
        self, states: Mapping[int, SwitchPosition], *, reason: str, now_ns: int
    ) -> TopologyState:
        """The next version with ``states`` applied on top of this one."""
        return TopologyState(
            version=self.version + 1,
            overrides=MappingProxyType({**self.overrides, **states}),
            reason=reason,
            updated_ns=now_ns,
        )
