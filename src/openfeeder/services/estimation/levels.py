"""The levels of the distributed estimator on the meter agents, and what they publish.

Each level is a plug-in (``se_concentrator``, ``se_lv``, ``se_mv`` in
``iot/agent/algorithms/``) whose class is :class:`LevelAlgorithm` with its level; the estimation
service assigns one to a device of every area (:mod:`.coordinator`) with these parameters:

``case``, ``open_switches`` (the grid's switching state), ``topology_version``, ``area`` (its
name), ``sites`` (device id -> [bus, element or null, accuracy class %] for the devices that
measure in the area), ``children`` (child area -> device running it), ``parent_device``,
``service`` (the device id whose ``se_cycle`` output starts a cycle), ``child_timeout_s``.

A cycle (all on the monitoring broker, ``openfeeder/v1/algo/<device>/<algorithm>``):

1. the service publishes ``se_cycle`` (channel ``cycle``);
2. every area estimates as soon as its children's equivalents of that cycle are in (at once
   without children; after ``child_timeout_s`` with those that came, the others as pseudo
   values) and publishes upward (``pass_code`` 1: ``p``, ``q``, their sigmas, ``u``, ``u_sigma``);
3. the MV level publishes its final estimate (``pass_code`` 2): the voltage of each of its buses
   (``u_<k>``, ``a_<k>`` in the order of the area's buses) and, for each child area ``j`` (in
   the area's order of children), the boundary state ``cu_<j> ca_<j> cp_<j> cq_<j>``;
4. each child estimates again with it and publishes its final estimate the same way, down to the
   concentrators. The service assembles the grid's state from all final estimates.

So each area's results travel on the topic of the device that runs it: the ``algo`` class with the
level's algorithm name; parents and the service know which device runs which area from the
parameters (reassigned when the topology changes).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from openfeeder.analysis.estimation import (
    AreaEstimate,
    AreaPartition,
    BoundaryState,
    Equivalent,
    Level,
    MeasurementSet,
    estimate_area,
    partition_areas,
)
from openfeeder.analysis.estimation.device_readings import DeviceSite, measurements_from_readings
from openfeeder.analysis.estimation.hierarchical import area_measurements
from openfeeder.errors import MessagingError, OpenFeederError
from openfeeder.iot.schema import (
    AlgorithmOutput,
    Measurement,
    Quality,
    Reading,
    Severity,
    Unit,
    decode,
)
from openfeeder.iot.topics import MessageClass, parse_topic
from openfeeder.model.cases import resolve_case

if TYPE_CHECKING:
    from openfeeder.iot.agent.plugins import AlgorithmContext
    from openfeeder.model.grid import GridModel

__all__ = [
    "CYCLE_ALGORITHM",
    "LEVEL_ALGORITHMS",
    "MAX_AREA_BUSES",
    "MAX_CHILDREN",
    "PASS_FINAL",
    "PASS_UP",
    "FinalMessage",
    "LevelAlgorithm",
    "manifest_outputs",
    "read_final",
]

CYCLE_ALGORITHM: Final = "se_cycle"
LEVEL_ALGORITHMS: Final = {
    Level.CONCENTRATOR: "se_concentrator",
    Level.LV: "se_lv",
    Level.MV: "se_mv",
}
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
        _r("objective", result.objective, Unit.ONE),
        _r("removed", float(len(result.estimate.removed)), Unit.ONE),
    )


def final_readings(cycle: int, topology_version: int, result: AreaEstimate) -> tuple[Reading, ...]:
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


def _values(message: AlgorithmOutput) -> dict[str, float]:
    return {
        r.channel: (r.value if r.quality is not Quality.INVALID else math.nan)
        for r in message.outputs
    }


def read_final(message: AlgorithmOutput, *, buses: int, children: int) -> FinalMessage | None:
    """The final estimate in ``message``, None when it is an upward one."""
    values = _values(message)
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


def _read_up(area: str, boundary_bus_id: int, message: AlgorithmOutput) -> Equivalent | None:
    values = _values(message)
    if values.get("pass_code") != PASS_UP:
        return None
    return Equivalent(
        area=area,
        boundary_bus_id=boundary_bus_id,
        p_mw=values["p"] / 1e6,
        q_mvar=values["q"] / 1e6,
        p_sigma_mw=values["p_sigma"] / 1e6,
        q_sigma_mvar=values["q_sigma"] / 1e6,
        u_pu=values["u"],
        u_sigma_pu=values["u_sigma"],
    )


_MODELS: dict[str, GridModel] = {}
_MODELS_LOCK = threading.Lock()


def _case(name: str) -> GridModel:
    with _MODELS_LOCK:
        if name not in _MODELS:
            _MODELS[name] = resolve_case(name)
        return _MODELS[name]


class LevelAlgorithm:
    """One area's estimator on a meter agent (see the module docstring); subclasses set LEVEL."""

    LEVEL: ClassVar[Level]

    def start(self, context: AlgorithmContext) -> None:
        self.readings: dict[str, dict[str, float]] = {}
        self.undecodable = 0
        self._configure(context)
        self._reset(cycle=-1)

    def reconfigure(self, context: AlgorithmContext) -> None:
        """New area, topology or devices (the service reassigned it): the cycle in progress is
        dropped, the latest readings are kept."""
        self._configure(context)
        self._reset(cycle=-1)

    def stop(self) -> None:
        self.readings.clear()

    def on_measurement(self, readings: Sequence[Reading], t_ns: int) -> tuple[Reading, ...] | None:
        """Once per own reporting interval: a cycle waiting too long for children goes on."""
        del readings, t_ns
        waited = time.monotonic() - self.started_s
        if self.cycle >= 0 and not self.sent_up and waited > self.child_timeout_s:
            return self._run_up()
        return None

    def on_message(self, topic: str, payload: bytes) -> tuple[Reading, ...] | None:
        if not payload:
            return None
        try:
            parsed = parse_topic(topic)
            message = decode(parsed.message_class, payload, topic=topic)
        except MessagingError:
            self.undecodable += 1
            return None
        if isinstance(message, Measurement):
            if message.device_id in self.sites:
                self.readings[message.device_id] = {
                    r.channel: r.value for r in message.values if r.quality is not Quality.INVALID
                }
            return None
        if parsed.message_class is not MessageClass.ALGORITHM or not isinstance(
            message, AlgorithmOutput
        ):
            return None
        if message.algorithm == CYCLE_ALGORITHM and message.device_id == self.service:
            cycle = int(_values(message).get("cycle", -1))
            self._reset(cycle=cycle)
            return self._run_up() if not self.children else None
        return self._from_area(message)

    # -- internals ---------------------------------------------------------------------------

    def _configure(self, context: AlgorithmContext) -> None:
        p = context.parameters
        name = f"{LEVEL_ALGORITHMS[self.LEVEL]} on {context.device_id}"
        case, area = p.get("case"), p.get("area")
        if not isinstance(case, str) or not isinstance(area, str):
            raise ValueError(f"{name}: parameters 'case' and 'area' must be strings")
        open_switches = p.get("open_switches") or []
        if not isinstance(open_switches, list):
            raise ValueError(f"{name}: parameter 'open_switches' must be a list of switch ids")
        base = _case(case)
        opened = {int(s) for s in open_switches if isinstance(s, int)}
        self.model = base.with_switch_states(  # the open ones, every other switch closed
            {int(s): int(s) not in opened for s in base.switch["id"].tolist()}
        )
        self.partition: AreaPartition = partition_areas(self.model)
        try:
            self.area = self.partition.area(area)
        except KeyError as err:
            raise ValueError(f"{name}: {err.args[0]}") from err
        if self.area.level is not self.LEVEL:
            raise ValueError(f"{name}: area {area!r} is a {self.area.level} area")
        self.context = context
        self.topology_version = int(_number(p.get("topology_version"), 0.0))
        self.service = str(p.get("service") or "estimation")
        self.child_timeout_s = _number(p.get("child_timeout_s"), 5.0)
        sites = p.get("sites") or {}
        children = p.get("children") or {}
        if not isinstance(sites, dict) or not isinstance(children, dict):
            raise ValueError(f"{name}: parameters 'sites' and 'children' must be mappings")
        self.sites = {}
        for device, site in sites.items():
            if (
                not isinstance(site, list)
                or len(site) != 3
                or not isinstance(site[0], int)
                or not isinstance(site[2], int | float)
            ):
                raise ValueError(
                    f"{name}: sites[{device!r}] must be [bus id, element id or null, class %]"
                )
            self.sites[str(device)] = DeviceSite(
                device_id=str(device),
                bus_id=site[0],
                element_id=site[1] if isinstance(site[1], int) else None,
                accuracy_class=float(site[2]),
            )
        self.children = {str(a): str(d) for a, d in children.items() if a in self.area.children}
        self.child_of_device = {d: a for a, d in self.children.items()}
        parent = p.get("parent_device")
        self.parent_device = str(parent) if isinstance(parent, str) else None
        self.parent_algorithm = (
            None
            if self.area.parent is None
            else LEVEL_ALGORITHMS[self.partition.area(self.area.parent).level]
        )

    def _reset(self, *, cycle: int) -> None:
        self.cycle = cycle
        self.started_s = time.monotonic()
        self.equivalents: dict[str, Equivalent] = {}
        self.sent_up = False

    def _from_area(self, message: AlgorithmOutput) -> tuple[Reading, ...] | None:
        child = self.child_of_device.get(message.device_id)
        if child is not None and message.algorithm == LEVEL_ALGORITHMS[self.LEVEL_BELOW]:
            boundary = self.partition.area(child).boundary_bus_id
            equivalent = _read_up(child, boundary, message)
            if equivalent is None or int(_values(message)["cycle"]) != self.cycle:
                return None
            self.equivalents[child] = equivalent
            if not self.sent_up and set(self.equivalents) >= set(self.children):
                return self._run_up()
            return None
        if message.device_id == self.parent_device and message.algorithm == self.parent_algorithm:
            return self._run_down(message)
        return None

    @property
    def LEVEL_BELOW(self) -> Level:  # noqa: N802  # reads like the class constant it pairs with
        return {Level.MV: Level.LV, Level.LV: Level.CONCENTRATOR}.get(self.LEVEL, self.LEVEL)

    def _measurements(self) -> MeasurementSet:
        every = measurements_from_readings(self.model, self.sites.values(), self.readings)
        return area_measurements(self.model, self.partition, every)[self.area.name]

    def _estimate(self, boundary: BoundaryState | None) -> AreaEstimate:
        return estimate_area(
            self.model,
            self.partition,
            self.area.name,
            self._measurements(),
            children=self.equivalents,
            boundary=boundary,
            uncertainty=False,  # nothing published needs the buses' sigmas
        )

    def _run_up(self) -> tuple[Reading, ...] | None:
        self.sent_up = True
        try:
            result = self._estimate(None)
        except OpenFeederError as err:
            self._report(f"area {self.area.name}: estimate failed: {err}")
            return None
        self.first = result
        self._alarm(result)
        if self.area.parent is None:  # the MV level: its estimate is final
            return final_readings(self.cycle, self.topology_version, result)
        return up_readings(self.cycle, self.topology_version, result)

    def _run_down(self, message: AlgorithmOutput) -> tuple[Reading, ...] | None:
        parent = self.partition.area(str(self.area.parent))
        try:
            final = read_final(message, buses=parent.bus_ids.size, children=len(parent.children))
        except MessagingError as err:
            self._report(str(err))
            return None
        if final is None or final.cycle != self.cycle or not self.sent_up:
            return None
        state = final.children[parent.children.index(self.area.name)]
        try:
            result = self._estimate(state)
        except OpenFeederError as err:
            self._report(f"area {self.area.name}: final estimate failed: {err}")
            return None
        return final_readings(self.cycle, self.topology_version, result)

    def _alarm(self, result: AreaEstimate) -> None:
        removed = result.estimate.removed
        if removed:
            names = ", ".join(r.measurement_id for r in removed)
            self.context.emit_event(
                "bad_data",
                Severity.WARNING,
                f"area {self.area.name}: bad data removed: {names}"[:2000],
                (),
            )

    def _report(self, message: str) -> None:
        self.context.emit_event("estimation_failed", Severity.WARNING, message[:2000], ())


def _number(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def sites_parameter(sites: Mapping[str, DeviceSite]) -> dict[str, list[Any]]:
    """The ``sites`` parameter for the plug-ins."""
    return {d: [s.bus_id, s.element_id, s.accuracy_class] for d, s in sites.items()}
