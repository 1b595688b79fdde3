"""Operator tokens: Ed25519-signed bearer tokens that carry who someone is and what they may touch.

A token is the compact signed document of :mod:`openfeeder.security.signing` with type
``openfeeder.token`` and these claims:

=============== ===========================================================================
``sub``         who: an operator's login or a service's name (``flisr``)
``roles``       e.g. ``operator``, ``engineer``, ``admin``, ``service``
``areas``       grid areas the holder is responsible for (``feeder-3``, a named area), ``*``: all
``device_types`` device types the holder may act on (``meter``, ``switch``), ``*``: all
``operations``  operations the token may be used for (patterns: ``catalog.*``), ``*``: all
``nbf``/``exp`` valid from / until (UTC ns)
``iat``/``jti`` issued at, a unique id (audited with every use)
=============== ===========================================================================

The token narrows what its holder may do; the policy (:mod:`openfeeder.security.policy`) decides
what a role may do at all. ``openfeeder token issue`` makes tokens; a service verifies them with a
:class:`TokenVerifier` over the issuers' public keys. A bearer token is a secret: send it only over
TLS.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openfeeder.security.signing import (
    KeyRing,
    SignatureError,
    SignatureFault,
    sign_document,
    verify_document,
)

__all__ = [
    "ANY",
    "TOKEN_TYPE",
    "Principal",
    "TokenVerifier",
    "issue_token",
]

TOKEN_TYPE: Final = "openfeeder.token"
ANY: Final = "*"
_NAME: Final = re.compile(r"^[A-Za-z0-9_.:@*-]{1,128}$")
_MAX_ITEMS: Final = 256


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request, as a verified token says."""

    subject: str
    roles: frozenset[str]
    areas: frozenset[str]
    device_types: frozenset[str]
    operations: frozenset[str]
    token_id: str
    expires_ns: int

    def describe(self) -> str:
        return f"{self.subject} (roles {', '.join(sorted(self.roles)) or 'none'})"


def _names(values: Iterable[str], *, field: str) -> list[str]:
    listed = sorted(set(values))
    if len(listed) > _MAX_ITEMS:
        raise ValueError(f"{field}: at most {_MAX_ITEMS} entries")
    for value in listed:
        if _NAME.fullmatch(value) is None:
            raise ValueError(f"{field}: {value!r} is not a name ([A-Za-z0-9_.:@*-], 1-128)")
    return listed


def issue_token(
    key: Ed25519PrivateKey,
    *,
    subject: str,
    roles: Iterable[str],
    now_ns: int,
    lifetime_ns: int,
    areas: Iterable[str] = (ANY,),
    device_types: Iterable[str] = (ANY,),
    operations: Iterable[str] = (ANY,),
) -> str:
    """A token for ``subject`` valid from ``now_ns`` for ``lifetime_ns``; ValueError on bad
    names."""
    if lifetime_ns <= 0:
        raise ValueError(f"lifetime must be positive, not {lifetime_ns} ns")
    claims: dict[str, Any] = {
        "sub": _names([subject], field="subject")[0],
        "roles": _names(roles, field="roles"),
        "areas": _names(areas, field="areas"),
        "device_types": _names(device_types, field="device_types"),
        "operations": _names(operations, field="operations"),
        "iat": now_ns,
        "nbf": now_ns,
        "exp": now_ns + lifetime_ns,
        "jti": secrets.token_hex(8),
    }
    if not claims["roles"]:
        raise ValueError("roles: a token needs at least one role")
    return sign_document(claims, key, typ=TOKEN_TYPE)


class TokenVerifier:
    """Checks bearer tokens against the trusted issuer keys and the clock."""

    def __init__(self, keys: KeyRing, *, clock_ns: Callable[[], int], skew_ns: int = 0) -> None:
        self.keys = keys
        self._clock_ns = clock_ns
        self._skew_ns = skew_ns

    def verify(self, token: str | None) -> Principal:
        """The principal of a valid token; :class:`SignatureError` (reason says why) otherwise."""
        claims = verify_document(token, self.keys, typ=TOKEN_TYPE)
        try:
            principal = Principal(
                subject=_claim_text(claims, "sub"),
                roles=_claim_set(claims, "roles"),
                areas=_claim_set(claims, "areas"),
                device_types=_claim_set(claims, "device_types"),
                operations=_claim_set(claims, "operations"),
                token_id=_claim_text(claims, "jti"),
                expires_ns=_claim_int(claims, "exp"),
            )
            not_before_ns = _claim_int(claims, "nbf")
        except TypeError as err:
            raise SignatureError(f"token: {err}", reason=SignatureFault.MALFORMED) from err
        now_ns = self._clock_ns()
        if now_ns > principal.expires_ns + self._skew_ns:
            raise SignatureError(
                f"the token of {principal.subject} expired", reason=SignatureFault.EXPIRED
            )
        if now_ns + self._skew_ns < not_before_ns:
            raise SignatureError(
                f"the token of {principal.subject} is not valid yet",
                reason=SignatureFault.NOT_YET_VALID,
            )
        return principal


def _claim_text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise TypeError(f"claim '{name}' must be non-empty text")
    return value


def _claim_int(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"claim '{name}' must be an integer (UTC ns)")
    return value


def _claim_set(claims: dict[str, Any], name: str) -> frozenset[str]:
    value = claims.get(name)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"claim '{name}' must be a list of names")
    return frozenset(value)
