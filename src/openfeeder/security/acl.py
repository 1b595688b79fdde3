"""Topic access control: who may publish and subscribe where, for both brokers.

An :class:`AccessTable` maps each identity (certificate CN, which is also the MQTT user name: the
embedded broker reads it from the certificate, Mosquitto with ``use_identity_as_username``) to its
:class:`Grant`\\ s: an MQTT topic filter and whether it may be published to (``write``), subscribed to
and received from (``read``), or both. An identity not in the table may do nothing. The table is
pure data: the grants themselves come from the topic scheme (:mod:`openfeeder.iot.access`), and the
same table is rendered as a Mosquitto ACL file (:meth:`AccessTable.mosquitto_acl`) and checked by
the embedded broker (:class:`ClientGrants`).

The rules, the same on both brokers:

- **publish** ``topic``: allowed when a ``write`` grant's filter matches the topic (MQTT matching:
  ``+`` one level, ``#`` the rest);
- **subscribe** ``filter``: allowed when a ``read`` grant's filter covers it, i.e. every topic the
  requested filter can match is matched by the grant (``openfeeder/v1/cmd/+`` does not cover
  ``openfeeder/v1/cmd/#``; ``+`` in a grant covers one requested level, and ``#`` everything
  below). A shared subscription ``$share/{group}/{filter}`` is checked by its filter;
- **deliver**: a message is delivered only on a subscription the grants allowed; after a reload the
  embedded broker drops subscriptions no longer covered (Mosquitto checks every delivery);
- **client id**: an identity connects with its own name as client id, or its name followed by
  ``.`` or ``-`` and anything (``meter-7.grid_ops``, ``historian-1``), so that nobody takes over
  another identity's session (the embedded broker enforces it; Mosquitto 2.0 has no per-user
  client-id rule, so there it rests on the certificate).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from openfeeder.errors import SecurityError

__all__ = [
    "Access",
    "AccessError",
    "AccessTable",
    "ClientGrants",
    "Grant",
    "client_id_allowed",
    "filter_covers",
    "topic_matches",
]

_SHARE: Final = "$share/"
_PUBLISH_CACHE_MAX: Final = 4096
"""Publish decisions remembered per connection (a device publishes on a handful of topics)."""


class AccessError(SecurityError):
    """An identity may not do this: publish or subscribe on ``topic``, or connect as ``client_id``."""

    def __init__(self, message: str, *, identity: str, topic: str | None = None) -> None:
        super().__init__(message)
        self.identity = identity
        self.topic = topic


class Access(StrEnum):
    """What a grant allows (the words of Mosquitto's ACL file)."""

    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"

    @property
    def reads(self) -> bool:
        return self is not Access.WRITE

    @property
    def writes(self) -> bool:
        return self is not Access.READ


def _check_filter(pattern: str, *, identity: str) -> None:
    if not pattern or "\x00" in pattern or "\n" in pattern:
        raise AccessError(
            f"{identity}: grant filter {pattern!r} is empty or has a NUL/newline",
            identity=identity,
            topic=pattern,
        )
    levels = pattern.split("/")
    for index, level in enumerate(levels):
        bad_hash = "#" in level and (level != "#" or index != len(levels) - 1)
        if bad_hash or ("+" in level and level != "+"):
            raise AccessError(
                f"{identity}: grant filter {pattern!r}: a wildcard must fill a whole level",
                identity=identity,
                topic=pattern,
            )


@dataclass(frozen=True, slots=True)
class Grant:
    """One right: ``access`` on the topics matched by the filter ``pattern``."""

    access: Access
    pattern: str

    def __post_init__(self) -> None:
        _check_filter(self.pattern, identity="grant")


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT matching of a topic name against a filter (``$`` topics never match a leading wildcard)."""
    return _levels_match(pattern.split("/"), topic.split("/"), dollar=topic.startswith("$"))


def _levels_match(grant: list[str], topic: list[str], *, dollar: bool) -> bool:
    if dollar and grant and grant[0] in ("+", "#"):
        return False
    for index, level in enumerate(grant):
        if level == "#":
            return True
        if index >= len(topic):
            return False
        if level != "+" and level != topic[index]:
            return False
    return len(grant) == len(topic)


def filter_covers(pattern: str, requested: str) -> bool:
    """Whether every topic the filter ``requested`` can match is matched by ``pattern``."""
    grant = pattern.split("/")
    wanted = requested.split("/")
    if requested.startswith("$") and grant[0] in ("+", "#"):
        return False
    for index, level in enumerate(grant):
        if level == "#":
            return True
        if index >= len(wanted):
            return False
        asked = wanted[index]
        if asked == "#":
            return False  # the request reaches deeper than this grant
        if level == "+":
            continue
        if asked == "+" or asked != level:
            return False
    return len(grant) == len(wanted)


def client_id_allowed(identity: str, client_id: str) -> bool:
    """An identity's client ids: its name, or its name followed by ``.`` or ``-`` and more."""
    if client_id == identity:
        return True
    return client_id.startswith(identity) and client_id[len(identity) : len(identity) + 1] in (
        ".",
        "-",
    )


def _inner(topic_filter: str) -> str:
    """The filter of a shared subscription (``$share/{group}/{filter}``), or the filter itself."""
    if topic_filter.startswith(_SHARE):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


@dataclass(slots=True)
class ClientGrants:
    """The grants of one connected identity, compiled for the broker's hot path.

    Publish decisions are cached per topic (bounded), so a device publishing on its few topics
    pays one dictionary look-up per message.
    """

    identity: str
    role: str
    write: tuple[tuple[str, ...], ...]
    read: tuple[str, ...]
    _cache: dict[str, bool] = field(default_factory=dict)

    def may_publish(self, topic: str) -> bool:
        known = self._cache.get(topic)
        if known is not None:
            return known
        levels = topic.split("/")
        dollar = topic.startswith("$")
        allowed = any(_levels_match(list(grant), levels, dollar=dollar) for grant in self.write)
        if len(self._cache) >= _PUBLISH_CACHE_MAX:
            self._cache.clear()
        self._cache[topic] = allowed
        return allowed

    def may_subscribe(self, topic_filter: str) -> bool:
        inner = _inner(topic_filter)
        return bool(inner) and any(filter_covers(grant, inner) for grant in self.read)


@dataclass(frozen=True, slots=True)
class AclEntry:
    """An identity's role (for people reading the table) and grants."""

    role: str
    grants: tuple[Grant, ...]


class AccessTable:
    """Identities and their grants (immutable; make a new table to change it)."""

    def __init__(self, entries: Mapping[str, AclEntry] | None = None, *, version: int = 0) -> None:
        for name, entry in (entries or {}).items():
            for grant in entry.grants:
                _check_filter(grant.pattern, identity=name)
        self._entries: Mapping[str, AclEntry] = MappingProxyType(dict(entries or {}))
        self.version = version

    @classmethod
    def build(
        cls, entries: Iterable[tuple[str, str, Iterable[Grant]]], *, version: int = 0
    ) -> AccessTable:
        """From ``(identity, role, grants)``; an identity listed twice is refused."""
        table: dict[str, AclEntry] = {}
        for name, role, grants in entries:
            if name in table:
                raise AccessError(
                    f"{name}: listed twice in the access table (as {table[name].role} and {role})",
                    identity=name,
                )
            table[name] = AclEntry(role, tuple(grants))
        return cls(table, version=version)

    @property
    def entries(self) -> Mapping[str, AclEntry]:
        return self._entries

    def __contains__(self, identity: object) -> bool:
        return identity in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def client(self, identity: str) -> ClientGrants | None:
        """The compiled grants of ``identity``, None if the table does not know it."""
        entry = self._entries.get(identity)
        if entry is None:
            return None
        return ClientGrants(
            identity=identity,
            role=entry.role,
            write=tuple(tuple(g.pattern.split("/")) for g in entry.grants if g.access.writes),
            read=tuple(g.pattern for g in entry.grants if g.access.reads),
        )

    def may_publish(self, identity: str, topic: str) -> bool:
        grants = self.client(identity)
        return grants is not None and grants.may_publish(topic)

    def may_subscribe(self, identity: str, topic_filter: str) -> bool:
        grants = self.client(identity)
        return grants is not None and grants.may_subscribe(topic_filter)

    @classmethod
    def from_mosquitto_acl(cls, text: str, *, source: str = "acl_file") -> AccessTable:
        """The table back from the text :meth:`mosquitto_acl` writes (``openfeeder broker
        --acl-file`` reads what the catalog keeps current): ``user NAME`` starts an identity,
        ``topic [read|write|readwrite] FILTER`` grants it (no access word: readwrite, as in
        Mosquitto), a ``# role ROLE`` comment before ``user`` names its role, ``# version N`` the
        table's version. Other lines are refused with ``source:line``."""
        entries: list[tuple[str, str, list[Grant]]] = []
        role = "unknown"
        version = 0
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            where = f"{source}:{number}"
            if not line:
                continue
            if line.startswith("#"):
                words = line.lstrip("#").split()
                if len(words) >= 2 and words[0] == "role":
                    role = words[1]
                elif len(words) >= 2 and words[0] == "version" and words[1].rstrip(",").isdigit():
                    version = int(words[1].rstrip(","))
                continue
            keyword, _, rest = line.partition(" ")
            rest = rest.strip()
            if keyword == "user" and rest:
                entries.append((rest, role, []))
                role = "unknown"
            elif keyword == "topic" and rest:
                if not entries:
                    raise AccessError(
                        f"{where}: 'topic' before any 'user' (anonymous grants are not used)",
                        identity="",
                        topic=rest,
                    )
                word, _, pattern = rest.partition(" ")
                try:
                    access = Access(word)
                except ValueError:
                    access, pattern = Access.READWRITE, rest
                name = entries[-1][0]
                try:
                    entries[-1][2].append(Grant(access, pattern.strip()))
                except AccessError as err:
                    raise AccessError(f"{where}: {name}: {err}", identity=name) from err
            else:
                raise AccessError(
                    f"{where}: expected 'user NAME' or 'topic [read|write|readwrite] FILTER', "
                    f"not {line[:80]!r}",
                    identity=entries[-1][0] if entries else "",
                )
        try:
            return cls.build(entries, version=version)
        except AccessError as err:
            raise AccessError(f"{source}: {err}", identity=err.identity) from err

    def mosquitto_acl(self, *, header: str = "") -> str:
        """The table as a Mosquitto ``acl_file`` (one ``user`` block per identity, sorted)."""
        lines = ["# Mosquitto ACL generated by OpenFeeder: do not edit, it is rewritten."]
        lines += [f"# {line}" for line in header.splitlines()]
        lines.append(f"# version {self.version}, {len(self._entries)} identities")
        for name in sorted(self._entries):
            entry = self._entries[name]
            lines.append("")
            lines.append(f"# role {entry.role}")
            lines.append(f"user {name}")
            lines += [f"topic {grant.access} {grant.pattern}" for grant in entry.grants]
        return "\n".join(lines) + "\n"
