"""``Discovery``: the service that finds and keeps a node's peers, composed of named tasks.

``Discovery.run`` is the list; each task is a short method that calls the pure pieces
(``rendezvous.members_to_dial``, ``connections.peers_to_prune``, ``PeerCache``, the
``MembershipTracker``) and carries out what they return:

- ``dht``: the swarm's Kademlia DHT (``libp2p_kad.SwarmDht``), routing table filled from
  connections as they are identified.
- ``membership``: joined / left / addresses-changed events, fanned out by ``events()``.
- ``connection_manager``: prunes down to the low watermark above the high one.
- ``bootstrap``: dials the configured bootstrap peers, each with its own capped backoff.
- ``rejoin``: dials the best peers of the peer cache at start, and again whenever the node
  finds itself with no connection at all.
- ``rendezvous``: provides the swarm's rendezvous key and dials the other providers.
- ``random_walks``: a random DHT lookup every ``random_walk_interval_s``.
  Both back off (to ``*_max_interval_s``) while their rounds find nobody new.
- ``peer_cache``: records connected swarm peers, saves ``peers.json`` every
  ``peer_cache_save_interval_s`` and at shutdown.
- ``mdns`` and ``lan_dialer`` (if enabled): the LAN beacon and the dials of what it finds.

Every peer source dials through one ``Dialer`` (bounded concurrency, backoff per peer).
Nothing here raises for the network: unreachable or misbehaving peers are logged and skipped,
and a round of a periodic task that fails in an unforeseen way is logged and retried next
round. Waits on time are the intervals of rendezvous, random walks, rejoin, the cache, the
connection manager and the membership poll; everything else waits on events.

Bootstrap lives here now (``Node.dial_bootstrap_peers`` did it before): one dialer, one
backoff table, one place that decides whom to dial. ``run`` may be called once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import DHTMode
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStoreError
from multiaddr import Multiaddr

# trio's own TaskStatus type is hidden from mypy by trio-typing's stubs (see node/node.py).
from trio_typing import TaskStatus

from threatmesh.discovery.connections import ConnectionManager, Watermarks
from threatmesh.discovery.dialer import DialBackoff, Dialer, DialOutcome, dialable_addrs
from threatmesh.discovery.errors import DiscoverySettingsError
from threatmesh.discovery.events import EventHub, Membership, MembershipEvent, PeerJoined
from threatmesh.discovery.libp2p_kad import (
    DhtMode,
    KadSettings,
    SwarmDht,
    resolve_dht_mode,
)
from threatmesh.discovery.mdns import MdnsBeacon, mdns_fingerprint
from threatmesh.discovery.peer_cache import (
    PeerCache,
    load_peer_cache,
    save_peer_cache,
)
from threatmesh.discovery.rendezvous import (
    next_round_delay_s,
    rendezvous_key,
    rendezvous_round,
)
from threatmesh.transports.addrs import parse_peer_addr
from threatmesh.transports.errors import ListenAddressError

log = structlog.get_logger("threatmesh.discovery")

BOOTSTRAP_FIRST_DELAY_S = 0.5
PEER_CACHE_SAVE_TIMEOUT_S = 2.0
DIAL_BACKOFF_MAX_PEERS = 4096  # peers remembered by the dial backoff


@dataclass(frozen=True)
class DiscoverySettings:
    """Discovery's part of the node config. Every bound has a default that fits a real swarm;
    tests shorten the intervals."""

    dht_mode: str = DhtMode.AUTO.value
    bootstrap: tuple[str, ...] = ()
    bootstrap_max_attempts: int = 8
    bootstrap_backoff_cap_s: float = 30.0
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()  # IP addresses; empty: every interface
    rendezvous_interval_s: float = 60.0  # after a round that found someone new
    rendezvous_max_interval_s: float = 600.0  # idle rounds double the wait up to this
    rendezvous_max_dials: int = 16  # new members dialled per rendezvous round
    random_walk_interval_s: float = 60.0
    random_walk_max_interval_s: float = 600.0
    rejoin_peers: int = 16  # cached peers dialled at start and when alone
    rejoin_interval_s: float = 30.0
    peer_cache_max_peers: int = 256
    peer_cache_save_interval_s: float = 10.0
    low_watermark: int = 32
    high_watermark: int = 96
    grace_period_s: float = 20.0
    connection_check_interval_s: float = 10.0
    dial_concurrency: int = 8
    dial_timeout_s: float = 10.0
    dial_backoff_first_s: float = 1.0
    dial_backoff_cap_s: float = 300.0
    identify_wait_s: float = 3.0
    lookup_timeout_s: float = 30.0
    event_buffer: int = 64
    membership_poll_s: float = 2.0
    protected_peers: tuple[str, ...] = ()  # base58 peer IDs never pruned

    def __post_init__(self) -> None:
        resolve_dht_mode(self.dht_mode, listening=True)  # raises on an unknown mode
        positive = (
            "bootstrap_backoff_cap_s",
            "rendezvous_interval_s",
            "rendezvous_max_interval_s",
            "random_walk_interval_s",
            "random_walk_max_interval_s",
            "rejoin_interval_s",
            "peer_cache_save_interval_s",
            "connection_check_interval_s",
            "dial_timeout_s",
            "dial_backoff_first_s",
            "dial_backoff_cap_s",
            "identify_wait_s",
            "lookup_timeout_s",
            "membership_poll_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise DiscoverySettingsError(f"{name} must be > 0, got {getattr(self, name)}")
        at_least_one = (
            "bootstrap_max_attempts",
            "rendezvous_max_dials",
            "rejoin_peers",
            "peer_cache_max_peers",
            "dial_concurrency",
            "event_buffer",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise DiscoverySettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        Watermarks(self.low_watermark, self.high_watermark, self.grace_period_s)
        for base, cap in (
            ("rendezvous_interval_s", "rendezvous_max_interval_s"),
            ("random_walk_interval_s", "random_walk_max_interval_s"),
        ):
            if getattr(self, cap) < getattr(self, base):
                raise DiscoverySettingsError(f"{cap} must be >= {base}")


class Discovery:
    """Finds and keeps this node's peers. ``await nursery.start(discovery.run)``."""

    def __init__(
        self,
        host: IHost,
        settings: DiscoverySettings,
        *,
        swarm: str,
        psk: bytes | None,
        peer_cache_path: Path,
    ) -> None:
        self.host = host
        self.settings = settings
        self.swarm = swarm
        self.peer_cache_path = peer_cache_path
        self.peer_cache = PeerCache(max_peers=settings.peer_cache_max_peers)
        initial_mode = DHTMode.SERVER if settings.dht_mode == DhtMode.SERVER else DHTMode.CLIENT
        self.dht = SwarmDht(
            host,
            swarm=swarm,
            settings=KadSettings(
                mode=initial_mode,
                identify_wait_s=settings.identify_wait_s,
                lookup_timeout_s=settings.lookup_timeout_s,
            ),
        )
        self.hub = EventHub(buffer=settings.event_buffer)
        self.membership = Membership(host, self.hub, poll_s=settings.membership_poll_s)
        self.dialer = Dialer(
            host,
            concurrency=settings.dial_concurrency,
            timeout_s=settings.dial_timeout_s,
            backoff=DialBackoff(
                first_s=settings.dial_backoff_first_s,
                cap_s=settings.dial_backoff_cap_s,
                max_peers=DIAL_BACKOFF_MAX_PEERS,
            ),
        )
        # Never pruned: peer -> why (a peer protected for two reasons stays protected until
        # both are withdrawn, e.g. a trusted peer that stops being a supernode).
        self._protected: dict[ID, set[str]] = {
            _peer_id(text): {"configured"} for text in settings.protected_peers
        }
        self.connection_manager = ConnectionManager(
            host,
            Watermarks(settings.low_watermark, settings.high_watermark, settings.grace_period_s),
            protected=lambda: self._protected.keys(),
            value_of=self._value_of,
            interval_s=settings.connection_check_interval_s,
        )
        self.beacon = (
            MdnsBeacon(
                host,
                mdns_fp=mdns_fingerprint(swarm, psk),
                interfaces=settings.mdns_interfaces,
            )
            if settings.mdns
            else None
        )
        self.rendezvous_key = rendezvous_key(swarm)
        self._bootstrap_peers = _parse_bootstrap(settings.bootstrap)
        self._membership_changed = trio.Event()
        # The mode the settings ask for, resolved when ``run`` starts (the supernode role
        # switches to server and back to this).
        self.configured_dht_mode: DHTMode = initial_mode

    # Lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every discovery task until cancelled; ``started`` once the DHT serves."""
        self.peer_cache = await trio.to_thread.run_sync(
            functools.partial(
                load_peer_cache, self.peer_cache_path, max_peers=self.settings.peer_cache_max_peers
            )
        )
        mode = resolve_dht_mode(
            self.settings.dht_mode, listening=bool(self.host.get_transport_addrs())
        )
        self.configured_dht_mode = mode
        await self.dht.set_mode(mode)
        internal_events = self.hub.subscribe(buffer=256)
        try:
            async with trio.open_nursery() as tasks:
                await tasks.start(self.dht.run, name="discovery.dht")
                await tasks.start(self.membership.run, name="discovery.membership")
                tasks.start_soon(self.watch_membership, internal_events, name="discovery.watch")
                await tasks.start(self.connection_manager.run, name="discovery.connections")
                tasks.start_soon(self.bootstrap, name="discovery.bootstrap")
                tasks.start_soon(self.rejoin, name="discovery.rejoin")
                tasks.start_soon(self.rendezvous, name="discovery.rendezvous")
                tasks.start_soon(self.random_walks, name="discovery.random_walks")
                tasks.start_soon(self.keep_peer_cache, name="discovery.peer_cache")
                if self.beacon is not None:
                    tasks.start_soon(self.run_mdns, name="discovery.mdns")
                    tasks.start_soon(self.dial_lan_peers, name="discovery.lan_dialer")
                log.info(
                    "discovery started",
                    swarm=self.swarm,
                    dht_protocol=str(self.dht.protocol_id),
                    dht_mode=mode.value.lower(),
                    cached_peers=len(self.peer_cache),
                    mdns=self.beacon.service_type if self.beacon else "off",
                )
                task_status.started()
        finally:
            self.hub.close()

    # Public API ----------------------------------------------------------------------

    def events(self, buffer: int | None = None) -> trio.MemoryReceiveChannel[MembershipEvent]:
        """Membership events from now on, through a bounded channel of ``buffer`` events.

        A subscriber that falls behind loses events and gets one ``EventsDropped(count)``
        in their place; it never slows the node. Close the channel when done.
        """
        return self.hub.subscribe(buffer)

    async def find_peer(self, peer_id: ID) -> PeerInfo | None:
        """``peer_id``'s addresses, from what we know or through the DHT; None if not found."""
        return await self.dht.find_peer(peer_id)

    def protect(self, peer_id: ID, reason: str = "trusted") -> None:
        """Never prune ``peer_id`` (trusted peers, supernodes) while any reason holds."""
        self._protected.setdefault(peer_id, set()).add(reason)

    def unprotect(self, peer_id: ID, reason: str = "trusted") -> None:
        """Withdraw one reason; the peer may be pruned once it has none left."""
        reasons = self._protected.get(peer_id)
        if reasons is not None:
            reasons.discard(reason)
            if not reasons:
                del self._protected[peer_id]

    def is_protected(self, peer_id: ID) -> bool:
        return peer_id in self._protected

    def publish_event(self, event: MembershipEvent) -> None:
        """Hand an event of another service (a role change) to every events() subscriber."""
        self.hub.publish(event)

    def mark_supernode(self, peer_id: ID, addrs: list[str], *, supernode: bool) -> None:
        """Write ``peer_id`` into the peer cache as a supernode (a rejoin point), or clear the
        mark. Saved with the next periodic save of ``peers.json``."""
        self.peer_cache.record(peer_id.to_base58(), addrs, time.time(), supernode=supernode)

    def known_peers(self) -> set[ID]:
        """Swarm peers this node knows: its routing table and connected swarm peers."""
        known = set(self.dht.routing_table_peers())
        known.update(p for p in self.host.get_connected_peers() if self.dht.serves_our_dht(p))
        known.discard(self.host.get_id())
        return known

    def status(self) -> Mapping[str, Any]:
        return {
            "dht_protocol": str(self.dht.protocol_id),
            "dht_mode": self.dht.mode.value.lower(),
            "routing_table": self.dht.routing_table_size(),
            "connected": len(self.host.get_connected_peers()),
            "known_peers": len(self.known_peers()),
            "cached_peers": len(self.peer_cache),
            "dials_connected": self.dialer.connected,
            "dials_failed": self.dialer.failed,
            "pruned": self.connection_manager.pruned,
            "events_dropped": self.hub.dropped,
            "mdns_found": self.beacon.found if self.beacon else 0,
        }

    # Tasks ----------------------------------------------------------------------------

    async def watch_membership(self, events: trio.MemoryReceiveChannel[MembershipEvent]) -> None:
        """Wake the tasks that wait for peers, and the connection manager, on every change."""
        async with events:
            async for event in events:
                changed, self._membership_changed = self._membership_changed, trio.Event()
                changed.set()
                if isinstance(event, PeerJoined):
                    self.connection_manager.wake()

    async def _wait_for_a_peer(self) -> None:
        while not self.host.get_connected_peers():
            await self._membership_changed.wait()

    async def bootstrap(self) -> None:
        """Dial every configured bootstrap peer, each with its own capped backoff."""
        async with trio.open_nursery() as nursery:
            for peer_info in self._bootstrap_peers:
                nursery.start_soon(
                    functools.partial(
                        self.dialer.dial_with_retries,
                        peer_info,
                        source="bootstrap",
                        attempts=self.settings.bootstrap_max_attempts,
                        first_s=BOOTSTRAP_FIRST_DELAY_S,
                        cap_s=self.settings.bootstrap_backoff_cap_s,
                    )
                )

    async def rejoin(self) -> None:
        """Dial the best cached peers now, and again whenever no peer is connected."""
        first = True
        while True:
            if first or not self.host.get_connected_peers():
                with _round_errors_logged("rejoin"):
                    candidates = self._cached_candidates()
                    if not first:
                        candidates += self._bootstrap_peers  # their backoff is the dialer's
                    if candidates:
                        outcomes = await self.dialer.dial_all(candidates, source="peer-cache")
                        log.debug(
                            "rejoin round",
                            candidates=len(candidates),
                            connected=outcomes.count(DialOutcome.CONNECTED),
                        )
            first = False
            await trio.sleep(self.settings.rejoin_interval_s)

    def _cached_candidates(self) -> list[PeerInfo]:
        candidates: list[PeerInfo] = []
        for cached in self.peer_cache.ranked(time.time(), self.settings.rejoin_peers):
            try:
                peer_id = ID.from_base58(cached.peer_id)
            except Exception:  # checked on load; guard against a bad edit in memory
                continue
            candidates.append(PeerInfo(peer_id, [Multiaddr(addr) for addr in cached.addrs]))
        return candidates

    async def rendezvous(self) -> None:
        """Provide the swarm's key and dial the other providers: first once a peer is
        connected, then every ``rendezvous_interval_s``, backing off to
        ``rendezvous_max_interval_s`` while rounds find nobody new."""
        delay_s: float | None = None
        providers_seen = 0
        while True:
            await self._wait_for_a_peer()
            productive = False
            with _round_errors_logged("rendezvous"):
                result = await rendezvous_round(
                    self.dht,
                    self.dialer,
                    self.rendezvous_key,
                    our_peer_id=self.host.get_id(),
                    connected=set(self.host.get_connected_peers()),
                    max_dials=self.settings.rendezvous_max_dials,
                )
                productive = result.connected > 0 or result.providers > providers_seen
                providers_seen = max(providers_seen, result.providers)
                log.debug(
                    "rendezvous round",
                    provided=result.provided,
                    providers=result.providers,
                    dialled=result.dialled,
                    connected=result.connected,
                )
            delay_s = next_round_delay_s(
                delay_s,
                productive=productive,
                base_s=self.settings.rendezvous_interval_s,
                cap_s=self.settings.rendezvous_max_interval_s,
            )
            await trio.sleep(delay_s)

    async def random_walks(self) -> None:
        """A random DHT walk every ``random_walk_interval_s`` while a peer is connected,
        backing off to ``random_walk_max_interval_s`` while walks add nobody to the table.

        The first walk waits one interval: the first rendezvous round has just looked up
        the DHT, and a whole swarm starting at once should not double its lookups.
        """
        delay_s = self.settings.random_walk_interval_s
        while True:
            await trio.sleep(delay_s)
            await self._wait_for_a_peer()
            added = 0
            with _round_errors_logged("random walk"):
                added = await self.dht.random_walk()
                log.debug("random walk", added=added, routing_table=self.dht.routing_table_size())
            delay_s = next_round_delay_s(
                delay_s,
                productive=added > 0,
                base_s=self.settings.random_walk_interval_s,
                cap_s=self.settings.random_walk_max_interval_s,
            )

    async def keep_peer_cache(self) -> None:
        """Record connected swarm peers and save the cache, periodically and at shutdown."""
        try:
            while True:
                await trio.sleep(self.settings.peer_cache_save_interval_s)
                with _round_errors_logged("peer cache"):
                    self.record_connected_peers()
                    await self.save_peer_cache()
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(PEER_CACHE_SAVE_TIMEOUT_S),
                _round_errors_logged("peer cache"),
            ):
                self.record_connected_peers()
                await self.save_peer_cache()

    def record_connected_peers(self) -> int:
        """Put every connected peer that serves our DHT in the cache; returns how many."""
        now = time.time()  # wall clock: the cache outlives this process
        recorded = 0
        for peer_id in self.host.get_connected_peers():
            if not self.dht.serves_our_dht(peer_id):
                continue
            try:
                addrs = dialable_addrs(self.host.get_peerstore().addrs(peer_id))
            except PeerStoreError:
                continue
            if addrs:
                self.peer_cache.record(peer_id.to_base58(), [str(a) for a in addrs], now)
                recorded += 1
        return recorded

    async def save_peer_cache(self) -> None:
        try:
            # trio-typing's stubs predate ``abandon_on_cancel`` (trio >= 0.23).
            await trio.to_thread.run_sync(  # type: ignore[call-arg]
                save_peer_cache, self.peer_cache_path, self.peer_cache, abandon_on_cancel=True
            )
        except OSError as error:
            log.warning(
                "cannot save the peer cache", path=str(self.peer_cache_path), error=str(error)
            )

    async def run_mdns(self) -> None:
        """The LAN beacon. If it cannot start (an interface address this host does not have,
        no multicast), the node goes on without it, after one warning."""
        assert self.beacon is not None
        try:
            await self.beacon.run()
        except Exception as error:  # zeroconf raises OSError, NonUniqueNameException, ...
            log.warning(
                "mDNS beacon stopped; continuing without it",
                service=self.beacon.service_type,
                interfaces=list(self.beacon.interfaces) or "all",
                error=repr(error),
            )

    async def dial_lan_peers(self) -> None:
        """Dial the peers the mDNS beacon finds (one at a time: LAN peers are few)."""
        assert self.beacon is not None
        async with self.beacon.discovered() as found:
            async for peer_info in found:
                addrs = dialable_addrs(peer_info.addrs)
                if addrs:
                    with _round_errors_logged("mDNS dial"):
                        self.host.get_peerstore().add_addrs(peer_info.peer_id, addrs, 3600)
                        await self.dialer.dial(PeerInfo(peer_info.peer_id, addrs), source="mdns")

    # Helpers ---------------------------------------------------------------------------

    def _value_of(self, peer_id: ID) -> int:
        """How useful a connection is to the connection manager: in our DHT table or not."""
        return 1 if self.dht.kad.routing_table.peer_in_table(peer_id) else 0


@contextmanager
def _round_errors_logged(task: str) -> Iterator[None]:
    """One round of a periodic task fails alone: py-libp2p raises types nobody documents
    (for example ``OSError`` from ``get_addrs`` while the host is closing). The next round
    tries again; cancellation still goes through (it is not an ``Exception``)."""
    try:
        yield
    except Exception as error:
        log.warning("discovery round failed", task=task, error=repr(error))


def _peer_id(text: str) -> ID:
    try:
        return ID.from_base58(text)
    except Exception:
        raise DiscoverySettingsError(f"protected peer {text!r} is not a valid peer ID") from None


def _parse_bootstrap(addresses: tuple[str, ...]) -> list[PeerInfo]:
    """The bootstrap peers; a malformed address is skipped with one warning naming it."""
    peers: list[PeerInfo] = []
    for text in addresses:
        try:
            peers.append(parse_peer_addr(text))
        except ListenAddressError as error:
            log.warning("bootstrap address ignored", address=text, error=str(error))
    return peers
