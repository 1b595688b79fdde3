"""The levels of the distributed estimator on the meter agents: :class:`LevelAlgorithm`.

Each level is a plug-in (``se_concentrator``, ``se_lv``, ``se_mv`` in
``iot/agent/algorithms/``) whose class is :class:`LevelAlgorithm` with its level; the estimation
service assigns one to a device of every area with these parameters:

``case``, ``open_switches`` (the grid's switching state), ``topology_version``, ``area`` (its
name), ``sites`` (device id -> [bus, element or null, accuracy class %] for the devices that
measure in the area), ``children`` (child area -> device running it), ``parent_device``,
``service`` (the device id whose ``se_cycle`` output starts a cycle), ``child_timeout_s``.

A cycle (messages in :mod:`openfeeder.iot.estimation_messages`):

1. the service publishes ``se_cycle``;
2. every area estimates (:func:`~openfeeder.analysis.estimation.estimate_area`) as soon as its
   children's equivalents of that cycle are in (at once without children; after
   ``child_timeout_s`` with those that came, the others as pseudo values) and publishes its
   equivalent upward;
3. the MV level publishes its final estimate (in parts of at most 200 buses);
4. each child estimates again with its boundary state from its parent's first part and publishes
   its final estimate the same way, down to the concentrators. The service assembles the grid's
   state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

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
from openfeeder.iot.estimation_messages import (
    CYCLE_ALGORITHM,
    LEVEL_ALGORITHMS,
    final_parts,
    message_values,
    read_final_part,
    read_up,
    up_readings,
)
from openfeeder.iot.schema import AlgorithmOutput, Measurement, Quality, Reading, Severity, decode
from openfeeder.iot.topics import MessageClass, parse_topic
from openfeeder.model.cases import resolve_case

if TYPE_CHECKING:
    from openfeeder.iot.agent.plugins import AlgorithmContext
    from openfeeder.model.grid import GridModel

__all__ = ["LevelAlgorithm"]

Outputs = tuple[Reading, ...] | tuple[tuple[Reading, ...], ...]
"""What a step publishes: one message, or a final estimate's parts (one message each)."""

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

    def on_measurement(self, readings: Sequence[Reading], t_ns: int) -> Outputs | None:
        """Once per own reporting interval: a cycle waiting too long for children goes on."""
        del readings, t_ns
        waited = time.monotonic() - self.started_s
        if self.cycle >= 0 and not self.sent_up and waited > self.child_timeout_s:
            return self._run_up()
        return None

    def on_message(self, topic: str, payload: bytes) -> Outputs | None:
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
            cycle = int(message_values(message).get("cycle", -1))
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

    def _from_area(self, message: AlgorithmOutput) -> Outputs | None:
        child = self.child_of_device.get(message.device_id)
        if child is not None and message.algorithm == LEVEL_ALGORITHMS[self.LEVEL_BELOW]:
            boundary = self.partition.area(child).boundary_bus_id
            try:
                equivalent = read_up(child, boundary, message)
            except MessagingError as err:
                self._report(str(err))
                return None
            if equivalent is None or int(message_values(message)["cycle"]) != self.cycle:
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

    def _run_up(self) -> Outputs | None:
        self.sent_up = True
        try:
            result = self._estimate(None)
        except OpenFeederError as err:
            self._report(f"area {self.area.name}: estimate failed: {err}")
            return None
        self.first = result
        self._alarm(result)
        if self.area.parent is None:  # the MV level: its estimate is final
            return final_parts(self.cycle, self.topology_version, result)
        return up_readings(self.cycle, self.topology_version, result)

    def _run_down(self, message: AlgorithmOutput) -> Outputs | None:
        parent = self.partition.area(str(self.area.parent))
        try:
            final = read_final_part(
                message, buses=parent.bus_ids.size, children=len(parent.children)
            )
        except MessagingError as err:
            self._report(str(err))
            return None
        # the children's boundary states are all in the first part
        if final is None or final.part != 0 or final.cycle != self.cycle or not self.sent_up:
            return None
        state = final.children[parent.children.index(self.area.name)]
        try:
            result = self._estimate(state)
        except OpenFeederError as err:
            self._report(f"area {self.area.name}: final estimate failed: {err}")
            return None
        return final_parts(self.cycle, self.topology_version, result)

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
