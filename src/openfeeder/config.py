"""Settings: one TOML file configures every service, environment variables override it.

The file (``openfeeder.toml`` by default, or ``--config FILE``) has one table per concern::

    [brokers.grid_ops]            # commands, topology, reconfiguration, fault events
    url = "mqtt://127.0.0.1:1883"
    [brokers.monitoring]          # measurements, algorithm outputs (may be the same broker)
    url = "mqtt://127.0.0.1:1883"
    [storage]
    url = "sqlite:///openfeeder.db"   # or "postgresql://user@host:5432/db"
    [logging]
    level = "INFO"
    [catalog]                     # device catalog (REST): where it listens, where clients find it
    listen_port = 8700
    [historian]
    listen_port = 8701
    [agent]
    state_dir = "agent-state"     # store-and-forward buffers, one file per meter

Every key can be overridden by an environment variable ``OPENFEEDER_<TABLE>__<KEY>`` with ``__``
between levels, e.g. ``OPENFEEDER_BROKERS__GRID_OPS__URL=mqtts://broker:8883``. The environment wins
over the file, the file over the defaults. Settings are passed to what needs them; there is no global.
Secrets are never written in the file: a broker password is read from the file named by
``password_file`` (or from the environment).

Errors name the file and the dotted key: ``openfeeder.toml: brokers.grid_ops.url: ...``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from openfeeder.errors import ConfigError

MIN_SAMPLING_RATE_HZ: Final = 1.0
MIN_REPORTING_INTERVAL_S: Final = 0.01
"""Below 10 ms a meter would report in a busy loop (every tick of its clock): a typo, not a
setting."""
SamplingRate = Annotated[float, Field(ge=MIN_SAMPLING_RATE_HZ, le=1_000_000)]
"""A meter's waveform sampling rate (Hz)."""
ReportingInterval = Annotated[float, Field(ge=MIN_REPORTING_INTERVAL_S, le=86_400)]
"""Seconds between a meter's measurement messages."""

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "AccessSettings",
    "AgentSettings",
    "BrokerSettings",
    "BrokersSettings",
    "CatalogSettings",
    "EstimationSettings",
    "FlisrSettings",
    "HistorianSettings",
    "LoggingSettings",
    "PayloadProtectionSettings",
    "SecuritySettings",
    "Settings",
    "StorageSettings",
    "load_settings",
]

DEFAULT_CONFIG_FILE: Final = Path("openfeeder.toml")
ENV_PREFIX: Final = "OPENFEEDER_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSettings(_Section):
    """One MQTT broker context."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("has no host")
        try:
            _ = parts.port
        except ValueError as err:
            raise ValueError("has an invalid port") from err
        return url

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def password(self) -> str | None:
        """The password from ``password_file`` (first line), if one is configured."""
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as err:
            raise ConfigError(f"cannot read password_file {self.password_file}") from err


class BrokersSettings(_Section):
    """The two broker contexts of seed 003; one broker may serve both in a small install."""

    grid_ops: BrokerSettings = BrokerSettings()
    monitoring: BrokerSettings = BrokerSettings()


def _storage_url(url: str) -> str:
    if urlsplit(url).scheme not in ("sqlite", "postgresql"):
        raise ValueError("must start with sqlite:/// or postgresql://")
    return url


class StorageSettings(_Section):
    url: str = "sqlite:///openfeeder.db"

    _url = field_validator("url")(_storage_url)

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "postgresql" if self.url.startswith("postgresql") else "sqlite"


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = True


def _optional_storage_url(url: str) -> str:
    return url if not url else _storage_url(url)


class CatalogSettings(_Section):
    """The device catalog service (REST) and how devices reach it."""

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8700, ge=0, le=65535)
    url: str = "http://127.0.0.1:8700"
    """Where devices and services find the catalog (behind a proxy this differs from listen_*)."""
    storage_url: str = ""
    """Empty: use ``[storage] url``."""
    poll_interval_s: float = Field(default=10.0, gt=0, le=86400)
    """How often devices poll for new settings (the value is handed to them in their settings)."""
    disconnect_timeout_s: float = Field(default=30.0, gt=0, le=86400)
    """A device silent this long is marked disconnected (and that is announced on MQTT)."""
    request_timeout_s: float = Field(default=10.0, gt=0, le=600)
    case: str = "turin"
    """The grid model (built-in case name or case file) device locations refer to; empty: none."""
    sampling_rate_hz: SamplingRate = 6400.0
    """Default waveform sampling rate handed to meters (a device record may override it)."""
    reporting_interval_s: ReportingInterval = 1.0
    """Default interval between a meter's measurement messages (a device record may override it)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return url.rstrip("/")

    _storage = field_validator("storage_url")(_optional_storage_url)


