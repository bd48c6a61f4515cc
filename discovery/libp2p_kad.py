"""The one adapter between threatmesh and py-libp2p 0.8.1's Kademlia DHT (``libp2p.kad_dht``).

``SwarmDht`` is the DHT a node runs: upstream's ``KadDHT`` with each of its defaults that is
wrong for us fixed here, and only here.

- Protocol id. A swarm's DHT speaks ``/threatmesh/<swarm>/kad/1.0.0`` and never
  ``/ipfs/kad/1.0.0`` (DESIGN.md, Wire protocol), so a swarm never mixes with the IPFS DHT or
  with another swarm. Upstream accepts ``protocol_prefix`` but only ``validate_config`` reads
  it; the handler (``kad_dht.py`` ctor and ``switch_mode``), the outbound ``new_stream`` calls
  (``peer_routing.py``, ``provider_store.py``, ``value_store.py``) and the routing-table
  admission check (``routing_table.py``, ``add_peer``) all use ``common.PROTOCOL_ID``.
  Rebinding that module global would give one DHT protocol per *process*; tests run several
  swarms in one process, so instead ``KadDHT`` is handed a *view* of the host
  (``KadHostView``) that maps ``/ipfs/kad/1.0.0`` to our id on the way out, and a peerstore
  view that reports our id as ``/ipfs/kad/1.0.0`` (and hides a real ``/ipfs/kad/1.0.0``) on
  the way in. Every py-libp2p object other than the DHT sees the real host.
- Routing-table fill. Upstream registers no notifee: a connected peer enters the table only if
  it opens a KAD stream to us or we query it. ``SwarmDht`` watches connections (a notifee that
  only puts the peer ID into a bounded channel), waits, bounded, until identify has told us
  the peer's protocols, and admits the peer if it serves our swarm's DHT (server mode,
  libp2p Kademlia spec: "nodes add another node to their routing table if and only if that
  node operates in server mode").
- Provider lookups. Upstream's ``find_providers`` returns only local records as soon as the
  local store has one for the key (so a node that provides the swarm's rendezvous key itself
  never hears of the others), and keeps one copy of a provider per peer that answered.
  ``find_providers`` here asks the k closest peers of the key directly and deduplicates;
  ``provide_and_find_providers`` does both halves of a rendezvous with one lookup instead of
  upstream's two. These use ``ProviderStore._get_providers_from_peer_with_closers`` and
  ``_send_add_provider``, private methods: the version pin in pyproject.toml and
  ``tests/test_discovery_kad.py`` guard them.
- Keys. A py-libp2p server resets the stream on a FIND_NODE key that is neither a multihash
  nor 2..50 bytes (``kad_dht.py``, FIND_NODE), and ``provide`` runs FIND_NODE on the raw
  key. ``dht_key`` makes every key a sha2-256 multihash (34 bytes).
- Random walks. Upstream's ``RTRefreshManager`` reads the wall clock, fixes its concurrency at
  import time and feeds every peerstore peer (any swarm) into the table while it holds fewer
  than 20; we leave it off and do one walk per call of ``random_walk`` (the discovery service
  calls it at its own interval).
- Log noise. A peer closing its KAD stream normally makes upstream log a WARNING "Failed to
  read DHT message from stream: " (``StreamEOF`` is not the clean-EOF case it checks for);
  ``_DropKadEOF`` filters exactly that record.

Every wait here is bounded (``KadSettings``); every failure of a remote peer is logged and
reported as "not found", never raised.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import structlog
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import StreamHandlerFn, TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStoreError
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

# trio's own TaskStatus type is hidden from mypy by trio-typing's stubs (see node/node.py).
from trio_typing import TaskStatus

from threatmesh.discovery.errors import DiscoverySettingsError
from threatmesh.discovery.notifee import QuietNotifee

log = structlog.get_logger("threatmesh.discovery.kad")

IPFS_KAD_PROTOCOL_ID = TProtocol("/ipfs/kad/1.0.0")

# sha2-256 multihash: code 0x12, digest length 0x20, then the 32-byte digest (multiformats
# multihash table). A py-libp2p server accepts any key that decodes as a multihash.
SHA2_256_MULTIHASH_PREFIX = b"\x12\x20"
DHT_KEY_BYTES = len(SHA2_256_MULTIHASH_PREFIX) + 32
# kad_dht.py, FIND_NODE: a key that is not a multihash must be 2..50 bytes.
MAX_FIND_NODE_KEY_BYTES = 50

# How often to look at the peerstore while waiting for identify (it has no event).
IDENTIFY_POLL_S = 0.05


def kad_protocol_id(swarm: str) -> TProtocol:
    """The DHT protocol id of ``swarm``: ``/threatmesh/<swarm>/kad/1.0.0``."""
    if not swarm or "/" in swarm:
        raise DiscoverySettingsError(f"swarm name {swarm!r} cannot be part of a protocol id")
    return TProtocol(f"/threatmesh/{swarm}/kad/1.0.0")


def dht_key(data: bytes) -> bytes:
    """The DHT key of ``data``: its sha2-256 multihash (34 bytes, within every key limit)."""
    return SHA2_256_MULTIHASH_PREFIX + hashlib.sha256(data).digest()


class DhtMode(enum.StrEnum):
    """The ``dht_mode`` setting. ``auto`` serves the DHT when the node listens."""

    AUTO = "auto"
    SERVER = "server"
    CLIENT = "client"


def resolve_dht_mode(mode: DhtMode | str, *, listening: bool) -> DHTMode:
    """The upstream mode for ``mode``. ``auto``: server if the node listens, else client.

    A node that cannot be dialled must not serve the DHT: others would put it in their
    routing tables and time out on it. Reachability checks (AutoNAT) can refine ``listening``.
    """
    try:
        chosen = DhtMode(mode)
    except ValueError:
        raise DiscoverySettingsError(
            f"dht_mode {mode!r}: expected one of {', '.join(m.value for m in DhtMode)}"
        ) from None
    if chosen is DhtMode.SERVER or (chosen is DhtMode.AUTO and listening):
        return DHTMode.SERVER
    return DHTMode.CLIENT


def without_p2p(addr: Multiaddr) -> Multiaddr:
    """``addr`` without a trailing ``/p2p/<peer id>`` (the peerstore keeps bare addresses)."""
    text = str(addr)
    if "/p2p/" not in text:
        return addr
    return Multiaddr(text.split("/p2p/", 1)[0])


def merge_providers(providers: Iterable[PeerInfo]) -> list[PeerInfo]:
    """One ``PeerInfo`` per peer, in first-seen order, with the union of its addresses.

    py-libp2p returns a provider once per peer that answered (``provider_store.py``,
    ``all_providers.extend``), so the same provider comes back several times.
    """
    merged: dict[ID, list[Multiaddr]] = {}
    for provider in providers:
        addrs = merged.setdefault(provider.peer_id, [])
        for addr in provider.addrs:
            bare = without_p2p(addr)
            if bare not in addrs:
                addrs.append(bare)
    return [PeerInfo(peer_id, addrs) for peer_id, addrs in merged.items()]


# The host view (recipe B in ../shared/notes/py-libp2p-dht-pnet-mdns.md, section 1) -----------


class _PeerstoreView:
    """The real peerstore, except that protocol lists name our DHT as ``/ipfs/kad/1.0.0``.

    Read by ``routing_table.py`` (``add_peer``): a peer is admitted only if its protocols
    contain ``common.PROTOCOL_ID``. A peer that speaks the real IPFS DHT is hidden from it.
    """

    def __init__(self, peerstore: Any, protocol_id: TProtocol) -> None:
        self._peerstore = peerstore
        self._protocol_id = protocol_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peerstore, name)

    def get_protocols(self, peer_id: ID) -> list[str]:
        protocols = self._peerstore.get_protocols(peer_id) or []
        return [
            IPFS_KAD_PROTOCOL_ID if protocol == self._protocol_id else protocol
            for protocol in protocols
            if protocol != IPFS_KAD_PROTOCOL_ID
        ]


class KadHostView:
    """The host as ``KadDHT`` must see it: ``/ipfs/kad/1.0.0`` is our swarm's protocol id.

    Only the DHT holds this view; it forwards everything else to the real host. It also counts
    the DHT's outbound streams (``outbound_streams``), which tests and benchmarks read.
    """

    def __init__(self, host: IHost, protocol_id: TProtocol) -> None:
        self._host = host
        self._protocol_id = protocol_id
        self._peerstore = _PeerstoreView(host.get_peerstore(), protocol_id)
        self.outbound_streams = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def _ours(self, protocol: TProtocol) -> TProtocol:
        return self._protocol_id if protocol == IPFS_KAD_PROTOCOL_ID else protocol

    def set_stream_handler(self, protocol_id: TProtocol, handler: StreamHandlerFn) -> None:
        self._host.set_stream_handler(self._ours(protocol_id), handler)

    def remove_stream_handler(self, protocol_id: TProtocol) -> None:
        self._host.remove_stream_handler(self._ours(protocol_id))

    async def new_stream(self, peer_id: ID, protocol_ids: Sequence[TProtocol]) -> INetStream:
        self.outbound_streams += 1
        return await self._host.new_stream(peer_id, [self._ours(p) for p in protocol_ids])

    def get_peerstore(self) -> Any:
        return self._peerstore


class _DropKadEOF(logging.Filter):
    """Drops upstream's WARNING for a peer that closed its KAD stream normally."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        return not (
            message.startswith("Failed to read DHT message")
            and bool(record.args)
            and isinstance(record.args, tuple)
            and isinstance(record.args[0], StreamEOF)
        )


