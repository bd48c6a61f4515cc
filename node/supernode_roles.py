"""Carrying out the supernode roles: what changes on this node when the set it follows does.

``reputation/roles.py`` decides (``roles_for``); ``RoleKeeper`` does, for the supernode
service (``node/supernodes.py``):

- ``apply(roles)``: the DHT mode (server while a supernode, else the configured one), relay
  hop on or off (``transports/relay.py``), GossipSub's D / D_lo / D_hi.
- ``set_changed(old, new)``: for each peer that enters the set: protect it from pruning,
  mark it in the peer cache (``peers.json``) as a supernode, publish ``SupernodeElected``;
  for each that leaves: the reverse, and ``SupernodeDropped``.
- ``keep`` (a task): stay connected to the supernodes (rejoin points, and the relays of nodes
  that are not reachable), and hold relay reservations on the supernodes ``Roles.relays``
  names, renewing each when less than half of its lifetime is left. Woken by a change, else
  once per ``interval_s``. Each dial and each reservation is bounded by its own timeout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import DHTMode
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from threatmesh.discovery import Discovery, SupernodeDropped, SupernodeElected
from threatmesh.discovery.dialer import dialable_addrs
from threatmesh.node.logs import get_logger
from threatmesh.pubsub.libp2p_gossipsub import ThreatmeshPubsub
from threatmesh.reputation.roles import MeshDegree, Roles
from threatmesh.transports.errors import TransportError
from threatmesh.transports.libp2p_host import is_connected
from threatmesh.transports.relay import Relay, RelayError, connect_any, is_circuit

log = get_logger("threatmesh.supernodes")

SUPERNODE_PROTECTION = "supernode"  # the reason given to Discovery.protect
# A reservation is renewed when less than this share of its lifetime is left.
RESERVATION_RENEW_FRACTION = 0.5


@dataclass
class RoleCounters:
    supernode_dials_failed: int = 0
    reservations_failed: int = 0


class RoleKeeper:
    """Applies roles and set changes to one node's host, DHT, pubsub and relay."""

    def __init__(
        self,
        *,
        host: IHost,
        pubsub: ThreatmeshPubsub,
        discovery: Discovery,
        relay: Relay,
        our_peer_id: str,
        announced_addrs: Callable[[ID], list[Multiaddr]],
        interval_s: float,
        dial_timeout_s: float,
        wall_s: Callable[[], float],
    ) -> None:
        self.host = host
        self.pubsub = pubsub
        self.discovery = discovery
        self.relay = relay
        self.our_peer_id = our_peer_id
        self._announced_addrs = announced_addrs
        self._interval_s = interval_s
        self._dial_timeout_s = dial_timeout_s
        self._wall_s = wall_s
        router = pubsub.gossip
        self.configured_mesh = MeshDegree(router.degree, router.degree_low, router.degree_high)
        self.roles: Roles | None = None
        self._followed: tuple[str, ...] = ()
        self._wake = trio.Event()
        self.counters = RoleCounters()

    # Roles -------------------------------------------------------------------------------------

    async def apply(self, roles: Roles) -> None:
        """Take up and drop what differs from the roles applied last."""
        old = self.roles
        if roles == old:
            return
        self.roles = roles
        if old is None or roles.dht_server != old.dht_server:
            mode = DHTMode.SERVER if roles.dht_server else self.discovery.configured_dht_mode
            await self.discovery.dht.set_mode(mode)
        if roles.relay_hop:
            self.relay.offer_hop()
        else:
            self.relay.withdraw_hop()
        # The router reads D, D_lo and D_hi at every heartbeat (gossipsub.py, mesh_heartbeat),
        # so new values take effect within a second. They are public attributes of
        # py-libp2p's GossipSub; pubsub/libp2p_gossipsub.py has no setter for them.
        router = self.pubsub.gossip
        router.degree, router.degree_low, router.degree_high = (
            roles.mesh.degree,
            roles.mesh.low,
            roles.mesh.high,
        )
        if old is not None and roles.relays != old.relays:
            self._wake.set()
        if old is None or roles.names() != old.names():
            log.info("roles", roles=list(roles.names()), relays=list(roles.relays))

    # The set -----------------------------------------------------------------------------------

    def set_changed(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        """Protection, peer cache and membership events for the peers that came and went."""
        self._followed = new
        at = trio.current_time()
        for peer_id in sorted(set(old) - set(new)):
            if peer_id != self.our_peer_id:
                self.discovery.unprotect(ID.from_base58(peer_id), SUPERNODE_PROTECTION)
                self._mark_in_peer_cache(peer_id, supernode=False)
            self.discovery.publish_event(SupernodeDropped(peer_id, at))
        for peer_id in [peer for peer in new if peer not in old]:
            if peer_id != self.our_peer_id:
                self.discovery.protect(ID.from_base58(peer_id), SUPERNODE_PROTECTION)
                self._mark_in_peer_cache(peer_id, supernode=True)
            self.discovery.publish_event(SupernodeElected(peer_id, at))
        self._wake.set()

    def _mark_in_peer_cache(self, peer_id: str, *, supernode: bool) -> None:
        peer = ID.from_base58(peer_id)
        addrs = [str(addr) for addr in dialable_addrs(self._announced_addrs(peer))]
        self.discovery.mark_supernode(peer, addrs, supernode=supernode)

    # The task ----------------------------------------------------------------------------------

    async def keep(self) -> None:
        """Stay connected to the supernodes; hold relay reservations while unreachable."""
        while True:
            with trio.move_on_after(self._interval_s):
                await self._wake.wait()
            self._wake = trio.Event()
            with failures_logged("keeping supernodes"):
                for peer_id in self._followed:
                    if peer_id != self.our_peer_id:
                        await self._stay_connected(ID.from_base58(peer_id))
                await self._hold_reservations()

    async def _stay_connected(self, peer_id: ID) -> None:
        if is_connected(self.host, PeerInfo(peer_id, [])):
            return
        addrs = self._announced_addrs(peer_id)
        if not addrs:
            return
        try:
            await connect_any(
                self.host, self.relay, PeerInfo(peer_id, addrs), timeout_s=self._dial_timeout_s
            )
        except TransportError as error:  # retried next round
            self.counters.supernode_dials_failed += 1
            log.info("supernode not reachable", peer=str(peer_id), error=str(error))

    async def _hold_reservations(self) -> None:
        wanted = set(self.roles.relays) if self.roles is not None else set()
        held = self.relay.held()
        for relay_id in held:
            if relay_id.to_base58() not in wanted:
                self.relay.forget_reservation(relay_id)
        lifetime_s = self.relay.settings.reservation_ttl_s
        now_s = self._wall_s()
        for peer_id in sorted(wanted):
            relay_id = ID.from_base58(peer_id)
            expires_s = held.get(relay_id)
            fresh = expires_s is not None and (
                expires_s - now_s > lifetime_s * RESERVATION_RENEW_FRACTION
            )
            if fresh and is_connected(self.host, PeerInfo(relay_id, [])):
                continue
            addrs = [addr for addr in self._announced_addrs(relay_id) if not is_circuit(addr)]
            try:
                await self.relay.reserve(PeerInfo(relay_id, addrs))
                log.info("relay slot reserved", relay=peer_id)
            except RelayError as error:  # tried again next round
                self.counters.reservations_failed += 1
                log.info("relay reservation failed", relay=peer_id, error=str(error))


@contextlib.contextmanager
def failures_logged(task: str) -> Iterator[None]:
    """One round fails alone (py-libp2p raises types it does not document, e.g. while the
    host closes); the next round tries again. Cancellation still goes through."""
    try:
        yield
    except Exception as error:
        log.warning("supernode service round failed", task=task, error=repr(error))
