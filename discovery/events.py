"""Membership events: a peer joined (first connection), left (last connection closed), or its
addresses changed (DESIGN.md, "How do I know when someone joins / leaves?"); and a peer took
up or dropped the supernode role (``SupernodeElected`` / ``SupernodeDropped``, published by
the supernode service, ``threatmesh.node.supernodes``, when the set this node follows changes).

Three layers:
- ``MembershipTracker`` (pure): fed connection changes and address observations with
  ``now``, returns the events they imply. A peer with two connections that loses one has
  not left. At most ``max_peers`` peers are tracked; beyond that new peers are counted in
  ``untracked`` and ignored (the host's connection limit is far lower in practice).
- ``EventHub``: fans events out to subscribers, each through its own bounded channel.
  ``publish`` never blocks: when a subscriber's buffer is full its event is dropped and
  counted, and the subscriber gets one ``EventsDropped(count)`` in band as soon as it has
  room again, so a slow reader knows what it missed and never stalls the node.
- ``Membership`` (thin service): a py-libp2p notifee that only puts changes into a bounded
  channel (notifee callbacks run on the swarm's event path, so they must not wait), a task
  that feeds them to the tracker and publishes, and a task that every ``poll_s`` compares
  the tracker with the host: it reports address changes (identify updates the peerstore
  without an event) and repairs membership if a change was dropped from a full queue.

Events carry peer IDs and addresses as strings so subscribers (API, CLI) need no libp2p.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog
import trio
from libp2p.abc import IHost, INetConn, INetwork
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStoreError

# trio's own TaskStatus type is hidden from mypy by trio-typing's stubs (see node/node.py).
from trio_typing import TaskStatus

from threatmesh.discovery.dialer import dialable_addrs
from threatmesh.discovery.errors import DiscoveryError, DiscoverySettingsError
from threatmesh.discovery.notifee import QuietNotifee

log = structlog.get_logger("threatmesh.discovery.events")


@dataclass(frozen=True)
class PeerJoined:
    peer_id: str
    addrs: tuple[str, ...]
    at: float


@dataclass(frozen=True)
class PeerLeft:
    peer_id: str
    at: float


@dataclass(frozen=True)
class PeerAddressesChanged:
    peer_id: str
    addrs: tuple[str, ...]
    at: float


@dataclass(frozen=True)
class SupernodeElected:
    """``peer_id`` took up the supernode role: it entered the set this node follows."""

    peer_id: str
    at: float


@dataclass(frozen=True)
class SupernodeDropped:
    """``peer_id`` dropped the supernode role: it left the set this node follows."""

    peer_id: str
    at: float


@dataclass(frozen=True)
class EventsDropped:
    """This subscriber missed ``count`` events because its buffer was full."""

    count: int
    at: float


MembershipEvent = (
    PeerJoined
    | PeerLeft
    | PeerAddressesChanged
    | SupernodeElected
    | SupernodeDropped
    | EventsDropped
)


# The tracker (pure) ------------------------------------------------------------------------


@dataclass
class _Member:
    connections: set[Hashable] = field(default_factory=set)
    addrs: tuple[str, ...] = ()


class MembershipTracker:
    """Who is connected, by connection; returns the events each change implies."""

    def __init__(self, *, max_peers: int = 4096) -> None:
        if max_peers < 1:
            raise DiscoverySettingsError("max_peers must be >= 1")
        self.max_peers = max_peers
        self.untracked = 0
        self._members: dict[str, _Member] = {}

    def members(self) -> list[str]:
        return list(self._members)

    def addrs_of(self, peer_id: str) -> tuple[str, ...]:
        member = self._members.get(peer_id)
        return () if member is None else member.addrs

    def connected(
        self, peer_id: str, connection: Hashable, addrs: Iterable[str], now: float
    ) -> list[MembershipEvent]:
        member = self._members.get(peer_id)
        if member is None:
            if len(self._members) >= self.max_peers:
                self.untracked += 1
                return []
            member = self._members[peer_id] = _Member({connection}, _normal(addrs))
            return [PeerJoined(peer_id, member.addrs, now)]
        member.connections.add(connection)
        return self.addresses(peer_id, addrs, now) if addrs else []

    def disconnected(self, peer_id: str, connection: Hashable, now: float) -> list[MembershipEvent]:
        member = self._members.get(peer_id)
        if member is None:
            return []
        member.connections.discard(connection)
        if member.connections:
            return []
        del self._members[peer_id]
        return [PeerLeft(peer_id, now)]

    def addresses(self, peer_id: str, addrs: Iterable[str], now: float) -> list[MembershipEvent]:
        member = self._members.get(peer_id)
        new = _normal(addrs)
        if member is None or not new or new == member.addrs:
            return []
        member.addrs = new
        return [PeerAddressesChanged(peer_id, new, now)]

    def reconcile(
        self, current: Mapping[str, Collection[Hashable]], now: float
    ) -> list[MembershipEvent]:
        """Bring the tracker in line with the host's connections ``current`` (peer -> conns)."""
        events: list[MembershipEvent] = []
        for peer_id in [p for p in self._members if not current.get(p)]:
            del self._members[peer_id]
            events.append(PeerLeft(peer_id, now))
        for peer_id, connections in current.items():
            if not connections:
                continue
            if peer_id in self._members:
                self._members[peer_id].connections = set(connections)
                continue
            for connection in connections:
                events.extend(self.connected(peer_id, connection, (), now))
        return events


