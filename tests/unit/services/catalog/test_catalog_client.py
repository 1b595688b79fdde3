"""CatalogClient errors, and the catalog serving while no broker is reachable."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from catalog_helpers import catalog_settings, running_catalog, unique

from conftest import free_port
from openfeeder.errors import ConfigError
from openfeeder.iot.catalog_client import (
    AlgorithmChecksumError,
    CatalogClient,
    CatalogNotFoundError,
    CatalogRequestError,
    CatalogUnavailableError,
    DeviceSpec,
    parse_etag,
)
from openfeeder.iot.device_settings import AlgorithmRef, BootRequest
from openfeeder.services.catalog import CatalogThread


def test_an_unreachable_catalog_is_an_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        CatalogClient(url, timeout_s=2) as client,
        pytest.raises(CatalogUnavailableError) as caught,
    ):
        client.boot(BootRequest(device_id="m1", device_type="meter"))
    assert caught.value.url == f"{url}/v1/devices/boot"
    assert url in str(caught.value)
    assert caught.value.status is None


def test_etags_are_parsed_strictly() -> None:
    assert parse_etag('"12"') == 12
    assert parse_etag('W/"12"') == 12
    assert parse_etag('"abc"') is None
    assert parse_etag(None) is None


def test_the_catalog_serves_without_a_broker_and_the_client_maps_its_errors(
    tmp_path: Path,
) -> None:
    settings = catalog_settings(tmp_path)  # the broker URL points where nothing listens
    device = unique("m")
    with running_catalog(settings) as catalog, CatalogClient(catalog.url) as client:
        booted = client.boot(BootRequest(device_id=device, device_type="meter"))
        assert booted.config_version > 0
        with httpx.Client(base_url=catalog.url) as http:
            health = http.get("/health").json()
        assert health["status"] == "degraded"
        assert health["mqtt"] == {"grid_ops": False, "monitoring": False}

        with pytest.raises(CatalogNotFoundError) as missing:
            client.poll(unique("nobody"), 1)
        assert missing.value.status == 404
        assert missing.value.field == "device_id"

        with pytest.raises(CatalogRequestError) as refused:
            client.set_topology({999: "open"})
        assert refused.value.status == 422
        assert refused.value.field == "switch_states.999"
        assert refused.value.problem is not None
        assert refused.value.problem["type"] == "urn:openfeeder:problem:invalid"

        # changes that publish on MQTT still succeed: the broker is not needed to configure
        pushed = client.put_device(device, DeviceSpec(device_type="meter", sampling_rate_hz=50))
        assert pushed.config_version > booted.config_version
        assert client.set_topology({305: "open"}).topology_version == 1

        info = client.upload_algorithm("pkg", "1", b"real bytes")
        forged = AlgorithmRef(name="pkg", version="1", sha256="0" * 64, url=info.url)
        with pytest.raises(AlgorithmChecksumError, match="expected 0000") as mismatch:
            client.download_algorithm(forged)
        assert mismatch.value.url == info.url


def test_a_catalog_that_cannot_start_says_why_and_leaves_nothing_running(tmp_path: Path) -> None:
    before = threading.active_count()
    catalog = CatalogThread(catalog_settings(tmp_path, case="no-such-case"))
    with pytest.raises(ConfigError, match=r"catalog\.case: no built-in case 'no-such-case'"):
        catalog.start()
    assert threading.active_count() == before
