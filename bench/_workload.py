"""The workload of ``bench/throughput.py``, shared by its workers: indicators and latencies.

Every indicator is a sha256 indicator of about ``TARGET_INDICATOR_BYTES`` encoded bytes
(value, tags, provider, description). Its ``description`` starts with the publish wall time
and the phase, ``"%.6f <phase> <publisher>"``, so a receiver computes publish-to-delivery
latency with its own ``time.time()`` (every process runs on the same machine, one clock).

Latencies are counted in a log-scale histogram (bin ``i`` holds ``[HIST_MIN_S * HIST_STEP**i,
HIST_MIN_S * HIST_STEP**(i+1))``): constant memory, so the RSS the bench reads is the node's
and not ours, and histograms of many receivers merge by adding. Percentiles are exact to a
bin (2 %).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from threatmesh.pubsub.proto import threatmesh_pb2 as pb

HIST_MIN_S = 1e-5
HIST_STEP = 1.02
HIST_BINS = 1000  # up to 1e-5 * 1.02**1000 ≈ 4e3 s
_INV_LOG_STEP = 1.0 / math.log(HIST_STEP)
TARGET_INDICATOR_BYTES = 200
# "1732780000.123456": the publish time at the start of every description.
TIME_CHARS = 17
# Phase names are three characters, right after the time and a space.
PHASE_MAX = "max"  # publish as fast as the system takes it
PHASE_LATENCY = "lat"  # paced, at about half the measured maximum


def latency_bin(latency_s: float) -> int:
    if latency_s <= HIST_MIN_S:
        return 0
    return min(HIST_BINS - 1, int(math.log(latency_s / HIST_MIN_S) * _INV_LOG_STEP))


def read_description(description: str) -> tuple[float, str]:
    """(publish wall time, phase) from an indicator's description."""
    return float(description[:TIME_CHARS]), description[TIME_CHARS + 1 : TIME_CHARS + 4]


@dataclass
class Reception:
    """What one subscriber received in one phase."""

    received: int = 0
    received_self: int = 0  # a node's own publishes (no network in between)
    first_recv: float = 0.0
    last_recv: float = 0.0
    hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)

    def add(self, now: float, sent: float) -> None:
        if self.received == 0:
            self.first_recv = now
        self.received += 1
        self.last_recv = now
        self.hist[latency_bin(now - sent)] += 1

    def as_dict(self, with_hist: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            "received": self.received,
            "received_self": self.received_self,
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
        }
        if with_hist:
            result["hist"] = {str(i): n for i, n in enumerate(self.hist) if n}
        return result


def merge_hists(hists: Iterable[Mapping[str, int]]) -> list[int]:
    merged = [0] * HIST_BINS
    for hist in hists:
        for index, count in hist.items():
            merged[int(index)] += count
    return merged


def percentile_ms(hist: list[int], fraction: float) -> float | None:
    """The latency (ms, middle of its bin) below which ``fraction`` of the samples fall."""
    total = sum(hist)
    if total == 0:
        return None
    wanted = max(1, math.ceil(fraction * total))
    seen = 0
    for index, count in enumerate(hist):
        seen += count
        if seen >= wanted:
            return HIST_MIN_S * HIST_STEP ** (index + 0.5) * 1000
    return None


class IndicatorFactory:
    """Distinct ~200-byte sha256 indicators of one publisher and phase, stamped with a time."""

    def __init__(self, publisher: str, phase: str) -> None:
        self.publisher = publisher
        self.phase = phase
        self.next_index = 0
        now_ms = int(time.time() * 1000)
        self._template = pb.Indicator(
            itype=pb.ITYPE_SHA256,
            tlp=pb.TLP_CLEAR,
            confidence=80,
            tags=["bench", "malware", phase],
            provider=f"bench-{publisher}",
            first_seen_ms=now_ms,
            last_seen_ms=now_ms,
        )
        probe = pb.Indicator()
        probe.CopyFrom(self._template)
        probe.value = "0" * 64
        probe.description = self._description(time.time(), "")
        missing = TARGET_INDICATOR_BYTES - probe.ByteSize()
        self._padding = " " + "x" * (missing - 1) if missing > 1 else ""

    def _description(self, sent: float, padding: str) -> str:
        return f"{sent:.6f} {self.phase} {self.publisher}{padding}"

    def make(self, count: int, sent: float) -> list[pb.Indicator]:
        description = self._description(sent, self._padding)
        indicators = []
        for _ in range(count):
            token = f"{self.publisher}-{self.phase}-{self.next_index}".encode()
            self.next_index += 1
            indicator = pb.Indicator()
            indicator.CopyFrom(self._template)
            indicator.value = hashlib.sha256(token).hexdigest()
            indicator.description = description
            indicators.append(indicator)
        return indicators