class HistorianSettings(_Section):
    """The historian: what it subscribes to, how it writes, how long it keeps data."""

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8701, ge=0, le=65535)
    storage_url: str = ""
    """Empty: use ``[storage] url``."""
    shared_group: str = "historian"
    """MQTT v5 shared-subscription group: historians in one group split the measurements."""
    batch_max_messages: int = Field(default=2000, ge=1, le=1_000_000)
    batch_max_delay_ms: int = Field(default=100, ge=1, le=60_000)
    retention_days: float = Field(default=0, ge=0)
    """Readings older than this are deleted (0: keep everything)."""
    require_registered_devices: bool = True
    """Store measurements only from devices the catalog (``[catalog] url``) lists; others are
    rejected and counted. False: accept every device id."""
    device_refresh_interval_s: float = Field(default=2.0, gt=0, le=3600)
    """An unknown device id re-reads the catalog's device list at most this often."""
    queue_max_messages: int = Field(default=50_000, ge=1, le=10_000_000)
    """Accepted messages waiting for the writer; when full, intake from the broker pauses."""
    committed_interval_ms: int = Field(default=200, ge=0, le=600_000)
    """Publish a device's committed mark at most this often (the latest one always follows);
    keep it well below ``[agent] resend_after_s``."""
    session_expiry_s: int = Field(default=3600, ge=0, le=2**32 - 1)
    """How long the broker keeps queueing for a stopped historian (MQTT v5 session expiry)."""

    _storage = field_validator("storage_url")(_optional_storage_url)


class AgentSettings(_Section):
    """Meter agents: local state and the store-and-forward bound."""

    state_dir: Path = Path("agent-state")
    buffer_max_messages: int = Field(default=100_000, ge=10, le=100_000_000)
    """Store-and-forward bound per meter; beyond it the oldest unconfirmed readings are dropped."""
    resend_after_s: float = Field(default=5.0, gt=0, le=3600)
    """Resend unconfirmed readings when the historian's committed mark has not moved for this long."""


class FlisrSettings(_Section):
    """The FLISR coordinator: which variant, how long it waits for what (domain seconds)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8702, ge=0, le=65535)
    variant: Literal["central", "edge"] = "central"
    """``central``: the coordinator locates the fault; ``edge``: the feeder-head device's fault
    locator plug-in does, and the coordinator isolates and restores."""
    incident_log: Path = Path("flisr-incidents.jsonl")
    """Every incident's timeline, one JSON document per line (appended)."""
    reclose_wait_s: float = Field(default=0.0, ge=0, le=600)
    """How long a tripped breaker must stay open before FLISR acts: the longest reclosing dead
    time of the feeder protection plus a margin (0: the protection does not reclose)."""
    indicator_wait_s: float = Field(default=0.05, ge=0, le=60)
    """After the trip, how long to wait for fault indicators and fault records still in flight."""
    command_timeout_s: float = Field(default=3.0, gt=0, le=600)
    """A switching command not done after this long counts as failed (the switch is too slow or
    stuck); the plan is made again without that switch."""
    edge_wait_s: float = Field(default=2.0, gt=0, le=600)
    """Edge variant: how long to wait for the feeder-head device's fault location before the
    coordinator locates the fault itself (and says so in the timeline)."""
    max_replans: int = Field(default=6, ge=0, le=100)


