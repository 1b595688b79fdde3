"""Twin scenarios: one TOML file names the grid, the time span, the devices and what happens.

A scenario is what ``openfeeder twin run SCENARIO`` executes. Its tables (every key documented in
``docs/twin.md``; unknown keys are errors, so a typo never silently does nothing):

- ``[scenario]``: ``name``, ``case`` (a built-in name or a case file, relative to the scenario
  file) or ``[scenario.synthetic]`` (``buses``, ``feeders``, ``ties``, ``seed``: the synthetic
  generator), ``start`` (UTC, RFC 3339), ``duration_s``, ``step_s`` (quasi-static step),
  ``speed`` (``"max"``, ``"realtime"`` or a factor), ``seed``.
- ``[profiles]``: load-profile resolution, time zone, PV sites, EV chargers.
- ``[devices]``: ``placement`` (``default`` rules, the case's ``measurement`` table, or ``none``),
  which kinds, accuracy, dropouts, clock errors, and ``[[devices.extra]]`` devices.
- ``[protection]``: feeder-head overcurrent pickup and delay, reclosing, fault-indicator pickup.
- ``[waveforms]``: sampling rate, window around each event, COMTRADE format.
- ``[network]``: impairments of the emulated network (per class and per device), used when the
  twin runs with the platform.
- ``[[events]]``: timed events: ``fault``, ``switch``, ``device_outage``, ``device_mode``,
  ``network``.

:func:`load_scenario` parses and validates; errors are :class:`ScenarioError` naming the file and
the dotted key (``events[2].line``).
"""

from __future__ import annotations

import math
import tomllib
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from openfeeder.errors import ConfigError, OpenFeederError, ScenarioError
from openfeeder.model.cases import resolve_case
from openfeeder.model.grid import GridModel
from openfeeder.model.synth import generate_feeders
from openfeeder.sim.netem import NetworkConfig

__all__ = [
    "SCENARIO_DIR",
    "DeviceModeEvent",
    "DeviceOutageEvent",
    "DevicesSpec",
    "ExtraDevice",
    "FaultEvent",
    "NetworkEvent",
    "ProfilesSpec",
    "ProtectionSpec",
    "Scenario",
    "ScenarioSpec",
    "SwitchEvent",
    "SyntheticSpec",
    "WaveformSpec",
    "builtin_scenarios",
    "load_scenario",
    "parse_scenario",
]

SCENARIO_DIR: Final = Path(__file__).parent / "scenarios"
"""The scenarios shipped with OpenFeeder (``openfeeder twin scenarios`` lists them)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSpec(_Strict):
    """A synthetic grid from :func:`openfeeder.model.synth.generate_feeders`."""

    buses: Annotated[int, Field(ge=10, le=2_000_000)]
    feeders: Annotated[int, Field(ge=1)] = 10
    ties: Annotated[int, Field(ge=0)] = 5
    seed: int = 1


class ScenarioSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str = ""
    case: str | None = None
    synthetic: SyntheticSpec | None = None
    start: datetime = datetime(2026, 6, 15, tzinfo=UTC)
    duration_s: Annotated[float, Field(gt=0, le=366 * 86400)]
    step_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    speed: str | float = "max"
    seed: int = 0

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("start needs a time zone (e.g. 2026-06-15T00:00:00Z)")
        return value.astimezone(UTC)

    @field_validator("speed")
    @classmethod
    def _speed(cls, value: str | float) -> str | float:
        if isinstance(value, str):
            if value.lower() not in ("max", "realtime"):
                raise ValueError("speed must be 'max', 'realtime' or a positive factor")
            return value.lower()
        if not (value > 0 and math.isfinite(value)):
            raise ValueError("speed factor must be positive and finite")
        return float(value)

    @model_validator(mode="after")
    def _one_grid(self) -> ScenarioSpec:
        if (self.case is None) == (self.synthetic is None):
            raise ValueError("give exactly one of case = '...' or [scenario.synthetic]")
        return self

    @property
    def start_ns(self) -> int:
        return int(self.start.timestamp()) * 1_000_000_000 + self.start.microsecond * 1000

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.duration_s / self.step_s - 1e-9))


class ProfilesSpec(_Strict):
    resolution_s: Literal[60, 900] = 900
    utc_offset_h: Annotated[float, Field(ge=-12, le=14)] = 1.0
    individuality: Annotated[float, Field(ge=0, le=1)] = 0.15
    latitude_deg: Annotated[float, Field(ge=-90, le=90)] = 45.07
    longitude_deg: Annotated[float, Field(ge=-180, le=180)] = 7.69
    pv: bool = True
    """Drive the case's PV generators with the clear-sky x cloud model."""
    ev_chargers: Annotated[int, Field(ge=0)] = 0
    """EV chargers to add at load buses (spread over residential loads, seeded)."""


