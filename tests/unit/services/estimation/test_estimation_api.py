"""The estimation service's REST API answers bad input with problem+json naming the field (in
process, over a real coordinator for turin that is not connected)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_api import PROBLEM, Api
from openfeeder.config import EstimationSettings, Settings
from openfeeder.iot.catalog_client import CatalogClient
from openfeeder.model.cases import resolve_case
from openfeeder.services.estimation.api import create_app
from openfeeder.services.estimation.coordinator import EstimationCoordinator
from openfeeder.sim.clock import RealClock


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        estimation=EstimationSettings(storage=tmp_path / "estimates.jsonl", interval_s=3600)
    )
    with CatalogClient("http://127.0.0.1:1", timeout_s=1) as catalog:
        coordinator = EstimationCoordinator(
            settings, model=resolve_case("turin"), clock=RealClock(), catalog=catalog
        )
        yield Api(create_app(coordinator))


def test_no_estimate_is_a_404_problem(api: Api) -> None:
    for path, field in (("/v1/estimates/7", "cycle"), ("/v1/estimates/latest", None)):
        response = api.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["type"] == "urn:openfeeder:problem:not-found"
        assert problem.get("field") == field
        assert problem["instance"] == path


def test_a_cycle_that_is_not_a_number_is_a_422_problem_naming_it(api: Api) -> None:
    response = api.get("/v1/estimates/seven")
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["field"] == "cycle"
    assert problem["detail"].startswith("cycle: ")


def test_openapi_documents_the_problems_and_a_degraded_health(api: Api) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    responses = paths["/v1/estimates/{cycle}"]["get"]["responses"]
    assert PROBLEM in responses["4XX"]["content"]
    assert "422" not in responses  # not FastAPI's HTTPValidationError
    assert "503" in paths["/health"]["get"]["responses"]
