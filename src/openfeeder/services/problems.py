"""RFC 7807 answers for the REST APIs of the coordinating services (FLISR, estimation).

:func:`install_problems` makes every error of an app ``application/problem+json``, as the catalog
and the historian answer theirs: a refused request (:class:`ServiceProblemError`, with the ``field`` at
fault), a parameter FastAPI could not validate (``field`` names it), an unknown route or method
(with the ``Allow`` of a 405)::

    {"type": "urn:openfeeder:problem:not-found", "title": "Not found", "status": 404,
     "detail": "no incident inc-7", "field": "incident_id", "instance": "/v1/incidents/inc-7"}

:data:`PROBLEM_RESPONSES` documents them in the OpenAPI of an operation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from openfeeder.errors import OpenFeederError

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_RESPONSES",
    "ServiceProblemError",
    "install_problems",
    "problem_response",
]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
PROBLEM_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    "4XX": {
        "description": "RFC 7807 problem; ``field`` names the input at fault",
        "content": {PROBLEM_CONTENT_TYPE: {}},
    },
}
_KINDS: Final = {
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    422: ("invalid", "Invalid input"),
}


class ServiceProblemError(OpenFeederError):
    """A request a service refuses: answered with ``status`` and the ``field`` at fault."""

    def __init__(self, status: int, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field


def _problem(
    request: Request,
    status: int,
    detail: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    kind, title = _KINDS.get(status, ("http", "Request refused"))
    return problem_response(request, status, kind, title, detail, field=field, headers=headers)


def problem_response(
    request: Request,
    status: int,
    kind: str,
    title: str,
    detail: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The ``application/problem+json`` answer (``kind`` makes its ``type``)."""
    document: dict[str, Any] = {
        "type": f"urn:openfeeder:problem:{kind}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if field is not None:
        document["field"] = field
    return JSONResponse(
        document, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers
    )


def install_problems(app: FastAPI) -> None:
    """Answer the errors of ``app`` as problem documents (module docstring)."""

    @app.exception_handler(ServiceProblemError)
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, ServiceProblemError):  # pragma: no cover - registered for this type
            raise exc
        return _problem(request, exc.status, exc.detail, field=exc.field)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):  # pragma: no cover
            raise exc
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ())]
        field = location[-1] if location else None  # ("path", "cycle") -> "cycle"
        message = str(first.get("msg", "invalid"))
        return _problem(request, 422, f"{field}: {message}" if field else message, field=field)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            raise exc
        detail = (
            f"no such resource: {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        )
        return _problem(request, exc.status_code, detail, headers=exc.headers)
