"""Rendezvous in the DHT: every member provides one key derived from the swarm name, and
looks up who else provides it to find more members (the "provider record" rendezvous of
the libp2p Kademlia spec; go-libp2p's ``routing/discovery`` does the same).

Rules:
- The key is ``dht_key(b"/threatmesh/rendezvous/1/" + swarm)``: a sha2-256 multihash, so it
  is within py-libp2p's FIND_NODE key limit (50 bytes) and the ADD_PROVIDER limit (80).
  The version in the prefix lets a later scheme use a different key without collisions.
- A round provides the key again (records expire after 48 h upstream, and peers that joined
  since the last round are closer to the key than the ones we told before), looks up the
  providers (both with one lookup of the key: ``SwarmDht.provide_and_find_providers``), and
  dials at most ``max_dials`` of those we are not connected to. The dialer bounds
  concurrency and applies a backoff per peer.
- Rounds back off while they find nothing (``next_round_delay_s``): a round that found a
  new provider or connected a new member keeps the base interval; an idle round doubles it,
  up to a cap. A stable swarm then stops spending its CPU on rendezvous (py-libp2p serves
  on the order of a hundred DHT requests a second per core), and a growing one is watched
  closely. Random walks follow the same rule, productive when the routing table grew.
- Choosing whom to dial and when to look again is pure (``members_to_dial``,
  ``next_round_delay_s``); ``rendezvous_round`` only carries it out.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from threatmesh.discovery.dialer import Dialer, DialOutcome, dialable_addrs
from threatmesh.discovery.libp2p_kad import SwarmDht, dht_key

RENDEZVOUS_PREFIX = b"/threatmesh/rendezvous/1/"


def rendezvous_key(swarm: str) -> bytes:
    """The DHT key every member of ``swarm`` provides (34 bytes)."""
    return dht_key(RENDEZVOUS_PREFIX + swarm.encode("utf-8"))


def members_to_dial(
    providers: Sequence[PeerInfo],
    *,
    our_peer_id: ID,
    connected: Container[ID],
    max_dials: int,
) -> list[PeerInfo]:
    """Providers worth dialling: not us, not connected, with a dialable address; at most
    ``max_dials``, in the order the lookup returned them."""
    chosen: list[PeerInfo] = []
    for provider in providers:
        if len(chosen) >= max_dials:
            break
        if provider.peer_id == our_peer_id or provider.peer_id in connected:
            continue
        addrs = dialable_addrs(provider.addrs)
        if addrs:
            chosen.append(PeerInfo(provider.peer_id, addrs))
    return chosen


def next_round_delay_s(
    previous_s: float | None, *, productive: bool, base_s: float, cap_s: float
) -> float:
    """The wait before the next round: ``base_s`` after a productive round (or the first),
    else twice the previous wait, at most ``cap_s``."""
    if previous_s is None or productive:
        return base_s
    return min(cap_s, max(base_s, previous_s * 2.0))


@dataclass(frozen=True)
class RendezvousResult:
    provided: bool  # at least one peer accepted our provider record
    providers: int  # distinct providers found (us included)
    dialled: int  # dials attempted
    connected: int  # of which succeeded


async def rendezvous_round(
    dht: SwarmDht,
    dialer: Dialer,
    key: bytes,
    *,
    our_peer_id: ID,
    connected: Container[ID],
    max_dials: int,
) -> RendezvousResult:
    """Provide ``key``, find its providers, dial the new ones. Never raises for the network."""
    provided, providers = await dht.provide_and_find_providers(key)
    to_dial = members_to_dial(
        providers, our_peer_id=our_peer_id, connected=connected, max_dials=max_dials
    )
    outcomes = await dialer.dial_all(to_dial, source="rendezvous")
    return RendezvousResult(
        provided=provided,
        providers=len(providers),
        dialled=len(to_dial),
        connected=sum(outcome is DialOutcome.CONNECTED for outcome in outcomes),
    )
