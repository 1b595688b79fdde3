"""The one exception tree of OpenFeeder.

Every error the package raises on purpose derives from :class:`OpenFeederError`, so a caller can
catch them all; below it, the branches follow what the caller can do about it::

    OpenFeederError
    +-- CaseError                 a case (file or model) is invalid; carries file, component, id, field
    |   +-- CaseValidationError   one or more CaseIssue found by validation (all of them attached)
    +-- AnalysisError             a calculation could not produce a result
    |   +-- NotConvergedError     iterative solver gave up; carries iterations and the worst bus
    |   +-- NotObservableError    (analysis.estimation) the measurements do not determine the state;
    |                             carries the unobservable bus ids
    +-- MeasurementError          (analysis.estimation) a measurement set or file is unusable; carries
    |                             file, index, measurement id, element id and field
    +-- MessagingError            a topic or payload is outside the messaging contract; carries topic,
    |   |                         reason (a StrEnum from openfeeder.iot) and the failing field
    |   +-- ProtocolError         (iot.broker) a client broke MQTT; carries the v5 reason code
    +-- ConfigError               settings or command-line options are unusable
    |   +-- BrokerBindError       (iot.broker) the embedded broker cannot listen on host:port
    +-- StorageError              a database cannot be opened or written; carries the (redacted) url
    +-- CatalogError              (iot.catalog_client) the device catalog refused or did not answer;
    |                             carries url, HTTP status, field and the problem+json document
    +-- PackageError              (iot.agent.packages) an algorithm package is invalid or unverified
    +-- SecurityError             a security check failed or security material is unusable
    |   +-- AuditError            (security.audit) the audit log cannot be written or read
    |   +-- SignatureError        (security.signing) a signed package metadata or token was
    |   |                         refused; carries reason (unsigned, expired, ...) and key id
    |   +-- AccessDeniedError     (services.access) a REST call refused: status 401 or 403
    |   +-- KeyStoreError         (security.keys) a key is unknown, destroyed or in the wrong state
    |   +-- PayloadRejectedError  (security.payload) a protected message failed authentication or
    |   |                         replay checks; carries topic, sender id and reason
    |   +-- PkiError              (security.pki) a CA, certificate, key or CSR is unusable; carries
    |   |                         path or identity name
    |   +-- AccessError           (security.acl) an access table is invalid or an identity may not
    |                             do this; carries identity and topic
    +-- ProblemError              (services.catalog) a REST error answered as problem+json
    +-- DependencyError           an optional extra (e.g. pandapower) is needed but not installed

Exceptions carry structured attributes, and code that translates a library error raises one of these
``from`` the original.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AnalysisError",
    "CaseError",
    "CaseIssue",
    "CaseValidationError",
    "ConfigError",
    "DependencyError",
    "MeasurementError",
    "MessagingError",
    "NotConvergedError",
    "NotObservableError",
    "OpenFeederError",
    "ScenarioError",
    "SecurityError",
    "StorageError",
]


class OpenFeederError(Exception):
    """Root of every error OpenFeeder raises on purpose."""


@dataclass(frozen=True, slots=True)
class CaseIssue:
    """One problem found in a case: where it is and what is wrong.

    ``component`` is the table name (``"line"``), ``component_id`` the id of the offending row (None
    when the problem is not tied to one row), ``field`` the column (None for row-level problems).
    """

    message: str
    component: str | None = None
    component_id: int | None = None
    field: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.component:
            label = self.component
            if self.component_id is not None:
                label += f" {self.component_id}"
            where.append(label)
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class CaseError(OpenFeederError):
    """A case file or grid model is unusable; says where."""

    def __init__(self, issue: CaseIssue) -> None:
        super().__init__(str(issue))
        self.issue = issue
        self.file = issue.file
        self.component = issue.component
        self.component_id = issue.component_id
        self.field = issue.field


class CaseValidationError(CaseError):
    """Validation found problems; ``issues`` holds all of them, the message names the first."""

    def __init__(self, issues: list[CaseIssue]) -> None:
        if not issues:
            raise ValueError("CaseValidationError needs at least one issue")
        super().__init__(issues[0])
        self.issues = list(issues)
        if len(issues) > 1:
            self.args = (f"{issues[0]} (and {len(issues) - 1} more problems)",)


class AnalysisError(OpenFeederError):
    """A calculation could not produce a result."""


class NotConvergedError(AnalysisError):
    """An iterative calculation stopped without converging."""

    def __init__(
        self,
        message: str,
        *,
        iterations: int | None,
        max_deviation: float | None,
        worst_bus: int | None,
    ) -> None:
        super().__init__(message)
        self.iterations = iterations
        self.max_deviation = max_deviation
        self.worst_bus = worst_bus


class NotObservableError(AnalysisError):
    """State estimation cannot determine the state of some (or all) energized buses.

    ``buses`` holds the ids of the buses whose state the measurements do not determine.
    """

    def __init__(self, message: str, *, buses: tuple[int, ...]) -> None:
        super().__init__(message)
        self.buses = buses


class MeasurementError(OpenFeederError):
    """A measurement set (a measurement file or records) is unusable; says where.

    ``file`` is the file (None for records built in code), ``index`` the position of the measurement
    in the set, ``measurement_id`` its id, ``element_id`` the bus or element it refers to, ``field``
    the key that is wrong; each is None when it does not apply.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        index: int | None = None,
        measurement_id: str | None = None,
        element_id: int | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if file:
            where.append(file)
        if index is not None:
            label = f"measurement {index}"
            if measurement_id is not None:
                label += f" (id {measurement_id!r})"
            where.append(label)
        elif measurement_id is not None:
            where.append(f"measurement {measurement_id!r}")
        if element_id is not None:
            where.append(f"element {element_id}")
        if field:
            where.append(f"field '{field}'")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file = file
        self.index = index
        self.measurement_id = measurement_id
        self.element_id = element_id
        self.field = field


class MessagingError(OpenFeederError):
    """A topic or payload is outside the messaging contract (``openfeeder.iot``).

    ``topic`` is the MQTT topic (or topic filter) concerned, ``reason`` a machine-readable code (a
    ``StrEnum`` member such as ``openfeeder.iot.RejectReason.OVERSIZE`` or ``TopicFault``, compared as
    its string value), ``field`` the payload field or topic level that failed, when there is one.
    """

    def __init__(self, message: str, *, topic: str, reason: str, field: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic
        self.reason = reason
        self.field = field


class ConfigError(OpenFeederError):
    """Settings or options are unusable."""


class ScenarioError(ConfigError):
    """A twin scenario file is unusable; the message names the file and the key."""


class StorageError(OpenFeederError):
    """A database (SQLite file or PostgreSQL server) cannot be opened, read or written."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class SecurityError(OpenFeederError):
    """A security check failed, or keys, certificates or signatures are unusable."""


class DependencyError(OpenFeederError):
    """An optional dependency is needed for this operation and is not installed."""