class ExtraDevice(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    kind: Literal["meter", "ftu", "pmu"]
    bus: int
    element: int | None = None
    end: Literal["from", "to"] = "from"
    accuracy_class: Annotated[float, Field(ge=0, le=10)] | None = None


class DevicesSpec(_Strict):
    placement: Literal["default", "case", "none"] = "default"
    meters: bool = True
    ftus: bool = True
    pmus: bool = True
    dropout_probability: Annotated[float, Field(ge=0, le=1)] = 0.0
    reporting_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    """How often each virtual device reports when the twin runs with the platform."""
    extra: tuple[ExtraDevice, ...] = ()
    switch_operating_time_s: Annotated[float, Field(ge=0, le=60)] | None = None
    """Operating time of every switch mechanism (None: by switch kind, see
    :data:`openfeeder.sim.devices.OPERATING_TIME_S`); 0 measures the platform without mechanisms."""


class ProtectionSpec(_Strict):
    pickup_a: Annotated[float, Field(gt=0)] | None = None
    """Phase overcurrent pickup of the feeder-head breakers (None: 2 x the feeder's rating)."""
    ground_pickup_a: Annotated[float, Field(gt=0)] | None = None
    trip_delay_s: Annotated[float, Field(ge=0, le=10)] = 0.3
    reclose_s: tuple[Annotated[float, Field(gt=0, le=600)], ...] = ()
    """Dead times of the reclosing sequence; empty: no reclosing."""
    fault_indicator_pickup_a: Annotated[float, Field(gt=0)] | None = None


class WaveformSpec(_Strict):
    sampling_rate_hz: Literal[3200, 4000, 8000] = 4000
    pre_s: Annotated[float, Field(ge=0, le=5)] = 0.1
    post_s: Annotated[float, Field(ge=0, le=5)] = 0.2
    comtrade: Literal["ascii", "binary", "none"] = "binary"
    revision: Literal[1999, 2013] = 2013


class EventKind(StrEnum):
    FAULT = "fault"
    SWITCH = "switch"
    DEVICE_OUTAGE = "device_outage"
    DEVICE_MODE = "device_mode"
    NETWORK = "network"


class _Event(_Strict):
    at_s: Annotated[float, Field(ge=0)]


class FaultEvent(_Event):
    type: Literal["fault"]
    kind: Literal["slg", "ll", "lll", "llg", "open", "open_ground", "arc", "compound"]
    line: int
    distance_m: Annotated[float, Field(ge=0)]
    r_f_ohm: Annotated[float, Field(ge=0)] = 0.0
    phase: Annotated[str, Field(pattern=r"^[abc]{1,3}$")] | None = None
    """Faulted phase letters (``a``, ``bc``); None: a, or b and c for two-phase faults."""
    duration_s: Annotated[float, Field(gt=0)] | None = None
    """None: permanent (stays until repaired)."""
    evolve_to: Literal["ll", "lll", "llg"] | None = None
    evolve_after_s: Annotated[float, Field(gt=0)] = 0.1

    @model_validator(mode="after")
    def _compound(self) -> FaultEvent:
        if self.kind == "compound" and self.evolve_to is None:
            raise ValueError("a compound fault needs evolve_to ('ll', 'lll' or 'llg')")
        return self


class SwitchEvent(_Event):
    type: Literal["switch"]
    switch: int
    action: Literal["open", "close"]


class DeviceOutageEvent(_Event):
    type: Literal["device_outage"]
    device: str
    duration_s: Annotated[float, Field(gt=0)]


class DeviceModeEvent(_Event):
    type: Literal["device_mode"]
    device: str
    mode: Literal["normal", "slow", "fail"]


class NetworkEvent(_Event):
    type: Literal["network"]
    message_class: str | None = None
    device: str | None = None
    delay_ms: Annotated[float, Field(ge=0)] | None = None
    jitter_ms: Annotated[float, Field(ge=0)] | None = None
    loss: Annotated[float, Field(ge=0, le=1)] | None = None
    bandwidth_kbps: Annotated[float, Field(gt=0)] | None = None
    congestion: Annotated[float, Field(ge=0, le=100)] | None = None


Event = Annotated[
    FaultEvent | SwitchEvent | DeviceOutageEvent | DeviceModeEvent | NetworkEvent,
    Field(discriminator="type"),
]


class Scenario(_Strict):
    """A validated scenario; :meth:`build_model` makes its grid."""

    scenario: ScenarioSpec
    profiles: ProfilesSpec = ProfilesSpec()
    devices: DevicesSpec = DevicesSpec()
    protection: ProtectionSpec = ProtectionSpec()
    waveforms: WaveformSpec = WaveformSpec()
    network: dict[str, Any] = Field(default_factory=dict)
    events: tuple[Event, ...] = ()
    source: str = "<memory>"
    """Where the scenario came from (file path), for messages."""

    @model_validator(mode="after")
    def _events_in_time(self) -> Scenario:
        for index, event in enumerate(self.events):
            if event.at_s > self.scenario.duration_s:
                raise ValueError(
                    f"events[{index}] at_s = {event.at_s} is after the end of the scenario "
                    f"(duration_s = {self.scenario.duration_s})"
                )
        return self

    def network_config(self) -> NetworkConfig:
        """The ``[network]`` table as the emulated network's rules (ConfigError naming the key)."""
        return NetworkConfig.from_dict(self.network, where="network")

    def build_model(self) -> GridModel:
        """The scenario's grid; its references (lines, switches, devices) are checked here."""
        spec = self.scenario
        if spec.synthetic is not None:
            syn = spec.synthetic
            try:
                model = generate_feeders(
                    buses=syn.buses, feeders=syn.feeders, ties=syn.ties, seed=syn.seed
                )
            except ValueError as err:
                raise ScenarioError(f"{self.source}: scenario.synthetic: {err}") from err
        else:
            assert spec.case is not None
            case = spec.case
            if self.source != "<memory>" and (case.endswith(".json") or "/" in case):
                case = str((Path(self.source).parent / case).resolve())
            try:
                model = resolve_case(case)
            except OpenFeederError as err:
                raise ScenarioError(f"{self.source}: scenario.case: {err}") from err
        self._check_references(model)
        return model

    def _check_references(self, model: GridModel) -> None:
        lines = {
            int(i): float(n)
            for i, n in zip(model.line["id"], model.line["length_km"], strict=False)
        }
        switches = set(model.switch["id"].tolist())
        buses = set(model.bus["id"].tolist())
        for index, event in enumerate(self.events):
            where = f"{self.source}: events[{index}]"
            if isinstance(event, FaultEvent):
                if event.line not in lines:
                    raise ScenarioError(f"{where}.line: no line {event.line} in the grid")
                length_m = lines[event.line] * 1000.0
                if event.distance_m > length_m:
                    raise ScenarioError(
                        f"{where}.distance_m: {event.distance_m} m is beyond the end of line "
                        f"{event.line} ({length_m:.1f} m long)"
                    )
            elif isinstance(event, SwitchEvent) and event.switch not in switches:
                raise ScenarioError(f"{where}.switch: no switch {event.switch} in the grid")
        for index, device in enumerate(self.devices.extra):
            if device.bus not in buses:
                raise ScenarioError(
                    f"{self.source}: devices.extra[{index}].bus: no bus {device.bus} "
                    f"(device {device.id})"
                )


def parse_scenario(data: dict[str, Any], source: str = "<memory>") -> Scenario:
    """Validate a scenario given as the TOML's tables."""
    try:
        scenario = Scenario.model_validate({**data, "source": source})
    except ValidationError as err:
        first = err.errors()[0]
        location = _dotted(first["loc"])
        more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        raise ScenarioError(f"{source}: {location}: {first['msg']}{more}") from None
    try:
        scenario.network_config()
    except ConfigError as err:
        raise ScenarioError(f"{source}: {err}") from None
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario: a TOML file, or the name of a shipped one (``turin-normal-day``)."""
    candidate = Path(path)
    if not candidate.exists() and not str(path).endswith(".toml"):
        shipped = SCENARIO_DIR / f"{path}.toml"
        if shipped.exists():
            candidate = shipped
        else:
            known = ", ".join(sorted(builtin_scenarios()))
            raise ScenarioError(f"no scenario file or shipped scenario '{path}' (shipped: {known})")
    try:
        data = tomllib.loads(candidate.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{candidate}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(f"{candidate}: cannot read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{candidate}: not valid TOML: {err}") from None
    return parse_scenario(data, source=str(candidate))


def builtin_scenarios() -> dict[str, Path]:
    """Shipped scenarios by name."""
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.toml"))}


def _dotted(location: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in location:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("fault", "switch", "device_outage", "device_mode", "network") and parts:
            continue  # the discriminator tag pydantic adds to a union's location
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"
