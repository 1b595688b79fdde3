"""Operator access on FLISR's clear: no token 401, a token of another area 403 (audited), the
incident's own area accepted.

The REST app (on a real HTTP server on loopback) and the policy are the real ones, over a real
coordinator for turin (not connected:
the clear is queued for its worker, which is what ``202`` promises); the incident stands for a
fault the coordinator handled on feeder 300 (breaker 300).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from openfeeder.config import AccessSettings, FlisrSettings, Settings
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.model.cases import resolve_case
from openfeeder.security.audit import verify_audit_log
from openfeeder.security.signing import generate_key_file
from openfeeder.security.tokens import issue_token
from openfeeder.services.access import AccessControl
from openfeeder.services.flisr.api import create_app
from openfeeder.services.flisr.coordinator import FlisrCoordinator
from openfeeder.services.flisr.incident import Incident
from openfeeder.services.runtime import HttpServer
from openfeeder.sim.clock import RealClock

HOUR_NS = 3600 * 1_000_000_000


def _token(issuer: Ed25519PrivateKey, *areas: str, roles: tuple[str, ...] = ("operator",)) -> str:
    return issue_token(
        issuer,
        subject="ann",
        roles=roles,
        areas=areas,
        now_ns=time.time_ns(),
        lifetime_ns=HOUR_NS,
    )


def test_clearing_an_incident_needs_a_token_for_its_area(tmp_path: Path) -> None:
    issuer = generate_key_file(tmp_path / "issuer.key")
    audit_log = tmp_path / "audit.log"
    settings = Settings(
        flisr=FlisrSettings(incident_log=tmp_path / "incidents.jsonl"),
        access=AccessSettings(token_keys=(tmp_path / "issuer.key.pub",), audit_log=audit_log),
    )
    with CatalogClient("http://127.0.0.1:1", timeout_s=1) as catalog:
        coordinator = FlisrCoordinator(
            settings, model=resolve_case("turin"), clock=RealClock(), catalog=catalog
        )
        incident = Incident(incident_id="inc-access", breaker=300, variant="central")
        coordinator.log.add(incident)
        app = create_app(
            coordinator, access=AccessControl.from_settings(settings.access, service="flisr")
        )
        with _served(app) as client:
            url = "/v1/incidents/inc-access/clear"
            missing = client.post(url)
            assert missing.status_code == 401
            assert missing.headers["WWW-Authenticate"].startswith("Bearer")
            assert client.post(url, headers=_bearer("not.a-token")).status_code == 401

            other_area = client.post(url, headers=_bearer(_token(issuer, "feeder-313")))
            assert other_area.status_code == 403
            problem = other_area.json()
            assert problem["type"] == "urn:openfeeder:problem:forbidden"
            assert "feeder-300" in problem["detail"]
            viewer = _token(issuer, "feeder-300", roles=("viewer",))
            assert client.post(url, headers=_bearer(viewer)).status_code == 403
            assert coordinator._work.empty()  # nothing was queued for the refused calls

            allowed = client.post(url, headers=_bearer(_token(issuer, "feeder-300")))
            assert allowed.status_code == 202
            assert allowed.json() == {"incident_id": "inc-access", "status": "clearing"}
            assert coordinator._work.get_nowait() == ("clear", "inc-access")
            unknown = client.post(
                "/v1/incidents/inc-nope/clear", headers=_bearer(_token(issuer, "*"))
            )
            assert unknown.status_code == 404

    entries = [json.loads(line) for line in audit_log.read_text(encoding="utf-8").splitlines()]
    denied = [e for e in entries if e["action"] == "denied"]
    assert [e["details"]["status"] for e in denied] == [401, 401, 403, 403]
    assert denied[2]["details"]["operation"] == "flisr.incident.clear"
    assert "feeder-300" in str(denied[2]["details"]["reason"])
    done = [e for e in entries if e["action"] == "flisr.incident.clear"]
    assert [e["target"] for e in done] == ["incident inc-access", "incident inc-nope"]
    assert verify_audit_log(audit_log).ok


@contextmanager
def _served(app: FastAPI) -> Iterator[httpx.Client]:
    """``app`` on a real HTTP server on loopback, and a client of it."""
    server = HttpServer(app, host="127.0.0.1", port=0)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve(stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() >= deadline:  # a wait that gave up, not a speed check
                pytest.fail("the HTTP server did not start")
            time.sleep(0.01)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _bearer(token: str) -> httpx.Headers:
    return httpx.Headers({"Authorization": f"Bearer {token}"})
