"""The announcement book: the latest announcement of each peer this node hears, and since when
it has heard that peer's current session (without a long gap).

The reputation service keeps one ``AnnouncementBook``. It records every valid received
announcement (and this node's own, so that election sees the same list on every node), hands
``latest()`` to ``elect``, and builds this node's ``PeerView``s from it with ``views``.

Rules:
- A peer's session is continuous while its announcements keep coming with the same
  ``started_ms`` and a rising ``seq``, with no gap longer than ``forget_after_ms``. A new
  ``started_ms``, a ``seq`` that goes back, or such a gap starts a new session:
  ``heard_since_ms`` restarts at the receive time, so a peer's attested uptime
  (``PeerView.heard_for_s``) is what this node heard, never what the peer claims.
  A shorter gap (a lost announcement or two; the rising ``seq`` shows the peer kept
  announcing) does not restart the record: on a lossy link every voter would otherwise keep
  restarting its count, and no record would ever grow long enough to elect anyone. While a
  peer is stale it is not viewed at all (``views`` lists fresh peers only).
- An announcement of the current session with a ``seq`` not above the latest one is a
  duplicate or out of order: ``record`` ignores it and returns False.
- Bounded: at most ``max_peers`` peers. A new peer when the book is full evicts the peer
  heard longest ago if that one is stale; otherwise the newcomer is refused (``record`` returns
  False), so a flood of new peer IDs cannot push out the peers already heard.
- ``forget(now_ms)`` drops peers silent for longer than ``forget_after_ms``; call it each
  interval. Stale peers stay until then so ``elect`` can show why they lost their seat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from threatmesh.reputation.announcements import MAX_VIEWS, Announcement, PeerView
from threatmesh.reputation.observations import to_permille


@dataclass(frozen=True)
class _Entry:
    latest: Announcement
    heard_since_ms: int  # when this node first heard the current session


class AnnouncementBook:
    """Latest announcement per peer, with the start of its session as this node heard it."""

    def __init__(
        self,
        *,
        our_peer_id: str,
        stale_after_ms: int,
        forget_after_ms: int,
        max_peers: int = 1024,
    ) -> None:
        if not 0 < stale_after_ms <= forget_after_ms or max_peers < 1:
            raise ValueError("need 0 < stale_after_ms <= forget_after_ms and max_peers >= 1")
        self.our_peer_id = our_peer_id
        self.stale_after_ms = stale_after_ms
        self.forget_after_ms = forget_after_ms
        self.max_peers = max_peers
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, announcement: Announcement) -> bool:
        """Take a (validated) announcement in; False when it is ignored (duplicate, out of
        order, or a new peer while the book is full of fresh ones)."""
        peer = announcement.sender
        entry = self._entries.get(peer)
        if entry is None:
            if len(self._entries) >= self.max_peers and not self._evict_one_stale(
                announcement.received_ms
            ):
                return False
            self._entries[peer] = _Entry(announcement, announcement.received_ms)
            return True
        previous = entry.latest
        same_session = previous.started_ms == announcement.started_ms
        if same_session and announcement.seq <= previous.seq:
            return False
        gap_ms = announcement.received_ms - previous.received_ms
        if same_session and gap_ms <= self.forget_after_ms:
            self._entries[peer] = _Entry(announcement, entry.heard_since_ms)
        else:
            self._entries[peer] = _Entry(announcement, announcement.received_ms)
        return True

    def forget(self, now_ms: int) -> list[str]:
        """Drop the peers not heard for longer than ``forget_after_ms``; returns them."""
        gone = [
            peer
            for peer, entry in self._entries.items()
            if entry.latest.age_ms(now_ms) > self.forget_after_ms
        ]
        for peer in gone:
            del self._entries[peer]
        return sorted(gone)

    def latest(self) -> tuple[Announcement, ...]:
        """The latest announcement of every peer in the book, ordered by sender."""
        return tuple(self._entries[peer].latest for peer in sorted(self._entries))

    def get(self, peer_id: str) -> Announcement | None:
        entry = self._entries.get(peer_id)
        return entry.latest if entry is not None else None

    def heard_since_ms(self, peer_id: str) -> int | None:
        """When this node began hearing ``peer_id``'s current session; None if not in the book."""
        entry = self._entries.get(peer_id)
        return entry.heard_since_ms if entry is not None else None

    def heard_for_s(self, peer_id: str, now_ms: int) -> int:
        """Whole seconds this node has heard ``peer_id``'s session without a gap (0 if stale)."""
        entry = self._entries.get(peer_id)
        if entry is None or entry.latest.age_ms(now_ms) > self.stale_after_ms:
            return 0
        return max(0, now_ms - entry.heard_since_ms) // 1000

    def fresh(self, now_ms: int) -> list[str]:
        """The peers whose latest announcement is at most ``stale_after_ms`` old, sorted."""
        return sorted(
            peer
            for peer, entry in self._entries.items()
            if entry.latest.age_ms(now_ms) <= self.stale_after_ms
        )

    def views(
        self, reputations: Mapping[str, float], now_ms: int, *, our_uptime_s: int
    ) -> tuple[PeerView, ...]:
        """This node's views for its next announcement: one per fresh peer other than us,
        with its reputation (``reputations``, 0..1; absent means 0), how long we heard it
        (never more than ``our_uptime_s``, the uptime the same status announces: a receiver
        rejects a view older than its announcer) and how long ago we last heard it.

        At most ``MAX_VIEWS``, the peers heard longest first (ties by peer ID); sorted by peer
        ID on the wire.
        """
        peers = [peer for peer in self.fresh(now_ms) if peer != self.our_peer_id]
        peers.sort(key=lambda peer: (self._entries[peer].heard_since_ms, peer))
        return tuple(
            PeerView(
                peer,
                to_permille(reputations.get(peer, 0.0)),
                min(self.heard_for_s(peer, now_ms), max(0, our_uptime_s)),
                self._entries[peer].latest.age_ms(now_ms),
            )
            for peer in sorted(peers[:MAX_VIEWS])
        )

    def _evict_one_stale(self, now_ms: int) -> bool:
        oldest = min(self._entries, key=lambda peer: self._entries[peer].latest.received_ms)
        if self._entries[oldest].latest.age_ms(now_ms) <= self.stale_after_ms:
            return False
        del self._entries[oldest]
        return True
