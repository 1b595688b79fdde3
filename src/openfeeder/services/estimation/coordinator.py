"""The estimation service's coordinator: cycles, the levels on the devices, results.

Every ``interval_s`` (domain time, on the shared clock), and at once after a topology change or a
bad-data alarm, the coordinator runs one **cycle**:

- ``central`` mode: it converts the latest measurement of every placed device it heard on the
  monitoring broker (:func:`~openfeeder.analysis.estimation.device_readings.measurements_from_readings`)
  and runs :func:`~openfeeder.analysis.estimation.estimate_state` on the grid as the switches
  stand;
- ``distributed`` mode: it publishes ``se_cycle`` and collects the final estimates the levels
  running on the devices publish (:mod:`openfeeder.iot.estimation_messages`), until every hosted
  area has reported or ``cycle_timeout_s`` passed; the grid's state is assembled from them.

Either way the result (summary and every bus's voltage) is published as an ``AlgorithmOutput`` of
the service (``openfeeder/v1/algo/estimation/se_state``: the summary), appended to the
``storage`` file (one JSON document per line) and kept for the REST API.

**Deployment** (distributed mode). The areas come from
:func:`~openfeeder.analysis.estimation.partition_areas` on the catalog's switch states. Each area
is run by one device placed in it (an FTU before a meter, then the one nearest the source), which gets the level's
plug-in with its parameters through the catalog (``PUT /v1/devices/{id}``), as the FLISR
coordinator assigns the edge fault locator. A ``TopologyChange`` on the topology topic (FLISR's
reconfiguration) makes a new partition; devices whose area, parent, children or topology changed
get new parameters (the catalog pushes their new settings), those that no longer run an area lose
the plug-in. An area without a device to run it is reported (``unhosted``) and missing from the
cycles; its children's results still reach their parent only if it is hosted.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydantic import JsonValue

from openfeeder.analysis.estimation import (
    AreaPartition,
    Level,
    estimate_state,
    partition_areas,
)
from openfeeder.analysis.estimation.device_readings import DeviceSite, measurements_from_readings
from openfeeder.config import EstimationSettings, Settings
from openfeeder.errors import OpenFeederError
from openfeeder.iot.agent.packages import MANIFEST_FILE, build_package, builtin_algorithms
from openfeeder.iot.catalog_client import (
    AlgorithmAssignment,
    CatalogClient,
    CatalogError,
    DeviceSpec,
)
from openfeeder.iot.estimation_messages import (
    CYCLE_ALGORITHM,
    LEVEL_ALGORITHMS,
    LEVEL_VERSION,
    FinalAssembly,
    FinalMessage,
    read_final_part,
    sites_parameter,
)
from openfeeder.iot.mqtt import Messenger
from openfeeder.iot.protection import MessageProtection
from openfeeder.iot.schema import (
    AlgorithmOutput,
    Event,
    Measurement,
    Quality,
    Reading,
    SwitchPosition,
    TopologyChange,
    Unit,
    decode,
)
from openfeeder.iot.topics import (
    BrokerContext,
    algorithm_filter,
    event_filter,
    measurement_filter,
    parse_topic,
    topology_filter,
)
from openfeeder.model.components import MeasurementKind
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import analyze_topology
from openfeeder.sim.clock import NS_PER_S, Clock
from openfeeder.sim.placements import DEFAULT_ACCURACY_CLASS

__all__ = ["BAD_DATA_EVENT", "SERVICE_ID", "STATE_ALGORITHM", "EstimationCoordinator"]

_LOG = logging.getLogger(__name__)

SERVICE_ID: Final = "estimation"
"""Device id of the service's own outputs (``openfeeder/v1/algo/estimation/...``)."""
STATE_ALGORITHM: Final = "se_state"
BAD_DATA_EVENT: Final = "bad_data"
_SETTLE_S: Final = 1.0
"""Wall seconds between pushing new plug-in settings and the next cycle (devices reconfigure)."""
_HOST_PRIORITY: Final = {"ftu": 0, "pmu": 1, "meter": 2}


@dataclass(frozen=True, slots=True)
class _Trigger:
    reason: str


