"""Batching: indicators published close together travel in one ``Batch``.

py-libp2p relays about 100 messages/s per process (~4.4 ms of CPU per message), whatever
their size, so the lever for throughput is many indicators per message. A batch is closed
when the first of these bounds is reached:

- ``max_indicators`` indicators,
- ``max_bytes`` of encoded indicators (kept well under the pubsub message limit),
- ``window_s`` seconds since its first indicator (about 50 ms: a short wait for latency),
  and at least ``min_interval_s`` since the previous batch of its level closed.

The interval paces a steady stream: what a node can relay is bound by messages more than by
indicators (bench/README.md: ~6 ms of CPU per batch on each node of a 10-node mesh on 2
cores, whatever its size up to a few hundred indicators), so three publishers each closing a
batch every 50 ms overloaded the mesh at any rate, and latency grew to seconds. With the
interval, a steady publisher sends at most ``1 / min_interval_s`` batches per second and
level; an indicator after a quiet spell still leaves after ``window_s``, and full batches
(count or bytes) leave at once, whatever the interval.

``Batcher`` is pure: the caller passes ``now`` (a monotonic clock, for windows) and
``wall_ms`` (epoch milliseconds, stamped into ``Batch.sent_ms``) and gets closed batches
back. It owns the origin's sequence numbers, which must continue across restarts (the caller
gives the last one used), because receivers detect loss by gaps and drop a repeated
(origin, seq).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from threatmesh.pubsub.proto import threatmesh_pb2 as pb

# Protobuf overhead of one repeated message field: a tag byte and a length varint (≤ 3 bytes
# for indicators up to 2 MiB).
_FIELD_OVERHEAD_BYTES = 4


@dataclass(frozen=True)
class BatchLimits:
    max_indicators: int = 2000
    max_bytes: int = 512 * 1024
    window_s: float = 0.05
    min_interval_s: float = 0.15  # measured in bench/throughput.py: see the module docstring


@dataclass
class _Open:
    tlp: int
    opened_at: float
    indicators: list[pb.Indicator] = field(default_factory=list)
    size_bytes: int = 0


class Batcher:
    """Groups indicators per TLP into batches; ``add`` and ``due`` return closed batches."""

    def __init__(self, limits: BatchLimits, last_seq: int = 0) -> None:
        self.limits = limits
        self.last_seq = last_seq
        self._open: dict[int, _Open] = {}
        self._last_closed: dict[int, float] = {}  # per level: when its last batch closed

    def add(
        self, indicators: Iterable[pb.Indicator], tlp: int, now: float, wall_ms: int
    ) -> list[pb.Batch]:
        """Queue ``indicators`` at ``tlp``; return the batches this closed (possibly none)."""
        closed: list[pb.Batch] = []
        for indicator in indicators:
            size = indicator.ByteSize() + _FIELD_OVERHEAD_BYTES
            current = self._open.get(tlp)
            if current is not None and current.size_bytes + size > self.limits.max_bytes:
                closed.append(self._close(tlp, now, wall_ms))
                current = None
            if current is None:
                current = self._open[tlp] = _Open(tlp=tlp, opened_at=now)
            current.indicators.append(indicator)
            current.size_bytes += size
            if len(current.indicators) >= self.limits.max_indicators:
                closed.append(self._close(tlp, now, wall_ms))
        return closed

    def due(self, now: float, wall_ms: int) -> list[pb.Batch]:
        """Close every batch whose window and interval have passed."""
        expired = [tlp for tlp in self._open if now >= self._deadline(tlp)]
        return [self._close(tlp, now, wall_ms) for tlp in expired]

    def flush(self, wall_ms: int) -> list[pb.Batch]:
        """Close every open batch (at shutdown)."""
        return [self._close(tlp, None, wall_ms) for tlp in list(self._open)]

    def next_deadline(self) -> float | None:
        """When the first open batch must be closed, or None if nothing is open."""
        return min((self._deadline(tlp) for tlp in self._open), default=None)

    def _deadline(self, tlp: int) -> float:
        window_ends = self._open[tlp].opened_at + self.limits.window_s
        interval_ends = self._last_closed.get(tlp, float("-inf")) + self.limits.min_interval_s
        return max(window_ends, interval_ends)

    def has_open(self, tlp: int) -> bool:
        return tlp in self._open

    def pending(self) -> int:
        return sum(len(current.indicators) for current in self._open.values())

    def _close(self, tlp: int, now: float | None, wall_ms: int) -> pb.Batch:
        current = self._open.pop(tlp)
        if now is not None:
            self._last_closed[tlp] = now
        self.last_seq += 1
        return pb.Batch(
            seq=self.last_seq,
            sent_ms=wall_ms,
            tlp=pb.Tlp.ValueType(tlp),
            indicators=current.indicators,
        )