class EstimationSettings(_Section):
    """The estimation service (``docs/estimation-service.md``): how often, which estimator, where
    the results go."""

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8703, ge=0, le=65535)
    interval_s: float = Field(default=60.0, gt=0, le=86_400)
    """A cycle every this many seconds (domain time), and at once after a topology change or a
    bad-data alarm."""
    mode: Literal["central", "distributed"] = "distributed"
    """``central``: the service estimates the whole grid itself from the latest measurements on
    the bus; ``distributed``: the hierarchical estimator's levels run on the devices' agents."""
    storage: Path = Path("estimates.jsonl")
    """Every estimate (summary and bus voltages), one JSON document per line (appended)."""
    cycle_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """Distributed mode: how long a cycle may take before it is stored with the areas it has."""
    child_timeout_s: float = Field(default=3.0, gt=0, le=600)
    """Distributed mode: how long a level waits for its children before estimating without the
    missing ones (their loads then count as pseudo-measurements)."""
    keep: int = Field(default=100, ge=1, le=100_000)
    """Estimates kept in memory for the REST API."""


class SecuritySettings(_Section):
    """Identities and TLS (``docs/security.md``): the CA every party trusts, this party's own
    certificate and key, and what the catalog needs to certify devices and keep the broker ACL.

    With ``ca_file`` (and ``cert_file`` / ``key_file``), connections to ``mqtts://`` brokers trust
    only that CA and present this certificate, HTTPS clients verify the catalog with it, and HTTP
    services serve HTTPS with the certificate.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_min_version: Literal["1.2", "1.3"] = "1.3"
    pki_dir: Path | None = None
    """Catalog: the CA directory (``openfeeder pki init``) that signs enrolled devices' keys."""
    enrolment_secret_file: Path | None = None
    """Catalog: a device enrolling with this secret (first line) is certified at once; otherwise
    its request waits for an operator's approval."""
    acl_backend: Literal["none", "dynsec", "acl_file"] = "none"
    """Catalog: how it keeps Mosquitto's ACL current when devices come and go: ``dynsec``
    (commands to the dynamic-security plug-in over MQTT) or ``acl_file`` (rewrite ``acl_file``,
    then SIGHUP the pid in ``mosquitto_pid_file``)."""
    acl_file: Path | None = None
    mosquitto_pid_file: Path | None = None
    services: dict[str, str] = Field(default_factory=dict)
    """Service identities (certificate CN) and their roles for the ACL, e.g.
    ``{historian = "historian", flisr = "flisr"}``."""


class AccessSettings(_Section):
    """Who may do what: operators on the REST control endpoints (signed bearer tokens checked
    against attribute-based policies) and publishers of algorithm packages (Ed25519 signatures the
    agents check). See ``docs/security-packages.md``."""

    token_keys: tuple[Path, ...] = ()
    """Ed25519 public keys (PEM) that verify operator tokens (``openfeeder token keygen``)."""
    enforce: bool | None = None
    """Check tokens and policies on control endpoints. None: yes when ``token_keys`` is set."""
    protect_reads: bool = False
    """Also require a token (operation ``*.read``) on the catalog's and FLISR's read endpoints."""
    policy_file: Path | None = None
    """Attribute-based rules and the area map (TOML); None: the built-in policy."""
    token_file: Path | None = None
    """The token this process presents to other services' control endpoints (first line)."""
    audit_log: Path | None = None
    """Where denials (and allowed control operations) are audited; None: not written."""
    clock_skew_s: float = Field(default=60.0, ge=0, le=3600)
    """Tolerance on a token's not-before and expiry, and on a package signature's time."""
    publisher_key_file: Path | None = None
    """The catalog's Ed25519 package-signing key (PEM). None: the catalog keeps a generated key in
    its database."""
    sign_uploads: bool = True
    """The catalog signs an upload that carries no signature (the uploader's token authorised it)."""
    publisher_keys: tuple[Path, ...] = ()
    """Further publisher public keys (PEM) the catalog accepts and hands to devices."""
    package_validity_days: float = Field(default=365.0, gt=0, le=36_500)
    """Lifetime of the signatures the catalog makes."""
    pinned_publisher_keys: tuple[Path, ...] = ()
    """Agents: trust only these publisher keys (PEM), not the keys in the catalog's settings."""
    require_signed_packages: bool = True
    """Agents refuse packages without a valid signature of a trusted publisher."""

    def token_enforced(self) -> bool:
        if self.enforce is None:
            return bool(self.token_keys)
        return self.enforce

    def service_token(self) -> str | None:
        """The token from ``token_file`` (its first line), if one is configured."""
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as err:
            raise ConfigError(f"access.token_file: cannot read {self.token_file}") from err