def _install_log_filter() -> None:
    upstream = logging.getLogger("libp2p.kad_dht.kad_dht")
    if not any(isinstance(existing, _DropKadEOF) for existing in upstream.filters):
        upstream.addFilter(_DropKadEOF())


# The DHT -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KadSettings:
    """Bounds of one ``SwarmDht``. Every wait and queue here has one."""

    mode: DHTMode = DHTMode.SERVER
    identify_wait_s: float = 3.0  # how long a new connection may take to be identified
    admission_queue_size: int = 256  # connected peers waiting to enter the routing table
    admission_workers: int = 8  # admissions in flight at once
    query_timeout_s: float = 10.0  # one request to one peer
    lookup_timeout_s: float = 30.0  # one whole iterative lookup
    provider_query_concurrency: int = 10  # peers asked for providers at once
    max_providers: int = 64  # providers returned by one find_providers

    def __post_init__(self) -> None:
        for name in ("identify_wait_s", "query_timeout_s", "lookup_timeout_s"):
            if getattr(self, name) <= 0:
                raise DiscoverySettingsError(f"{name} must be > 0")
        for name in (
            "admission_queue_size",
            "admission_workers",
            "provider_query_concurrency",
            "max_providers",
        ):
            if getattr(self, name) < 1:
                raise DiscoverySettingsError(f"{name} must be >= 1")


