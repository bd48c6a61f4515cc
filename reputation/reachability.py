"""Dial-back: which announcing peers to dial back, and which of them passed.

A peer's announced addresses prove nothing; a peer is *verified reachable* by this node only
after this node dialled one of them back and the peer answered as itself. This node lists the
peers that passed in its next ``Status.reachable_verified``, and election believes a peer
reachable only when enough voters list it there (``reputation/election.py``).

The service does the dialling: a *new* connection to an announced address (a connection the
peer opened to us proves nothing about its listening address), bounded by a timeout, checking
that the remote peer ID is the announcer's. This module only keeps the ledger.

Rules:
- Keyed by (peer, session): a new ``started_ms`` (a restart, maybe with new addresses) forgets
  the old result and makes the peer due at once.
- Due: never tried; last success older than ``recheck_after_ms``; after ``n`` failures in a row,
  ``retry_after_ms * 2**(n-1)`` after the last attempt, capped at ``retry_cap_ms``; an attempt
  whose result never came counts as failed after ``retry_after_ms``.
  ``take_due`` hands out at most ``max_per_call`` peers (longest waiting first) and marks them
  attempted, so a peer is never dialled twice at once.
- Verified: the last result was a success no older than ``valid_for_ms``. A failure clears it at
  once, so a peer that stops listening loses it at its next check.
- Bounded: at most ``max_peers`` entries; peers no longer offered to ``take_due`` are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class _Dial:
    session_ms: int  # the peer's started_ms when we dialled it
    attempted_ms: int | None = None
    succeeded_ms: int | None = None  # last success; None after a failure
    failures: int = 0  # in a row
    waiting: bool = False  # an attempt was handed out and no result came back yet


class DialBackLedger:
    """Whom to dial back when, and who passed. Times are ``now_ms`` passed in."""

    def __init__(
        self,
        *,
        recheck_after_ms: int = 150_000,
        valid_for_ms: int = 300_000,
        retry_after_ms: int = 10_000,
        retry_cap_ms: int = 300_000,
        max_peers: int = 1024,
        max_per_call: int = 8,
    ) -> None:
        if not 0 < recheck_after_ms <= valid_for_ms or not 0 < retry_after_ms <= retry_cap_ms:
            raise ValueError("need 0 < recheck_after <= valid_for and 0 < retry_after <= cap")
        self.recheck_after_ms = recheck_after_ms
        self.valid_for_ms = valid_for_ms
        self.retry_after_ms = retry_after_ms
        self.retry_cap_ms = retry_cap_ms
        self.max_peers = max_peers
        self.max_per_call = max_per_call
        self._dials: dict[str, _Dial] = {}

    def take_due(self, sessions: Mapping[str, int], now_ms: int) -> list[str]:
        """The peers to dial back now, out of ``sessions`` (peer -> its ``started_ms``: the
        fresh announcers with addresses, us excluded); they are marked attempted."""
        for peer in [peer for peer in self._dials if peer not in sessions]:
            del self._dials[peer]
        due: list[tuple[int, str]] = []
        for peer in sorted(sessions):
            dial = self._dials.get(peer)
            if dial is None or dial.session_ms != sessions[peer]:
                if dial is None and len(self._dials) >= self.max_peers:
                    continue
                dial = self._dials[peer] = _Dial(session_ms=sessions[peer])
            next_ms = self._next_attempt_ms(dial)
            if next_ms <= now_ms:
                due.append((next_ms, peer))
        due.sort()
        chosen = [peer for _, peer in due[: self.max_per_call]]
        for peer in chosen:
            dial = self._dials[peer]
            if dial.waiting:  # the previous attempt never reported back: a failure
                dial.failures += 1
                dial.succeeded_ms = None
            dial.attempted_ms = now_ms
            dial.waiting = True
        return chosen

    def record(self, peer: str, *, reachable: bool, now_ms: int) -> None:
        """The result of dialling ``peer`` back (ignored if the peer was dropped meanwhile)."""
        dial = self._dials.get(peer)
        if dial is None:
            return
        dial.waiting = False
        if reachable:
            dial.succeeded_ms = now_ms
            dial.failures = 0
        else:
            dial.succeeded_ms = None
            dial.failures += 1

    def verified(self, now_ms: int) -> tuple[str, ...]:
        """The peers to list in ``Status.reachable_verified`` now, sorted."""
        return tuple(
            sorted(
                peer
                for peer, dial in self._dials.items()
                if dial.succeeded_ms is not None and now_ms - dial.succeeded_ms <= self.valid_for_ms
            )
        )

    def _next_attempt_ms(self, dial: _Dial) -> int:
        if dial.attempted_ms is None:
            return 0
        if dial.waiting:
            return dial.attempted_ms + self.retry_after_ms
        if dial.succeeded_ms is not None:
            return dial.succeeded_ms + self.recheck_after_ms
        backoff_ms = self.retry_after_ms << min(max(0, dial.failures - 1), 30)
        return dial.attempted_ms + min(self.retry_cap_ms, backoff_ms)
