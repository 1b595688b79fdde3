"""Attribute-based access control: rules as data, one decision per request.

A request is an :class:`AccessRequest`: the operation (``catalog.topology.write``,
``flisr.incident.clear``, ...), the grid areas it touches, the type of the device it targets (if
any) and the time. The :class:`~openfeeder.security.tokens.Principal` from the caller's token brings
roles, the areas and device types it is scoped to and the operations it may be used for.

A :class:`Policy` is a list of allow rules (deny by default). A rule allows the request when *all*
of these hold:

- **role**: the principal has one of the rule's ``roles``;
- **operation**: the operation matches one of the rule's ``operations`` (``fnmatch`` patterns,
  ``catalog.*``) *and* one of the token's ``operations``;
- **area**: every area the request touches is allowed: by the rule's ``areas`` (``"own"``: the
  token's areas, ``"*"``: any, or a list of names) and by the token's areas (``*`` in the token:
  all);
- **device type**: the target device's type (when there is one) is in the rule's ``device_types``
  and in the token's (``*``: any);
- **time**: the UTC time of day lies in the rule's ``hours_utc`` window (``"06:00-22:00"``; a
  window may wrap midnight, ``"22:00-06:00"``) and the weekday in ``weekdays`` (``mon``...``sun``).

A denial says which attribute failed for the rule that came closest (most attributes satisfied),
so that a 403 and the audit entry tell the operator what is missing.

The policy file (TOML, ``[access] policy_file``)::

    [areas]                      # optional: named areas made of feeder areas
    north = ["feeder-12", "feeder-40"]

    [[rule]]
    name = "operators switch in their own areas"
    roles = ["operator"]
    operations = ["catalog.topology.write", "flisr.incident.clear", "switch.command"]
    areas = "own"
    hours_utc = "00:00-24:00"

Without a file :data:`DEFAULT_RULES` apply (module source): ``admin`` and ``service`` may do
everything everywhere, ``engineer`` may provision devices, publish algorithms and read, in their own
areas, ``operator`` may switch and clear incidents in their own areas and read, ``viewer`` may read.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from openfeeder.errors import ConfigError
from openfeeder.security.tokens import ANY, Principal

__all__ = [
    "DEFAULT_RULES",
    "OWN",
    "AccessRequest",
    "Decision",
    "Policy",
    "Rule",
    "load_policy",
]

OWN: Final = "own"
_WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW: Final = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_NS_PER_S: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """What a caller wants to do."""

    operation: str
    areas: frozenset[str] = frozenset()
    """Grid areas the operation touches (empty: none in particular)."""
    device_type: str | None = None
    t_ns: int = 0
    target: str = ""
    """What is acted on, for messages and the audit log (``/v1/topology``, ``device m1``)."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One allow rule (module docstring)."""

    name: str
    roles: frozenset[str]
    operations: tuple[str, ...]
    areas: str | frozenset[str] = OWN
    device_types: frozenset[str] = frozenset({ANY})
    hours_utc: tuple[int, int] = (0, 24 * 60)
    """Minutes of the UTC day [from, to); from > to wraps midnight."""
    weekdays: frozenset[int] = frozenset(range(7))

    def check(self, principal: Principal, request: AccessRequest) -> list[str]:
        """The attributes that fail for this rule (empty: the rule allows the request)."""
        failures: list[str] = []
        if not self.roles & principal.roles:
            failures.append(
                f"role: needs one of {_listed(self.roles)}, the token has "
                f"{_listed(principal.roles)}"
            )
        if not _matches(request.operation, self.operations):
            failures.append(f"operation: {request.operation} is not allowed to these roles")
        elif not _matches(request.operation, principal.operations):
            failures.append(f"operation: the token is not valid for {request.operation}")
        outside = sorted(area for area in request.areas if not self._area_allowed(principal, area))
        if outside:
            failures.append(
                f"area: {', '.join(outside)} outside the token's areas {_listed(principal.areas)}"
            )
        if request.device_type is not None:
            if ANY not in self.device_types and request.device_type not in self.device_types:
                failures.append(f"device type: {request.device_type} is not allowed to this role")
            elif ANY not in principal.device_types and (
                request.device_type not in principal.device_types
            ):
                failures.append(
                    f"device type: the token is limited to {_listed(principal.device_types)}"
                )
        if not self._time_allowed(request.t_ns):
            start, end = self.hours_utc
            failures.append(
                f"time: outside {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
                " UTC or not on an allowed weekday"
            )
        return failures

    def _area_allowed(self, principal: Principal, area: str) -> bool:
        if ANY not in principal.areas and area not in principal.areas:
            return False
        if self.areas in (OWN, ANY):
            return True
        return isinstance(self.areas, frozenset) and (ANY in self.areas or area in self.areas)

    def _time_allowed(self, t_ns: int) -> bool:
        moment = datetime.fromtimestamp(t_ns / _NS_PER_S, tz=UTC)
        if moment.weekday() not in self.weekdays:
            return False
        minute = moment.hour * 60 + moment.minute
        start, end = self.hours_utc
        if start <= end:
            return start <= minute < end
        return minute >= start or minute < end


