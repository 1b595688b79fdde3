"""COMTRADE files read back by an independent reader (the ``comtrade`` package, MIT)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import comtrade
import numpy as np
import pytest

from openfeeder.analysis.phasors import PhasorState, solve_phasors
from openfeeder.model.cases import load_builtin
from openfeeder.model.grid import GridModel
from openfeeder.sim.comtrade import ASCII_RANGE, BINARY_RANGE, write_comtrade
from openfeeder.sim.segments import StateSegment
from openfeeder.sim.waveforms import (
    MeasuringPoint,
    WaveformError,
    WaveformRecord,
    generate_waveforms,
)

T0_NS = 1_700_000_000_123_456_000  # a whole microsecond
MS = 1_000_000


@pytest.fixture(scope="module")
def model() -> GridModel:
    return load_builtin("turin")


@pytest.fixture(scope="module")
def prefault(model: GridModel) -> PhasorState:
    return solve_phasors(model).state(0)


def fault_record(
    model: GridModel, prefault: PhasorState, *, rate_hz: int = 4000, start_ns: int = T0_NS
) -> WaveformRecord:
    """Pre-fault, a phase-a fault with DC offset, then a trip that leaves the point dead."""
    i_from, i_to, u_v = prefault.i_from_a.copy(), prefault.i_to_a.copy(), prefault.u_v.copy()
    fault_a = 500.0 * np.exp(-1j * 1.3)
    i_from[:, 0] += fault_a
    i_to[:, 0] -= fault_a
    u_v[:, 0] *= 0.2
    fault = dataclasses.replace(prefault, i_from_a=i_from, i_to_a=i_to, u_v=u_v)
    tripped = dataclasses.replace(
        prefault, u_v=0 * u_v, i_from_a=0 * i_from, i_to_a=0 * i_to, i_load_a=0 * prefault.i_load_a
    )
    segments = [
        StateSegment(start_ns - 10 * MS, prefault, "prefault"),
        StateSegment(start_ns + 60 * MS + 77, fault, "fault", transient=True),
        StateSegment(start_ns + 160 * MS, tripped, "trip"),
    ]
    pts = [MeasuringPoint.at_branch_end(model, 300), MeasuringPoint.at_load(model, 400)]
    return generate_waveforms(
        segments, pts, start_ns=start_ns, end_ns=start_ns + 250 * MS, sampling_rate_hz=rate_hz
    )


def load(cfg: Path, dat: Path, *, nanoseconds: bool = False) -> comtrade.Comtrade:
    """Read with the package; it warns (an error under pytest) that it truncates nanoseconds."""
    reader = comtrade.Comtrade(
        use_numpy_arrays=True, use_double_precision=True, ignore_warnings=nanoseconds
    )
    reader.load(str(cfg), str(dat))
    return reader


def naive_utc(t_ns: int) -> datetime:
    """The reader's datetimes are naive (it ignores time codes) and microsecond-resolved."""
    return datetime.fromtimestamp(t_ns // 1000 / 1e6, tz=UTC).replace(tzinfo=None)


@pytest.mark.parametrize("revision", [1999, 2013])
@pytest.mark.parametrize("data_format", ["ASCII", "BINARY"])
def test_round_trip_through_an_independent_reader(
    tmp_path: Path, model: GridModel, prefault: PhasorState, data_format: str, revision: int
) -> None:
    record = fault_record(model, prefault)
    cfg, dat = write_comtrade(
        record,
        tmp_path / "records",
        "fault_1",
        station_name="Turin primary S1",
        device_id="openfeeder-twin",
        data_format=data_format,  # type: ignore[arg-type]
        revision=revision,  # type: ignore[arg-type]
        vt_ratio=(22000.0, 110.0),
        ct_ratio=(600.0, 1.0),
    )
    assert (cfg.name, dat.name) == ("fault_1.cfg", "fault_1.dat")
    # the trigger (fault inception) is 77 ns off a microsecond: 2013 writes nanoseconds
    reader = load(cfg, dat, nanoseconds=revision == 2013)
    assert reader.time_base == (1e-9 if revision == 2013 else 1e-6)
    assert reader.station_name == "Turin primary S1"
    assert reader.rec_dev_id == "openfeeder-twin"
    assert reader.rev_year == str(revision)
    assert reader.ft == data_format
    assert reader.analog_count == 12
    assert reader.status_count == 0
    assert reader.analog_channel_ids == list(record.channel_names)
    assert reader.analog_phases == ["A", "B", "C"] * 4
    channels = reader.cfg.analog_channels
    assert [c.uu for c in channels] == list(record.channel_units)
    assert [c.ccbm for c in channels[:6]] == ["switch 300 from"] * 6
    assert (channels[0].primary, channels[0].secondary, channels[0].pors) == (22000, 110, "P")
    assert (channels[3].primary, channels[3].secondary) == (600, 1)
    assert reader.frequency == 50.0
    assert reader.cfg.sample_rates == [[4000.0, record.samples]]
    assert reader.total_samples == record.samples
    np.testing.assert_allclose(reader.time, np.arange(record.samples) / 4000.0, atol=1e-12)
    assert reader.start_timestamp == naive_utc(record.start_ns)
    assert reader.trigger_timestamp == naive_utc(record.trigger_ns)
    assert reader.trigger_time == pytest.approx(
        (record.trigger_ns - record.start_ns) / 1e9, abs=1e-6
    )
    # samples within half a quantization step; the step uses the channel's whole range
    written = np.concatenate([record.voltage_v, record.current_a], axis=1).reshape(12, -1)
    read = np.array(reader.analog)
    full = ASCII_RANGE if data_format == "ASCII" else BINARY_RANGE
    step = (written.max(axis=1) - written.min(axis=1)) / (2 * full)
    assert np.all(np.abs(read - written) <= step[:, None] * 0.5 * (1 + 1e-6))
    np.testing.assert_allclose([c.a for c in channels], step, rtol=1e-9)
    assert all(c.cmin == -full and c.cmax == full for c in channels)


def test_binary_rows_and_sample_time_stamps(
    tmp_path: Path, model: GridModel, prefault: PhasorState
) -> None:
    """3200 Hz is 312.5 us per sample: timemult 0.5 keeps every stamp exact."""
    record = fault_record(model, prefault, rate_hz=3200)
    cfg, dat = write_comtrade(
        record, tmp_path, "r", station_name="S", device_id="D", data_format="BINARY"
    )
    rows = np.fromfile(dat, dtype=[("n", "<u4"), ("t", "<u4"), ("y", "<i2", (12,))])
    assert rows.size == record.samples
    np.testing.assert_array_equal(rows["n"], np.arange(1, record.samples + 1))
    lines = cfg.read_text().splitlines()
    assert lines[-1] == "0.5"  # timemult (revision 1999's last line)
    np.testing.assert_array_equal(rows["t"] * 0.5, np.arange(record.samples) * 312.5)
    assert np.abs(rows["y"]).max() == BINARY_RANGE
    assert cfg.read_bytes().count(b"\r\n") == len(lines)  # CR LF line ends


def test_ascii_rows(tmp_path: Path, model: GridModel, prefault: PhasorState) -> None:
    record = fault_record(model, prefault, rate_hz=8000)
    _, dat = write_comtrade(
        record, tmp_path, "r", station_name="S", device_id="D", data_format="ASCII"
    )
    table = np.loadtxt(dat, delimiter=",", dtype=np.int64)
    assert table.shape == (record.samples, 14)
    np.testing.assert_array_equal(table[:, 1], np.arange(record.samples) * 125)  # microseconds
    assert np.abs(table[:, 2:]).max() == ASCII_RANGE


def test_nanosecond_time_stamps_in_revision_2013(
    tmp_path: Path, model: GridModel, prefault: PhasorState
) -> None:
    start_ns = T0_NS + 789
    record = fault_record(model, prefault, start_ns=start_ns)
    cfg, dat = write_comtrade(
        record, tmp_path, "r13", station_name="S", device_id="D", revision=2013
    )
    lines = cfg.read_text().splitlines()
    assert lines[-6] == "14/11/2023,22:13:20.123456789"
    assert lines[-4] == "BINARY"
    assert lines[-2:] == ["0,0", "0,0"]  # UTC time codes; clock locked, no leap second
    reader = comtrade.Comtrade(use_numpy_arrays=True, ignore_warnings=True)
    reader.load(str(cfg), str(dat))
    assert reader.cfg.time_base == 1e-9
    assert reader.start_timestamp == naive_utc(start_ns)
    rows = np.fromfile(dat, dtype=[("n", "<u4"), ("t", "<u4"), ("y", "<i2", (12,))])
    np.testing.assert_array_equal(rows["t"], np.arange(record.samples) * 250_000)  # ns
    # revision 1999 has microseconds only: the nearest one is written
    cfg99, _ = write_comtrade(record, tmp_path, "r99", station_name="S", device_id="D")
    assert cfg99.read_text().splitlines()[-4] == "14/11/2023,22:13:20.123457"


def test_a_dead_channel_is_written(tmp_path: Path, model: GridModel, prefault: PhasorState) -> None:
    """A channel that is zero throughout (after a trip) still gets a usable scale."""
    record = fault_record(model, prefault)
    dead = dataclasses.replace(
        record,
        start_ns=record.start_ns + 200 * MS,
        voltage_v=np.zeros_like(record.voltage_v[..., :40]),
        current_a=np.zeros_like(record.current_a[..., :40]),
        events=(),
    )
    cfg, dat = write_comtrade(dead, tmp_path, "dead", station_name="S", device_id="D")
    reader = load(cfg, dat)
    np.testing.assert_array_equal(np.array(reader.analog), 0.0)
    assert reader.trigger_timestamp == reader.start_timestamp  # no event: triggered at the start


def test_bad_arguments_name_the_field(
    tmp_path: Path, model: GridModel, prefault: PhasorState
) -> None:
    record = fault_record(model, prefault)
    good = {"station_name": "S", "device_id": "D"}
    with pytest.raises(WaveformError, match="station_name 'A,B' must be non-empty without commas"):
        write_comtrade(record, tmp_path, "r", station_name="A,B", device_id="D")
    with pytest.raises(WaveformError, match=r"device_id .* longer than COMTRADE.s 64"):
        write_comtrade(record, tmp_path, "r", station_name="S", device_id="x" * 65)
    with pytest.raises(WaveformError, match="not ASCII, which revision 1999 requires"):
        write_comtrade(record, tmp_path, "r", station_name="Torino Città", device_id="D")
    write_comtrade(record, tmp_path, "r", station_name="Torino Città", device_id="D", revision=2013)
    with pytest.raises(WaveformError, match="data_format must be 'ASCII' or 'BINARY'"):
        write_comtrade(record, tmp_path, "r", **good, data_format="FLOAT32")  # type: ignore[arg-type]
    with pytest.raises(WaveformError, match="revision must be 1999 or 2013"):
        write_comtrade(record, tmp_path, "r", **good, revision=1991)  # type: ignore[arg-type]
    with pytest.raises(WaveformError, match="plain, non-empty name"):
        write_comtrade(record, tmp_path, "../r", **good)
    with pytest.raises(WaveformError, match=r"trigger at .* is outside the record"):
        write_comtrade(record, tmp_path, "r", **good, trigger_ns=record.end_ns)
    with pytest.raises(WaveformError, match="ct_ratio must be two positive numbers"):
        write_comtrade(record, tmp_path, "r", **good, ct_ratio=(600.0, 0.0))
    broken = dataclasses.replace(record, current_a=record.current_a.copy())
    broken.current_a[1, 2, 5] = np.nan
    with pytest.raises(
        WaveformError, match="channel 'load 400 IC' has samples that are not finite"
    ):
        write_comtrade(broken, tmp_path, "r", **good)