class PayloadProtectionSettings(_Section):
    """End-to-end payload protection per traffic class (``docs/security-payload.md``).

    Services read keys from the key store in ``key_dir`` (master key from ``master_key_file`` or
    ``OPENFEEDER_MASTER_KEY``); a device reads the bundle issued to it (``key_bundle``) and opens
    it with its key-encryption key (``kek_file``). Key material never appears in this file.
    """

    enabled: bool = False
    control: Literal["aes-256-gcm", "sm4-gcm", "none"] = "aes-256-gcm"
    """Commands, acknowledgements, configuration, topology, committed marks."""
    protection: Literal["aes-256-gcm", "sm4-gcm", "none"] = "sm4-gcm"
    """Events and alarms (fault detection, protection trips)."""
    monitoring: Literal["aes-256-gcm", "sm4-gcm", "none"] = "none"
    """Measurements and algorithm outputs: TLS only by default."""
    key_dir: Path | None = None
    master_key_file: Path | None = None
    key_bundle: Path | None = None
    kek_file: Path | None = None
    replay_window: int = Field(default=64, ge=1, le=4096)
    """Sequence numbers below the highest accepted that may still arrive (reordering)."""
    event_interval_s: float = Field(default=1.0, ge=0, le=3600)
    """At most one security event per sender and reason in this time; the event counts the rest."""
    audit_log: Path | None = None
    """Where rejections are audited (kind ``security``); None: not written."""


class Settings(_Section):
    brokers: BrokersSettings = BrokersSettings()
    storage: StorageSettings = StorageSettings()
    logging: LoggingSettings = LoggingSettings()
    catalog: CatalogSettings = CatalogSettings()
    historian: HistorianSettings = HistorianSettings()
    agent: AgentSettings = AgentSettings()
    flisr: FlisrSettings = FlisrSettings()
    estimation: EstimationSettings = EstimationSettings()
    security: SecuritySettings = SecuritySettings()
    payload_protection: PayloadProtectionSettings = PayloadProtectionSettings()
    access: AccessSettings = AccessSettings()

    def catalog_storage_url(self) -> str:
        return self.catalog.storage_url or self.storage.url

    def historian_storage_url(self) -> str:
        return self.historian.storage_url or self.storage.url

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, with credentials masked (for display)."""
        data = self.model_dump(mode="json")
        for broker in data["brokers"].values():
            parts = urlsplit(broker["url"])
            if parts.password:
                broker["url"] = broker["url"].replace(parts.password, "***", 1)
        return data


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from ``path`` (or ``openfeeder.toml`` if it exists) and the environment.

    A ``path`` given explicitly must exist; the default file is optional.
    """
    source = str(path) if path is not None else str(DEFAULT_CONFIG_FILE)
    data: dict[str, Any] = {}
    file = path if path is not None else DEFAULT_CONFIG_FILE
    if path is not None or file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"{source}: no such file") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{source}: not valid TOML: {err}") from err
    overrides = _environment_overrides(os.environ if environ is None else environ)
    _merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        origin = "environment" if _from_environment(first["loc"], overrides) else source
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown setting"
        raise ConfigError(f"{origin}: {key}: {message}") from err


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name.removeprefix(ENV_PREFIX).split("__") if part]
        if not path:
            continue
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return overrides


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _from_environment(loc: tuple[int | str, ...], overrides: Mapping[str, Any]) -> bool:
    node: Any = overrides
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
