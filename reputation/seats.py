"""How many supernode seats there are, and when this node adopts a new supernode set.

Rules:
- ``seats(n_peers, configured)``: the configured number when there is one; otherwise about
  the square root of the number of peers heard (``isqrt``, so it only moves when N crosses a
  square), at least 1 and at most ``cap``.
- A new election result that takes no seat away (a first election, a free seat filled) is
  adopted at once. One that takes a seat away (a supernode went silent, or was beaten) is
  adopted only after ``reelection_delay_ms``: a delay in ``[interval / 5, interval)`` that is
  a hash of (this node, the seats lost), so the same loss gives each node its own delay and a
  mass restart of supernodes does not make every node switch (and dial the new supernodes) in
  the same instant. If the lost supernode is back in the result before the delay is over,
  nothing changes: the delay is also hysteresis. Its floor of a fifth of an interval (2 s at
  10 s) absorbs one lost announcement whose successor comes late: a supernode's last heard
  announcement goes stale 2 intervals after it arrived, its successor arrives then plus that
  successor's delivery delay, and no node adopts a loss sooner than 2 s after seeing it.
- With ``stale_after = 2`` intervals in ``ElectionConfig``, a supernode killed at time t is
  dropped by every node's election by t + 2 intervals and adopted by t + 3 intervals at the
  latest, provided the service re-runs the election at ``Election.recheck_at_ms`` and at
  ``SeatTracker.due_ms``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MAX_SEATS = 8


def seats(n_peers: int, configured: int | None, *, cap: int = DEFAULT_MAX_SEATS) -> int:
    """The number of supernode seats among ``n_peers`` peers (module rules)."""
    if configured is not None:
        return configured
    return max(1, min(cap, math.isqrt(max(0, n_peers))))


def reelection_delay_ms(our_peer_id: str, event: str, interval_ms: int) -> int:
    """A delay in ``[interval_ms // 5, interval_ms)``, fixed for this (node, event) and spread
    across nodes (module rules: the first fifth absorbs a late announcement)."""
    digest = hashlib.sha256(f"{our_peer_id}\x00{event}".encode()).digest()
    floor_ms = interval_ms // 5
    return floor_ms + int.from_bytes(digest[:8], "big") % max(1, interval_ms - floor_ms)


@dataclass(frozen=True)
class _Pending:
    event: str  # the seats lost, sorted and joined
    due_ms: int


class SeatTracker:
    """The supernode set this node follows (and announces in ``Status.supernodes``)."""

    def __init__(self, *, our_peer_id: str, interval_ms: int) -> None:
        self.our_peer_id = our_peer_id
        self.interval_ms = interval_ms
        self.current: tuple[str, ...] = ()
        self._pending: _Pending | None = None

    @property
    def due_ms(self) -> int | None:
        """When to offer the election again to adopt a pending change; None if none."""
        return self._pending.due_ms if self._pending is not None else None

    def offer(self, elected: Sequence[str], now_ms: int) -> tuple[str, ...]:
        """Take a new election result (``Election.supernodes``); returns the set followed."""
        lost = set(self.current) - set(elected)
        if not lost:
            self.current = tuple(elected)
            self._pending = None
            return self.current
        event = ",".join(sorted(lost))
        if self._pending is None or self._pending.event != event:
            delay_ms = reelection_delay_ms(self.our_peer_id, event, self.interval_ms)
            self._pending = _Pending(event, now_ms + delay_ms)
        if now_ms >= self._pending.due_ms:
            self.current = tuple(elected)
            self._pending = None
        return self.current
