"""The messages of the distributed estimator's levels (the agent plug-ins ``se_concentrator``,
``se_lv``, ``se_mv`` and the estimation service both read and write them).

Each area's results travel on the ``algo`` topic of the device that runs its level,
``openfeeder/v1/algo/<device>/<algorithm>`` (monitoring broker); the service's ``se_cycle`` output
(channel ``cycle``) starts a cycle. A step sends one upward message or one final estimate of one
or more parts; ``pass_code`` says which:

- ``pass_code`` 1, upward (:func:`up_readings`, read with :func:`read_up`): the area's
  :class:`~openfeeder.analysis.estimation.Equivalent`, ``p`` (W), ``q`` (var), ``p_sigma``,
  ``q_sigma``, ``u`` (pu), ``u_sigma`` (pu) and the correlations ``r_pq``, ``r_up``, ``r_uq``
  (``u`` and its correlations invalid when the area measures no voltage);
- ``pass_code`` 2, final (:func:`final_parts`, read part by part with :func:`read_final_part`
  and put together by :class:`FinalAssembly`): the voltage of each bus of the area (``u_<k>``,
  ``a_<k>`` in the order of the area's buses) and, for each child area ``j`` (in the area's order
  of children), its boundary state ``cu_<j> ca_<j> cp_<j> cq_<j>``. A message carries at most
  :data:`PART_BUSES` buses (a message holds at most 1,024 readings), so a larger area sends its
  final estimate in ``parts`` messages: part ``part`` holds the buses from ``offset`` on, ``u_<k>``
  being bus ``offset + k``; part 0 also holds the children's boundary states, which is all a child
  level needs of its parent's estimate.

Both carry ``cycle``, ``topology_version``, ``objective`` and ``removed`` (bad data removed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from openfeeder.analysis.estimation import AreaEstimate, BoundaryState, Equivalent, Level
from openfeeder.analysis.estimation.device_readings import DeviceSite
from openfeeder.errors import MessagingError
from openfeeder.iot.schema import AlgorithmOutput, Quality, Reading, Unit

__all__ = [
    "CYCLE_ALGORITHM",
    "LEVEL_ALGORITHMS",
    "LEVEL_VERSION",
    "MAX_CHILDREN",
    "PART_BUSES",
    "PASS_FINAL",
    "PASS_UP",
    "FinalAssembly",
    "FinalMessage",
    "FinalPart",
    "final_parts",
    "manifest_outputs",
    "message_values",
    "read_final_part",
    "read_up",
    "sites_parameter",
    "up_readings",
]

CYCLE_ALGORITHM: Final = "se_cycle"
LEVEL_ALGORITHMS: Final = {
    Level.CONCENTRATOR: "se_concentrator",
    Level.LV: "se_lv",
    Level.MV: "se_mv",
}
LEVEL_VERSION: Final = "1.2.0"
"""The version of the level plug-ins that speak these messages (their manifests say it)."""
PART_BUSES: Final = 200
"""Buses one part of a final estimate carries (two channels each; a message has at most 1024)."""
MAX_CHILDREN: Final = 64
PASS_UP: Final = 1
PASS_FINAL: Final = 2
_SCALARS: Final = (
    ("cycle", Unit.ONE),
    ("pass_code", Unit.ONE),
    ("topology_version", Unit.ONE),
    ("p", Unit.W),
    ("q", Unit.VAR),
    ("p_sigma", Unit.W),
    ("q_sigma", Unit.VAR),
    ("u", Unit.PU),
    ("u_sigma", Unit.PU),
    ("r_pq", Unit.ONE),
    ("r_up", Unit.ONE),
    ("r_uq", Unit.ONE),
    ("objective", Unit.ONE),
    ("removed", Unit.ONE),
    ("part", Unit.ONE),
    ("parts", Unit.ONE),
    ("offset", Unit.ONE),
)


def manifest_outputs() -> list[dict[str, str]]:
    """The output channels every level declares in its manifest."""
    out = [{"channel": c, "unit": u.value} for c, u in _SCALARS]
    for k in range(PART_BUSES):
        out += [{"channel": f"u_{k}", "unit": "pu"}, {"channel": f"a_{k}", "unit": "deg"}]
    for j in range(MAX_CHILDREN):
        out += [
            {"channel": f"cu_{j}", "unit": "pu"},
            {"channel": f"ca_{j}", "unit": "deg"},
            {"channel": f"cp_{j}", "unit": "W"},
            {"channel": f"cq_{j}", "unit": "var"},
        ]
    return out


def _r(channel: str, value: float, unit: Unit) -> Reading:
    if not math.isfinite(value):
        return Reading(channel=channel, value=0.0, unit=unit, quality=Quality.INVALID)
    return Reading(channel=channel, value=value, unit=unit, quality=Quality.GOOD)


def _head(cycle: int, code: int, topology_version: int) -> list[Reading]:
    return [
        _r("cycle", float(cycle), Unit.ONE),
        _r("pass_code", float(code), Unit.ONE),
        _r("topology_version", float(topology_version), Unit.ONE),
    ]


def up_readings(cycle: int, topology_version: int, result: AreaEstimate) -> tuple[Reading, ...]:
    """The upward message of an area's first estimate."""
    eq = result.equivalent
    if eq is None:
        raise ValueError(f"area {result.area.name} has no parent to report to")
    return (
        *_head(cycle, PASS_UP, topology_version),
        _r("p", eq.p_mw * 1e6, Unit.W),
        _r("q", eq.q_mvar * 1e6, Unit.VAR),
        _r("p_sigma", eq.p_sigma_mw * 1e6, Unit.W),
        _r("q_sigma", eq.q_sigma_mvar * 1e6, Unit.VAR),
        _r("u", eq.u_pu, Unit.PU),
        _r("u_sigma", eq.u_sigma_pu, Unit.PU),
        _r("r_pq", eq.rho_pq, Unit.ONE),
        _r("r_up", eq.rho_up, Unit.ONE),
        _r("r_uq", eq.rho_uq, Unit.ONE),
        _r("objective", result.objective, Unit.ONE),
        _r("removed", float(len(result.estimate.removed)), Unit.ONE),
    )


