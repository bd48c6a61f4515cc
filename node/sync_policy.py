"""Pure decisions of catch-up (``threatmesh.node.sync``): what to ask for, what to give.

Nothing here awaits, reads a clock or touches a socket.

Rules:

- A server gives a batch only to an asker it would send it to live: the asker is trusted by
  the server at the batch's level (``Audience``), and a sealed batch (AMBER and above) names
  the asker among its recipients — it travels still sealed, the server cannot read it either.
  Everything else in the asked range that the server holds is listed as withheld, so the asker
  stops asking for it (a batch not for it is not a gap it can fill).
- Requests are bounded before any work: a range spans at most ``MAX_RANGE_SEQS`` seqs, and an
  answer holds at most ``PAGE_MAX_MESSAGES`` messages and about ``PAGE_MAX_BYTES``; the asker
  pages on with ``next_seq``.
- The asker asks for what it misses: the seqs absent below its highest stored one (gaps), and
  everything above it up to the server's head, at most ``MAX_SEQS_PER_ROUND`` seqs per origin
  and round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.protobuf.message import DecodeError
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from threatmesh.node.store_log import LoggedBatch
from threatmesh.pubsub.gating import Audience
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.seal import SEALED_LEVELS, key_id
from threatmesh.pubsub.topics import tlp_topic

MAX_RANGE_SEQS = 1_000_000  # a wider SyncRange is refused outright
PAGE_MAX_MESSAGES = 256
PAGE_MAX_BYTES = 2 * 1024 * 1024
MAX_SEQS_PER_ROUND = 20_000  # per origin and catch-up round
MAX_RANGES_PER_ROUND = 64


class SyncRequestError(ValueError):
    """A request the server refuses; the message goes back in ``SyncResponse.error``."""


def check_range(request: pb.SyncRange) -> tuple[ID, int, int]:
    """The (origin, from_seq, to_seq) of a well-formed range; SyncRequestError otherwise."""
    if not request.origin:
        raise SyncRequestError("range: origin is empty")
    if request.from_seq < 1 or request.to_seq < request.from_seq:
        raise SyncRequestError("range: need 1 <= from_seq <= to_seq")
    if request.to_seq - request.from_seq + 1 > MAX_RANGE_SEQS:
        raise SyncRequestError(f"range: at most {MAX_RANGE_SEQS} seqs per request")
    return ID(request.origin), request.from_seq, request.to_seq


def may_give(batch: LoggedBatch, asker: ID, audience: Audience, swarm: str) -> bool:
    """Whether ``asker`` may have ``batch`` from us (see the module rules)."""
    if not audience.allows(asker, tlp_topic(swarm, batch.tlp)):
        return False
    if batch.tlp not in SEALED_LEVELS:
        return True
    try:
        sealed = pb.SealedBatch.FromString(rpc_pb2.Message.FromString(batch.message).data)
    except DecodeError:
        return False
    ours = key_id(asker)
    return any(slot.key_id == ours for slot in sealed.keys)


def page(
    batches: Sequence[LoggedBatch], asker: ID, audience: Audience, swarm: str
) -> pb.SyncResponse:
    """The answer to a range, from what the store holds of it from its start on.

    ``batches`` are in seq order, at most ``PAGE_MAX_MESSAGES + 1``: one more than a page
    tells that the range goes on. ``next_seq`` is then the first seq not answered.
    """
    response = pb.SyncResponse()
    size = 0
    for index, batch in enumerate(batches):
        if index >= PAGE_MAX_MESSAGES or size >= PAGE_MAX_BYTES:
            response.next_seq = batch.seq
            break
        if may_give(batch, asker, audience, swarm):
            response.messages.append(batch.message)
            size += len(batch.message)
        else:
            response.withheld.append(batch.seq)
    return response


def ranges_to_fetch(
    *, missing: Sequence[int], highest_stored: int, their_highest: int
) -> list[tuple[int, int]]:
    """The seq ranges (inclusive) to ask a peer for, lowest first.

    ``missing``: the seqs we lack below ``highest_stored`` (sorted; the store's gaps), and
    ``their_highest`` the peer's head of that origin. Bounded by ``MAX_SEQS_PER_ROUND`` seqs
    and ``MAX_RANGES_PER_ROUND`` ranges.
    """
    wanted: list[tuple[int, int]] = []
    for seq in missing:
        if seq > their_highest:
            break
        if wanted and wanted[-1][1] == seq - 1:
            wanted[-1] = (wanted[-1][0], seq)
        else:
            wanted.append((seq, seq))
    if their_highest > highest_stored:
        wanted.append((highest_stored + 1, their_highest))
    bounded: list[tuple[int, int]] = []
    budget = MAX_SEQS_PER_ROUND
    for first, last in wanted[:MAX_RANGES_PER_ROUND]:
        if budget <= 0:
            break
        last = min(last, first + budget - 1)
        bounded.append((first, last))
        budget -= last - first + 1
    return bounded


def gap_sources(
    origin: ID, connected: Iterable[ID], preferred: Iterable[ID], *, others: int = 3
) -> list[ID]:
    """Whom to ask for an origin's missing batches, in order: the origin itself if connected,
    then the preferred peers (supernodes: a longer history) that are connected, then at most
    ``others`` other connected peers."""
    connected = list(connected)
    sources = [origin] if origin in connected else []
    sources += [peer for peer in preferred if peer in connected and peer not in sources]
    sources += [peer for peer in connected if peer not in sources][:others]
    return sources


def retry_delay_s(failures: int, *, first_s: float, retries: int) -> float | None:
    """How long to wait before catch-up try ``failures + 1`` with a peer after ``failures``
    failures in a row: ``first_s``, doubling; None once ``retries`` retries have been made."""
    if not 1 <= failures <= retries:
        return None
    return first_s * float(2 ** (failures - 1))
