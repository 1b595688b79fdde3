"""FLISR's REST API answers bad input with problem+json naming the field (in process, over a real
coordinator for turin that is not connected)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_api import PROBLEM, Api
from openfeeder.config import FlisrSettings, Settings
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.model.cases import resolve_case
from openfeeder.services.flisr.api import create_app
from openfeeder.services.flisr.coordinator import FlisrCoordinator
from openfeeder.services.flisr.incident import Incident
from openfeeder.sim.clock import RealClock


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(flisr=FlisrSettings(incident_log=tmp_path / "incidents.jsonl"))
    with CatalogClient("http://127.0.0.1:1", timeout_s=1) as catalog:
        coordinator = FlisrCoordinator(
            settings, model=resolve_case("turin"), clock=RealClock(), catalog=catalog
        )
        coordinator.log.add(Incident(incident_id="inc-1", breaker=300, variant="central"))
        yield Api(create_app(coordinator))


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/incidents/inc-nope"), ("POST", "/v1/incidents/inc-nope/clear")],
)
def test_an_unknown_incident_is_a_404_problem_naming_it(api: Api, method: str, path: str) -> None:
    response = api.request(method, path)
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "urn:openfeeder:problem:not-found"
    assert problem["field"] == "incident_id"
    assert "inc-nope" in problem["detail"]
    assert problem["instance"] == path


def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    nowhere = api.get("/v1/nothing")
    assert nowhere.status_code == 404
    assert nowhere.headers["content-type"] == PROBLEM
    wrong = api.request("DELETE", "/v1/incidents/inc-1")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == PROBLEM
    assert wrong.headers["allow"] == "GET"


def test_openapi_documents_the_problems_and_a_degraded_health(api: Api) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for method, path in (
        ("get", "/v1/incidents/{incident_id}"),
        ("post", "/v1/incidents/{incident_id}/clear"),
    ):
        responses = paths[path][method]["responses"]
        assert PROBLEM in responses["4XX"]["content"]
        assert "422" not in responses  # not FastAPI's HTTPValidationError
    assert "503" in paths["/health"]["get"]["responses"]
