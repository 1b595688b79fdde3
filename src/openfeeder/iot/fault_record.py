"""The wire format of a fault record: what a feeder terminal's recorder captured around a fault.

A device with a fault recorder (an FTU, a PMU, a protection relay) keeps a short ring buffer of
phasors; when it detects a fault it sends the phasors from just before and during the fault as an
``Event`` of kind :data:`FAULT_RECORD_EVENT` (grid-ops context, QoS 1). The phasors travel as
readings, one per phase and component, so the event needs no schema of its own:

=============================  =====  ======================================================
channel                        unit   meaning
=============================  =====  ======================================================
``u_pre_{a,b,c}_{re,im}``      V      phase-to-ground voltage (RMS phasor) before the fault
``u_fault_{a,b,c}_{re,im}``    V      the same during the fault
``i_pre_{a,b,c}_{re,im}``      A      current into the measured element before (optional)
``i_fault_{a,b,c}_{re,im}``    A      the same during the fault (optional)
``fault_t_ns``                 1      when the recorder triggered (device clock, UTC ns)
=============================  =====  ======================================================

Where the device sits (bus, element) is its location in the device catalog. The current channels are
present together or not at all (a voltage-only recorder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from openfeeder.errors import MessagingError
from openfeeder.iot.schema import Quality, Reading, Unit

__all__ = ["FAULT_RECORD_EVENT", "RecordedPhasors", "parse_record", "record_readings"]

FAULT_RECORD_EVENT: Final = "fault_record"
_REASON: Final = "invalid_fault_record"

ComplexArray = npt.NDArray[np.complex128]

_PHASES: Final = ("a", "b", "c")
_VOLTAGES: Final = ("u_pre", "u_fault")
_CURRENTS: Final = ("i_pre", "i_fault")


@dataclass(frozen=True, slots=True, eq=False)
class RecordedPhasors:
    """The phasors of one fault record (each (3,) complex, phases a, b, c)."""

    fault_t_ns: int
    u_pre_v: ComplexArray
    u_fault_v: ComplexArray
    i_pre_a: ComplexArray | None
    i_fault_a: ComplexArray | None


def _channels(name: str) -> list[tuple[str, int, bool]]:
    return [
        (f"{name}_{p}_{part}", k, part == "im")
        for k, p in enumerate(_PHASES)
        for part in ("re", "im")
    ]


def record_readings(
    *,
    fault_t_ns: int,
    u_pre_v: npt.ArrayLike,
    u_fault_v: npt.ArrayLike,
    i_pre_a: npt.ArrayLike | None = None,
    i_fault_a: npt.ArrayLike | None = None,
) -> tuple[Reading, ...]:
    """The readings of a fault-record event (see the module docstring)."""
    if (i_pre_a is None) != (i_fault_a is None):
        raise MessagingError(
            "a fault record carries both currents (pre-fault and fault) or none",
            topic="",
            reason=_REASON,
            field="i_pre" if i_pre_a is None else "i_fault",
        )
    arrays: list[tuple[str, Unit, ComplexArray]] = [
        ("u_pre", Unit.V, _three(u_pre_v, "u_pre")),
        ("u_fault", Unit.V, _three(u_fault_v, "u_fault")),
    ]
    if i_pre_a is not None and i_fault_a is not None:
        arrays += [
            ("i_pre", Unit.A, _three(i_pre_a, "i_pre")),
            ("i_fault", Unit.A, _three(i_fault_a, "i_fault")),
        ]
    readings = [
        Reading(channel="fault_t_ns", value=float(fault_t_ns), unit=Unit.ONE, quality=Quality.GOOD)
    ]
    for name, unit, values in arrays:
        for channel, phase, imaginary in _channels(name):
            value = values[phase].imag if imaginary else values[phase].real
            readings.append(
                Reading(channel=channel, value=float(value), unit=unit, quality=Quality.GOOD)
            )
    return tuple(readings)


def parse_record(values: Sequence[Reading], *, topic: str) -> RecordedPhasors:
    """The phasors of a fault-record event's readings; MessagingError naming the event's ``topic``
    and the missing or non-finite channel."""
    by_channel = {reading.channel: reading.value for reading in values}

    def phasors(name: str) -> ComplexArray:
        out = np.zeros(3, dtype=np.complex128)
        for channel, phase, imaginary in _channels(name):
            if channel not in by_channel:
                raise _bad(topic, channel, "missing")
            value = by_channel[channel]
            if not np.isfinite(value):
                raise _bad(topic, channel, f"is not finite ({value})")
            out[phase] += 1j * value if imaginary else value
        return out

    if "fault_t_ns" not in by_channel:
        raise _bad(topic, "fault_t_ns", "missing")
    has_current = any(channel.startswith(_CURRENTS) for channel in by_channel)
    return RecordedPhasors(
        fault_t_ns=int(by_channel["fault_t_ns"]),
        u_pre_v=phasors("u_pre"),
        u_fault_v=phasors("u_fault"),
        i_pre_a=phasors("i_pre") if has_current else None,
        i_fault_a=phasors("i_fault") if has_current else None,
    )


def _three(values: npt.ArrayLike, name: str) -> ComplexArray:
    array = np.asarray(values, dtype=np.complex128)
    if array.shape != (3,) or not np.all(np.isfinite(array)):
        raise MessagingError(
            f"fault record {name}: three finite phasors expected, got {array!r}",
            topic="",
            reason=_REASON,
            field=name,
        )
    return array


def _bad(topic: str, channel: str, problem: str) -> MessagingError:
    return MessagingError(
        f"fault record on {topic}: channel {channel} {problem}",
        topic=topic,
        reason=_REASON,
        field=channel,
    )
