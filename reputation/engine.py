"""One node's part in the supernode protocol, as a pure state machine.

``SupernodeEngine`` holds what the reputation service keeps between announce intervals (the
``AnnouncementBook``, the ``DialBackLedger``, the ``SeatTracker`` and our own session) and
does, in order, what the wiring of the pure core asks for. The service feeds it received
announcements and dial-back results and carries out what it returns; ``now_ms`` is always
passed in, so the whole loop runs under a MockClock (tests/test_election_sim.py runs the same
steps by hand).

Theory of operation, one announce interval:

1. ``begin_round(now)``: forget peers silent for too long, and return the dial-backs due
   (fresh announcers with addresses, us excluded; ``DialBackLedger.take_due``). The service
   dials them, bounded, and reports each result with ``record_dial_back``.
2. ``evaluate(trust, now)``: ``elect`` on the book's latest announcements (ours included) and
   offer the result to the ``SeatTracker``; returns the ``Election``. The set this node follows
   and announces is ``supernodes`` (the tracker's), not the raw election.
   While this node follows no set yet (start-up), a result is offered only once it has stayed
   the same for ``first_hold_ms`` (a fifth of an interval): at start-up the other nodes'
   dial-back results arrive one by one over an interval, candidates become eligible one by
   one, and a node that adopted the first partial result would have to give a seat back
   later, after the tracker's jittered delay (up to an interval). Holding the first adoption
   until the inputs settle makes every node adopt the same set the first time.
3. ``announce(now, ...)``: our next ``Announcement`` (views of the fresh peers with the
   reputations the caller computed from its own observations, the peers we verified, the set
   we follow); it is recorded in our own book so every node elects on the same list.
4. Between announcements the service wakes at ``wake_at_ms(next_announce_ms)`` (the earliest
   of the next announcement, ``Election.recheck_at_ms`` and ``SeatTracker.due_ms``) and runs
   ``evaluate`` again.

Bounds: the book holds at most ``max_peers`` peers and forgets a silent one after
``forget_after_intervals``; the ledger holds at most ``max_peers`` and hands out at most
``max_dial_backs`` per round. Ledger timings scale with the interval (at 10 s: retry after
10 s, doubling to 5 min; recheck a success after 150 s; it is valid for 300 s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from threatmesh.reputation.announcements import MAX_ADDRS, Announcement
from threatmesh.reputation.book import AnnouncementBook
from threatmesh.reputation.election import Election, ElectionConfig, elect
from threatmesh.reputation.reachability import DialBackLedger
from threatmesh.reputation.seats import SeatTracker

DEFAULT_FORGET_AFTER_INTERVALS = 10
DEFAULT_MAX_DIAL_BACKS = 16  # per round


@dataclass(frozen=True)
class DialBack:
    """Dial ``peer_id`` back at one of ``addrs`` (as it announced them)."""

    peer_id: str
    addrs: tuple[str, ...]


class SupernodeEngine:
    """The reputation service's state and its steps (module docstring)."""

    def __init__(
        self,
        *,
        our_peer_id: str,
        started_ms: int,
        config: ElectionConfig,
        version: str = "",
        forget_after_intervals: int = DEFAULT_FORGET_AFTER_INTERVALS,
        max_peers: int = 1024,
        max_dial_backs: int = DEFAULT_MAX_DIAL_BACKS,
    ) -> None:
        interval_ms = config.announce_interval_ms
        if forget_after_intervals < config.stale_after_intervals:
            raise ValueError("forget_after_intervals must be at least stale_after_intervals")
        self.our_peer_id = our_peer_id
        self.started_ms = started_ms
        self.config = config
        self.version = version
        self.book = AnnouncementBook(
            our_peer_id=our_peer_id,
            stale_after_ms=config.stale_after_ms,
            forget_after_ms=forget_after_intervals * interval_ms,
            max_peers=max_peers,
        )
        self.ledger = DialBackLedger(
            recheck_after_ms=15 * interval_ms,
            valid_for_ms=30 * interval_ms,
            retry_after_ms=interval_ms,
            retry_cap_ms=30 * interval_ms,
            max_peers=max_peers,
            max_per_call=max_dial_backs,
        )
        self.tracker = SeatTracker(our_peer_id=our_peer_id, interval_ms=interval_ms)
        self.election: Election | None = None
        self.seq = 0
        self.first_hold_ms = interval_ms // 5
        self._first: tuple[frozenset[str], int] | None = None  # (result, since) while held

    # Inputs -------------------------------------------------------------------------------

    def receive(self, announcement: Announcement) -> bool:
        """A validated announcement of another peer; False if ignored (ours, duplicate, full)."""
        if announcement.sender == self.our_peer_id:
            return False  # ours is recorded when we make it (``announce``)
        return self.book.record(announcement)

    def record_dial_back(self, peer_id: str, *, reachable: bool, now_ms: int) -> None:
        self.ledger.record(peer_id, reachable=reachable, now_ms=now_ms)

    # Steps ----------------------------------------------------------------------------------

    def begin_round(self, now_ms: int) -> list[DialBack]:
        """Forget silent peers; the dial-backs due now (they are marked attempted)."""
        self.book.forget(now_ms)
        sessions: dict[str, int] = {}
        for peer_id in self.book.fresh(now_ms):
            announcement = self.book.get(peer_id)
            if peer_id != self.our_peer_id and announcement is not None and announcement.addrs:
                sessions[peer_id] = announcement.started_ms
        due = self.ledger.take_due(sessions, now_ms)
        return [DialBack(peer_id, self._addrs_of(peer_id)) for peer_id in due]

    def evaluate(self, trust: Mapping[str, int], now_ms: int) -> Election:
        """Elect on what the book holds and let the tracker adopt what it may."""
        self.election = elect(
            self.book.latest(), trust, now_ms, our_peer_id=self.our_peer_id, config=self.config
        )
        if not self.tracker.current and self.election.supernodes:
            result = self.election.supernode_set
            if self._first is None or self._first[0] != result:
                self._first = (result, now_ms)
            if now_ms - self._first[1] < self.first_hold_ms:
                return self.election  # not settled yet (step 2)
        self._first = None
        self.tracker.offer(self.election.supernodes, now_ms)
        return self.election

    def announce(
        self,
        now_ms: int,
        *,
        addrs: tuple[str, ...],
        degree: int,
        roles: tuple[str, ...],
        reputations: Mapping[str, float],
    ) -> Announcement:
        """Our next announcement (recorded in our own book); publish ``to_status()``."""
        self.seq += 1
        uptime_s = self.uptime_s(now_ms)
        ours = Announcement(
            sender=self.our_peer_id,
            received_ms=now_ms,
            sent_ms=now_ms,
            started_ms=self.started_ms,
            seq=self.seq,
            uptime_s=uptime_s,
            addrs=addrs[:MAX_ADDRS],
            degree=degree,
            roles=roles,
            version=self.version,
            views=self.book.views(reputations, now_ms, our_uptime_s=uptime_s),
            reachable_verified=self.ledger.verified(now_ms),
            supernodes=self.tracker.current,
        )
        self.book.record(ours)
        return ours

    def wake_at_ms(self, next_announce_ms: int) -> int:
        """When to run ``evaluate`` next: the announcement, a recheck or a pending adoption."""
        candidates = [next_announce_ms]
        if self.election is not None and self.election.recheck_at_ms is not None:
            candidates.append(self.election.recheck_at_ms)
        if self.tracker.due_ms is not None:
            candidates.append(self.tracker.due_ms)
        if self._first is not None:
            candidates.append(self._first[1] + self.first_hold_ms)
        return min(candidates)

    # Views ----------------------------------------------------------------------------------

    @property
    def supernodes(self) -> tuple[str, ...]:
        """The set this node follows and announces, in rank order."""
        return self.tracker.current

    def uptime_s(self, now_ms: int) -> int:
        return max(0, now_ms - self.started_ms) // 1000

    def fresh_others(self, now_ms: int) -> list[str]:
        """Other announcers heard within the stale time."""
        return [peer for peer in self.book.fresh(now_ms) if peer != self.our_peer_id]

    def verified_by(self, now_ms: int) -> list[str]:
        """The fresh announcers that list us in ``reachable_verified`` (dialled us back)."""
        verifiers = []
        for peer in self.fresh_others(now_ms):
            announcement = self.book.get(peer)
            if announcement is not None and self.our_peer_id in announcement.verified_set:
                verifiers.append(peer)
        return verifiers

    def announced_addrs(self, peer_id: str) -> tuple[str, ...]:
        """The addresses ``peer_id`` last announced (empty if not in the book)."""
        return self._addrs_of(peer_id)

    def _addrs_of(self, peer_id: str) -> tuple[str, ...]:
        announcement = self.book.get(peer_id)
        return announcement.addrs if announcement is not None else ()
