"""The historian: measurements from MQTT into SQLite or PostgreSQL, committed marks back to devices.

What it does, end to end
------------------------
1. **Intake.** One MQTT v5 *shared* subscription ``$share/{shared_group}/openfeeder/v1/meas/+`` on
   the **monitoring** broker, so several historians in one group split the load, with a persistent
   session (``clean_start=False``, session expiry ``[historian] session_expiry_s``, client id
   ``historian-{instance}.monitoring``): while a historian restarts the broker keeps queueing for
   it, within the broker's limits (Mosquitto: ``max_queued_messages``, 1000 by default; raise it).
   The link asks for a receive maximum of 65535 so that Mosquitto may keep that many messages in
   flight to it instead of its default 20. Both broker links are a lean MQTT v5 client on the
   project's codec (:mod:`.lean_link`), not paho, whose per-message cost alone would take half a
   core at the target rate. Each payload is decoded strictly; malformed JSON, an
   unknown schema version, an oversize payload, invalid fields, a topic outside the scheme and a
   device the catalog does not list (``require_registered_devices``; the list is re-read at most
   every ``device_refresh_interval_s`` when an unknown id shows up; when the catalog is unreachable
   the devices already known stay accepted) are rejected: counted by reason, one structured log
   line each, nothing stored, never a crash. Gaps in ``seq`` are counted on arrival.
2. **Batches.** Accepted messages go through a bounded queue (``queue_max_messages``; when full
   the MQTT thread waits, so the historian reads no faster than it writes) to one writer thread,
   which commits up to ``batch_max_messages`` (or what came within ``batch_max_delay_ms``) as one
   transaction, idempotent on ``(device_id, seq)``: a redelivered or re-sent message is ignored
   and counted as a duplicate. Storage layout and durability: :mod:`.store`.
3. **Committed marks.** Per device, ``high_water_seq`` is the highest ``seq`` such that every
   ``seq`` from 0 up to it is durably stored, or declared lost by the device. Marks are kept in
   memory (:mod:`.marks`), computed inside each batch's transaction and persisted in it
   (``historian_marks``), so a mark never claims more than what is committed; on restart they are
   rebuilt from ``historian_marks``, the rows above each mark and ``historian_losses``. After each
   batch the historian publishes a retained ``Committed(device_id, seq, t_ns, high_water_seq)`` on
   the **grid_ops** broker for each device whose mark advanced, at most every
   ``committed_interval_ms`` per device, the latest mark always following (:mod:`.committed`).
   A device that re-sends what its mark already covers is reminded of the mark, and every mark
   is published again after a reconnect. A mark may be published late or twice but never ahead
   of what is committed; a device should treat marks as monotonic (several historians publish
   for one device).
4. **Losses.** A meter whose bounded buffer overflowed announces the readings it dropped for good
   with an ``Event`` of kind ``data_dropped`` on grid_ops, values ``first_seq`` and ``last_seq``
   (unit ``1``). The historian subscribes to events (persistent session too), records the range in
   ``historian_losses`` in the next batch and lets the mark pass over it, so one lost range does
   not stall a device forever.

The end-to-end guarantee
------------------------
A broker acknowledges from memory, and the historian acknowledges a message to the broker when it
is queued, before it is committed; neither is the guarantee. The guarantee is the mark: a meter
keeps every reading until a ``Committed`` mark covers it and re-sends from ``mark + 1`` when the
mark stalls; the historian stores each ``(device_id, seq)`` once however often it arrives. So what
a broker crash, a ``kill -9`` of the historian, or a queue overflow loses is re-sent, and nothing
is stored twice. Meter ``seq`` numbers continue across the meter's restarts (they are never reset),
so the tracker is not told about births.

Several historians may share one database and one group: batches serialize on a database-wide
writer lock and each batch looks up, in the database, the rows other historians stored in its
devices' holes (at most every second per hole), so marks are right whichever historian got which
message.

Retention: with ``retention_days > 0`` the writer deletes, every 10 minutes, messages whose
``t_ns`` is older than that (marks and loss records stay).

Public API: :func:`serve_historian`, :class:`HistorianThread`, :class:`Historian`,
:func:`open_store`, the :class:`DeviceDirectory` protocol and its implementations; the REST API in
:mod:`.api`.
"""

from openfeeder.services.historian.core import Counters, HealthReport, Historian
from openfeeder.services.historian.directory import (
    CatalogDirectory,
    DeviceDirectory,
    OpenDirectory,
    StaticDirectory,
)
from openfeeder.services.historian.records import (
    BatchResult,
    Bucket,
    ChannelInfo,
    DeviceSummary,
    LossRange,
    RawPoint,
)
from openfeeder.services.historian.service import HistorianReady, HistorianThread, serve_historian
from openfeeder.services.historian.store import HistorianStore, SqlStore, open_store

__all__ = [
    "BatchResult",
    "Bucket",
    "CatalogDirectory",
    "ChannelInfo",
    "Counters",
    "DeviceDirectory",
    "DeviceSummary",
    "HealthReport",
    "Historian",
    "HistorianReady",
    "HistorianStore",
    "HistorianThread",
    "LossRange",
    "OpenDirectory",
    "RawPoint",
    "SqlStore",
    "StaticDirectory",
    "open_store",
    "serve_historian",
]
