"""What the emulated network does to traffic: impairments, the rules that place them, and their file form.

An :class:`Impairment` lists link properties (delay, jitter, loss, bandwidth, congestion); every
field is optional, because rules are **layered field by field**: a packet's effective impairment
starts from neutral values (no delay, no loss, unlimited bandwidth) and is overlaid, least specific
first, by the rules that match it::

    default  <  direction  <  class  <  class + direction  <  device  <  device + direction
             <  device + class  <  device + class + direction

So ``[network.default] delay_ms = 20`` plus ``[network.class.meas] congestion = 60`` gives
measurements 20 ms of delay *and* 60 % congestion, and ``[network.device."meter-7"] loss = 0.1``
adds loss to everything meter-7 sends and receives while keeping the rest. A device rule overrides
a class rule because it describes the device's own access link, the more specific fact.

The dict form (the ``[network]`` table of a twin scenario)::

    [network]
    seed = 7                            # optional: the emulator's random draws
    [network.default]
    delay_ms = 20
    jitter_ms = 5
    [network.default.downlink]          # a direction sub-table: broker -> device only
    bandwidth_kbps = 512
    [network.class.meas]
    congestion = 60
    [network.device."meter-7"]
    loss = 0.1
    [network.device."meter-7".class.cmd]
    delay_ms = 300

Keys of an impairment table: ``delay_ms``, ``jitter_ms``, ``jitter`` (``"normal"`` or
``"uniform"``), ``loss`` (0 <= loss < 1), ``loss_mode`` (``"retransmit"`` or ``"drop"``),
``bandwidth_kbps``, ``burst_bytes``, ``congestion`` (0..100 %), ``rto_min_ms``. Unknown keys are
errors, so a typo never silently does nothing; every error names the dotted key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any, Final

from openfeeder.errors import ConfigError
from openfeeder.iot.topics import ID_PATTERN, MessageClass

__all__ = [
    "CONTROL_CLASS",
    "OTHER_CLASS",
    "TRAFFIC_CLASSES",
    "Direction",
    "EffectiveImpairment",
    "Impairment",
    "JitterDistribution",
    "LossMode",
    "NetworkConfig",
    "RuleKey",
    "resolve",
]

OTHER_CLASS: Final = "other"
"""Class of a PUBLISH whose topic is outside the OpenFeeder scheme."""
CONTROL_CLASS: Final = "control"
"""Class of every packet that is not a PUBLISH (CONNECT, acknowledgements, SUBSCRIBE, PING...)."""
TRAFFIC_CLASSES: Final = frozenset({*(c.value for c in MessageClass), OTHER_CLASS, CONTROL_CLASS})
"""Every traffic class a rule may name."""

DEFAULT_RTO_MIN_MS: Final = 200.0
"""Lower bound of the retransmission timeout (Linux's TCP_RTO_MIN)."""


class Direction(StrEnum):
    """Which way a packet travels through the emulator."""

    UPLINK = "uplink"
    """Device (client) -> broker."""
    DOWNLINK = "downlink"
    """Broker -> device (client)."""


class LossMode(StrEnum):
    """What a lost packet becomes."""

    RETRANSMIT = "retransmit"
    """TCP retransmits it: it arrives, one retransmission timeout later per loss (the default)."""
    DROP = "drop"
    """A QoS 0 PUBLISH vanishes; every other packet is still retransmitted (see ``link``)."""


class JitterDistribution(StrEnum):
    """How the random part of the delay is drawn around ``delay_ms``."""

    NORMAL = "normal"
    """Gaussian with standard deviation ``jitter_ms`` (cut at zero total delay)."""
    UNIFORM = "uniform"
    """Uniform in ``[-jitter_ms, +jitter_ms]`` (cut at zero total delay)."""


@dataclass(frozen=True, slots=True)
class Impairment:
    """Link properties of one rule; a field left ``None`` is inherited from less specific rules.

    ``delay_ms`` is the one-way propagation and processing delay, ``jitter_ms`` its random part
    (distribution ``jitter``), ``loss`` the probability that one transmission of a packet is lost,
    ``loss_mode`` what a loss becomes, ``bandwidth_kbps`` the link rate (kbit/s, 1 kbit = 1000 bit)
    with a token bucket of ``burst_bytes``, ``congestion`` the background load of the shared
    network in percent (see ``link.CongestionModel``), ``rto_min_ms`` the lower bound of the
    retransmission timeout.
    """

    delay_ms: float | None = None
    jitter_ms: float | None = None
    jitter: JitterDistribution | None = None
    loss: float | None = None
    loss_mode: LossMode | None = None
    bandwidth_kbps: float | None = None
    burst_bytes: int | None = None
    congestion: float | None = None
    rto_min_ms: float | None = None

    def __post_init__(self) -> None:
        _check_range("delay_ms", self.delay_ms, low=0.0)
        _check_range("jitter_ms", self.jitter_ms, low=0.0)
        _check_range("bandwidth_kbps", self.bandwidth_kbps, low=0.0, low_open=True)
        _check_range("congestion", self.congestion, low=0.0, high=100.0)
        _check_range("rto_min_ms", self.rto_min_ms, low=0.0, low_open=True)
        _check_range("loss", self.loss, low=0.0, high=1.0, high_open=True)
        if self.burst_bytes is not None and (
            isinstance(self.burst_bytes, bool)
            or not isinstance(self.burst_bytes, int)
            or self.burst_bytes < 0
        ):
            raise ConfigError(f"burst_bytes: must be an integer >= 0, not {self.burst_bytes!r}")
        if self.jitter is not None and not isinstance(self.jitter, JitterDistribution):
            raise ConfigError(f"jitter: must be a JitterDistribution, not {self.jitter!r}")
        if self.loss_mode is not None and not isinstance(self.loss_mode, LossMode):
            raise ConfigError(f"loss_mode: must be a LossMode, not {self.loss_mode!r}")

    def overlay(self, other: Impairment) -> Impairment:
        """This impairment with every field that ``other`` sets taken from ``other``."""
        changes = {
            f.name: getattr(other, f.name)
            for f in fields(other)
            if getattr(other, f.name) is not None
        }
        return replace(self, **changes) if changes else self

    def is_empty(self) -> bool:
        """True when no field is set (the rule changes nothing)."""
        return all(getattr(self, f.name) is None for f in fields(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> Impairment:
        """Read an impairment table; errors name ``where`` + the key (``network.class.meas.loss``)."""
        values: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(
                    f"{where}.{key}: unknown key (expected one of {', '.join(sorted(known))})"
                )
            values[key] = _convert(key, value, where=f"{where}.{key}")
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{where}.{err}") from err

    def to_dict(self) -> dict[str, Any]:
        """The set fields as plain values (enums as strings): the inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.value if isinstance(value, StrEnum) else value
        return out


def _check_range(
    name: str,
    value: float | None,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{name}: must be a number, not {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high or (math.isinf(value) and high == math.inf):
        left = "(" if low_open else "["
        right = ")" if high_open or high == math.inf else "]"
        raise ConfigError(f"{name}: {value!r} is outside {left}{low:g}, {high:g}{right}")


def _convert(key: str, value: Any, *, where: str) -> Any:
    if key == "jitter":
        try:
            return JitterDistribution(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in JitterDistribution)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}") from None
    if key == "loss_mode":
        try:
            return LossMode(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in LossMode)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}") from None
    return value


@dataclass(frozen=True, slots=True)
class EffectiveImpairment:
    """Every field resolved: what one packet actually gets (``bandwidth_kbps`` None: unlimited)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter: JitterDistribution = JitterDistribution.NORMAL
    loss: float = 0.0
    loss_mode: LossMode = LossMode.RETRANSMIT
    bandwidth_kbps: float | None = None
    burst_bytes: int = 0
    congestion: float = 0.0
    rto_min_ms: float = DEFAULT_RTO_MIN_MS

    @property
    def is_neutral(self) -> bool:
        """True when the packet passes untouched (the relay's fast path)."""
        return (
            self.delay_ms == 0.0
            and self.jitter_ms == 0.0
            and self.loss == 0.0
            and self.bandwidth_kbps is None
            and self.congestion == 0.0
        )

    @property
    def rto_ms(self) -> float:
        """Retransmission timeout: RFC 6298's SRTT + 4 RTTVAR, with SRTT = 2 x the one-way delay
        and RTTVAR ~ the jitter, bounded below by ``rto_min_ms``."""
        return max(self.rto_min_ms, 2.0 * self.delay_ms + 4.0 * self.jitter_ms)


_NEUTRAL: Final = EffectiveImpairment()


@dataclass(frozen=True, slots=True)
class RuleKey:
    """Where a rule applies: ``None`` in a field matches everything."""

    message_class: str | None = None
    device_id: str | None = None
    direction: Direction | None = None

    def __post_init__(self) -> None:
        if self.message_class is not None and self.message_class not in TRAFFIC_CLASSES:
            raise ConfigError(
                f"message_class: {self.message_class!r} is not a traffic class "
                f"(one of {', '.join(sorted(TRAFFIC_CLASSES))})"
            )
        if self.device_id is not None and not ID_PATTERN.fullmatch(self.device_id):
            raise ConfigError(
                f"device_id: {self.device_id!r} is not a device id ([A-Za-z0-9_.-]{{1,64}})"
            )
        if self.direction is not None and not isinstance(self.direction, Direction):
            raise ConfigError(f"direction: must be a Direction, not {self.direction!r}")


def _precedence(message_class: str, device_id: str | None, direction: Direction) -> list[RuleKey]:
    """The keys matching one packet, least specific first (the order rules are overlaid in)."""
    keys = [
        RuleKey(),
        RuleKey(direction=direction),
        RuleKey(message_class=message_class),
        RuleKey(message_class=message_class, direction=direction),
    ]
    if device_id is not None and ID_PATTERN.fullmatch(device_id):
        keys += [
            RuleKey(device_id=device_id),
            RuleKey(device_id=device_id, direction=direction),
            RuleKey(message_class=message_class, device_id=device_id),
            RuleKey(message_class=message_class, device_id=device_id, direction=direction),
        ]
    return keys


def resolve(
    rules: Mapping[RuleKey, Impairment],
    *,
    message_class: str,
    device_id: str | None,
    direction: Direction,
) -> EffectiveImpairment:
    """The effective impairment of a packet of ``message_class`` on ``device_id``'s link."""
    merged = Impairment()
    for key in _precedence(message_class, device_id, direction):
        rule = rules.get(key)
        if rule is not None:
            merged = merged.overlay(rule)
    if merged.is_empty():
        return _NEUTRAL
    values = {
        f.name: getattr(merged, f.name)
        for f in fields(merged)
        if getattr(merged, f.name) is not None
    }
    return replace(_NEUTRAL, **values)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """A set of rules and the random seed: the ``[network]`` table of a scenario."""

    rules: Mapping[RuleKey, Impairment]
    seed: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "network") -> NetworkConfig:
        """Parse the dict form (see the module docstring); errors name the dotted key."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be a table, not {type(data).__name__}")
        rules: dict[RuleKey, Impairment] = {}
        seed: int | None = None
        for key, value in data.items():
            path = f"{where}.{key}"
            if key == "seed":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{path}: must be an integer, not {value!r}")
                seed = value
            elif key == "default":
                _read_table(rules, value, RuleKey(), where=path, allow_class=False)
            elif key == "class":
                for name, table in _table(value, where=path).items():
                    rule_key = _rule_key(f"{path}.{_quote(name)}", message_class=str(name))
                    _read_table(rules, table, rule_key, where=f"{path}.{_quote(name)}")
            elif key == "device":
                for name, table in _table(value, where=path).items():
                    dev_path = f"{path}.{_quote(name)}"
                    rule_key = _rule_key(dev_path, device_id=str(name))
                    _read_table(rules, table, rule_key, where=dev_path, allow_class=True)
            else:
                raise ConfigError(
                    f"{path}: unknown key (expected 'seed', 'default', 'class' or 'device')"
                )
        return cls(rules=rules, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """The dict form of these rules (round-trips through :meth:`from_dict`)."""
        out: dict[str, Any] = {}
        if self.seed is not None:
            out["seed"] = self.seed
        for key, rule in self.rules.items():
            table: dict[str, Any] = out
            if key.device_id is not None:
                table = table.setdefault("device", {}).setdefault(key.device_id, {})
                if key.message_class is not None:
                    table = table.setdefault("class", {}).setdefault(key.message_class, {})
            elif key.message_class is not None:
                table = table.setdefault("class", {}).setdefault(key.message_class, {})
            else:
                table = table.setdefault("default", {})
            if key.direction is not None:
                table = table.setdefault(key.direction.value, {})
            table.update(rule.to_dict())
        return out


def _quote(name: object) -> str:
    text = str(name)
    return text if ID_PATTERN.fullmatch(text) and "." not in text else f'"{text}"'


def _table(value: Any, *, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a table, not {type(value).__name__}")
    return value


def _rule_key(where: str, **parts: Any) -> RuleKey:
    try:
        return RuleKey(**parts)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def _read_table(
    rules: dict[RuleKey, Impairment],
    value: Any,
    key: RuleKey,
    *,
    where: str,
    allow_class: bool = False,
) -> None:
    """One impairment table with optional ``uplink``/``downlink`` (and, for a device, ``class``)
    sub-tables."""
    table = _table(value, where=where)
    own: dict[str, Any] = {}
    for name, item in table.items():
        path = f"{where}.{name}"
        if name in (Direction.UPLINK.value, Direction.DOWNLINK.value):
            sub = replace(key, direction=Direction(name))
            if key.direction is not None:
                raise ConfigError(f"{path}: a direction table inside a direction table")
            _store(rules, sub, Impairment.from_dict(_table(item, where=path), where=path))
        elif name == "class" and allow_class:
            for class_name, class_table in _table(item, where=path).items():
                class_path = f"{path}.{_quote(class_name)}"
                sub = _rule_key(class_path, message_class=str(class_name), device_id=key.device_id)
                _read_table(rules, class_table, sub, where=class_path)
        else:
            own[name] = item
    if own:
        _store(rules, key, Impairment.from_dict(own, where=where))


def _store(rules: dict[RuleKey, Impairment], key: RuleKey, rule: Impairment) -> None:
    rules[key] = rules[key].overlay(rule) if key in rules else rule