def final_parts(
    cycle: int, topology_version: int, result: AreaEstimate
) -> tuple[tuple[Reading, ...], ...]:
    """The final estimate of an area, made with its parent's boundary state: one message per
    :data:`PART_BUSES` buses (at least one); the first also holds the children's states."""
    area = result.area
    buses = area.bus_ids.size
    count = max(1, -(-buses // PART_BUSES))
    parts: list[tuple[Reading, ...]] = []
    for part in range(count):
        offset = part * PART_BUSES
        out = _head(cycle, PASS_FINAL, topology_version)
        out += [
            _r("part", float(part), Unit.ONE),
            _r("parts", float(count), Unit.ONE),
            _r("offset", float(offset), Unit.ONE),
            _r("objective", result.objective, Unit.ONE),
            _r("removed", float(len(result.estimate.removed)), Unit.ONE),
        ]
        for k in range(min(PART_BUSES, buses - offset)):
            out += [
                _r(f"u_{k}", float(result.u_pu[offset + k]), Unit.PU),
                _r(f"a_{k}", float(result.u_angle_deg[offset + k]), Unit.DEG),
            ]
        if part == 0:
            for j, child in enumerate(area.children):
                state = result.children[child]
                out += [
                    _r(f"cu_{j}", state.u_pu, Unit.PU),
                    _r(f"ca_{j}", state.u_angle_deg, Unit.DEG),
                    _r(f"cp_{j}", state.p_mw * 1e6, Unit.W),
                    _r(f"cq_{j}", state.q_mvar * 1e6, Unit.VAR),
                ]
        parts.append(tuple(out))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class FinalPart:
    """One message of an area's final estimate (``pass_code`` 2)."""

    cycle: int
    topology_version: int
    part: int
    parts: int
    offset: int
    u_pu: tuple[float, ...]
    u_angle_deg: tuple[float, ...]
    children: tuple[BoundaryState, ...]
    """The children's boundary states (part 0 only; empty in the others)."""
    objective: float
    removed: int


@dataclass(frozen=True, slots=True)
class FinalMessage:
    """An area's final estimate, every part of it put together."""

    cycle: int
    topology_version: int
    u_pu: tuple[float, ...]
    u_angle_deg: tuple[float, ...]
    children: tuple[BoundaryState, ...]
    objective: float
    removed: int


def message_values(message: AlgorithmOutput) -> dict[str, float]:
    """Channel -> value of a level's (or the service's) output; NaN where marked invalid."""
    return {
        r.channel: (r.value if r.quality is not Quality.INVALID else math.nan)
        for r in message.outputs
    }


def read_final_part(message: AlgorithmOutput, *, buses: int, children: int) -> FinalPart | None:
    """The part of a final estimate in ``message`` of an area of ``buses`` buses and ``children``
    child areas; None when it is an upward message. A part that does not fit the area (another
    partition, or made-up numbers) is a :class:`MessagingError` naming the topic."""
    values = message_values(message)
    if values.get("pass_code") != PASS_FINAL:
        return None
    where = f"openfeeder/v1/algo/{message.device_id}/{message.algorithm}"
    try:
        part, parts, offset = int(values["part"]), int(values["parts"]), int(values["offset"])
        expected = max(1, -(-buses // PART_BUSES))
        if parts != expected or not 0 <= part < parts or offset != part * PART_BUSES:
            raise MessagingError(
                f"{where}: final estimate part {part} of {parts} at offset {offset} does not fit "
                f"an area of {buses} buses ({expected} parts of {PART_BUSES})",
                topic=where,
                reason="bad_part",
                field="part",
            )
        count = min(PART_BUSES, buses - offset)
        return FinalPart(
            cycle=int(values["cycle"]),
            topology_version=int(values["topology_version"]),
            part=part,
            parts=parts,
            offset=offset,
            u_pu=tuple(values[f"u_{k}"] for k in range(count)),
            u_angle_deg=tuple(values[f"a_{k}"] for k in range(count)),
            children=tuple(
                BoundaryState(
                    u_pu=values[f"cu_{j}"],
                    u_angle_deg=values[f"ca_{j}"],
                    p_mw=values[f"cp_{j}"] / 1e6,
                    q_mvar=values[f"cq_{j}"] / 1e6,
                )
                for j in range(children if part == 0 else 0)
            ),
            objective=values.get("objective", math.nan),
            removed=int(values.get("removed", 0.0)),
        )
    except KeyError as err:
        raise MessagingError(
            f"{where}: final estimate without channel {err}",
            topic=where,
            reason="missing_channel",
            field=str(err.args[0]),
        ) from err


class FinalAssembly:
    """Puts an area's final estimate together from its parts, in any order of arrival.

    :meth:`add` returns the whole estimate when the last part of a (cycle, topology version) is
    in. Parts of the last few estimates are kept apart, so a late part of an older cycle neither
    mixes into nor throws away the one being put together.
    """

    KEPT: ClassVar[int] = 4

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], dict[int, FinalPart]] = {}

    def add(self, part: FinalPart) -> FinalMessage | None:
        key = (part.cycle, part.topology_version)
        parts = self._pending.get(key)
        if parts is None:
            if len(self._pending) >= self.KEPT:
                del self._pending[next(iter(self._pending))]  # the one begun longest ago
            parts = self._pending[key] = {}
        parts[part.part] = part
        if len(parts) < part.parts:
            return None
        del self._pending[key]
        ordered = [parts[k] for k in range(part.parts)]
        first = ordered[0]
        return FinalMessage(
            cycle=part.cycle,
            topology_version=part.topology_version,
            u_pu=tuple(u for p in ordered for u in p.u_pu),
            u_angle_deg=tuple(a for p in ordered for a in p.u_angle_deg),
            children=first.children,
            objective=first.objective,
            removed=first.removed,
        )


def read_up(area: str, boundary_bus_id: int, message: AlgorithmOutput) -> Equivalent | None:
    """The equivalent in an upward ``message`` of ``area``, None when it is a final one."""
    values = message_values(message)
    if values.get("pass_code") != PASS_UP:
        return None
    try:
        return Equivalent(
            area=area,
            boundary_bus_id=boundary_bus_id,
            p_mw=values["p"] / 1e6,
            q_mvar=values["q"] / 1e6,
            p_sigma_mw=values["p_sigma"] / 1e6,
            q_sigma_mvar=values["q_sigma"] / 1e6,
            u_pu=values["u"],
            u_sigma_pu=values["u_sigma"],
            rho_pq=_finite(values["r_pq"]),
            rho_up=values["r_up"],
            rho_uq=values["r_uq"],
        )
    except KeyError as err:
        where = f"openfeeder/v1/algo/{message.device_id}/{message.algorithm}"
        raise MessagingError(
            f"{where}: equivalent of area {area} without channel {err}",
            topic=where,
            reason="missing_channel",
            field=str(err.args[0]),
        ) from err


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def sites_parameter(sites: Mapping[str, DeviceSite]) -> dict[str, list[Any]]:
    """The ``sites`` parameter for the plug-ins."""
    return {d: [s.bus_id, s.element_id, s.accuracy_class] for d, s in sites.items()}
