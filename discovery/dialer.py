"""Dialling the peers discovery finds: per-peer backoff (pure) and a bounded dialer (thin).

Rules:
- Every source of peers (bootstrap list, peer cache, rendezvous providers, mDNS) dials
  through one ``Dialer``, so the number of dials in flight is bounded by one limiter and a
  peer that failed is not dialled again before its backoff has passed, whoever found it.
- ``DialBackoff`` is pure: it takes ``now`` and never reads a clock. The delay after the n-th
  consecutive failure is ``first_s * 2**(n-1)``, capped at ``cap_s``, plus up to 25 % jitter
  (the caller passes the jitter in, so a mass restart does not stampede and tests stay
  deterministic). A success forgets the peer. The table holds at most ``max_peers`` entries;
  when full, the entry that would be allowed soonest is forgotten first.
- An address that cannot be dialled as given (``0.0.0.0``, ``::``, a relay address) is
  dropped before dialling (``dialable_addrs``): py-libp2p 0.8.1 advertises its listen
  addresses verbatim, so a peer listening on all interfaces announces ``0.0.0.0``.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

import structlog
import trio
from libp2p.abc import IHost
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from threatmesh.discovery.errors import DiscoverySettingsError
from threatmesh.discovery.libp2p_kad import without_p2p
from threatmesh.transports.errors import TransportError
from threatmesh.transports.libp2p_host import connect, is_connected

log = structlog.get_logger("threatmesh.discovery.dialer")

MAX_ADDRS_PER_PEER = 8  # addresses tried per dial; the rest are dropped


def retry_delay_s(attempt: int, *, first_s: float, cap_s: float, jitter: float = 0.0) -> float:
    """Wait before attempt ``attempt`` (0-based): 0, then ``first_s`` doubling up to ``cap_s``.

    ``jitter`` in [0, 1) adds up to 25 % of the delay.
    """
    if attempt <= 0:
        return 0.0
    delay = min(cap_s, first_s * 2.0 ** min(attempt - 1, 62))
    return delay * (1.0 + 0.25 * jitter)


def dialable_addrs(addrs: Iterable[Multiaddr]) -> list[Multiaddr]:
    """``addrs`` without ``/p2p`` suffixes, unspecified hosts, relay addresses or duplicates."""
    result: list[Multiaddr] = []
    for addr in addrs:
        if "/p2p-circuit" in str(addr):
            continue
        bare = without_p2p(addr)
        text = str(bare)
        if bare in result:
            continue
        parts = text.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            try:
                if ipaddress.ip_address(parts[2]).is_unspecified:
                    continue
            except ValueError:
                continue
        result.append(bare)
    return result[:MAX_ADDRS_PER_PEER]


@dataclass
class _Entry:
    failures: int
    next_allowed: float


class DialBackoff:
    """Which peers may be dialled now. Pure: every method takes ``now``."""

    def __init__(self, *, first_s: float, cap_s: float, max_peers: int) -> None:
        if first_s <= 0 or cap_s < first_s or max_peers < 1:
            raise DiscoverySettingsError("backoff needs 0 < first_s <= cap_s and max_peers >= 1")
        self.first_s = first_s
        self.cap_s = cap_s
        self.max_peers = max_peers
        self._entries: dict[Hashable, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def ready(self, peer: Hashable, now: float) -> bool:
        entry = self._entries.get(peer)
        return entry is None or now >= entry.next_allowed

    def failures(self, peer: Hashable) -> int:
        entry = self._entries.get(peer)
        return 0 if entry is None else entry.failures

    def failed(self, peer: Hashable, now: float, jitter: float = 0.0) -> float:
        """Record a failed dial; return the time from which ``peer`` may be dialled again."""
        entry = self._entries.pop(peer, None)
        failures = 1 if entry is None else entry.failures + 1
        delay = retry_delay_s(failures, first_s=self.first_s, cap_s=self.cap_s, jitter=jitter)
        if len(self._entries) >= self.max_peers:
            soonest = min(self._entries, key=lambda key: self._entries[key].next_allowed)
            del self._entries[soonest]
        self._entries[peer] = _Entry(failures, now + delay)
        return now + delay

    def succeeded(self, peer: Hashable) -> None:
        self._entries.pop(peer, None)


class DialOutcome(enum.StrEnum):
    CONNECTED = "connected"
    ALREADY_CONNECTED = "already-connected"
    BACKING_OFF = "backing-off"
    NO_ADDRESS = "no-address"
    FAILED = "failed"
    SELF = "self"


class Dialer:
    """Dials peers with at most ``concurrency`` dials in flight and a backoff per peer."""

    def __init__(
        self,
        host: IHost,
        *,
        concurrency: int,
        timeout_s: float,
        backoff: DialBackoff,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if concurrency < 1 or timeout_s <= 0:
            raise DiscoverySettingsError("dialer needs concurrency >= 1 and timeout_s > 0")
        self._host = host
        self._limiter = trio.CapacityLimiter(concurrency)
        self._timeout_s = timeout_s
        self._jitter = jitter
        self.backoff = backoff
        self.connected = 0
        self.failed = 0

    async def dial(self, peer_info: PeerInfo, *, source: str) -> DialOutcome:
        """Dial ``peer_info`` unless connected, backing off, or without a usable address.

        Failures are logged at debug level: peers found by discovery go away all the time.
        """
        outcome, _error = await self._dial(peer_info, source=source)
        return outcome

    async def _dial(self, peer_info: PeerInfo, *, source: str) -> tuple[DialOutcome, str]:
        peer_id = peer_info.peer_id
        if peer_id == self._host.get_id():
            return DialOutcome.SELF, ""
        if is_connected(self._host, peer_info):
            return DialOutcome.ALREADY_CONNECTED, ""
        if not self.backoff.ready(peer_id, trio.current_time()):
            return DialOutcome.BACKING_OFF, ""
        addrs = dialable_addrs(peer_info.addrs)
        if not addrs:
            return DialOutcome.NO_ADDRESS, "no dialable address"
        async with self._limiter:
            if is_connected(self._host, peer_info):  # connected while we waited for a slot
                return DialOutcome.ALREADY_CONNECTED, ""
            try:
                await connect(self._host, PeerInfo(peer_id, addrs), timeout_s=self._timeout_s)
            except TransportError as error:
                retry_at = self.backoff.failed(peer_id, trio.current_time(), self._jitter())
                self.failed += 1
                log.debug(
                    "dial failed",
                    source=source,
                    peer_id=str(peer_id),
                    error=str(error),
                    retry_in_s=round(retry_at - trio.current_time(), 1),
                )
                return DialOutcome.FAILED, str(error)
        self.backoff.succeeded(peer_id)
        self.connected += 1
        log.debug("dialled", source=source, peer_id=str(peer_id))
        return DialOutcome.CONNECTED, ""

    async def dial_all(self, peers: Sequence[PeerInfo], *, source: str) -> list[DialOutcome]:
        """Dial ``peers`` concurrently (still at most ``concurrency`` at once)."""
        outcomes: list[DialOutcome] = [DialOutcome.FAILED] * len(peers)

        async def one(index: int, peer_info: PeerInfo) -> None:
            outcomes[index] = await self.dial(peer_info, source=source)

        async with trio.open_nursery() as nursery:
            for index, peer_info in enumerate(peers):
                nursery.start_soon(one, index, peer_info)
        return outcomes

    async def dial_with_retries(
        self, peer_info: PeerInfo, *, source: str, attempts: int, first_s: float, cap_s: float
    ) -> DialOutcome:
        """Dial until connected, at most ``attempts`` times, waiting ``retry_delay_s`` between.

        The per-peer backoff is bypassed: the schedule here is the caller's (bootstrap peers
        are worth more patience than a peer some stranger advertised). Logs one line when the
        first attempt fails and one when it gives up.
        """
        outcome, error = DialOutcome.FAILED, ""
        for attempt in range(attempts):
            await trio.sleep(
                retry_delay_s(attempt, first_s=first_s, cap_s=cap_s, jitter=self._jitter())
            )
            self.backoff.succeeded(peer_info.peer_id)  # forget the generic backoff
            outcome, error = await self._dial(peer_info, source=source)
            if outcome is DialOutcome.CONNECTED and attempt > 0:
                log.info(
                    "peer reachable after retries",
                    source=source,
                    attempts=attempt + 1,
                    peer_id=str(peer_info.peer_id),
                )
            if outcome not in (DialOutcome.FAILED, DialOutcome.BACKING_OFF):
                return outcome
            if attempt == 0 and attempts > 1:
                log.info(
                    "peer not reachable; retrying with backoff",
                    source=source,
                    peer_id=str(peer_info.peer_id),
                    error=error,
                    attempts=attempts,
                )
        log.warning(
            "peer unreachable; giving up",
            source=source,
            peer_id=str(peer_info.peer_id),
            attempts=attempts,
            error=error,
        )
        return outcome