def _matches(operation: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(operation, pattern) for pattern in patterns)


def _listed(values: Iterable[str]) -> str:
    shown = sorted(values)
    return "[" + ", ".join(shown) + "]" if shown else "none"


_READ: Final = ("catalog.*.read", "flisr.*.read")
DEFAULT_RULES: Final = (
    Rule(name="admin", roles=frozenset({"admin"}), operations=("*",), areas=ANY),
    Rule(name="service", roles=frozenset({"service"}), operations=("*",), areas=ANY),
    Rule(
        name="engineer",
        roles=frozenset({"engineer"}),
        operations=("catalog.device.*", "catalog.algorithm.*", "catalog.service.*", *_READ),
    ),
    Rule(
        name="operator",
        roles=frozenset({"operator"}),
        operations=("catalog.topology.write", "flisr.incident.clear", "switch.command", *_READ),
    ),
    Rule(name="viewer", roles=frozenset({"viewer"}), operations=_READ, areas=ANY),
)


@dataclass(frozen=True, slots=True)
class Policy:
    """Allow rules and the named areas (see the module docstring)."""

    rules: tuple[Rule, ...] = DEFAULT_RULES
    named_areas: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Area name -> the feeder areas it is made of."""

    def decide(self, principal: Principal, request: AccessRequest) -> Decision:
        closest: tuple[tuple[bool, int], Rule, list[str]] | None = None
        for rule in self.rules:
            failures = rule.check(principal, request)
            if not failures:
                return Decision(True, f"allowed by rule '{rule.name}'", rule.name)
            # closest: a rule of the caller's own roles first, then the fewest failures
            rank = (not rule.roles & principal.roles, len(failures))
            if closest is None or rank < closest[0]:
                closest = (rank, rule, failures)
        if closest is None:
            return Decision(False, "no rule allows anything (empty policy)")
        _, rule, failures = closest
        return Decision(
            False,
            f"{principal.subject} may not {request.operation}"
            f"{' on ' + request.target if request.target else ''}: {failures[0]} "
            f"(closest rule '{rule.name}')",
            None,
        )

    def area_names(self, feeder_areas: Iterable[str]) -> frozenset[str]:
        """The feeder areas with every one that belongs to a named area replaced by its name."""
        names: set[str] = set()
        for area in feeder_areas:
            owners = [name for name, members in self.named_areas.items() if area in members]
            names.update(owners or [area])
        return frozenset(names)


def load_policy(path: Path) -> Policy:
    """A policy file (module docstring); ConfigError naming the file and the rule otherwise."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the policy: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    unknown = set(data) - {"rule", "areas"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ConfigError(f"{path}: needs at least one [[rule]]")
    rules = tuple(_rule(item, where=f"{path}: rule {i}") for i, item in enumerate(raw_rules))
    areas = data.get("areas", {})
    if not isinstance(areas, dict):
        raise ConfigError(f"{path}: [areas] must be a table of name = [feeder areas]")
    named = {
        str(name): frozenset(_strings(members, where=f"{path}: areas.{name}"))
        for name, members in areas.items()
    }
    return Policy(rules=rules, named_areas=named)


def _rule(item: Any, *, where: str) -> Rule:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(item) - {
        "name",
        "roles",
        "operations",
        "areas",
        "device_types",
        "hours_utc",
        "weekdays",
    }
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = str(item.get("name", where))
    where = f"{where} ('{name}')"
    for required in ("roles", "operations"):
        if required not in item:
            raise ConfigError(f"{where}: '{required}' is required")
    areas_value = item.get("areas", OWN)
    areas: str | frozenset[str]
    if areas_value in (OWN, ANY):
        areas = str(areas_value)
    else:
        areas = frozenset(_strings(areas_value, where=f"{where}: areas"))
    weekdays = frozenset(range(7))
    if "weekdays" in item:
        days = _strings(item["weekdays"], where=f"{where}: weekdays")
        bad = [day for day in days if day.lower() not in _WEEKDAYS]
        if bad:
            raise ConfigError(f"{where}: weekdays: {', '.join(bad)} (use mon ... sun)")
        weekdays = frozenset(_WEEKDAYS.index(day.lower()) for day in days)
    return Rule(
        name=name,
        roles=frozenset(_strings(item["roles"], where=f"{where}: roles")),
        operations=tuple(_strings(item["operations"], where=f"{where}: operations")),
        areas=areas,
        device_types=frozenset(
            _strings(item.get("device_types", [ANY]), where=f"{where}: device_types")
        ),
        hours_utc=_window(item.get("hours_utc", "00:00-24:00"), where=f"{where}: hours_utc"),
        weekdays=weekdays,
    )


def _strings(value: Any, *, where: str) -> Sequence[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: must be a list of names")
    return value


def _window(value: Any, *, where: str) -> tuple[int, int]:
    match = _WINDOW.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"{where}: must be 'HH:MM-HH:MM' (UTC)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if not (0 <= start <= 24 * 60 and 0 <= end <= 24 * 60 and m1 < 60 and m2 < 60):
        raise ConfigError(f"{where}: {value!r} is not a time window of one day")
    return start, end
