"""Certificate revocation: the CA's index and signed CRL, and the list brokers check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography import x509

from openfeeder.security.pki import (
    CertificateAuthority,
    PkiError,
    RevocationList,
    RevocationReason,
)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca")


def _crl(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(ca.crl_file.read_bytes())


def test_a_new_ca_has_an_empty_signed_crl(ca: CertificateAuthority) -> None:
    crl = _crl(ca)
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.certificate.subject
    assert len(crl) == 0
    assert crl.next_update_utc is not None
    assert crl.next_update_utc >= ca.certificate.not_valid_after_utc  # never stale before the CA


def test_revoke_all_one_or_the_replaced_ones(ca: CertificateAuthority) -> None:
    first = ca.issue("meter-1", role="device", write=False).serial
    second = ca.issue("meter-1", role="device", write=False).serial
    other = ca.issue("meter-2", role="device", write=False).serial

    assert ca.revoke("meter-1", keep_latest=True, reason=RevocationReason.SUPERSEDED) == [first]
    assert ca.revoke("meter-1", keep_latest=True) == []  # nothing new
    assert ca.revoke("meter-1") == [second]  # the first is not revoked twice
    assert ca.revoke("meter-2", serial=other, reason=RevocationReason.KEY_COMPROMISE) == [other]

    listed = {(r.serial, r.name, r.reason) for r in ca.revoked()}
    assert listed == {
        (first, "meter-1", RevocationReason.SUPERSEDED),
        (second, "meter-1", RevocationReason.UNSPECIFIED),
        (other, "meter-2", RevocationReason.KEY_COMPROMISE),
    }
    crl = _crl(ca)
    assert {entry.serial_number for entry in crl} == {first, second, other}
    entry = crl.get_revoked_certificate_by_serial_number(other)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value
    assert reason.reason is x509.ReasonFlags.key_compromise
    assert ca.identities() == {"meter-1": "device", "meter-2": "device"}  # names keep roles


def test_revoke_refuses_unknown_names_and_foreign_serials(ca: CertificateAuthority) -> None:
    mine = ca.issue("meter-1", role="device", write=False).serial
    ca.issue("meter-2", role="device", write=False)
    with pytest.raises(PkiError, match="meter-9: no certificate was issued"):
        ca.revoke("meter-9")
    with pytest.raises(PkiError, match=f"serial {mine:x} was not issued to this name"):
        ca.revoke("meter-2", serial=mine)
    assert ca.revoked() == []
    assert len(_crl(ca)) == 0


def test_an_index_from_before_serial_lists_still_revokes(ca: CertificateAuthority) -> None:
    serial = ca.issue("meter-1", role="device", write=False).serial
    index = ca.directory / "index.json"
    document = json.loads(index.read_text())
    del document["identities"]["meter-1"]["serials"]  # as an older CA wrote it
    index.write_text(json.dumps(document))
    assert ca.revoke("meter-1") == [serial]


def test_revocation_list_follows_the_file(ca: CertificateAuthority) -> None:
    serial = ca.issue("meter-1", role="device", write=False).serial
    revocations = RevocationList.of(ca.crl_file, ca.cert_file)
    assert not revocations.is_revoked(serial)
    ca.revoke("meter-1")
    assert revocations.is_revoked(serial)


def test_revocation_list_refuses_a_crl_it_cannot_trust(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    revocations = RevocationList.of(ca.crl_file, ca.cert_file)
    rogue = CertificateAuthority.init(tmp_path / "rogue", common_name="OpenFeeder CA")
    ca.crl_file.write_bytes(rogue.crl_file.read_bytes())  # same name, another key
    os.utime(ca.crl_file, ns=(1, 1))  # a change the list must notice however fast
    with pytest.raises(PkiError, match="signature is not the CA's"):
        revocations.is_revoked(1)
    other = CertificateAuthority.init(tmp_path / "other", common_name="Another CA")
    ca.crl_file.write_bytes(other.crl_file.read_bytes())
    with pytest.raises(PkiError, match="issued by CN=Another CA, not the CA CN=OpenFeeder CA"):
        revocations.is_revoked(1)
    ca.crl_file.write_text("not a crl")
    with pytest.raises(PkiError, match="not a PEM CRL"):
        revocations.is_revoked(1)
    ca.crl_file.unlink()
    with pytest.raises(PkiError, match="cannot read the CRL"):
        revocations.is_revoked(1)
    with pytest.raises(PkiError, match="cannot read the CRL"):
        RevocationList.of(ca.crl_file, ca.cert_file)
