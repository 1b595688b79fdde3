"""IEEE C37.111 (COMTRADE) files of a :class:`~openfeeder.sim.waveforms.WaveformRecord`.

Every protection engineer's tool reads COMTRADE, so the twin's fault records leave the platform in
it: a ``.cfg`` (configuration: station, recorder, channels, scaling, sampling, time stamps) and a
``.dat`` (samples), revision 1999 or 2013, ASCII or 16-bit BINARY data.

Choices, and why:

- **Scaling.** Samples are stored as integers ``y`` with ``value = a * y + b`` per channel. ``a``
  and ``b`` are chosen per channel so the record's minimum and maximum map onto the format's full
  range (+-32767 in BINARY, where -32768 marks a missing sample; +-99998 in ASCII, whose fields hold
  six characters and where 99999 marks a missing sample): the quantization step is then
  ``(max - min) / 65534`` (BINARY) or ``(max - min) / 199996`` (ASCII). ``a`` and ``b`` are
  written with 10 significant digits and the integers computed from the written values, so a
  reader's ``a * y + b`` is the sample to within half a step.
- **Values are primary** (``PS = P``); the primary/secondary fields carry the instrument
  transformer ratios given (1:1 by default: the twin records primary quantities directly).
- **Time.** Time stamps are UTC (2013: time code and local code ``0``; time quality ``0``, the
  twin's clock being exact; no leap second). The first-sample and trigger stamps have microsecond
  resolution; revision 2013 switches to nanoseconds when either instant needs it, revision 1999 has
  only microseconds and rounds to the nearest one (at most 0.5 us, 0.009 degrees at 50 Hz). Sample
  time stamps in the ``.dat`` are whole multiples of ``timemult`` times the time base, chosen so
  every sample's stamp is exact (3200 Hz gives 312.5 us: ``timemult`` 0.5).
- **Channels** per measuring point: ``<point> VA``, ``VB``, ``VC`` (V), ``IA``, ``IB``, ``IC`` (A),
  with ``ph`` A/B/C and ``ccbm`` the point's name. No status channels.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from openfeeder.sim.clock import NS_PER_S
from openfeeder.sim.waveforms import WaveformError, WaveformRecord

__all__ = ["ASCII_RANGE", "BINARY_RANGE", "write_comtrade"]

DataFormat = Literal["ASCII", "BINARY"]
Revision = Literal[1999, 2013]

BINARY_RANGE: Final = 32767
"""Largest magnitude of a 16-bit BINARY sample; -32768 is reserved for a missing one."""
ASCII_RANGE: Final = 99998
"""Largest magnitude of an ASCII sample (six characters; 99999 marks a missing one)."""
_MAX_STAMP: Final = 0xFFFFFFFE
"""Largest 32-bit sample time stamp (0xFFFFFFFF marks a missing one)."""
_MAX_TEXT: Final = {"station_name": 64, "device_id": 64, "ch_id": 64, "ccbm": 64}
_SIGNIFICANT_DIGITS: Final = 10


def write_comtrade(
    record: WaveformRecord,
    directory: str | Path,
    name: str,
    *,
    station_name: str,
    device_id: str,
    data_format: DataFormat = "BINARY",
    revision: Revision = 1999,
    trigger_ns: int | None = None,
    vt_ratio: tuple[float, float] = (1.0, 1.0),
    ct_ratio: tuple[float, float] = (1.0, 1.0),
) -> tuple[Path, Path]:
    """Write ``<directory>/<name>.cfg`` and ``.dat``; returns their paths.

    ``trigger_ns`` (UTC ns, inside the record) defaults to the record's
    :attr:`~openfeeder.sim.waveforms.WaveformRecord.trigger_ns`. ``vt_ratio`` and ``ct_ratio``
    are (primary, secondary) of the voltage and current transformers. The directory is created
    when missing. Errors are :class:`~openfeeder.sim.waveforms.WaveformError` naming the
    argument or channel.
    """
    if data_format not in ("ASCII", "BINARY"):
        raise WaveformError(f"data_format must be 'ASCII' or 'BINARY', got {data_format!r}")
    if revision not in (1999, 2013):
        raise WaveformError(f"revision must be 1999 or 2013, got {revision!r}")
    if not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise WaveformError(f"file name {name!r} must be a plain, non-empty name (no directories)")
    _check_text("station_name", station_name, revision)
    _check_text("device_id", device_id, revision)
    for label, (primary, secondary) in (("vt_ratio", vt_ratio), ("ct_ratio", ct_ratio)):
        if not all(math.isfinite(x) and x > 0.0 for x in (primary, secondary)):
            raise WaveformError(f"{label} must be two positive numbers, got {(primary, secondary)}")
    if record.samples == 0:
        raise WaveformError("the record has no samples")
    trigger = record.trigger_ns if trigger_ns is None else int(trigger_ns)
    if not record.start_ns <= trigger < record.end_ns:
        raise WaveformError(
            f"trigger at {trigger} ns is outside the record [{record.start_ns}, {record.end_ns}) ns"
        )

    values = np.concatenate([record.voltage_v, record.current_a], axis=1)  # (points, 6, N)
    values = values.reshape(-1, record.samples)  # channel order: VA VB VC IA IB IC per point
    names = record.channel_names
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        raise WaveformError(f"channel '{names[bad[0]]}' has samples that are not finite")
    full_range = ASCII_RANGE if data_format == "ASCII" else BINARY_RANGE
    gain, offset, integers = _quantize(values, full_range)

    nanoseconds = revision == 2013 and (record.start_ns % 1000 != 0 or trigger % 1000 != 0)
    time_base_ns = 1 if nanoseconds else 1000
    period = Fraction(record.sample_period_ns, time_base_ns)  # sample period in time-base units
    time_mult = Fraction(1, period.denominator)
    stamp_step = period.numerator  # each sample's stamp grows by this many time_mult units
    if (record.samples - 1) * stamp_step > _MAX_STAMP:
        raise WaveformError(
            f"{record.samples} samples at {record.sampling_rate_hz} Hz outrun the format's 32-bit "
            f"sample time stamps at {time_base_ns} ns resolution"
        )

    lines = [f"{station_name},{device_id},{revision}"]
    channels = values.shape[0]
    lines.append(f"{channels},{channels}A,0D")
    units = record.channel_units
    for number in range(channels):
        point = record.points[number // 6]
        _check_text("ch_id", names[number], revision)
        _check_text("ccbm", point.name, revision)
        primary, secondary = vt_ratio if units[number] == "V" else ct_ratio
        lines.append(
            ",".join(
                [
                    str(number + 1),
                    names[number],
                    "ABC"[number % 3],
                    point.name,
                    units[number],
                    _number(gain[number]),
                    _number(offset[number]),
                    "0",
                    str(int(integers[number].min())),
                    str(int(integers[number].max())),
                    _number(primary),
                    _number(secondary),
                    "P",
                ]
            )
        )
    lines.append(f"{record.frequency_hz:g}")
    lines.append("1")
    lines.append(f"{record.sampling_rate_hz},{record.samples}")
    lines.append(_stamp(record.start_ns, nanoseconds))
    lines.append(_stamp(trigger, nanoseconds))
    lines.append(data_format)
    lines.append(_number(float(time_mult)))
    if revision == 2013:
        lines.append("0,0")  # time code, local code: the stamps are UTC
        lines.append("0,0")  # time quality: clock locked; no leap second

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path, dat_path = folder / f"{name}.cfg", folder / f"{name}.dat"
    encoding = "ascii" if revision == 1999 else "utf-8"
    cfg_path.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    sample_numbers = np.arange(1, record.samples + 1, dtype=np.int64)
    stamps = np.arange(record.samples, dtype=np.int64) * stamp_step
    if data_format == "BINARY":
        row = np.dtype([("n", "<u4"), ("t", "<u4"), ("y", "<i2", (channels,))])
        table = np.empty(record.samples, dtype=row)
        table["n"] = sample_numbers
        table["t"] = stamps
        table["y"] = integers.T
        dat_path.write_bytes(table.tobytes())
    else:
        columns = np.column_stack([sample_numbers, stamps, integers.T])
        row_format = ",".join(["%d"] * (channels + 2)) + "\r\n"
        text = (row_format * record.samples) % tuple(columns.ravel().tolist())
        dat_path.write_bytes(text.encode("ascii"))
    return cfg_path, dat_path


def _quantize(
    values: npt.NDArray[np.float64], full_range: int
) -> tuple[list[float], list[float], npt.NDArray[np.int64]]:
    """Per-channel ``a``, ``b`` (as written) and the integers that use the whole range."""
    low, high = values.min(axis=1), values.max(axis=1)
    centre = (high + low) / 2.0
    # a symmetric channel's centre is zero up to rounding; write 0, not 1.8e-12
    centre = np.where(np.abs(centre) <= 1e-9 * np.maximum(-low, high), 0.0, centre)
    span = (high - low) / (2.0 * full_range)
    span = np.where(span > 0.0, span, np.maximum(np.abs(centre), 1.0) / full_range)
    gain = [float(_number(g)) for g in span.tolist()]
    offset = [float(_number(c)) for c in centre.tolist()]
    a, b = np.array(gain)[:, None], np.array(offset)[:, None]
    integers = np.clip(np.rint((values - b) / a), -full_range, full_range).astype(np.int64)
    return gain, offset, integers


def _number(value: float) -> str:
    """A real in at most 10 significant digits, no exponent where it is not needed."""
    return f"{value:.{_SIGNIFICANT_DIGITS}g}"


def _stamp(t_ns: int, nanoseconds: bool) -> str:
    """``dd/mm/yyyy,hh:mm:ss.ssssss`` (or nine fraction digits) in UTC."""
    if nanoseconds:
        seconds, fraction = divmod(t_ns, NS_PER_S)
        digits = f"{fraction:09d}"
    else:
        micro = (t_ns + 500) // 1000  # nearest microsecond
        seconds, fraction = divmod(micro, 1_000_000)
        digits = f"{fraction:06d}"
    when = datetime.fromtimestamp(seconds, tz=UTC)
    return f"{when:%d/%m/%Y},{when:%H:%M:%S}.{digits}"


def _check_text(field: str, text: str, revision: int) -> None:
    """COMTRADE text fields: no separators or line breaks, bounded length, ASCII in 1999."""
    if not text or any(c in text for c in ",\r\n"):
        raise WaveformError(f"{field} {text!r} must be non-empty without commas or line breaks")
    limit = _MAX_TEXT[field]
    if len(text) > limit:
        raise WaveformError(f"{field} {text!r} is longer than COMTRADE's {limit} characters")
    if revision == 1999 and not text.isascii():
        raise WaveformError(f"{field} {text!r} is not ASCII, which revision 1999 requires")
