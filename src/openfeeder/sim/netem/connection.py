"""One relayed connection: a device's TCP connection, the emulator's connection to the broker, and a
:class:`Pipe` per direction.

A pipe's reader frames and classifies packets as they arrive and gives each a release time at once
(so the arrival time is the time the bytes were read, not the time a queue got to them); its sender
writes the packets in order, each at its release time. When a pipe's source ends, the pipe flushes
what it holds and returns; the connection then closes both sides (see ``relay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Final

from openfeeder.sim.netem.config import Direction, EffectiveImpairment
from openfeeder.sim.netem.frames import PacketInspector, StreamFramer
from openfeeder.sim.netem.link import LinkState

if TYPE_CHECKING:
    from openfeeder.sim.netem.relay import NetworkEmulator

__all__ = ["PASSTHROUGH_CLASS", "RelayedConnection", "close_writer", "peer_name"]

_LOG = logging.getLogger(__name__)

_READ_BYTES: Final = 65536
PASSTHROUGH_CLASS: Final = "unframed"
"""Stats class of bytes relayed after a stream could not be framed as MQTT (forwarded untouched)."""
_NEUTRAL: Final = EffectiveImpairment()

_Item = tuple[float, bytes] | None


class RelayedConnection:
    """A device connection and its broker connection; :meth:`run` relays until either closes."""

    def __init__(
        self,
        emulator: NetworkEmulator,
        number: int,
        peer: str,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.emulator = emulator
        self.number = number
        self.peer = peer
        self.client = client
        self.upstream = upstream
        self.inspector = PacketInspector(peer=peer, topic_cache=emulator.topic_cache)

    async def run(self) -> None:
        pipes = [
            asyncio.create_task(Pipe(self, Direction.UPLINK).run(self.client[0], self.upstream[1])),
            asyncio.create_task(
                Pipe(self, Direction.DOWNLINK).run(self.upstream[0], self.client[1])
            ),
        ]
        _LOG.debug(
            "netem connection %d from %s",
            self.number,
            self.peer,
            extra={"event": "connection_opened", "connection": self.number, "peer": self.peer},
        )
        closed_by = "stop"
        try:
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            closed_by = next(iter(done)).result()
        finally:
            try:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                await asyncio.gather(close_writer(self.client[1]), close_writer(self.upstream[1]))
            finally:  # stop() cancelling this clean-up must not leave a socket open
                self.client[1].close()
                self.upstream[1].close()
            _LOG.info(
                "netem connection %d closed (%s) client_id=%s",
                self.number,
                closed_by,
                self.inspector.client_id,
                extra={
                    "event": "connection_closed",
                    "connection": self.number,
                    "peer": self.peer,
                    "client_id": self.inspector.client_id,
                    "closed_by": closed_by,
                },
            )


class Pipe:
    """One direction of a relayed connection: reader, link state, queue and sender."""

    def __init__(self, connection: RelayedConnection, direction: Direction) -> None:
        emulator = connection.emulator
        self.connection = connection
        self.emulator = emulator
        self.direction = direction
        rng = random.Random(f"{emulator.seed}:{connection.number}:{direction.value}")
        self.link = LinkState(rng, emulator.congestion_model)
        self.framer = StreamFramer()
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.queued_bytes = 0
        self.room = asyncio.Event()
        self.room.set()

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Relay until the source closes and the queue is flushed; returns why it ended."""
        loop = asyncio.get_running_loop()
        sender = asyncio.create_task(self._send(writer))
        reason = f"{self.direction.value} source closed"
        try:
            while True:
                try:
                    data = await reader.read(_READ_BYTES)
                except (ConnectionError, OSError) as err:
                    reason = f"{self.direction.value} source failed: {err}"
                    break
                if not data:
                    break
                now = loop.time()
                for packet in self.framer.feed(data):
                    self._schedule(packet, now)
                if self.queued_bytes > self.emulator.max_queued_bytes:
                    self.room.clear()
                    await self.room.wait()
            if sender.done():
                return f"{self.direction.value} destination failed"
            self.queue.put_nowait(None)
            await sender
            return reason
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    def _schedule(self, packet: bytes, now: float) -> None:
        direction = self.direction
        if self.framer.passthrough:
            message_class = PASSTHROUGH_CLASS
            decision = self.link.decide(now, len(packet), _NEUTRAL, droppable=False)
        else:
            info = self.connection.inspector.inspect(packet, direction)
            message_class = info.message_class
            impairment = self.emulator.impairment_for(message_class, info.device_id, direction)
            decision = self.link.decide(now, len(packet), impairment, droppable=info.droppable)
            if decision.dropped:
                _LOG.debug(
                    "netem dropped a QoS 0 PUBLISH on %s (%s)",
                    info.topic,
                    direction.value,
                    extra={
                        "event": "dropped",
                        "topic": info.topic,
                        "device_id": info.device_id,
                        "direction": direction.value,
                    },
                )
        self.emulator.counters.record(message_class, direction, len(packet), decision)
        if not decision.dropped:
            self.queued_bytes += len(packet)
            self.queue.put_nowait((decision.release_s, packet))

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        """Write each packet at its release time; returns after the end-of-stream marker."""
        loop = asyncio.get_running_loop()
        low_water = self.emulator.max_queued_bytes // 2
        while True:
            item = await self.queue.get()
            if item is None:
                return
            release_s, packet = item
            wait_s = release_s - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            try:
                writer.write(packet)
                await writer.drain()
            except (ConnectionError, OSError) as err:
                _LOG.debug(
                    "netem connection %d: %s write failed: %s",
                    self.connection.number,
                    self.direction.value,
                    err,
                    extra={"event": "write_failed", "connection": self.connection.number},
                )
                # closing the dead side ends the other pipe too (its reader sees end of stream)
                writer.close()
                self.room.set()
                return
            self.queued_bytes -= len(packet)
            if self.queued_bytes <= low_water:
                self.room.set()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream, ignoring a peer that is already gone."""
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def peer_name(writer: asyncio.StreamWriter) -> str:
    """``host:port`` of the stream's peer."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
