"""``Publisher``: the base class for custom feeds in the Python API.

A feed subclasses ``Publisher`` and implements ``records()``, an async iterator of record
lists (dicts as in JSON lines, or ``pb.Indicator``); ``run(node)`` validates each record on
its own, publishes the good ones in one call per list, and keeps going: a bad record is
reported (``on_rejected``) and counted, never fatal. Examples: ``examples/follow_file.py``,
``examples/blocklist.py``.

Rules: a list is bounded by the feed (a feed that reads a large file yields it in chunks of
``chunk_size``); publishing waits for the node (backpressure), so a fast feed cannot outrun it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from threatmesh.node.logs import get_logger
from threatmesh.pubsub.formats import Rejected
from threatmesh.pubsub.indicators import IndicatorError, indicator_from_record, parse_tlp
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

if TYPE_CHECKING:
    from threatmesh.node.node import Node

Record = Mapping[str, Any]
log = get_logger("threatmesh.publisher")


@dataclass
class PublisherStats:
    accepted: int = 0
    rejected: int = 0


class Publisher(ABC):
    """Subclass, set ``tlp``/``provider``, implement ``records``; then ``await run(node)``."""

    tlp: str = "clear"
    provider: str = ""
    chunk_size: int = 1000

    def __init__(self) -> None:
        self.stats = PublisherStats()

    @abstractmethod
    def records(self) -> AsyncIterator[Sequence[Record]]:
        """Yield lists of records; the iterator ending ends ``run``."""

    def on_rejected(self, rejected: Rejected) -> None:
        """Called for each bad record; the default logs it (override to report elsewhere)."""
        log.warning(
            "record rejected",
            feed=type(self).__name__,
            record=rejected.line,
            reason=rejected.reason,
        )

    async def run(self, node: Node) -> PublisherStats:
        default_tlp = parse_tlp(self.tlp)
        line = 0
        async for chunk in self.records():
            good: list[pb.Indicator] = []
            now_ms = int(time.time() * 1000)
            for record in chunk:
                line += 1
                try:
                    good.append(
                        indicator_from_record(
                            record,
                            line=line,
                            default_tlp=default_tlp,
                            now_ms=now_ms,
                            default_provider=self.provider,
                        )
                    )
                except IndicatorError as error:
                    self.stats.rejected += 1
                    self.on_rejected(Rejected(line=line, reason=error.reason))
            if good:
                self.stats.accepted += await node.publish(good, tlp=default_tlp)
        return self.stats
