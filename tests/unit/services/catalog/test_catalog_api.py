"""The catalog's REST API over real HTTP on loopback, with the real Mosquitto as its broker."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from catalog_helpers import catalog_settings, running_catalog, unique

from openfeeder.config import SecuritySettings
from openfeeder.iot.agent.packages import builtin_algorithms
from openfeeder.iot.catalog_client import (
    AlgorithmAssignment,
    CatalogClient,
    DeviceSpec,
    DeviceStatus,
    etag_for,
    parse_etag,
)
from openfeeder.iot.device_settings import BootRequest, DeviceSettings, Location
from openfeeder.iot.topics import BrokerContext
from openfeeder.security.pki import CertificateAuthority

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def test_boot_answers_complete_settings_with_an_etag(tmp_path: Path, mqtt_url: str) -> None:
    device = unique("meter")
    settings = catalog_settings(tmp_path, mqtt_url=mqtt_url, poll_interval_s=5.0)
    with running_catalog(settings) as catalog, httpx.Client(base_url=catalog.url) as http:
        response = http.post(
            "/v1/devices/boot",
            json={
                "device_id": device,
                "device_type": "meter",
                "firmware": "1.4.2",
                "capabilities": ["rms", "phasor"],
                "location": {"case": "turin", "bus_id": 7},
            },
        )
        assert response.status_code == 200
        got = DeviceSettings.model_validate_json(response.content)
        assert response.headers["etag"] == etag_for(got.config_version)
        assert got.device_id == device
        assert got.config_version > 0
        assert {c: e.url for c, e in got.brokers.items()} == {
            BrokerContext.GRID_OPS: mqtt_url,
            BrokerContext.MONITORING: mqtt_url,
        }
        assert f"openfeeder/v1/meas/{device}" in got.publish
        assert f"openfeeder/v1/event/{device}" in got.publish
        assert f"openfeeder/v1/status/{device}" in got.publish
        assert f"openfeeder/v1/ack/{device}" in got.publish
        assert set(got.subscribe) == {
            f"openfeeder/v1/config/{device}",
            f"openfeeder/v1/cmd/{device}",
            f"openfeeder/v1/committed/{device}",
            "openfeeder/v1/topology",
        }
        assert got.sampling_rate_hz == settings.catalog.sampling_rate_hz
        assert got.reporting_interval_s == settings.catalog.reporting_interval_s
        assert got.poll_interval_s == 5.0
        assert got.disconnect_timeout_s == settings.catalog.disconnect_timeout_s
        assert got.grid is not None
        assert (got.grid.case, got.grid.bus_ids, got.grid.feeder_id) == ("turin", (5, 7), 300)

        registry = http.get(f"/v1/devices/{device}").json()
        assert registry["status"] == "connected"
        assert registry["firmware"] == "1.4.2"
        assert registry["capabilities"] == ["rms", "phasor"]

        # a reboot with new firmware updates the registry but not the settings
        again = http.post(
            "/v1/devices/boot",
            json={"device_id": device, "device_type": "meter", "firmware": "1.5.0"},
        )
        assert again.headers["etag"] == response.headers["etag"]
        assert again.content == response.content
        assert http.get(f"/v1/devices/{device}").json()["firmware"] == "1.5.0"


def test_polling_answers_304_or_the_new_settings_and_refreshes_last_seen(
    tmp_path: Path, mqtt_url: str
) -> None:
    device = unique("meter")
    with (
        running_catalog(catalog_settings(tmp_path, mqtt_url=mqtt_url)) as catalog,
        CatalogClient(catalog.url) as client,
        httpx.Client(base_url=catalog.url) as http,
    ):
        booted = client.boot(BootRequest(device_id=device, device_type="meter"))
        seen_at_boot = client.device(device).last_seen_ns
        assert seen_at_boot is not None

        unchanged = http.get(
            f"/v1/devices/{device}/settings",
            headers={"If-None-Match": etag_for(booted.config_version)},
        )
        assert unchanged.status_code == 304
        assert unchanged.content == b""
        for tag in (f'W/"{booted.config_version}"', '"0", *'):
            weak = http.get(f"/v1/devices/{device}/settings", headers={"If-None-Match": tag})
            assert weak.status_code == 304
        assert client.poll(device, booted.config_version) is None
        seen_after_poll = client.device(device).last_seen_ns
        assert seen_after_poll is not None
        assert seen_after_poll > seen_at_boot

        spec = DeviceSpec(device_type="meter", reporting_interval_s=0.5)
        info = client.put_device(device, spec)
        assert info.config_version > booted.config_version
        changed = client.poll(device, booted.config_version)
        assert changed is not None
        assert changed.config_version == info.config_version
        assert changed.reporting_interval_s == 0.5
        no_header = http.get(f"/v1/devices/{device}/settings")
        assert no_header.status_code == 200
        assert parse_etag(no_header.headers["etag"]) == info.config_version

        unknown = http.get(f"/v1/devices/{unique('nobody')}/settings")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == PROBLEM
        assert unknown.json()["field"] == "device_id"


def test_provisioning_versions_only_real_changes(tmp_path: Path, mqtt_url: str) -> None:
    device = unique("ftu")
    with (
        running_catalog(catalog_settings(tmp_path, mqtt_url=mqtt_url)) as catalog,
        httpx.Client(base_url=catalog.url) as http,
    ):
        body = {"device_type": "ftu", "location": {"bus_id": 15}, "sampling_rate_hz": 12800}
        created = http.put(f"/v1/devices/{device}", json=body)
        assert created.status_code == 201
        assert created.json()["status"] == "never"
        version = created.json()["config_version"]

        same = http.put(f"/v1/devices/{device}", json=body)
        assert same.status_code == 200
        assert same.json()["config_version"] == version  # identical content: no new version

        patched = http.patch(f"/v1/devices/{device}", json={"location": None})
        assert patched.status_code == 200
        assert patched.json()["grid"] is None
        assert patched.json()["sampling_rate_hz"] == 12800  # untouched by the patch
        assert patched.json()["config_version"] > version

        listing = http.get("/v1/devices", params={"type": "ftu", "status": "never"}).json()
        assert device in [d["device_id"] for d in listing["devices"]]

        assert http.delete(f"/v1/devices/{device}").status_code == 204
        assert http.get(f"/v1/devices/{device}").status_code == 404
        assert http.delete(f"/v1/devices/{device}").status_code == 404


def test_algorithm_repository(tmp_path: Path, mqtt_url: str) -> None:
    name = unique("fault-detect")
    package = b"def run(inputs):\n    return {}\n"
    digest = hashlib.sha256(package).hexdigest()
    device = unique("meter")
    with (
        running_catalog(catalog_settings(tmp_path, mqtt_url=mqtt_url)) as catalog,
        httpx.Client(base_url=catalog.url) as http,
        CatalogClient(catalog.url) as client,
    ):
        created = http.put(f"/v1/algorithms/{name}/1.0.0", content=package)
        assert created.status_code == 201
        assert created.json()["sha256"] == digest
        assert created.json()["size_bytes"] == len(package)
        again = http.put(f"/v1/algorithms/{name}/1.0.0", content=package)
        assert again.status_code == 200  # identical content: idempotent
        other = http.put(f"/v1/algorithms/{name}/1.0.0", content=b"something else")
        assert other.status_code == 409
        assert other.headers["content-type"] == PROBLEM
        assert other.json()["field"] == "version"

        listed = {(a["name"], a["version"]): a for a in http.get("/v1/algorithms").json()}
        assert listed[(name, "1.0.0")]["sha256"] == digest

        download = http.get(f"/v1/algorithms/{name}/1.0.0")
        assert download.content == package
        assert download.headers["x-checksum-sha256"] == digest

        spec = DeviceSpec(
            device_type="meter",
            algorithms=(
                AlgorithmAssignment(name=name, version="1.0.0", parameters={"threshold_a": 400}),
            ),
        )
        client.put_device(device, spec)
        settings = client.boot(BootRequest(device_id=device, device_type="meter"))
        (ref,) = settings.algorithms
        assert (ref.sha256, ref.parameters) == (digest, {"threshold_a": 400})
        assert ref.url == f"{catalog.url}/v1/algorithms/{name}/1.0.0"
        assert f"openfeeder/v1/algo/{device}/{name}" in settings.publish
        assert client.download_algorithm(ref) == package

        in_use = http.delete(f"/v1/algorithms/{name}/1.0.0")
        assert in_use.status_code == 409
        assert device in in_use.json()["detail"]
        client.put_device(device, DeviceSpec(device_type="meter"))
        assert http.delete(f"/v1/algorithms/{name}/1.0.0").status_code == 204
        assert http.get(f"/v1/algorithms/{name}/1.0.0").status_code == 404


def test_oversized_and_empty_packages_are_refused(tmp_path: Path, mqtt_url: str) -> None:
    name = unique("big")
    with (
        running_catalog(catalog_settings(tmp_path, mqtt_url=mqtt_url)) as catalog,
        httpx.Client(base_url=catalog.url, timeout=30) as http,
    ):
        too_big = http.put(f"/v1/algorithms/{name}/1", content=b"\0" * (16 * 1024 * 1024 + 1))
        assert too_big.status_code == 413
        assert too_big.headers["content-type"] == PROBLEM
        empty = http.put(f"/v1/algorithms/{name}/1", content=b"")
        assert empty.status_code == 422
        assert empty.json()["field"] == "body"
        stored = {package["name"] for package in http.get("/v1/algorithms").json()}
        assert name not in stored
        assert stored == set(builtin_algorithms())  # only what the catalog publishes itself


@dataclass(frozen=True)
class BadRequest:
    method: str
    path: str
    body: dict[str, Any] | None
    status: int
    field: str


NEW = "{new}"
"""Replaced by a fresh device/service/package id in paths and ``device_id`` fields."""

BAD_REQUESTS = [
    BadRequest("POST", "/v1/devices/boot", {"device_id": "bad id", "device_type": "meter"}, 422, "device_id"),
    BadRequest("POST", "/v1/devices/boot", {"device_id": NEW, "device_type": "Meter!"}, 422, "device_type"),
    BadRequest("POST", "/v1/devices/boot", {"device_id": NEW, "device_type": "meter", "colour": "red"}, 422, "colour"),
    BadRequest("POST", "/v1/devices/boot", {"device_id": NEW, "device_type": "meter", "firmware": "1.0\x00"}, 422, "firmware"),
    BadRequest("POST", "/v1/devices/boot", {"device_id": NEW, "device_type": "meter", "location": {"bus_id": 999}}, 422, "location.bus_id"),
    BadRequest("PUT", "/v1/devices/{new}", {"device_type": "meter", "sampling_rate_hz": "fast"}, 422, "sampling_rate_hz"),
    BadRequest("PUT", "/v1/devices/{new}", {"device_type": "meter", "sampling_rate_hz": -1}, 422, "sampling_rate_hz"),
    BadRequest("PUT", "/v1/devices/{new}", {"device_type": "meter", "sampling_rate_hz": 5e-324}, 422, "sampling_rate_hz"),
    BadRequest("PUT", "/v1/devices/{new}", {"device_type": "meter", "reporting_interval_s": 1e-9}, 422, "reporting_interval_s"),
    BadRequest("PATCH", "/v1/devices/{new}", {"reporting_interval_s": 0.001}, 422, "reporting_interval_s"),
    BadRequest("PUT", "/v1/devices/{new}", {"device_type": "meter", "algorithms": [{"name": "missing", "version": "1"}]}, 422, "algorithms[0].name"),
    BadRequest("PUT", "/v1/devices/{new}", {"device_type": "meter", "location": {"element_id": 424242}}, 422, "location.element_id"),
    BadRequest("PUT", "/v1/devices/{new}", {"device_id": "x", "device_type": "meter"}, 422, "device_id"),
    BadRequest("PUT", "/v1/devices/{new}", {"device_type": "meter", "location": {"bus_id": 2**70}}, 422, "location.bus_id"),
    BadRequest("PATCH", "/v1/devices/{new}", {"location": {"element_id": 2**64}}, 422, "location.element_id"),
    BadRequest("PUT", "/v1/devices/bad%20id", {"device_type": "meter"}, 422, "device_id"),
    BadRequest("PATCH", "/v1/devices/{new}", {"device_type": "meter"}, 404, "device_id"),
    BadRequest("PATCH", "/v1/devices/{new}", {"device_type": None}, 422, "device_type"),
    BadRequest("PUT", "/v1/topology", {"switch_states": {"999": "open"}}, 422, "switch_states.999"),
    BadRequest("PUT", "/v1/topology", {"switch_states": {"305": "ajar"}}, 422, "switch_states.305"),
    BadRequest("PUT", "/v1/topology", {"switch_states": {}}, 422, "switch_states"),
    BadRequest("PUT", "/v1/services/{new}", {"kind": "historian", "instance_id": "h1", "endpoints": {"http": "not a url"}}, 422, "endpoints"),
    BadRequest("PUT", "/v1/algorithms/{new}/v%201", None, 422, "version"),
    BadRequest("GET", "/v1/devices", {"status": "asleep"}, 422, "status"),
]  # fmt: skip


def test_bad_input_is_a_problem_naming_the_field_and_stores_nothing(
    tmp_path: Path, mqtt_url: str, subtests: pytest.Subtests
) -> None:
    with (
        running_catalog(catalog_settings(tmp_path, mqtt_url=mqtt_url)) as catalog,
        httpx.Client(base_url=catalog.url) as http,
    ):
        before_topology = http.get("/v1/topology").json()
        for bad in BAD_REQUESTS:
            with subtests.test(msg=f"{bad.method} {bad.path} {bad.field}"):
                new = unique("dev")
                path = bad.path.replace(NEW, new)
                body = bad.body
                if body is not None and body.get("device_id") == NEW:
                    body = {**body, "device_id": new}
                if bad.method == "GET":
                    response = http.get(path, params=body)
                else:
                    response = http.request(bad.method, path, json=body)
                assert response.status_code == bad.status
                assert response.headers["content-type"] == PROBLEM
                problem = response.json()
                assert problem["status"] == bad.status
                assert problem["field"] == bad.field
                assert problem["type"].startswith("urn:openfeeder:problem:")
                assert problem["title"]
                assert problem["detail"]
        # nothing of any of them was stored
        assert http.get("/v1/devices").json()["total"] == 0
        assert http.get("/v1/services").json() == []
        stored = {package["name"] for package in http.get("/v1/algorithms").json()}
        assert stored == set(builtin_algorithms())  # only what the catalog publishes itself
        assert http.get("/v1/topology").json() == before_topology


def test_malformed_json_and_unknown_routes(tmp_path: Path, mqtt_url: str) -> None:
    with (
        running_catalog(catalog_settings(tmp_path, mqtt_url=mqtt_url)) as catalog,
        httpx.Client(base_url=catalog.url) as http,
    ):
        broken = http.post(
            "/v1/devices/boot",
            content=b'{"device_id": "m1", ',
            headers={"Content-Type": "application/json"},
        )
        assert broken.status_code == 400
        assert broken.headers["content-type"] == PROBLEM
        assert "not valid JSON" in broken.json()["detail"]
        not_json = http.post("/v1/devices/boot", content=b"device_id=m1")
        assert not_json.status_code == 400
        assert not_json.json()["field"] == "body"
        nowhere = http.get("/v2/devices")
        assert nowhere.status_code == 404
        assert nowhere.headers["content-type"] == PROBLEM
        wrong_method = http.post("/v1/topology", json={})
        assert wrong_method.status_code == 405
        assert wrong_method.headers["content-type"] == PROBLEM
        assert http.get("/v1/devices").json()["total"] == 0


def test_service_discovery(tmp_path: Path, mqtt_url: str) -> None:
    name = unique("historian")
    with (
        running_catalog(catalog_settings(tmp_path, mqtt_url=mqtt_url)) as catalog,
        CatalogClient(catalog.url) as client,
        httpx.Client(base_url=catalog.url) as http,
    ):
        endpoints = {"http": "http://127.0.0.1:8701", "query": "http://127.0.0.1:8701/v1/query"}
        first = client.register_service(
            name, kind="historian", instance_id="h-1", endpoints=endpoints
        )
        assert first.endpoints == endpoints
        heartbeat = http.put(
            f"/v1/services/{name}",
            json={"kind": "historian", "instance_id": "h-1", "endpoints": endpoints},
        )
        assert heartbeat.status_code == 200
        assert heartbeat.json()["last_seen_ns"] > first.last_seen_ns
        assert heartbeat.json()["registered_ns"] == first.registered_ns
        assert [s.name for s in client.services()] == [name]
        assert client.service(name).endpoints["query"].endswith("/v1/query")
        assert http.delete(f"/v1/services/{name}").status_code == 204
        assert http.get(f"/v1/services/{name}").status_code == 404


def test_health_and_openapi(tmp_path: Path, mqtt_url: str) -> None:
    with (
        running_catalog(catalog_settings(tmp_path, mqtt_url=mqtt_url)) as catalog,
        httpx.Client(base_url=catalog.url) as http,
    ):
        http.post("/v1/devices/boot", json={"device_id": unique("m"), "device_type": "meter"})
        http.put(f"/v1/devices/{unique('m')}", json={"device_type": "meter"})
        health = http.get("/health").json()
        assert health["status"] == "ok"
        assert health["devices"] == {"connected": 1, "disconnected": 0, "never": 1}
        assert health["storage"] == "sqlite"
        assert health["mqtt"] == {"grid_ops": True, "monitoring": True}
        spec = http.get("/openapi.json").json()
        for path in (
            "/v1/devices/boot",
            "/v1/devices/{device_id}/settings",
            "/v1/topology",
            "/v1/services/{name}",
            "/v1/algorithms/{name}/{version}",
        ):
            assert path in spec["paths"]
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()


def test_openapi_documents_what_the_endpoints_answer(tmp_path: Path, mqtt_url: str) -> None:
    """201 of a PUT that creates, problem+json (not FastAPI's validation error) of the enrolment
    endpoints, and no ``null`` offered where a PATCH refuses it."""
    CertificateAuthority.init(tmp_path / "pki")
    settings = catalog_settings(tmp_path, mqtt_url=mqtt_url).model_copy(
        update={"security": SecuritySettings(pki_dir=tmp_path / "pki")}
    )
    with running_catalog(settings) as catalog, httpx.Client(base_url=catalog.url) as http:
        spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for path, model in (
        ("/v1/devices/{device_id}", "DeviceInfo"),
        ("/v1/services/{name}", "ServiceInfo"),
        ("/v1/algorithms/{name}/{version}", "AlgorithmInfo"),
    ):
        created = paths[path]["put"]["responses"]["201"]
        assert created["content"]["application/json"]["schema"]["$ref"].endswith(model), path
    for method, path in (
        ("post", "/v1/enrolments/{device_id}"),
        ("get", "/v1/enrolments/{device_id}"),
        ("post", "/v1/enrolments/{device_id}/approve"),
    ):
        responses = paths[path][method]["responses"]
        assert "422" not in responses, path  # it is a problem document, not HTTPValidationError
        assert PROBLEM in responses["4XX"]["content"], path
    enrol = paths["/v1/enrolments/{device_id}"]["post"]["responses"]
    assert enrol["202"]["content"]["application/json"]["schema"]["$ref"].endswith("EnrolmentInfo")
    assert "503" in enrol  # too many pending requests
    patch = spec["components"]["schemas"]["DevicePatch"]["properties"]
    for field in ("device_type", "algorithms"):
        assert "anyOf" not in patch[field], field  # no {"type": "null"} alternative
    assert {"type": "null"} in patch["location"]["anyOf"]  # null clears a location


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_restart_keeps_registry_versions_algorithms_and_topology(
    tmp_path: Path, mqtt_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    device, provisioned, name = unique("meter"), unique("ftu"), unique("algo")
    storage_url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = catalog_settings(
        tmp_path, mqtt_url=mqtt_url, storage_url=storage_url, disconnect_timeout_s=60
    )
    with running_catalog(settings) as catalog, CatalogClient(catalog.url) as client:
        port = catalog.port
        client.upload_algorithm(name, "2.1", b"package")
        spec = DeviceSpec(
            device_type="ftu",
            location=Location(bus_id=15),
            algorithms=(AlgorithmAssignment(name=name, version="2.1"),),
        )
        client.put_device(provisioned, spec)
        booted = client.boot(BootRequest(device_id=device, device_type="meter"))
        client.register_service("scheduler", kind="scheduler", instance_id="s1")
        topology = client.set_topology({305: "open"}, reason="isolate section 6")
        before = {d.device_id: d for d in client.list_devices()}

    # the same database, port and URL (the URL is part of the algorithm download URLs, so a
    # different one would rightly give the devices with algorithms new settings)
    catalog_part = {"listen_port": port, "url": f"http://127.0.0.1:{port}"}
    restarted = settings.model_copy(
        update={"catalog": settings.catalog.model_copy(update=catalog_part)}
    )
    with running_catalog(restarted) as catalog, CatalogClient(catalog.url) as client:
        after = {d.device_id: d for d in client.list_devices()}
        assert after == before
        assert after[device].status is DeviceStatus.CONNECTED  # a full timeout after the restart
        assert client.poll(device, booted.config_version) is None  # same version, same content
        assert (
            client.download_algorithm(
                client.boot(BootRequest(device_id=provisioned, device_type="ftu")).algorithms[0]
            )
            == b"package"
        )
        assert client.topology() == topology
        assert [s.name for s in client.services()] == ["scheduler"]
        # versions keep growing after the restart
        changed = client.put_device(device, DeviceSpec(device_type="meter", sampling_rate_hz=100))
        assert changed.config_version > max(d.config_version for d in before.values())


def test_devices_connected_at_a_stop_get_a_full_timeout_after_the_restart(
    tmp_path: Path, mqtt_url: str
) -> None:
    device = unique("meter")
    timeout_s = 1.5  # leaves room for a slow restart on a busy machine
    settings = catalog_settings(tmp_path, mqtt_url=mqtt_url, disconnect_timeout_s=timeout_s)
    with running_catalog(settings) as catalog, CatalogClient(catalog.url) as client:
        client.boot(BootRequest(device_id=device, device_type="meter"))
    time.sleep(timeout_s + 0.5)  # longer than the timeout passes while the catalog is down

    with running_catalog(settings) as catalog, CatalogClient(catalog.url) as client:
        restarted = time.monotonic()
        # the device could not be heard while the catalog was down: not disconnected yet
        assert client.device(device).status is DeviceStatus.CONNECTED
        # then the full timeout runs from the restart and the watchdog marks it (the bound of
        # timeout + 1 s is checked, from MQTT events, in test_catalog_mqtt.py)
        deadline = restarted + timeout_s + 10.0
        while client.device(device).status is DeviceStatus.CONNECTED:
            if time.monotonic() > deadline:
                pytest.fail("the device was never marked disconnected after the restart")
            time.sleep(0.05)
        assert client.device(device).status is DeviceStatus.DISCONNECTED
