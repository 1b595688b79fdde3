"""The demo's security: a throwaway CA in the demo's folder and every party's identity.

``openfeeder demo`` runs secured unless ``--insecure``: :func:`demo_pki` makes a CA in the temporary
folder, issues the service identities (the embedded broker, the catalog, the historian, the FLISR
coordinator; servers with ``127.0.0.1`` / ``localhost`` in their certificates) and an enrolment
secret. The devices make their own keys and enrol with the catalog using that secret, as field
devices do (:mod:`openfeeder.iot.agent.identity`). The broker listens with mutual TLS 1.3 and
starts with an access table of the services only; the catalog keeps it current as devices boot
(``on_access_table``), so a device can connect once it is registered. REST is HTTPS, checked
against the CA.

Payloads are sealed end to end too (``docs/security-payload.md``): a key store in the folder under a
master key of its own; the catalog makes the group keys, and each device's own keys when it enrols
(its key-encryption key comes with its certificate, its key bundle from the catalog). Control
traffic (commands, acks, configurations, topology) is AES-256-GCM, protection traffic (events)
SM4-GCM, monitoring TLS only.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from openfeeder.config import PayloadProtectionSettings, SecuritySettings
from openfeeder.iot.access import build_access_table
from openfeeder.security.acl import AccessTable
from openfeeder.security.keys import KeyStore, generate_master_key, load_master_key
from openfeeder.security.pki import CRL_FILE, CertificateAuthority, RevocationList
from openfeeder.security.tls import TlsFiles, issued_files

__all__ = ["DEMO_HISTORIAN_INSTANCE", "DemoPki", "demo_pki"]

DEMO_HISTORIAN_INSTANCE: Final = "demo"
"""The historian's instance in the demo (its MQTT identity is ``historian-demo``)."""
_HOSTS: Final = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True)
class DemoPki:
    """The demo's CA and identities (see the module docstring)."""

    directory: Path
    ca_file: Path
    secret_file: Path
    broker: TlsFiles
    key_dir: Path
    master_key_file: Path
    services: dict[str, str] = field(default_factory=dict)
    """Service identity -> role (the catalog's ``[security] services``)."""

    def payload_protection(self, party: str) -> PayloadProtectionSettings:
        """``[payload_protection]`` of ``party``: services read the key store, devices
        (``devices``) get their keys from the catalog (seed 000's algorithms per class)."""
        if party == "devices":
            return PayloadProtectionSettings(enabled=True)
        return PayloadProtectionSettings(
            enabled=True, key_dir=self.key_dir, master_key_file=self.master_key_file
        )

    def broker_context(self) -> ssl.SSLContext:
        """The embedded broker's listener: mutual TLS 1.3 with the demo CA."""
        return self.broker.server_context()

    def revocations(self) -> RevocationList:
        """The demo CA's CRL, which the embedded broker checks at every CONNECT."""
        return RevocationList.of(self.directory / CRL_FILE, self.ca_file)

    def initial_table(self) -> AccessTable:
        """The services' grants (the catalog adds each device as it registers)."""
        return build_access_table(devices={}, services=self.services)

    def service(self, name: str) -> SecuritySettings:
        """``[security]`` of the service ``name``: the CA, its certificate and key."""
        files = self.directory / "issued"
        return SecuritySettings(
            ca_file=self.ca_file,
            cert_file=files / f"{name}.crt",
            key_file=files / f"{name}.key",
        )

    def catalog(self) -> SecuritySettings:
        """The catalog's: its certificate, the CA that signs enrolled devices, the secret, and the
        services the ACL grants (the broker is in this process: the table is handed over)."""
        return self.service("catalog").model_copy(
            update={
                "pki_dir": self.directory,
                "enrolment_secret_file": self.secret_file,
                "services": dict(self.services),
            }
        )

    def devices(self) -> SecuritySettings:
        """The devices': the CA to trust and the enrolment secret (each makes its own key)."""
        return SecuritySettings(ca_file=self.ca_file, enrolment_secret_file=self.secret_file)


def demo_pki(workdir: Path) -> DemoPki:
    """A CA in ``workdir/pki`` with the demo's service identities and an enrolment secret."""
    directory = workdir / "pki"
    ca = CertificateAuthority.init(directory, common_name="OpenFeeder demo CA", valid_days=2)
    historian = f"historian-{DEMO_HISTORIAN_INSTANCE}"
    ca.issue("broker", role="broker", hosts=_HOSTS, valid_days=1)
    ca.issue("catalog", role="catalog", hosts=_HOSTS, valid_days=1)
    ca.issue(historian, role="historian", hosts=_HOSTS, valid_days=1)
    ca.issue("flisr", role="flisr", hosts=_HOSTS, valid_days=1)
    secret_file = workdir / "enrolment.secret"
    secret_file.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    # payload keys: a store under a master key of its own; the catalog makes the group keys at
    # start and each device's keys when it enrols
    master_key_file = workdir / "master.key"
    generate_master_key(master_key_file)
    key_dir = workdir / "keys"
    KeyStore.init(key_dir, master_key=load_master_key(master_key_file), actor="demo")
    return DemoPki(
        directory=directory,
        ca_file=ca.cert_file,
        secret_file=secret_file,
        broker=issued_files(ca, "broker"),
        key_dir=key_dir,
        master_key_file=master_key_file,
        services={"catalog": "catalog", historian: "historian", "flisr": "flisr"},
    )
