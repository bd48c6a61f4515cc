"""Supernode roles: what this node does for the swarm, as a function of the supernode set.

DESIGN.md ("Reputation and supernodes"): a supernode runs the DHT in server mode, offers
circuit relay v2 to peers that are not reachable, keeps a longer history for catch-up, takes a
larger mesh degree, and is written into every node's peer cache as a rejoin point. A node that
is not reachable itself reserves relay slots on supernodes instead. ``roles_for`` decides it all
from data; the supernode service (``threatmesh.node.supernodes``) carries out the difference
between two ``Roles`` when the set it follows changes.

Rules:
- ``supernode``: this node is in the set it follows (``SeatTracker.current``), which is the set
  every other node follows too once they agree.
- ``dht_server``: the configured mode (server, or auto while listening), or a supernode. A
  supernode is verified reachable by most voters, so serving the DHT cannot make others time
  out on it (Kademlia spec: only reachable nodes are servers). Dropping the seat returns to the
  configured mode.
- ``relay_hop``: a supernode offers circuit relay v2 (hop); nobody else does.
- ``mesh_degree``: a supernode takes ``supernode_degree`` (D), with D_lo = 2/3 D and
  D_hi = 2 D as in GossipSub's defaults (6, 4, 12); the others keep the configured degrees.
- ``relay_client``: a node that is not reachable (``needs_relay``) reserves slots on up to
  ``MAX_RELAYS`` supernodes other than itself (``relays_to_reserve``: the first in the set's
  rank order), so peers can reach it through them.
- ``needs_relay``: a node with no dialable address at all needs a relay at once; one with
  addresses needs one when, after ``grace_intervals`` of its session, at least
  ``min_witnesses`` other announcers are fresh and none of them lists it in
  ``reachable_verified`` (they all tried to dial it back and failed).
- ``names()`` are the words of ``Status.roles``: ``supernode``, ``dht-server``, ``relay``
  (offers hop), ``relayed`` (reachable only through relays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_RELAYS = 2  # relay reservations a node that is not reachable holds at a time


@dataclass(frozen=True)
class MeshDegree:
    """GossipSub's D, D_lo and D_hi."""

    degree: int
    low: int
    high: int

    @classmethod
    def around(cls, degree: int) -> MeshDegree:
        """D with GossipSub's default proportions: D_lo = 2/3 D, D_hi = 2 D."""
        degree = max(1, degree)
        return cls(degree, max(1, degree * 2 // 3), degree * 2)


@dataclass(frozen=True)
class Roles:
    supernode: bool
    dht_server: bool
    relay_hop: bool
    relay_client: bool
    mesh: MeshDegree
    relays: tuple[str, ...] = ()  # the supernodes to hold relay reservations with

    def names(self) -> tuple[str, ...]:
        """The roles as ``Status.roles`` words (a-z 0-9 -)."""
        flags = (
            (self.supernode, "supernode"),
            (self.dht_server, "dht-server"),
            (self.relay_hop, "relay"),
            (self.relay_client, "relayed"),
        )
        return tuple(name for on, name in flags if on)


def roles_for(
    *,
    our_peer_id: str,
    supernodes: Sequence[str],
    configured_dht_server: bool,
    needs_relay: bool,
    configured_mesh: MeshDegree,
    supernode_degree: int,
) -> Roles:
    """The roles this node takes while it follows ``supernodes`` (module rules)."""
    supernode = our_peer_id in supernodes
    return Roles(
        supernode=supernode,
        dht_server=configured_dht_server or supernode,
        relay_hop=supernode,
        relay_client=needs_relay,
        mesh=MeshDegree.around(supernode_degree) if supernode else configured_mesh,
        relays=relays_to_reserve(our_peer_id, supernodes) if needs_relay else (),
    )


def relays_to_reserve(our_peer_id: str, supernodes: Sequence[str]) -> tuple[str, ...]:
    """The first ``MAX_RELAYS`` supernodes (rank order) other than ourselves."""
    return tuple(peer for peer in supernodes if peer != our_peer_id)[:MAX_RELAYS]


def needs_relay(
    *,
    has_addrs: bool,
    session_ms: int,
    interval_ms: int,
    fresh_witnesses: int,
    verified_by: int,
    grace_intervals: int = 3,
    min_witnesses: int = 2,
) -> bool:
    """Whether this node is unreachable and should hold relay reservations (module rules).

    ``session_ms``: how long this node has been announcing; ``fresh_witnesses``: other
    announcers heard recently; ``verified_by``: how many of them list us as dialled back.
    """
    if not has_addrs:
        return True
    settled = session_ms >= grace_intervals * interval_ms
    return settled and fresh_witnesses >= min_witnesses and verified_by == 0
