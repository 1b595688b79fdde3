"""Operator access on the services' REST APIs: bearer tokens, attribute-based policy, audit.

Each service builds one :class:`AccessControl` from ``[access]``
(:meth:`AccessControl.from_settings`). Its :meth:`~AccessControl.caller` is a FastAPI dependency
that reads ``Authorization: Bearer <token>`` and verifies it (401 when the token is missing,
malformed, signed by an unknown key or expired); an endpoint then asks
:meth:`~AccessControl.authorize` whether the caller may do the operation on the areas and device
type it touches (403 when the policy says no). Both answers are ``application/problem+json`` like
every other REST error, with ``type`` ``urn:openfeeder:problem:unauthorized`` / ``forbidden``.

Every denial is written to the audit log (kind ``security``, action ``denied``, with the operation,
the reason, the token id and the client address), and so is every allowed control operation (kind
``operator``, action the operation): who switched what, when, under which rule.

When enforcement is off (``[access]`` without ``token_keys``, or ``enforce = false``) the
dependency lets every request through as ``None`` and nothing is checked: the embedded demo and
single-user installs need no tokens.

**Areas** (:class:`GridAreas`): the area of a place on the grid is the feeder that supplies it in
the grid's *normal* switch state, named ``feeder-<head switch id>`` (buses above the feeder heads:
``substation``), so an area does not move when FLISR reconfigures the grid. A switch touches the
areas of both its ends (a tie switch: two feeders; a feeder-head breaker: its feeder only). The policy file's ``[areas]`` table groups
feeder areas under one name (``north = ["feeder-12", "feeder-40"]``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from openfeeder.config import AccessSettings
from openfeeder.errors import SecurityError
from openfeeder.iot.device_settings import Location
from openfeeder.model.components import NO_ID
from openfeeder.model.grid import GridModel, lookup
from openfeeder.model.topology import Topology, analyze_topology
from openfeeder.security.audit import AuditLog
from openfeeder.security.policy import AccessRequest, Policy, load_policy
from openfeeder.security.signing import KeyRing, SignatureError
from openfeeder.security.tokens import Principal, TokenVerifier

__all__ = [
    "SUBSTATION_AREA",
    "AccessControl",
    "AccessDeniedError",
    "AuditSink",
    "Caller",
    "GridAreas",
    "Reader",
    "install_access",
]

_LOG = logging.getLogger(__name__)
SUBSTATION_AREA: Final = "substation"
_PROBLEM: Final = "application/problem+json"
_NS_PER_S: Final = 1_000_000_000


class AuditSink(Protocol):
    """Where access decisions are written (:class:`openfeeder.security.audit.AuditLog`)."""

    def append(
        self,
        kind: str,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, Any] | None = None,
    ) -> object: ...


class AccessDeniedError(SecurityError):
    """A request refused: 401 (who are you?) or 403 (not you, not this)."""

    def __init__(self, detail: str, *, status: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


async def _caller(request: Request) -> Principal | None:
    access: AccessControl = request.app.state.access
    return await access.caller(request)


async def _reader(request: Request) -> Principal | None:
    access: AccessControl = request.app.state.access
    return await access.reader(request)


Caller = Annotated[Principal | None, Depends(_caller)]
"""An endpoint parameter: the verified caller of a control endpoint (None: enforcement off)."""
Reader = Annotated[Principal | None, Depends(_reader)]
"""An endpoint parameter that checks read access (only with ``[access] protect_reads``)."""


def install_access(app: FastAPI, access: AccessControl) -> None:
    """Use ``access`` for :data:`Caller` and :data:`Reader` of ``app``, and answer
    :class:`AccessDeniedError` as problem+json (with ``WWW-Authenticate`` on 401)."""
    app.state.access = access

    @app.exception_handler(AccessDeniedError)
    async def on_denied(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, AccessDeniedError):  # pragma: no cover - registered for this type
            raise exc
        unauthorized = exc.status == 401
        document = {
            "type": f"urn:openfeeder:problem:{'unauthorized' if unauthorized else 'forbidden'}",
            "title": "Unauthorized" if unauthorized else "Forbidden",
            "status": exc.status,
            "detail": exc.detail,
            "instance": request.url.path,
        }
        headers = {"WWW-Authenticate": 'Bearer realm="openfeeder"'} if unauthorized else {}
        return JSONResponse(document, status_code=exc.status, media_type=_PROBLEM, headers=headers)


@dataclass(frozen=True, slots=True)
class _Client:
    address: str
    path: str


class AccessControl:
    """Token verification, the policy and the audit log of one service (module docstring)."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier | None,
        policy: Policy,
        audit: AuditSink | None = None,
        protect_reads: bool = False,
        clock_ns: Callable[[], int] = time.time_ns,
        service: str = "",
    ) -> None:
        self.verifier = verifier
        self.policy = policy
        self.audit = audit
        self.protect_reads = protect_reads
        self._clock_ns = clock_ns
        self.service = service

    @property
    def enforced(self) -> bool:
        return self.verifier is not None

    @classmethod
    def disabled(cls) -> AccessControl:
        return cls(verifier=None, policy=Policy())

    @classmethod
    def from_settings(
        cls,
        access: AccessSettings,
        *,
        service: str,
        clock_ns: Callable[[], int] = time.time_ns,
        audit: AuditSink | None = None,
    ) -> AccessControl:
        """From ``[access]``; ``audit`` replaces the log of ``[access] audit_log``.

        Raises SecurityError (a key file is unusable) or ConfigError (enforcement without keys,
        a bad policy file).
        """
        enforced = access.token_enforced()
        if enforced and not access.token_keys:
            from openfeeder.errors import ConfigError

            raise ConfigError("access.enforce: enforcement needs access.token_keys")
        verifier = (
            TokenVerifier(
                KeyRing.from_files(access.token_keys),
                clock_ns=clock_ns,
                skew_ns=int(access.clock_skew_s * _NS_PER_S),
            )
            if enforced
            else None
        )
        policy = load_policy(access.policy_file) if access.policy_file is not None else Policy()
        if audit is None and access.audit_log is not None:
            audit = AuditLog(access.audit_log)
        return cls(
            verifier=verifier,
            policy=policy,
            audit=audit,
            protect_reads=access.protect_reads,
            clock_ns=clock_ns,
            service=service,
        )

    # -- FastAPI -----------------------------------------------------------------------------------

    async def caller(self, request: Request) -> Principal | None:
        """Dependency: the verified principal of the request (None when enforcement is off)."""
        if self.verifier is None:
            return None
        client = _Client(request.client.host if request.client else "", request.url.path)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            self._deny(None, client, "no token: send 'Authorization: Bearer <token>'", 401)
        if scheme.lower() != "bearer" or not token.strip():
            self._deny(None, client, "the Authorization header is not 'Bearer <token>'", 401)
        try:
            return self.verifier.verify(token.strip())
        except SignatureError as err:
            self._deny(None, client, f"token refused ({err.reason}): {err}", 401)
        raise AssertionError("unreachable")  # pragma: no cover - _deny raises

    def authorize(
        self, principal: Principal | None, access: AccessRequest, request: Request
    ) -> None:
        """403 (audited) unless the policy allows ``access``; allowed writes are audited too."""
        if self.verifier is None:
            return
        client = _Client(request.client.host if request.client else "", request.url.path)
        if principal is None:  # a read endpoint without protection asked to authorize a write
            self._deny(None, client, "no token", 401)
            return
        stamped = AccessRequest(
            operation=access.operation,
            areas=access.areas,
            device_type=access.device_type,
            t_ns=self._clock_ns(),
            target=access.target,
        )
        decision = self.policy.decide(principal, stamped)
        if not decision.allowed:
            self._deny(principal, client, decision.reason, 403, operation=access.operation)
        if not access.operation.endswith(".read"):
            self._audit(
                "operator",
                principal.subject,
                access.operation,
                access.target or client.path,
                {
                    "service": self.service,
                    "rule": decision.rule,
                    "areas": sorted(access.areas),
                    "device_type": access.device_type,
                    "token_id": principal.token_id,
                    "client": client.address,
                },
            )

    async def reader(self, request: Request) -> Principal | None:
        """Dependency of read endpoints: checked only with ``protect_reads``."""
        if self.verifier is None or not self.protect_reads:
            return None
        principal = await self.caller(request)
        operation = f"{self.service}.{_resource(request.url.path)}.read"
        self.authorize(principal, AccessRequest(operation=operation), request)
        return principal

    def _deny(
        self,
        principal: Principal | None,
        client: _Client,
        reason: str,
        status: int,
        *,
        operation: str = "",
    ) -> None:
        self._audit(
            "security",
            principal.subject if principal is not None else "anonymous",
            "denied",
            client.path,
            {
                "service": self.service,
                "status": status,
                "operation": operation,
                "reason": reason,
                "token_id": principal.token_id if principal is not None else None,
                "client": client.address,
            },
        )
        raise AccessDeniedError(reason, status=status)

    def _audit(
        self, kind: str, actor: str, action: str, target: str, details: Mapping[str, Any]
    ) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(kind, actor, action, target, details)
        except SecurityError:  # the decision stands; losing the entry is logged loudly
            _LOG.exception("cannot audit %s %s of %s", kind, action, actor)


