"""The connection manager: keep the number of connected peers between two watermarks.

Rules (after go-libp2p's ``p2p/net/connmgr``, the "basic connection manager"):
- Nothing happens while the node holds at most ``high`` peers. Above ``high``, peers are
  disconnected until ``low`` remain, so trimming is rare and does not flap.
- Never pruned: protected peers (trusted peers and supernodes, set by later services), and
  peers connected for less than ``grace_s`` (a new peer has had no chance to be useful).
  If only those are left, fewer than needed are pruned: protection wins over the watermark.
- The least useful go first: lowest ``value`` (the caller scores peers, e.g. a peer in our
  DHT routing table is worth more), then fewest open streams, then the most recently
  connected (long-lived connections are the stable core of the swarm).
- ``peers_to_prune`` is pure (``now`` passed in). ``ConnectionManager`` is the thin service:
  every ``interval_s`` it takes a snapshot of the host's connections, asks the policy and
  closes what it returns, each close bounded by ``close_timeout_s``.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Hashable, Sequence
from dataclasses import dataclass

import structlog
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

# trio's own TaskStatus type is hidden from mypy by trio-typing's stubs (see node/node.py).
from trio_typing import TaskStatus

from threatmesh.discovery.errors import DiscoverySettingsError

log = structlog.get_logger("threatmesh.discovery.connections")


@dataclass(frozen=True)
class Watermarks:
    low: int = 32
    high: int = 96
    grace_s: float = 20.0

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high or self.high < 1 or self.grace_s < 0:
            raise DiscoverySettingsError(
                f"connection watermarks need 0 <= low <= high, high >= 1 and grace_s >= 0 "
                f"(got low={self.low}, high={self.high}, grace_s={self.grace_s})"
            )


@dataclass(frozen=True)
class PeerConnection:
    """What the policy knows of one connected peer."""

    peer_id: Hashable
    connected_at: float  # when we first saw it connected (same clock as ``now``)
    streams: int = 0
    value: int = 0  # higher is more useful; the caller decides


def peers_to_prune(
    connections: Sequence[PeerConnection],
    *,
    watermarks: Watermarks,
    protected: Container[Hashable],
    now: float,
) -> list[Hashable]:
    """The peers to disconnect so that ``watermarks.low`` remain, least useful first."""
    if len(connections) <= watermarks.high:
        return []
    excess = len(connections) - watermarks.low
    candidates = [
        connection
        for connection in connections
        if connection.peer_id not in protected
        and now - connection.connected_at >= watermarks.grace_s
    ]
    candidates.sort(key=lambda c: (c.value, c.streams, -c.connected_at))
    return [connection.peer_id for connection in candidates[:excess]]


class ConnectionManager:
    """Applies ``peers_to_prune`` to a host every ``interval_s`` (or when ``wake`` is called)."""

    def __init__(
        self,
        host: IHost,
        watermarks: Watermarks,
        *,
        protected: Callable[[], Container[Hashable]],
        value_of: Callable[[ID], int],
        interval_s: float = 10.0,
        close_timeout_s: float = 5.0,
    ) -> None:
        if interval_s <= 0 or close_timeout_s <= 0:
            raise DiscoverySettingsError("connection manager intervals must be > 0")
        self._host = host
        self.watermarks = watermarks
        self._protected = protected
        self._value_of = value_of
        self._interval_s = interval_s
        self._close_timeout_s = close_timeout_s
        # First time each connected peer was seen; holds only currently connected peers.
        self._connected_at: dict[ID, float] = {}
        self._wake = trio.Event()
        self.pruned = 0

    def wake(self) -> None:
        """Check soon (for example, a peer connected and we may be over ``high``)."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.prune_once()
            with trio.move_on_after(self._interval_s):
                await self._wake.wait()
            self._wake = trio.Event()

    def snapshot(self, now: float) -> list[PeerConnection]:
        """The host's connected peers as the policy sees them."""
        connections = self._host.get_network().connections
        current: list[PeerConnection] = []
        seen: dict[ID, float] = {}
        for peer_id, conns in list(connections.items()):
            live = [conn for conn in conns if not getattr(conn, "is_closed", False)]
            if not live:
                continue
            seen[peer_id] = self._connected_at.get(peer_id, now)
            streams = sum(len(getattr(conn, "streams", ())) for conn in live)
            current.append(PeerConnection(peer_id, seen[peer_id], streams, self._value_of(peer_id)))
        self._connected_at = seen
        return current

    async def prune_once(self) -> list[Hashable]:
        """One check: close the connections the policy picks. Returns the pruned peers."""
        now = trio.current_time()
        chosen = peers_to_prune(
            self.snapshot(now), watermarks=self.watermarks, protected=self._protected(), now=now
        )
        for peer_id in chosen:
            with trio.move_on_after(self._close_timeout_s):
                try:
                    await self._host.disconnect(peer_id)  # type: ignore[arg-type]
                except Exception as error:  # closing a dying connection may raise anything
                    log.debug("disconnect failed", peer_id=str(peer_id), error=str(error))
            self.pruned += 1
        if chosen:
            log.info(
                "pruned connections",
                pruned=len(chosen),
                low=self.watermarks.low,
                high=self.watermarks.high,
            )
        return chosen