class EstimationCoordinator:
    """See the module docstring. ``start()`` / ``stop()``; ``run_cycle()`` runs one at once."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: GridModel,
        clock: Clock,
        catalog: CatalogClient,
        client_id: str | None = None,
        tls: ssl.SSLContext | None = None,
        protection: MessageProtection | None = None,
    ) -> None:
        """``tls``: mutual TLS on both broker connections; ``protection``: payload sealing."""
        self._settings = settings
        self.config: EstimationSettings = settings.estimation
        self.base_model = model
        self.clock = clock
        self._catalog = catalog
        self._messenger = Messenger(
            settings.brokers,
            client_id=client_id or f"estimation-{uuid.uuid4().hex[:8]}",
            tls=tls,
            protection=protection,
        )
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._cycle_lock = threading.Lock()
        self._wake = threading.Event()
        self._triggers: collections.deque[_Trigger] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="estimation", daemon=True)
        self._seq = itertools.count(1)
        self._cycles = itertools.count(1)
        self._readings: dict[str, dict[str, float]] = {}
        self._finals: dict[str, FinalMessage] = {}
        self._assemblies: dict[str, FinalAssembly] = {}  # area -> its final estimate's parts
        self._cycle = 0
        self.positions = {
            int(s): bool(c) for s, c in zip(model.switch["id"], model.switch["closed"], strict=True)
        }
        self.topology_version = 0
        self.sites: dict[str, DeviceSite] = {}
        self._kinds: dict[str, str] = {}
        self.partition: AreaPartition = partition_areas(model)
        self.hosts: dict[str, str] = {}
        self.unhosted: tuple[str, ...] = ()
        self.results: collections.deque[dict[str, Any]] = collections.deque(maxlen=self.config.keep)
        self.handler_errors = 0
        self._last_cycle_ns: int | None = None
        self._last_alarm_ns: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, *, connect_timeout_s: float = 10.0) -> None:
        """Learn devices and topology from the catalog, deploy the levels (distributed), connect,
        subscribe, start cycling."""
        self.refresh()
        if self.config.mode == "distributed":
            self.deploy()
        monitoring, ops = BrokerContext.MONITORING, BrokerContext.GRID_OPS
        self._messenger.subscribe(measurement_filter(), self._on_message, context=monitoring)
        for algorithm in LEVEL_ALGORITHMS.values():
            self._messenger.subscribe(
                algorithm_filter(algorithm=algorithm), self._on_message, context=monitoring
            )
        self._messenger.subscribe(topology_filter(), self._on_message, context=ops)
        self._messenger.subscribe(event_filter(), self._on_message, context=ops)
        self._messenger.start()
        if not self._messenger.wait_subscribed(connect_timeout_s):
            self._messenger.stop()
            raise OpenFeederError(
                f"estimation service: not connected and subscribed within {connect_timeout_s} s "
                f"({self._settings.brokers.monitoring.url})"
            )
        self._thread.start()
        _LOG.info(
            "estimation service running (%s, every %g s, %d areas)",
            self.config.mode,
            self.config.interval_s,
            len(self.partition.areas),
            extra={"event": "started", "mode": self.config.mode},
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._messenger.stop()

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and all(
            link.connected for link in self._messenger.links.values()
        )

    def trigger(self, reason: str) -> None:
        """Run a cycle as soon as possible (an operator's request, an event)."""
        with self._lock:
            self._triggers.append(_Trigger(reason))
        self._wake.set()

    # -- what the grid looks like ---------------------------------------------------------------

    def current_model(self) -> GridModel:
        with self._lock:
            return self.base_model.with_switch_states(dict(self.positions))

    def refresh(self) -> None:
        """Devices (where each measures) and switch states from the catalog; a new partition."""
        devices = self._catalog.list_devices()
        sites: dict[str, DeviceSite] = {}
        kinds: dict[str, str] = {}
        for info in devices:
            location = info.location
            if location is None or location.bus_id is None:
                continue
            try:
                accuracy = DEFAULT_ACCURACY_CLASS[MeasurementKind(info.device_type)]
            except ValueError:
                accuracy = DEFAULT_ACCURACY_CLASS[MeasurementKind.METER]
            sites[info.device_id] = DeviceSite(
                device_id=info.device_id,
                bus_id=location.bus_id,
                element_id=location.element_id,
                accuracy_class=accuracy,
            )
            kinds[info.device_id] = info.device_type
        topology = self._catalog.topology()
        with self._lock:
            self.sites, self._kinds = sites, kinds
            self.positions.update(
                {s: p is SwitchPosition.CLOSED for s, p in topology.switch_states.items()}
            )
            self.topology_version = topology.topology_version
            self.partition = partition_areas(self.current_model())

    def deploy(self) -> dict[str, str]:
        """Assign each area's level plug-in to a device in it (see the module docstring); the
        area -> device map."""
        self._upload_levels()
        with self._lock:
            partition, sites, kinds = self.partition, dict(self.sites), dict(self._kinds)
            open_switches = sorted(s for s, closed in self.positions.items() if not closed)
            version = self.topology_version
        topology = analyze_topology(self.current_model())
        depth = dict(zip(topology.bus_ids.tolist(), topology.depth.tolist(), strict=True))
        hosts: dict[str, str] = {}
        for area in partition.areas:  # an FTU before a meter, nearest the source, by id
            own = set(area.own_bus_ids.tolist())
            candidates = [d for d, s in sites.items() if s.bus_id in own]
            if candidates:
                hosts[area.name] = min(
                    candidates,
                    key=lambda d: (
                        _HOST_PRIORITY.get(kinds.get(d, ""), 3),
                        depth.get(sites[d].bus_id, 0),
                        d,
                    ),
                )
        wanted: dict[str, AlgorithmAssignment] = {}
        for area in partition.areas:
            device = hosts.get(area.name)
            if device is None:
                continue
            in_area = {d: s for d, s in sites.items() if s.bus_id in set(area.bus_ids.tolist())}
            parameters: dict[str, JsonValue] = {
                "case": self.base_model.name,
                "area": area.name,
                "open_switches": list(open_switches),
                "topology_version": version,
                "sites": sites_parameter(in_area),  # type: ignore[dict-item]
                "children": {c: hosts[c] for c in area.children if c in hosts},
                "parent_device": None if area.parent is None else hosts.get(area.parent),
                "service": SERVICE_ID,
                "child_timeout_s": self.config.child_timeout_s,
            }
            wanted[device] = AlgorithmAssignment(
                name=LEVEL_ALGORITHMS[area.level], version=LEVEL_VERSION, parameters=parameters
            )
        level_names = set(LEVEL_ALGORITHMS.values())
        for device in sorted(set(sites)):
            try:
                info = self._catalog.device(device)
            except CatalogError:
                continue
            others = tuple(a for a in info.algorithms if a.name not in level_names)
            mine = tuple(a for a in info.algorithms if a.name in level_names)
            target = (wanted[device],) if device in wanted else ()
            if mine == target:
                continue
            self._catalog.put_device(
                device,
                DeviceSpec(
                    device_type=info.device_type,
                    location=info.location,
                    algorithms=(*others, *target),
                    sampling_rate_hz=info.sampling_rate_hz,
                    reporting_interval_s=info.reporting_interval_s,
                ),
            )
        with self._lock:
            self.hosts = hosts
            self.unhosted = tuple(a.name for a in partition.areas if a.name not in hosts)
        if self.unhosted:
            _LOG.warning("estimation areas without a device: %s", ", ".join(self.unhosted))
        return hosts

    def _upload_levels(self) -> None:
        known = {(a.name, a.version) for a in self._catalog.algorithms()}
        sources = builtin_algorithms()
        for name in LEVEL_ALGORITHMS.values():
            source = sources[name]
            manifest = json.loads((source / MANIFEST_FILE).read_text(encoding="utf-8"))
            if (name, str(manifest["version"])) not in known:
                self._catalog.upload_algorithm(
                    name, str(manifest["version"]), build_package(source)
                )

    # -- cycles -----------------------------------------------------------------------------------

    def run_cycle(self, reason: str = "manual") -> dict[str, Any]:
        """One cycle now (see the module docstring); the stored result."""
        started = time.perf_counter()
        t_ns = self.clock.now_ns()
        with self._cycle_lock:
            central = self.config.mode == "central"
            result = self.estimate_central(t_ns) if central else self._distributed(t_ns)
        result["reason"] = reason
        result["duration_ms"] = (time.perf_counter() - started) * 1e3
        self._store(result)
        self._publish(result)
        return result

    def estimate_central(self, t_ns: int) -> dict[str, Any]:
        """The centralized estimate of the whole grid from the latest readings the service heard
        (what ``central`` mode stores; in ``distributed`` mode a reference to compare with)."""
        model = self.current_model()
        with self._lock:
            readings = {d: dict(v) for d, v in self._readings.items()}
            sites = list(self.sites.values())
            cycle = next(self._cycles)
        measurements = measurements_from_readings(model, sites, readings)
        estimate = estimate_state(model, measurements)
        bus = estimate.bus
        return self._result(
            cycle,
            t_ns,
            bus["id"],
            bus["u_pu"],
            bus["u_angle_deg"],
            objective=estimate.objective,
            removed=[r.measurement_id for r in estimate.removed],
            measurements=len(measurements),
        )

    def _distributed(self, t_ns: int) -> dict[str, Any]:
        with self._lock:
            cycle = next(self._cycles)
            self._cycle = cycle
            self._finals = {}
            self._assemblies = {}
            partition = self.partition
            hosted = set(self.hosts)
        self._messenger.publish(
            AlgorithmOutput(
                device_id=SERVICE_ID,
                seq=next(self._seq),
                t_ns=t_ns,
                algorithm=CYCLE_ALGORITHM,
                algorithm_version="1",
                outputs=(
                    Reading(channel="cycle", value=cycle, unit=Unit.ONE, quality=Quality.GOOD),
                ),
            )
        )
        deadline = time.monotonic() + self.config.cycle_timeout_s
        with self._arrived:
            while not hosted <= set(self._finals) and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(min(left, 0.05))
            finals = dict(self._finals)
        n = partition.bus_ids.size
        u = np.full(n, np.nan)
        angle = np.full(n, np.nan)
        objective = 0.0
        for name, final in finals.items():
            area = partition.area(name)
            skip = 1 if area.level is not Level.MV else 0
            rows = lookup(partition.bus_ids, area.bus_ids[skip:])
            u[rows] = final.u_pu[skip:]
            angle[rows] = final.u_angle_deg[skip:]
            objective += final.objective
        result = self._result(
            cycle, t_ns, partition.bus_ids, u, angle, objective=objective, removed=[]
        )
        result["areas"] = len(partition.areas)
        result["areas_reported"] = len(finals)
        result["areas_missing"] = sorted(set(partition.names()) - set(finals))
        result["partition"] = partition.fingerprint
        return result

    def _result(
        self,
        cycle: int,
        t_ns: int,
        bus_ids: Any,
        u_pu: Any,
        angle_deg: Any,
        *,
        objective: float,
        removed: list[str],
        measurements: int | None = None,
    ) -> dict[str, Any]:
        u = np.asarray(u_pu, dtype=np.float64)
        estimated = np.isfinite(u)
        return {
            "cycle": cycle,
            "t_ns": t_ns,
            "mode": self.config.mode,
            "case": self.base_model.name,
            "topology_version": self.topology_version,
            "estimated_buses": int(estimated.sum()),
            "u_min_pu": float(u[estimated].min()) if estimated.any() else None,
            "u_max_pu": float(u[estimated].max()) if estimated.any() else None,
            "objective": objective,
            "bad_data_removed": removed,
            "measurements": measurements,
            "buses": [
                {
                    "id": int(i),
                    "u_pu": _num(float(v)),
                    "u_angle_deg": _num(float(a)),
                }
                for i, v, a in zip(bus_ids, u, angle_deg, strict=True)
            ],
        }

    def _store(self, result: dict[str, Any]) -> None:
        path = Path(self.config.storage)
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(result, separators=(",", ":")) + "\n")
        with self._lock:
            self.results.append(result)
            self._last_cycle_ns = result["t_ns"]

    def _publish(self, result: dict[str, Any]) -> None:
        values = {
            "cycle": (float(result["cycle"]), Unit.ONE),
            "estimated_buses": (float(result["estimated_buses"]), Unit.ONE),
            "u_min": (result["u_min_pu"], Unit.PU),
            "u_max": (result["u_max_pu"], Unit.PU),
            "objective": (result["objective"], Unit.ONE),
            "areas_missing": (float(len(result.get("areas_missing", []))), Unit.ONE),
        }
        outputs = tuple(
            Reading(
                channel=name,
                value=value if value is not None and math.isfinite(value) else 0.0,
                unit=unit,
                quality=Quality.GOOD
                if value is not None and math.isfinite(value)
                else Quality.INVALID,
            )
            for name, (value, unit) in values.items()
        )
        self._messenger.publish(
            AlgorithmOutput(
                device_id=SERVICE_ID,
                seq=next(self._seq),
                t_ns=result["t_ns"],
                algorithm=STATE_ALGORITHM,
                algorithm_version="1",
                outputs=outputs,
            )
        )

    def _run(self) -> None:
        interval_ns = round(self.config.interval_s * NS_PER_S)
        due = self.clock.now_ns() + interval_ns
        while not self._stop.is_set():
            with self._lock:
                trigger = self._triggers.popleft() if self._triggers else None
            if trigger is None and self.clock.now_ns() < due:
                self._wake.clear()
                self._nap(due)
                continue
            reason = trigger.reason if trigger is not None else "periodic"
            if reason.startswith("topology"):
                self._reconfigure()
            try:
                self.run_cycle(reason)
            except Exception:  # one bad cycle must not stop the service
                self.handler_errors += 1
                _LOG.exception("estimation cycle failed (%s)", reason)
            due = self.clock.now_ns() + interval_ns

    def _nap(self, due_ns: int) -> None:
        """Sleep until ``due_ns`` on the shared clock or a trigger, whichever is first."""
        while not self._stop.is_set() and not self._wake.is_set():
            if self.clock.now_ns() >= due_ns:
                return
            self._wake.wait(0.05)

    def _reconfigure(self) -> None:
        with self._lock:
            model = self.current_model()
            self.partition = partition_areas(model)
        if self.config.mode == "distributed":
            try:
                self.deploy()
            except CatalogError:
                self.handler_errors += 1
                _LOG.exception("estimation: new areas not deployed")
            time.sleep(_SETTLE_S)

    # -- messages (network threads) -------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            parsed = parse_topic(topic)
            message = decode(parsed.message_class, payload, topic=topic)
            self._handle(message)
        except Exception:  # a bad message must not take the service down
            self.handler_errors += 1
            _LOG.exception("estimation: message on %s not handled", topic)

    def _handle(self, message: Any) -> None:
        if isinstance(message, Measurement):
            with self._lock:
                if message.device_id in self.sites:
                    self._readings[message.device_id] = {
                        r.channel: r.value
                        for r in message.values
                        if r.quality is not Quality.INVALID
                    }
        elif isinstance(message, AlgorithmOutput):
            self._handle_level(message)
        elif isinstance(message, TopologyChange):
            with self._lock:
                if message.topology_version <= self.topology_version:
                    return
                self.topology_version = message.topology_version
                self.positions.update(
                    {s: p is SwitchPosition.CLOSED for s, p in message.switch_states.items()}
                )
            self.trigger(f"topology version {message.topology_version}")
        elif isinstance(message, Event) and message.kind == BAD_DATA_EVENT:
            gap_ns = round(self.config.interval_s * NS_PER_S / 4)
            now_ns = self.clock.now_ns()
            with self._lock:  # the alarm's cycle counts from now: later alarms before it runs
                latest = max(self._last_cycle_ns or -gap_ns, self._last_alarm_ns or -gap_ns)
                due = now_ns - latest >= gap_ns
                if due:
                    self._last_alarm_ns = now_ns
            if due:
                self.trigger(f"bad data at {message.device_id}")

    def _handle_level(self, message: AlgorithmOutput) -> None:
        with self._lock:
            area_name = next((a for a, d in self.hosts.items() if d == message.device_id), None)
            if area_name is None:
                return
            area = self.partition.area(area_name)
            if message.algorithm != LEVEL_ALGORITHMS[area.level]:
                return
        part = read_final_part(message, buses=area.bus_ids.size, children=len(area.children))
        if part is None:
            return
        with self._arrived:
            if part.cycle != self._cycle or part.topology_version != self.topology_version:
                return
            final = self._assemblies.setdefault(area_name, FinalAssembly()).add(part)
            if final is not None:
                self._finals[area_name] = final
                self._arrived.notify_all()


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None
