"""Per-peer reputation, status announcements and supernode election (DESIGN.md, "Reputation
and supernodes"). Everything here is pure policy: data and ``now_ms`` in, decisions out; no
I/O, no trio, no clock reads. The reputation service (in ``threatmesh.node``) feeds it.

Public API:

- ``observations``: ``Observation`` (what this node saw of one peer) and
  ``reputation(observation, now_ms) -> float`` in ``[0, 1]``, monotone in each input;
  ``to_permille(value) -> int``.
- ``announcements``: ``Announcement`` (a ``Status`` plus sender, ``sent_ms``, ``received_ms``)
  and ``PeerView``; ``announcement_from_status(status, *, sender, sent_ms, received_ms)``
  checks a received ``Status`` (raises ``AnnouncementError``); ``Announcement.to_status()``.
- ``book``: ``AnnouncementBook`` (latest announcement per peer, since when its session is
  heard; ``record``, ``forget``, ``latest``, ``fresh``, ``heard_since_ms``, ``views``).
- ``reachability``: ``DialBackLedger`` (whom to dial back when; ``take_due``, ``record``,
  ``verified``).
- ``election``: ``elect(announcements, trust, now_ms, *, our_peer_id, config) -> Election``
  with ``ElectionConfig``, ``Candidate``; ``Election.to_json()`` is the visibility report
  ``{"supernodes": [...], "candidates": [{"peer_id", "score", "eligible", "reasons"}]}``.
- ``seats``: ``seats(n_peers, configured, *, cap) -> int``,
  ``reelection_delay_ms(our_peer_id, event, interval_ms) -> int`` in ``[0, interval)``, and
  ``SeatTracker`` (adopts a lost seat's replacement after that delay).
- ``engine``: ``SupernodeEngine``, the steps of one node in the protocol (book, ledger,
  election, seat tracker) in the order the service runs them; ``DialBack``.
- ``roles``: ``roles_for(...) -> Roles`` (DHT server, relay hop, relay client, mesh degree)
  and ``needs_relay``: what a node does while it follows a given supernode set.
- ``errors``: ``ReputationError`` (a ValueError) and its ``ObservationError``,
  ``AnnouncementError``, ``ElectionConfigError``.

Peer IDs are base58 text everywhere here, as in the rest of threatmesh; only the wire
(``Status``) carries bytes. Imports: ``threatmesh.pubsub`` (the wire schema) only; never
``threatmesh.node`` (DESIGN.md, "Layout").
"""

from threatmesh.reputation.announcements import (
    Announcement,
    PeerView,
    announcement_from_status,
    peer_id_bytes,
)
from threatmesh.reputation.book import AnnouncementBook
from threatmesh.reputation.election import Candidate, Election, ElectionConfig, elect
from threatmesh.reputation.engine import DialBack, SupernodeEngine
from threatmesh.reputation.errors import (
    AnnouncementError,
    ElectionConfigError,
    ObservationError,
    ReputationError,
)
from threatmesh.reputation.observations import Observation, reputation, to_permille
from threatmesh.reputation.reachability import DialBackLedger
from threatmesh.reputation.roles import MeshDegree, Roles, needs_relay, roles_for
from threatmesh.reputation.seats import SeatTracker, reelection_delay_ms, seats

__all__ = [
    "Announcement",
    "AnnouncementBook",
    "AnnouncementError",
    "Candidate",
    "DialBack",
    "DialBackLedger",
    "Election",
    "ElectionConfig",
    "ElectionConfigError",
    "MeshDegree",
    "Observation",
    "ObservationError",
    "PeerView",
    "ReputationError",
    "Roles",
    "SeatTracker",
    "SupernodeEngine",
    "announcement_from_status",
    "elect",
    "needs_relay",
    "peer_id_bytes",
    "reelection_delay_ms",
    "reputation",
    "roles_for",
    "seats",
    "to_permille",
]