def _normal(addrs: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(addrs)))


# The hub -----------------------------------------------------------------------------------


@dataclass
class _Subscriber:
    send: trio.MemorySendChannel[MembershipEvent]
    missed: int = 0  # dropped since the last EventsDropped this subscriber received


class EventHub:
    """Bounded fan-out. ``publish`` never blocks; a full subscriber loses events, counted."""

    def __init__(self, *, buffer: int = 64, max_subscribers: int = 64) -> None:
        if buffer < 1 or max_subscribers < 1:
            raise DiscoverySettingsError("event buffers and subscriber limits must be >= 1")
        self.buffer = buffer
        self.max_subscribers = max_subscribers
        self.dropped = 0
        self._subscribers: list[_Subscriber] = []
        self._closed = False

    def subscribe(self, buffer: int | None = None) -> trio.MemoryReceiveChannel[MembershipEvent]:
        """A new receive channel of every event from now on (closed when the hub closes)."""
        self._subscribers = [s for s in self._subscribers if not _receiver_gone(s.send)]
        if len(self._subscribers) >= self.max_subscribers:
            raise DiscoveryError(
                f"too many event subscribers ({self.max_subscribers}); close unused ones"
            )
        send, receive = trio.open_memory_channel[MembershipEvent](buffer or self.buffer)
        if self._closed:
            send.close()
        else:
            self._subscribers.append(_Subscriber(send))
        return receive

    def publish(self, event: MembershipEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                if subscriber.missed:
                    subscriber.send.send_nowait(EventsDropped(subscriber.missed, event.at))
                    subscriber.missed = 0
                subscriber.send.send_nowait(event)
            except trio.WouldBlock:
                subscriber.missed += 1
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(subscriber)

    def close(self) -> None:
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.send.close()
        self._subscribers.clear()


def _receiver_gone(send: trio.MemorySendChannel[MembershipEvent]) -> bool:
    return send.statistics().open_receive_channels == 0


# The service -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    connected: bool
    peer_id: ID
    connection: Hashable


class _ConnectionNotifee(QuietNotifee):
    def __init__(self, offer: _Offer) -> None:
        self._offer = offer

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._offer(_Change(True, conn.muxed_conn.peer_id, id(conn)))

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._offer(_Change(False, conn.muxed_conn.peer_id, id(conn)))


class _Offer:
    """Non-blocking hand-off from the notifee into the bounded change queue."""

    def __init__(self, send: trio.MemorySendChannel[_Change]) -> None:
        self._send = send
        self.dropped = 0

    def __call__(self, change: _Change) -> None:
        try:
            self._send.send_nowait(change)
        except trio.WouldBlock:
            self.dropped += 1  # the reconcile pass repairs membership
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class Membership:
    """Produces membership events for one host into ``hub``."""

    def __init__(
        self,
        host: IHost,
        hub: EventHub,
        *,
        queue_size: int = 256,
        poll_s: float = 2.0,
        max_peers: int = 4096,
    ) -> None:
        if queue_size < 1 or poll_s <= 0:
            raise DiscoverySettingsError("membership needs queue_size >= 1 and poll_s > 0")
        self._host = host
        self.hub = hub
        self.tracker = MembershipTracker(max_peers=max_peers)
        self._queue_size = queue_size
        self._poll_s = poll_s
        self._last_raw_addrs: dict[str, frozenset[bytes]] = {}
        self.changes_dropped = 0

    def members(self) -> list[str]:
        return self.tracker.members()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[_Change](self._queue_size)
        offer = _Offer(send)
        notifee = _ConnectionNotifee(offer)
        network = self._host.get_network()
        network.register_notifee(notifee)
        try:
            async with send, receive, trio.open_nursery() as nursery:
                self._publish(self.tracker.reconcile(self._current(), trio.current_time()))
                nursery.start_soon(self._apply_changes, receive)
                nursery.start_soon(self._poll)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.changes_dropped = offer.dropped
            remove = getattr(network, "remove_notifee", None)
            if remove is not None:
                remove(notifee)

    def _publish(self, events: Iterable[MembershipEvent]) -> None:
        for event in events:
            self.hub.publish(event)

    async def _apply_changes(self, receive: trio.MemoryReceiveChannel[_Change]) -> None:
        async for change in receive:
            now = trio.current_time()
            peer_id = change.peer_id.to_base58()
            if change.connected:
                events = self.tracker.connected(
                    peer_id, change.connection, self._addrs(change.peer_id), now
                )
            else:
                events = self.tracker.disconnected(peer_id, change.connection, now)
            self._publish(events)

    async def _poll(self) -> None:
        while True:
            await trio.sleep(self._poll_s)
            self.poll_once()

    def poll_once(self) -> None:
        """Report address changes and repair membership from the host's state.

        Cheap when nothing changed: a peer's addresses are compared as raw bytes first and
        turned into strings only when they differ from the last poll.
        """
        now = trio.current_time()
        current = self._current()
        self._publish(self.tracker.reconcile(current, now))
        seen: dict[str, frozenset[bytes]] = {}
        for peer_id in self.tracker.members():
            raw = self._raw_addrs(ID.from_base58(peer_id))
            seen[peer_id] = raw
            if self._last_raw_addrs.get(peer_id) != raw:
                self._publish(
                    self.tracker.addresses(peer_id, self._addrs(ID.from_base58(peer_id)), now)
                )
        self._last_raw_addrs = seen  # only current members: bounded like the tracker

    def _current(self) -> dict[str, list[Hashable]]:
        current: dict[str, list[Hashable]] = {}
        for peer_id, conns in list(self._host.get_network().connections.items()):
            live = [id(conn) for conn in conns if not getattr(conn, "is_closed", False)]
            if live:
                current[peer_id.to_base58()] = list(live)
        return current

    def _raw_addrs(self, peer_id: ID) -> frozenset[bytes]:
        try:
            return frozenset(addr.to_bytes() for addr in self._host.get_peerstore().addrs(peer_id))
        except PeerStoreError:
            return frozenset()

    def _addrs(self, peer_id: ID) -> list[str]:
        try:
            addrs = self._host.get_peerstore().addrs(peer_id)
        except PeerStoreError:
            return []
        return [str(addr) for addr in dialable_addrs(addrs)]
