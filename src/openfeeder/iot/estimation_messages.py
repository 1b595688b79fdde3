"""The messages of the distributed estimator's levels (the agent plug-ins ``se_concentrator``,
``se_lv``, ``se_mv`` and the estimation service both read and write them).

Each area's results travel on the ``algo`` topic of the device that runs its level,
``openfeeder/v1/algo/<device>/<algorithm>`` (monitoring broker); the service's ``se_cycle`` output
(channel ``cycle``) starts a cycle. One message per step, its ``pass_code`` says which:

- ``pass_code`` 1, upward (:func:`up_readings`, read with :func:`read_up`): the area's
  :class:`~openfeeder.analysis.estimation.Equivalent`, ``p`` (W), ``q`` (var), ``p_sigma``,
  ``q_sigma``, ``u`` (pu), ``u_sigma`` (pu) and the correlations ``r_pq``, ``r_up``, ``r_uq``
  (``u`` and its correlations invalid when the area measures no voltage);
- ``pass_code`` 2, final (:func:`final_readings`, :func:`read_final`): the voltage of each bus of
  the area (``u_<k>``, ``a_<k>`` in the order of the area's buses) and, for each child area ``j``
  (in the area's order of children), its boundary state ``cu_<j> ca_<j> cp_<j> cq_<j>``.

Both carry ``cycle``, ``topology_version``, ``objective`` and ``removed`` (bad data removed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from openfeeder.analysis.estimation import AreaEstimate, BoundaryState, Equivalent, Level
from openfeeder.analysis.estimation.device_readings import DeviceSite
from openfeeder.errors import MessagingError
from openfeeder.iot.schema import AlgorithmOutput, Quality, Reading, Unit

__all__ = [
    "CYCLE_ALGORITHM",
    "LEVEL_ALGORITHMS",
    "LEVEL_VERSION",
    "MAX_AREA_BUSES",
    "MAX_CHILDREN",
    "PASS_FINAL",
    "PASS_UP",
    "FinalMessage",
    "final_readings",
    "manifest_outputs",
    "message_values",
    "read_final",
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
LEVEL_VERSION: Final = "1.1.0"
"""The version of the level plug-ins that speak these messages (their manifests say it)."""
MAX_AREA_BUSES: Final = 200
"""Buses an area's final estimate can carry (two channels each; a message has at most 1024)."""
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
)


def manifest_outputs() -> list[dict[str, str]]:
    """The output channels every level declares in its manifest."""
    out = [{"channel": c, "unit": u.value} for c, u in _SCALARS]
    for k in range(MAX_AREA_BUSES):
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


def final_readings(cycle: int, topology_version: int, result: AreaEstimate) -> tuple[Reading, ...]:
    """The final message of an area's estimate made with its parent's boundary state."""
    area = result.area
    out = _head(cycle, PASS_FINAL, topology_version)
    out += [
        _r("objective", result.objective, Unit.ONE),
        _r("removed", float(len(result.estimate.removed)), Unit.ONE),
    ]
    for k in range(area.bus_ids.size):
        out += [
            _r(f"u_{k}", float(result.u_pu[k]), Unit.PU),
            _r(f"a_{k}", float(result.u_angle_deg[k]), Unit.DEG),
        ]
    for j, child in enumerate(area.children):
        state = result.children[child]
        out += [
            _r(f"cu_{j}", state.u_pu, Unit.PU),
            _r(f"ca_{j}", state.u_angle_deg, Unit.DEG),
            _r(f"cp_{j}", state.p_mw * 1e6, Unit.W),
            _r(f"cq_{j}", state.q_mvar * 1e6, Unit.VAR),
        ]
    return tuple(out)


@dataclass(frozen=True, slots=True)
class FinalMessage:
    """An area's final estimate as read from its ``pass_code`` 2 output."""

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


def read_final(message: AlgorithmOutput, *, buses: int, children: int) -> FinalMessage | None:
    """The final estimate in ``message``, None when it is an upward one."""
    values = message_values(message)
    if values.get("pass_code") != PASS_FINAL:
        return None
    try:
        return FinalMessage(
            cycle=int(values["cycle"]),
            topology_version=int(values["topology_version"]),
            u_pu=tuple(values[f"u_{k}"] for k in range(buses)),
            u_angle_deg=tuple(values[f"a_{k}"] for k in range(buses)),
            children=tuple(
                BoundaryState(
                    u_pu=values[f"cu_{j}"],
                    u_angle_deg=values[f"ca_{j}"],
                    p_mw=values[f"cp_{j}"] / 1e6,
                    q_mvar=values[f"cq_{j}"] / 1e6,
                )
                for j in range(children)
            ),
            objective=values.get("objective", math.nan),
            removed=int(values.get("removed", 0.0)),
        )
    except KeyError as err:
        where = f"openfeeder/v1/algo/{message.device_id}/{message.algorithm}"
        raise MessagingError(
            f"{where}: final estimate without channel {err}",
            topic=where,
            reason="missing_channel",
            field=str(err.args[0]),
        ) from err


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