def _resource(path: str) -> str:
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2 and parts[0] == "v1":
        return parts[1].rstrip("s")
    return parts[0] if parts else "root"


class GridAreas:
    """The area of buses, switches and device locations (module docstring)."""

    def __init__(
        self, model: GridModel, *, policy: Policy, topology: Topology | None = None
    ) -> None:
        self.model = model
        self._policy = policy
        self._topology = topology if topology is not None else analyze_topology(model)
        switch = model.switch
        self._switch_ids = switch["id"].astype(np.int64)
        self._switch_buses = np.stack(
            [switch["from_bus"].astype(np.int64), switch["to_bus"].astype(np.int64)], axis=1
        )

    def of_buses(self, bus_ids: Iterable[int]) -> frozenset[str]:
        wanted = list(bus_ids)
        rows = self._topology.bus_rows(wanted)
        feeders = set()
        for row in rows.tolist():
            if row < 0:
                continue
            feeder = int(self._topology.feeder_of_bus[row])
            feeders.add(f"feeder-{feeder}" if feeder != NO_ID else SUBSTATION_AREA)
        return self._policy.area_names(feeders)

    def of_switches(self, switch_ids: Iterable[int]) -> frozenset[str]:
        """Areas of both ends of each switch (a feeder head belongs to its feeder, not to the
        substation above it); an unknown id touches no area (the catalog refuses it itself)."""
        rows = lookup(self._switch_ids, list(switch_ids))
        touched: set[str] = set()
        for row in rows[rows >= 0].tolist():
            ends = self.of_buses(int(b) for b in self._switch_buses[row])
            feeders = ends - {SUBSTATION_AREA}
            touched |= feeders or ends
        return frozenset(touched)

    def of_location(self, location: Location | None) -> frozenset[str]:
        if location is None:
            return frozenset()
        if location.bus_id is not None:
            return self.of_buses([location.bus_id])
        if location.element_id is None:
            return frozenset()
        if location.element_id in set(self._switch_ids.tolist()):
            return self.of_switches([location.element_id])
        for table_name, column in (
            ("line", "from_bus"),
            ("transformer", "lv_bus"),
            ("load", "bus"),
            ("generator", "bus"),
            ("shunt", "bus"),
            ("measurement", "bus"),
        ):
            table = self.model.table(table_name)
            rows = lookup(table["id"], [location.element_id])
            if rows[0] >= 0:
                return self.of_buses([int(table[column][rows[0]])])
        return frozenset()
