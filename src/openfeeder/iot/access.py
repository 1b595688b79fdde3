"""Who may publish and subscribe what in the topic scheme: the grants of devices and services.

Derived from :data:`~openfeeder.iot.topics.MESSAGE_SPECS`, never written out as strings: each
message class has a sender side (:data:`DEVICE_SENDS` are the classes a device publishes about
itself; the others it receives), and the filters come from
:func:`~openfeeder.iot.topics.filter_for`.

A **device** ``D`` may publish only on its own topics (``meas/D``, ``event/D``, ``ack/D``,
``status/D``, ``algo/D/+``) and subscribe only to its own ``cmd/D``, ``config/D``, ``committed/D``,
the shared ``topology``, and the extra filters its settings grant (the topic inputs of the algorithm
packages assigned to it, e.g. ``openfeeder/v1/algo/+/energy``).

A **service** gets the grants of its :class:`ServiceRole` (role-based), plus ``status/<name>`` for
its own birth and last will and ``event/<name>`` for the security events of its payload protection
(:mod:`openfeeder.iot.protection`):

=========  =======================================================  ===================================
role       publishes                                                subscribes
=========  =======================================================  ===================================
catalog    config/+, topology, event/+ (liveness)                   status/+
historian  committed/+                                              meas/+, algo/+/+, event/+, status/+
flisr      cmd/+, topology                                          event/+, ack/+, status/+, algo/+/+,
                                                                    meas/+, topology
observer   (nothing)                                                openfeeder/v1/#
operator   openfeeder/v1/#                                          openfeeder/v1/#
=========  =======================================================  ===================================

``operator`` is for people and tools acting on the whole grid (the CLI, tests' legitimate full
subscriber); give it to few.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Final

from openfeeder.iot.topics import (
    MESSAGE_SPECS,
    MessageClass,
    all_filter,
    event_topic,
    filter_for,
    status_topic,
)
from openfeeder.security.acl import Access, AccessError, AccessTable, Grant

__all__ = [
    "DEVICE_ROLE",
    "DEVICE_SENDS",
    "ROLE_GRANTS",
    "ServiceRole",
    "build_access_table",
    "device_grants",
    "service_grants",
]

DEVICE_ROLE: Final = "device"
"""The role (certificate OU) of every field device."""

MC = MessageClass
DEVICE_SENDS: Final[frozenset[MessageClass]] = frozenset(
    {MC.MEASUREMENT, MC.ALGORITHM, MC.EVENT, MC.COMMAND_ACK, MC.STATUS}
)
"""Classes a device publishes about itself; every other class with a device level it receives."""


class ServiceRole(StrEnum):
    """Roles of platform services (certificate OU); each has a fixed set of grants."""

    CATALOG = "catalog"
    HISTORIAN = "historian"
    FLISR = "flisr"
    OBSERVER = "observer"
    OPERATOR = "operator"


def _any(message_class: MessageClass) -> str:
    return str(filter_for(message_class))


ROLE_GRANTS: Final[Mapping[ServiceRole, tuple[tuple[Access, MessageClass | None], ...]]] = {
    # (access, class) -- class None: the whole scheme (openfeeder/v1/#)
    ServiceRole.CATALOG: (
        (Access.WRITE, MC.CONFIG),
        (Access.WRITE, MC.TOPOLOGY),
        (Access.WRITE, MC.EVENT),
        (Access.READ, MC.STATUS),
    ),
    ServiceRole.HISTORIAN: (
        (Access.WRITE, MC.COMMITTED),
        (Access.READ, MC.MEASUREMENT),
        (Access.READ, MC.ALGORITHM),
        (Access.READ, MC.EVENT),
        (Access.READ, MC.STATUS),
    ),
    ServiceRole.FLISR: (
        (Access.WRITE, MC.COMMAND),
        (Access.READWRITE, MC.TOPOLOGY),
        (Access.READ, MC.EVENT),
        (Access.READ, MC.COMMAND_ACK),
        (Access.READ, MC.STATUS),
        (Access.READ, MC.ALGORITHM),
        (Access.READ, MC.MEASUREMENT),
    ),
    ServiceRole.OBSERVER: ((Access.READ, None),),
    ServiceRole.OPERATOR: ((Access.READWRITE, None),),
}


def device_grants(device_id: str, *, extra_read: Iterable[str] = ()) -> tuple[Grant, ...]:
    """A device's grants: its own topics, and ``extra_read`` filters (its plug-ins' inputs)."""
    grants: list[Grant] = []
    for message_class, spec in MESSAGE_SPECS.items():
        if not spec.has_device:
            if message_class not in DEVICE_SENDS:
                grants.append(Grant(Access.READ, str(filter_for(message_class))))
            continue
        own = str(filter_for(message_class, device_id=device_id))
        access = Access.WRITE if message_class in DEVICE_SENDS else Access.READ
        grants.append(Grant(access, own))
    grants += [Grant(Access.READ, flt) for flt in dict.fromkeys(extra_read)]
    return tuple(grants)


def service_grants(name: str, role: ServiceRole) -> tuple[Grant, ...]:
    """A service's grants: those of its role, and its own status topic (birth and last will)."""
    grants = [
        Grant(access, str(all_filter()) if message_class is None else _any(message_class))
        for access, message_class in ROLE_GRANTS[role]
    ]
    if not any(g.access.writes and g.pattern == str(all_filter()) for g in grants):
        grants.append(Grant(Access.WRITE, str(status_topic(name))))
        if not any(g.access.writes and g.pattern == _any(MC.EVENT) for g in grants):
            # security events of its payload protection (a rejected message) go here
            grants.append(Grant(Access.WRITE, str(event_topic(name))))
    return tuple(grants)


def build_access_table(
    *,
    devices: Mapping[str, Iterable[str]],
    services: Mapping[str, ServiceRole | str],
    version: int = 0,
) -> AccessTable:
    """The table for ``devices`` (id -> extra read filters) and ``services`` (name -> role).

    A name that is both a device and a service, or an unknown role, is refused
    (:class:`~openfeeder.security.acl.AccessError`).
    """
    entries: list[tuple[str, str, tuple[Grant, ...]]] = [
        (device_id, DEVICE_ROLE, device_grants(device_id, extra_read=extra))
        for device_id, extra in devices.items()
    ]
    for name, role in services.items():
        try:
            service_role = ServiceRole(role)
        except ValueError:
            roles = ", ".join(r.value for r in ServiceRole)
            raise AccessError(
                f"service {name}: role {role!r} is not one of {roles}", identity=name
            ) from None
        entries.append((name, str(service_role), service_grants(name, service_role)))
    return AccessTable.build(entries, version=version)
