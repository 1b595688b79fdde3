"""Signed documents, versions, tokens and the attribute-based policy (pure, no I/O but key files)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openfeeder.errors import ConfigError
from openfeeder.security.policy import AccessRequest, load_policy
from openfeeder.security.signing import (
    PACKAGE_TYPE,
    KeyRing,
    SignatureError,
    SignatureFault,
    sign_document,
    verify_document,
    version_key,
)
from openfeeder.security.tokens import TokenVerifier, issue_token

HOUR_NS = 3600 * 1_000_000_000


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0.0", "1.0.1"),
        ("1.9", "1.10"),
        ("1.0.0-rc1", "1.0.0"),
        ("1.0.0-rc2", "1.0.0-rc10"),
        ("0.9.9", "1"),
        ("2.0.0+build7", "2.0.1"),
    ],
)
def test_version_order(older: str, newer: str) -> None:
    assert version_key(older) < version_key(newer)
    assert version_key("1.0") == version_key("1.0.0") == version_key("1.0.0+meta")


def test_a_document_of_another_type_or_altered_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    keys = KeyRing([key.public_key()])
    token = issue_token(key, subject="a", roles=["admin"], now_ns=0, lifetime_ns=HOUR_NS)
    with pytest.raises(SignatureError) as wrong:
        verify_document(token, keys, typ=PACKAGE_TYPE)  # a token is no package signature
    assert wrong.value.reason is SignatureFault.WRONG_TYPE
    document = sign_document({"x": 1}, key, typ=PACKAGE_TYPE)
    payload, signature = document.split(".")
    forged = sign_document({"x": 2}, key, typ=PACKAGE_TYPE).split(".")[0] + "." + signature
    with pytest.raises(SignatureError) as altered:
        verify_document(forged, keys, typ=PACKAGE_TYPE)
    assert altered.value.reason is SignatureFault.BAD_SIGNATURE
    assert verify_document(f"{payload}.{signature}", keys, typ=PACKAGE_TYPE)["x"] == 1


def test_token_time_window() -> None:
    key = Ed25519PrivateKey.generate()
    now = time.time_ns()
    token = issue_token(key, subject="a", roles=["operator"], now_ns=now, lifetime_ns=HOUR_NS)
    keys = KeyRing([key.public_key()])
    assert TokenVerifier(keys, clock_ns=lambda: now).verify(token).roles == {"operator"}
    late = TokenVerifier(keys, clock_ns=lambda: now + 2 * HOUR_NS)
    with pytest.raises(SignatureError, match="expired"):
        late.verify(token)
    early = TokenVerifier(keys, clock_ns=lambda: now - HOUR_NS)
    with pytest.raises(SignatureError, match="not valid yet"):
        early.verify(token)


def test_policy_file_with_named_areas_and_a_time_window(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        """
[areas]
north = ["feeder-300", "feeder-313"]

[[rule]]
name = "day shift"
roles = ["operator"]
operations = ["catalog.topology.write"]
areas = "own"
hours_utc = "06:00-22:00"
weekdays = ["mon", "tue", "wed", "thu", "fri"]
""",
        encoding="utf-8",
    )
    policy = load_policy(path)
    assert policy.area_names({"feeder-300", "feeder-9"}) == {"north", "feeder-9"}
    key = Ed25519PrivateKey.generate()
    token = issue_token(
        key, subject="ann", roles=["operator"], areas=["north"], now_ns=0, lifetime_ns=HOUR_NS
    )
    ann = TokenVerifier(KeyRing([key.public_key()]), clock_ns=lambda: 0).verify(token)
    monday_noon = int(datetime(2025, 3, 3, 12, tzinfo=UTC).timestamp()) * 1_000_000_000
    sunday_noon = monday_noon - 24 * HOUR_NS
    monday_night = monday_noon + 11 * HOUR_NS
    request = AccessRequest("catalog.topology.write", frozenset({"north"}), t_ns=monday_noon)
    assert policy.decide(ann, request).allowed
    for t_ns in (sunday_noon, monday_night):
        decision = policy.decide(ann, AccessRequest(request.operation, request.areas, t_ns=t_ns))
        assert not decision.allowed
        assert "time" in decision.reason
    elsewhere = AccessRequest(request.operation, frozenset({"feeder-9"}), t_ns=monday_noon)
    assert "area: feeder-9" in policy.decide(ann, elsewhere).reason


def test_a_bad_policy_file_names_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[[rule]]\nname = "x"\nroles = ["a"]\noperations = ["*"]\nhours_utc = "25"\n')
    with pytest.raises(ConfigError, match=r"rule 0 \('x'\): hours_utc"):
        load_policy(path)
