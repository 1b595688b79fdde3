"""The historian's REST API over real HTTP: health, devices, channels, readings, problem+json."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from historian_support import (
    SECOND_NS,
    DeviceListServer,
    Publisher,
    historian_settings,
    sqlite_url,
    unique,
    wait_until,
)

from openfeeder.services.historian import HistorianThread

pytestmark = pytest.mark.integration


@pytest.fixture
def device() -> str:
    return unique("meter")


@pytest.fixture
def api(tmp_path: Path, mqtt_url: str, device: str) -> Iterator[httpx.Client]:
    catalog = DeviceListServer([device]).start()
    settings = historian_settings(
        storage_url=sqlite_url(tmp_path), mqtt_url=mqtt_url, catalog_url=catalog.url
    )
    publisher = Publisher(mqtt_url)
    try:
        with HistorianThread(settings, instance=unique("h")) as running:
            publisher.measurements(device, range(20))  # t = 1000 s .. 1019 s, u_a = 230 + seq
            assert wait_until(lambda: running.historian.store.message_count() == 20)
            with httpx.Client(base_url=running.url, timeout=10) as client:
                yield client
    finally:
        publisher.stop()
        catalog.stop()


def test_health_reports_backend_links_queue_and_counters(api: httpx.Client) -> None:
    health = api.get("/health").json()
    assert health["status"] == "ok"
    assert health["backend"] == "sqlite"
    assert health["mqtt_connected"] == {"monitoring": True, "grid_ops": True}
    assert health["queue_depth"] == 0
    assert health["counters"]["messages_stored"] == 20
    # other test runs may share the broker: their devices are rejected as unknown here
    assert set(health["counters"]["rejected"]) <= {"unknown_device"}
    assert health["last_batch"]["size"] >= 1


def test_devices_list_counts_times_and_marks(api: httpx.Client, device: str) -> None:
    listed = {d["device_id"]: d for d in api.get("/v1/devices").json()}
    assert listed[device] == {
        "device_id": device,
        "message_count": 20,
        "first_t_ns": 1_000 * SECOND_NS,
        "last_t_ns": 1_019 * SECOND_NS,
        "high_water_seq": 19,
    }


def test_channels_of_a_device(api: httpx.Client, device: str) -> None:
    document = api.get(f"/v1/devices/{device}/channels").json()
    assert document["channels"] == [
        {"channel": "i_a", "unit": "A"},
        {"channel": "u_a", "unit": "V"},
    ]


def test_raw_readings_in_a_time_range(api: httpx.Client, device: str) -> None:
    document = api.get(
        f"/v1/devices/{device}/readings",
        params={"channel": "u_a", "start_ns": 1_005 * SECOND_NS, "end_ns": 1_008 * SECOND_NS},
    ).json()
    assert document["unit"] == "V"
    assert document["buckets"] is None
    assert [(r["t_ns"], r["value"], r["quality"]) for r in document["readings"]] == [
        (1_005 * SECOND_NS, 235.0, "good"),
        (1_006 * SECOND_NS, 236.0, "good"),
        (1_007 * SECOND_NS, 237.0, "good"),
    ]
    limited = api.get(f"/v1/devices/{device}/readings", params={"channel": "u_a", "limit": 4})
    assert len(limited.json()["readings"]) == 4


def test_downsampled_readings(api: httpx.Client, device: str) -> None:
    document = api.get(
        f"/v1/devices/{device}/readings", params={"channel": "u_a", "bucket_s": 10}
    ).json()
    assert document["readings"] is None
    assert document["buckets"] == [
        {"t_ns": 1_000 * SECOND_NS, "avg": 234.5, "min": 230.0, "max": 239.0, "count": 10},
        {"t_ns": 1_010 * SECOND_NS, "avg": 244.5, "min": 240.0, "max": 249.0, "count": 10},
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"channel": "u_a", "start_ns": 10, "end_ns": 5}, "end_ns"),
        ({"channel": "u_a", "start_ns": -1}, "start_ns"),
        ({"channel": "U A"}, "channel"),
        ({"channel": "u_zz"}, "channel"),
        ({}, "channel"),
        ({"channel": "u_a", "bucket_s": 0}, "bucket_s"),
        ({"channel": "u_a", "limit": 0}, "limit"),
    ],
)
def test_bad_parameters_are_422_problems_naming_the_parameter(
    api: httpx.Client, device: str, params: dict[str, object], field: str
) -> None:
    response = api.get(f"/v1/devices/{device}/readings", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["field"] == field
    assert problem["status"] == 422
    assert problem["instance"] == f"/v1/devices/{device}/readings"


def test_unknown_device_is_a_404_problem(api: httpx.Client) -> None:
    for path in ("/v1/devices/nobody/channels", "/v1/devices/nobody/readings?channel=u_a"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert "nobody" in response.json()["detail"]
        assert response.json()["field"] == "device_id"


def test_a_wrong_method_is_a_405_problem_with_allow(api: httpx.Client, device: str) -> None:
    for path in ("/health", f"/v1/devices/{device}/readings"):
        response = api.delete(path)
        assert response.status_code == 405
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["allow"] == "GET"  # RFC 9110: a 405 names what is allowed


def test_openapi_lists_the_endpoints(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {
        "/health",
        "/v1/devices",
        "/v1/devices/{device_id}/channels",
        "/v1/devices/{device_id}/readings",
    } <= set(paths)
