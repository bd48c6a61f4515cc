"""The peer cache: ``<home>/peers.json``, the swarm members this node was connected to, so a
restarted node rejoins without its bootstrap list (DESIGN.md, "What if the power goes out?").

Rules:
- ``PeerCache`` is pure: it holds at most ``max_peers`` entries, every method that needs the
  time takes ``now`` (wall-clock seconds, since the file outlives the process), and it never
  touches the disk. ``load_peer_cache`` / ``save_peer_cache`` are the only I/O.
- Ranking for rejoin: supernodes first (DESIGN.md: "written into every node's peer cache as
  rejoin points"), then the most recently seen, then the most often seen. When full, the
  lowest-ranked entry is evicted. Entries not seen for ``max_age_s`` are dropped.
- Each entry keeps at most ``MAX_ADDRS_PER_PEER`` addresses, newest first.
- Writes are atomic: a temporary file in the same directory, flushed and fsynced, then
  ``os.replace``. A crash leaves the old file or the new one, never half of one.
- A missing file is an empty cache. A file that is not a cache (bad JSON, wrong shape, too
  large) is ignored with one warning naming the file: the node still starts, from its
  bootstrap list. Single bad entries are skipped, counted in one line.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog
from libp2p.peer.id import ID
from multiaddr import Multiaddr

log = structlog.get_logger("threatmesh.discovery.peer_cache")

PEER_CACHE_FILE_NAME = "peers.json"
PEER_CACHE_VERSION = 1
MAX_ADDRS_PER_PEER = 8
# 256 entries of 8 addresses are ~100 KiB; anything far larger is not our file.
MAX_PEER_CACHE_FILE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_AGE_S = 30 * 24 * 3600.0


class PeerCacheFormatError(ValueError):
    """The text is not a peer cache (the message says what is wrong)."""


@dataclass(frozen=True)
class CachedPeer:
    peer_id: str  # base58
    addrs: tuple[str, ...]  # bare multiaddrs (no /p2p), newest first
    last_seen: float  # unix time
    seen_count: int = 1
    supernode: bool = False


def _rank_key(peer: CachedPeer) -> tuple[bool, float, int]:
    return (not peer.supernode, -peer.last_seen, -peer.seen_count)


class PeerCache:
    """Good peers with their addresses, bounded and ranked for rejoin."""

    def __init__(
        self,
        peers: Iterable[CachedPeer] = (),
        *,
        max_peers: int = 256,
        max_age_s: float = DEFAULT_MAX_AGE_S,
    ) -> None:
        if max_peers < 1 or max_age_s <= 0:
            raise ValueError("a peer cache needs max_peers >= 1 and max_age_s > 0")
        self.max_peers = max_peers
        self.max_age_s = max_age_s
        self._peers: dict[str, CachedPeer] = {}
        for peer in sorted(peers, key=_rank_key)[:max_peers]:
            self._peers.setdefault(peer.peer_id, peer)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def get(self, peer_id: str) -> CachedPeer | None:
        return self._peers.get(peer_id)

    def record(
        self,
        peer_id: str,
        addrs: Sequence[str],
        now: float,
        *,
        supernode: bool | None = None,
    ) -> None:
        """``peer_id`` was connected at ``now`` with ``addrs`` (newest first). A peer with no
        address is not worth caching: we could not dial it back."""
        old = self._peers.pop(peer_id, None)
        merged = list(dict.fromkeys([*addrs, *(old.addrs if old else ())]))[:MAX_ADDRS_PER_PEER]
        if not merged:
            if old is not None:
                self._peers[peer_id] = old
            return
        if old is None:
            entry = CachedPeer(peer_id, tuple(merged), now, 1, bool(supernode))
        else:
            entry = replace(
                old,
                addrs=tuple(merged),
                last_seen=max(now, old.last_seen),
                seen_count=old.seen_count + 1,
                supernode=old.supernode if supernode is None else supernode,
            )
        self._peers[peer_id] = entry
        if len(self._peers) > self.max_peers:
            worst = max(self._peers.values(), key=_rank_key)
            del self._peers[worst.peer_id]

    def forget(self, peer_id: str) -> None:
        self._peers.pop(peer_id, None)

    def ranked(self, now: float, limit: int | None = None) -> list[CachedPeer]:
        """Entries seen within ``max_age_s`` of ``now``, best rejoin candidates first."""
        fresh = [peer for peer in self._peers.values() if now - peer.last_seen <= self.max_age_s]
        fresh.sort(key=_rank_key)
        return fresh if limit is None else fresh[:limit]

    # Serialisation --------------------------------------------------------------------

    def to_json(self) -> str:
        body = {
            "version": PEER_CACHE_VERSION,
            "peers": [
                {
                    "peer_id": peer.peer_id,
                    "addrs": list(peer.addrs),
                    "last_seen": peer.last_seen,
                    "seen_count": peer.seen_count,
                    "supernode": peer.supernode,
                }
                for peer in sorted(self._peers.values(), key=_rank_key)
            ],
        }
        return json.dumps(body, indent=1) + "\n"

    @classmethod
    def from_json(
        cls, text: str, *, max_peers: int = 256, max_age_s: float = DEFAULT_MAX_AGE_S
    ) -> tuple[PeerCache, int]:
        """The cache in ``text`` and the number of entries skipped as malformed."""
        try:
            body = json.loads(text)
        except ValueError as error:
            raise PeerCacheFormatError(f"not JSON ({error})") from None
        if not isinstance(body, dict) or body.get("version") != PEER_CACHE_VERSION:
            raise PeerCacheFormatError(f"expected an object with version {PEER_CACHE_VERSION}")
        entries = body.get("peers")
        if not isinstance(entries, list):
            raise PeerCacheFormatError("'peers' must be a list")
        peers: list[CachedPeer] = []
        skipped = 0
        for entry in entries:
            peer = _parse_entry(entry)
            if peer is None:
                skipped += 1
            else:
                peers.append(peer)
        return cls(peers, max_peers=max_peers, max_age_s=max_age_s), skipped


def _parse_entry(entry: Any) -> CachedPeer | None:
    if not isinstance(entry, dict):
        return None
    peer_id, addrs = entry.get("peer_id"), entry.get("addrs")
    last_seen, seen_count = entry.get("last_seen"), entry.get("seen_count", 1)
    supernode = entry.get("supernode", False)
    if not (
        isinstance(peer_id, str)
        and isinstance(addrs, list)
        and all(isinstance(addr, str) for addr in addrs)
        and isinstance(last_seen, int | float)
        and not isinstance(last_seen, bool)
        and isinstance(seen_count, int)
        and not isinstance(seen_count, bool)
        and seen_count >= 1
        and isinstance(supernode, bool)
    ):
        return None
    try:
        ID.from_base58(peer_id)
        for addr in addrs:
            Multiaddr(addr)
    except Exception:  # base58 and multiaddr raise several types
        return None
    good_addrs = tuple(addrs[:MAX_ADDRS_PER_PEER])
    if not good_addrs:
        return None
    return CachedPeer(peer_id, good_addrs, float(last_seen), seen_count, supernode)


# I/O ---------------------------------------------------------------------------------------


def load_peer_cache(
    path: Path, *, max_peers: int = 256, max_age_s: float = DEFAULT_MAX_AGE_S
) -> PeerCache:
    """The cache in ``path``; empty if it is missing, or (one warning) not a cache."""
    empty = PeerCache(max_peers=max_peers, max_age_s=max_age_s)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PEER_CACHE_FILE_BYTES + 1)
    except FileNotFoundError:
        return empty
    except OSError as error:
        log.warning("peer cache unreadable; ignoring it", path=str(path), error=str(error))
        return empty
    if len(data) > MAX_PEER_CACHE_FILE_BYTES:
        log.warning(
            "peer cache too large; ignoring it", path=str(path), limit=MAX_PEER_CACHE_FILE_BYTES
        )
        return empty
    try:
        cache, skipped = PeerCache.from_json(
            data.decode("utf-8"), max_peers=max_peers, max_age_s=max_age_s
        )
    except (PeerCacheFormatError, UnicodeDecodeError) as error:
        log.warning("peer cache is corrupt; ignoring it", path=str(path), error=str(error))
        return empty
    if skipped:
        log.warning("peer cache: skipped malformed entries", path=str(path), skipped=skipped)
    return cache


def save_peer_cache(path: Path, cache: PeerCache) -> None:
    """Write ``cache`` to ``path`` atomically (temporary file, fsync, rename)."""
    text = cache.to_json().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