@dataclass
class KadStats:
    """Counters, for status and tests. Monotonic except ``routing_table``."""

    admitted: int = 0
    not_in_swarm: int = 0  # identified, but does not serve our swarm's DHT
    identify_timeouts: int = 0
    admissions_dropped: int = 0  # the admission queue was full
    lookups_failed: int = 0


class _AdmissionNotifee(QuietNotifee):
    """Puts each newly connected peer into the admission queue; never blocks the swarm."""

    def __init__(self, offer: Callable[[ID], object]) -> None:
        self._offer = offer

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._offer(conn.muxed_conn.peer_id)


_T = TypeVar("_T")


class SwarmDht:
    """Kademlia for one swarm on one host. Run it (``nursery.start(dht.run)``), then query.

    Queries may be made only while ``run`` is running. They never raise for a remote failure:
    a lookup that fails or times out is logged once and returns "not found".
    """

    def __init__(self, host: IHost, *, swarm: str, settings: KadSettings | None = None) -> None:
        _install_log_filter()
        self.settings = settings if settings is not None else KadSettings()
        self.protocol_id = kad_protocol_id(swarm)
        self.stats = KadStats()
        self._host = host
        self.view = KadHostView(host, self.protocol_id)
        self.kad = KadDHT(cast(IHost, self.view), self.settings.mode)
        self._admissions: trio.MemorySendChannel[ID] | None = None

    @property
    def mode(self) -> DHTMode:
        return self.kad.mode

    # Lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve (in server mode) and fill the routing table until cancelled."""
        send, receive = trio.open_memory_channel[ID](self.settings.admission_queue_size)
        notifee = _AdmissionNotifee(self.request_admission)
        network = self._host.get_network()
        network.register_notifee(notifee)
        try:
            async with send, receive, background_trio_service(self.kad):
                self._admissions = send
                async with trio.open_nursery() as nursery:
                    for _ in range(self.settings.admission_workers):
                        nursery.start_soon(self._admission_worker, receive.clone())
                    for peer_id in self._host.get_connected_peers():
                        self.request_admission(peer_id)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._admissions = None
            _remove_notifee(network, notifee)

    async def set_mode(self, mode: DHTMode) -> None:
        """Switch server/client. Upstream empties the routing table on a switch to client."""
        if mode != self.kad.mode:
            await self.kad.switch_mode(mode)

    # Routing table -----------------------------------------------------------------------

    def request_admission(self, peer_id: ID) -> bool:
        """Queue ``peer_id`` for the routing table; False (and counted) if the queue is full."""
        if self._admissions is None or peer_id == self._host.get_id():
            return False
        try:
            self._admissions.send_nowait(peer_id)
        except trio.WouldBlock:
            self.stats.admissions_dropped += 1
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _admission_worker(self, receive: trio.MemoryReceiveChannel[ID]) -> None:
        async with receive:
            async for peer_id in receive:
                await self.admit(peer_id)

    async def admit(self, peer_id: ID) -> bool:
        """Put ``peer_id`` in the routing table if identify says it serves our swarm's DHT."""
        if peer_id == self._host.get_id() or self.kad.routing_table.peer_in_table(peer_id):
            return False
        protocols = await self._wait_for_protocols(peer_id)
        if not protocols:
            self.stats.identify_timeouts += 1
            log.debug("peer not identified in time; not in routing table", peer_id=str(peer_id))
            return False
        if self.protocol_id not in protocols:
            self.stats.not_in_swarm += 1
            return False
        added = await self.kad.add_peer(peer_id)
        if added:
            self.stats.admitted += 1
        return added

    async def _wait_for_protocols(self, peer_id: ID) -> list[str]:
        with trio.move_on_after(self.settings.identify_wait_s):
            while True:
                protocols = self.protocols_of(peer_id)
                if protocols:
                    return protocols
                # identify completing has no event in py-libp2p; poll the peerstore.
                await trio.sleep(IDENTIFY_POLL_S)
        return []

    def protocols_of(self, peer_id: ID) -> list[str]:
        """The protocols identify reported for ``peer_id`` ([] if not identified yet)."""
        try:
            return list(self._host.get_peerstore().get_protocols(peer_id) or [])
        except PeerStoreError:
            return []

    def serves_our_dht(self, peer_id: ID) -> bool:
        """Whether identify says ``peer_id`` serves this swarm's DHT."""
        return self.protocol_id in self.protocols_of(peer_id)

    def routing_table_peers(self) -> list[ID]:
        return list(self.kad.routing_table.get_peer_ids())

    def routing_table_size(self) -> int:
        return int(self.kad.routing_table.size())

    # Queries -----------------------------------------------------------------------------

    async def _bounded(self, what: str, call: Callable[[], Awaitable[_T]], empty: _T) -> _T:
        """Run one upstream lookup under ``lookup_timeout_s``; log and return ``empty`` on error."""
        try:
            with trio.fail_after(self.settings.lookup_timeout_s):
                return await call()
        except trio.TooSlowError:
            self.stats.lookups_failed += 1
            log.info("DHT lookup timed out", lookup=what, timeout_s=self.settings.lookup_timeout_s)
        except Exception as error:  # upstream raises many types on junk answers
            self.stats.lookups_failed += 1
            log.info("DHT lookup failed", lookup=what, error=str(error) or type(error).__name__)
        return empty

    async def closest_peers(self, key: bytes) -> list[ID]:
        """The peers closest to ``key`` that an iterative FIND_NODE finds (self excluded)."""
        if len(key) > MAX_FIND_NODE_KEY_BYTES:
            raise DiscoverySettingsError(
                f"DHT key of {len(key)} bytes; use dht_key() (max {MAX_FIND_NODE_KEY_BYTES})"
            )
        found = await self._bounded(
            "closest peers",
            lambda: self.kad.peer_routing.find_closest_peers_network(key),
            cast(list[ID], []),
        )
        return [peer_id for peer_id in found if peer_id != self._host.get_id()]

    async def find_peer(self, peer_id: ID) -> PeerInfo | None:
        """``peer_id``'s addresses: from the routing table, the peerstore, or a DHT lookup."""
        found = await self._bounded(
            "find peer", lambda: self.kad.peer_routing.find_peer(peer_id), None
        )
        return None if found is None else _bare(found)

    async def lookup_peer(self, peer_id: ID) -> PeerInfo | None:
        """``peer_id``'s addresses through the network, whether or not we knew them before.

        The peer counts as found when the lookup reaches it: it is among the closest peers
        to its own ID that the iterative FIND_NODE returns.
        """
        closest = await self.closest_peers(peer_id.to_bytes())
        if peer_id not in closest:
            return None
        try:
            return _bare(PeerInfo(peer_id, self._host.get_peerstore().addrs(peer_id)))
        except PeerStoreError:
            return None

    async def random_walk(self) -> int:
        """One random walk (a lookup of a random 32-byte key); returns routing-table growth."""
        before = set(self.routing_table_peers())
        for peer_id in await self.closest_peers(secrets.token_bytes(32)):
            if peer_id not in before:
                await self.kad.add_peer(peer_id)
        return len(set(self.routing_table_peers()) - before)

    async def provide(self, key: bytes) -> bool:
        """Announce that we provide ``key`` to its k closest peers; True if one accepted."""
        if len(key) != DHT_KEY_BYTES:
            raise DiscoverySettingsError("provider keys must come from dht_key()")
        return await self._bounded("provide", lambda: self.kad.provider_store.provide(key), False)

    async def provide_and_find_providers(self, key: bytes) -> tuple[bool, list[PeerInfo]]:
        """``provide`` and ``find_providers`` in one lookup of ``key`` (the rendezvous step).

        Upstream's ``provide`` runs its own lookup of the closest peers, and a search for
        providers would run a second one for the same key; here one lookup serves both:
        each of the k closest peers gets our ADD_PROVIDER and is asked GET_PROVIDERS.
        Returns (whether a peer accepted our record, the providers, each once).
        """
        if len(key) != DHT_KEY_BYTES:
            raise DiscoverySettingsError("provider keys must come from dht_key()")
        store = self.kad.provider_store
        # What upstream's provide() does locally: our own record, republished every 22 h.
        store.providing_keys.add(key)
        store.add_provider(key, PeerInfo(self._host.get_id(), self._host.get_addrs()))
        found: list[PeerInfo] = list(store.get_providers(key))
        accepted = [0]
        limiter = trio.Semaphore(self.settings.provider_query_concurrency)

        async def exchange(peer_id: ID) -> None:
            async with limiter:
                with trio.move_on_after(self.settings.query_timeout_s):
                    try:
                        if await store._send_add_provider(peer_id, key):
                            accepted[0] += 1
                        providers, _closer = await store._get_providers_from_peer_with_closers(
                            peer_id, key
                        )
                    except Exception as error:  # a junk answer from one peer
                        log.debug(
                            "provider exchange failed", peer_id=str(peer_id), error=str(error)
                        )
                        return
                    found.extend(providers)

        async with trio.open_nursery() as nursery:
            for peer_id in await self.closest_peers(key):
                nursery.start_soon(exchange, peer_id)
        return accepted[0] > 0, merge_providers(found)[: self.settings.max_providers]

    async def find_providers(self, key: bytes) -> list[PeerInfo]:
        """Every provider of ``key`` that the k closest peers know of, each once, self included.

        Unlike upstream's ``find_providers``, local records do not stop the search.
        """
        if len(key) != DHT_KEY_BYTES:
            raise DiscoverySettingsError("provider keys must come from dht_key()")
        found: list[PeerInfo] = list(self.kad.provider_store.get_providers(key))
        limiter = trio.Semaphore(self.settings.provider_query_concurrency)

        async def ask(peer_id: ID) -> None:
            async with limiter:
                with trio.move_on_after(self.settings.query_timeout_s):
                    store = self.kad.provider_store
                    try:
                        providers, _closer = await store._get_providers_from_peer_with_closers(
                            peer_id, key
                        )
                    except Exception as error:  # a junk answer from one peer
                        log.debug("provider query failed", peer_id=str(peer_id), error=str(error))
                        return
                    found.extend(providers)

        async with trio.open_nursery() as nursery:
            for peer_id in await self.closest_peers(key):
                nursery.start_soon(ask, peer_id)
        return merge_providers(found)[: self.settings.max_providers]


def _bare(peer_info: PeerInfo) -> PeerInfo:
    """``peer_info`` with its addresses as the peerstore should hold them (no ``/p2p``)."""
    [merged] = merge_providers([peer_info])
    return merged


def _remove_notifee(network: INetwork, notifee: INotifee) -> None:
    remove = getattr(network, "remove_notifee", None)  # Swarm has it; INetwork does not
    if remove is not None:
        remove(notifee)
