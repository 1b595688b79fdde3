"""Errors of the catalog's operations, answered as RFC 7807 problem documents.

Each :class:`ProblemError` carries the HTTP status, a short title, a detail sentence and, where
one input is at fault, the ``field`` it names (``location.bus_id``, ``algorithms[0].version``,
``switch_states.999``, ``device_id``). The REST layer writes it as ``application/problem+json``::

    {"type": "urn:openfeeder:problem:invalid", "title": "Invalid input", "status": 422,
     "detail": "case 'turin' has no bus 999", "field": "location.bus_id",
     "instance": "/v1/devices/m1"}
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

from openfeeder.errors import OpenFeederError

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "ProblemError",
    "ProblemKind",
    "conflict",
    "invalid",
    "not_found",
    "problem_document",
]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"


class ProblemKind(StrEnum):
    """The ``type`` of a problem document is ``urn:openfeeder:problem:<kind>``."""

    NOT_FOUND = "not-found"
    INVALID = "invalid"
    MALFORMED = "malformed"
    CONFLICT = "conflict"
    TOO_LARGE = "too-large"
    NOT_ALLOWED = "method-not-allowed"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


_TITLES: Final = {
    ProblemKind.NOT_FOUND: "Not found",
    ProblemKind.INVALID: "Invalid input",
    ProblemKind.MALFORMED: "Malformed request",
    ProblemKind.CONFLICT: "Conflict",
    ProblemKind.TOO_LARGE: "Payload too large",
    ProblemKind.NOT_ALLOWED: "Method not allowed",
    ProblemKind.UNAVAILABLE: "Service unavailable",
    ProblemKind.INTERNAL: "Internal error",
}


class ProblemError(OpenFeederError):
    """An operation of the catalog was refused; answered as problem+json with ``status``."""

    def __init__(
        self, kind: ProblemKind, status: int, detail: str, *, field: str | None = None
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.status = status
        self.detail = detail
        self.field = field


def not_found(what: str, key: str, *, field: str | None = None) -> ProblemError:
    return ProblemError(ProblemKind.NOT_FOUND, 404, f"no {what} '{key}'", field=field)


def invalid(field: str, detail: str) -> ProblemError:
    return ProblemError(ProblemKind.INVALID, 422, detail, field=field)


def conflict(detail: str, *, field: str | None = None) -> ProblemError:
    return ProblemError(ProblemKind.CONFLICT, 409, detail, field=field)


def problem_document(
    kind: ProblemKind,
    status: int,
    detail: str,
    *,
    field: str | None = None,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON body of a problem response."""
    document: dict[str, Any] = {
        "type": f"urn:openfeeder:problem:{kind}",
        "title": _TITLES[kind],
        "status": status,
        "detail": detail,
    }
    if field is not None:
        document["field"] = field
    if instance is not None:
        document["instance"] = instance
    if errors:
        document["errors"] = errors
    return document
