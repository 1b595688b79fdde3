"""Operator access on the catalog: calls without a token (401) or outside the token's attributes
(403, audited) must fail; device endpoints and reads keep working without one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from catalog_helpers import catalog_settings, running_catalog, unique
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openfeeder.config import AccessSettings, Settings
from openfeeder.iot.catalog_client import CatalogClient, CatalogRequestError, DeviceSpec
from openfeeder.iot.device_settings import Location
from openfeeder.security.audit import verify_audit_log
from openfeeder.security.signing import generate_key_file
from openfeeder.security.tokens import issue_token

PROBLEM = "application/problem+json"
HOUR_NS = 3600 * 1_000_000_000
FEEDER_A_SWITCH = 305  # feeder-300 of turin
FEEDER_B_SWITCH = 318  # feeder-313


@dataclass
class Secured:
    url: str
    issuer: Ed25519PrivateKey
    audit_log: Path

    def token(self, *roles: str, areas: tuple[str, ...] = ("*",), **claims: object) -> str:
        options = {"now_ns": time.time_ns(), "lifetime_ns": HOUR_NS, **claims}
        return issue_token(
            self.issuer,
            subject=f"{roles[0]}-{unique('user')}",
            roles=roles,
            areas=areas,
            **options,  # type: ignore[arg-type]
        )

    def audit(self) -> list[dict[str, object]]:
        lines = self.audit_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]


def _settings(tmp_path: Path, **access: object) -> tuple[Settings, Ed25519PrivateKey]:
    issuer = generate_key_file(tmp_path / "issuer.key")
    base = catalog_settings(tmp_path, case="turin")
    secured = AccessSettings(
        token_keys=(tmp_path / "issuer.key.pub",),
        audit_log=tmp_path / "audit.log",
        **access,  # type: ignore[arg-type]
    )
    return base.model_copy(update={"access": secured}), issuer


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    settings, issuer = _settings(tmp_path)
    with running_catalog(settings) as catalog:
        yield Secured(catalog.url, issuer, tmp_path / "audit.log")


def _switch(url: str, switch: int, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {"switch_states": {str(switch): "open"}, "reason": "test"}
    return httpx.put(f"{url}/v1/topology", json=body, headers=headers, timeout=10)


def test_a_control_call_without_a_valid_token_is_401(secured: Secured) -> None:
    missing = _switch(secured.url, FEEDER_A_SWITCH, None)
    assert missing.status_code == 401
    assert missing.headers["content-type"] == PROBLEM
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["type"] == "urn:openfeeder:problem:unauthorized"
    expired = secured.token("admin", now_ns=time.time_ns() - 3 * HOUR_NS)
    assert _switch(secured.url, FEEDER_A_SWITCH, expired).status_code == 401
    foreign = issue_token(
        Ed25519PrivateKey.generate(),
        subject="mallory",
        roles=["admin"],
        now_ns=time.time_ns(),
        lifetime_ns=HOUR_NS,
    )
    refused = _switch(secured.url, FEEDER_A_SWITCH, foreign)
    assert refused.status_code == 401
    assert "not trusted" in refused.json()["detail"]
    assert _switch(secured.url, FEEDER_A_SWITCH, "not.a-token").status_code == 401
    assert httpx.get(f"{secured.url}/v1/topology").json()["topology_version"] == 0
    denials = [e for e in secured.audit() if e["action"] == "denied"]
    assert len(denials) == 4
    assert all(e["details"]["status"] == 401 for e in denials)  # type: ignore[index]
    assert verify_audit_log(secured.audit_log).ok


def test_a_token_lacking_the_attribute_is_403_and_audited(secured: Secured) -> None:
    operator_a = secured.token("operator", areas=("feeder-300",))
    other_feeder = _switch(secured.url, FEEDER_B_SWITCH, operator_a)
    assert other_feeder.status_code == 403
    problem = other_feeder.json()
    assert problem["type"] == "urn:openfeeder:problem:forbidden"
    assert "area: feeder-313" in problem["detail"]
    tie = _switch(secured.url, 325, operator_a)  # the tie touches both feeders
    assert tie.status_code == 403
    viewer = secured.token("viewer")
    assert _switch(secured.url, FEEDER_A_SWITCH, viewer).status_code == 403
    device = {"device_type": "meter", "location": {"case": "turin", "bus_id": 7}}
    provision = httpx.put(
        f"{secured.url}/v1/devices/{unique('m')}",
        json=device,
        headers={"Authorization": f"Bearer {operator_a}"},
        timeout=10,
    )
    assert provision.status_code == 403  # operators switch, engineers provision
    assert "operation: catalog.device.write" in provision.json()["detail"]
    scoped = secured.token("operator", areas=("feeder-300",), operations=("flisr.*",))
    assert _switch(secured.url, FEEDER_A_SWITCH, scoped).status_code == 403
    assert httpx.get(f"{secured.url}/v1/topology").json()["topology_version"] == 0

    allowed = _switch(secured.url, FEEDER_A_SWITCH, operator_a)
    assert allowed.status_code == 200
    assert allowed.json()["switch_states"][str(FEEDER_A_SWITCH)] == "open"
    entries = secured.audit()
    denied = [e for e in entries if e["action"] == "denied"]
    assert [e["details"]["status"] for e in denied] == [403] * 5  # type: ignore[index]
    assert denied[0]["details"]["operation"] == "catalog.topology.write"  # type: ignore[index]
    assert "feeder-313" in str(denied[0]["details"]["reason"])  # type: ignore[index]
    done = [e for e in entries if e["action"] == "catalog.topology.write"]
    assert len(done) == 1
    assert done[0]["details"]["areas"] == ["feeder-300"]  # type: ignore[index]
    assert verify_audit_log(secured.audit_log).ok


def test_devices_and_tokened_clients_keep_working(secured: Secured) -> None:
    device = unique("m")
    boot = httpx.post(
        f"{secured.url}/v1/devices/boot",
        json={"device_id": device, "device_type": "meter"},
        timeout=10,
    )
    assert boot.status_code == 200  # device endpoints take no operator token
    assert boot.json()["package_keys"]
    spec = DeviceSpec(device_type="meter", location=Location(case="turin", bus_id=7))
    with CatalogClient(secured.url, timeout_s=10) as anonymous:
        with pytest.raises(CatalogRequestError) as refused:
            anonymous.put_device(device, spec)
        assert refused.value.status == 401
        assert anonymous.device(device).device_type == "meter"  # reads are open
    engineer = secured.token("engineer", areas=("feeder-300",))
    with CatalogClient(secured.url, timeout_s=10, token=engineer) as client:
        assert client.put_device(device, spec).location == spec.location
        with pytest.raises(CatalogRequestError) as elsewhere:
            client.put_device(
                device,
                DeviceSpec(
                    device_type="meter",
                    location=Location(case="turin", element_id=FEEDER_B_SWITCH),
                ),
            )
        assert elsewhere.value.status == 403


def test_protected_reads_need_a_token(tmp_path: Path) -> None:
    settings, issuer = _settings(tmp_path, protect_reads=True)
    with running_catalog(settings) as catalog:
        assert httpx.get(f"{catalog.url}/v1/devices").status_code == 401
        viewer = issue_token(
            issuer, subject="v", roles=["viewer"], now_ns=time.time_ns(), lifetime_ns=HOUR_NS
        )
        with CatalogClient(catalog.url, token=viewer) as client:
            assert client.topology().case is not None
        assert httpx.get(f"{catalog.url}/health").status_code == 200
