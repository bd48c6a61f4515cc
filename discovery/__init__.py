"""Finding peers: Kademlia DHT with the swarm's own protocol id, bootstrap, mDNS, rendezvous,
the peer cache, the connection manager and membership events.

``Discovery`` (``service.py``) runs them all as named tasks. The pure pieces beside it:
``rendezvous.members_to_dial``, ``connections.peers_to_prune``, ``peer_cache.PeerCache``,
``events.MembershipTracker``, ``dialer.DialBackoff``. Two modules adapt py-libp2p 0.8.1
where its defaults are wrong for us: ``libp2p_kad.py`` (the DHT) and ``mdns.py`` (the LAN
beacon); ``dialer.py`` dials through ``threatmesh.transports``.
"""

from threatmesh.discovery.events import (
    EventsDropped,
    MembershipEvent,
    PeerAddressesChanged,
    PeerJoined,
    PeerLeft,
    SupernodeDropped,
    SupernodeElected,
)
from threatmesh.discovery.service import Discovery, DiscoverySettings

__all__ = [
    "Discovery",
    "DiscoverySettings",
    "EventsDropped",
    "MembershipEvent",
    "PeerAddressesChanged",
    "PeerJoined",
    "PeerLeft",
    "SupernodeDropped",
    "SupernodeElected",
]
