"""Catch-up over ``/threatmesh/sync/1.0.0``: every node serves what it holds, and fetches what
it missed — after a restart, a partition, or a gap in an origin's sequence numbers.

The wire format is ``SyncRequest`` / ``SyncResponse`` in ``pubsub/proto/threatmesh.proto``: one
request and its answer per stream, each varint-length-prefixed. What is served is the origin's
signed pubsub message, as it travelled live, so the asker checks the origin's signature and
validates the batch exactly as a live one (``IndicatorStream.ingest``): a server cannot forge
or alter anything, only withhold. The decisions (what to give, what to ask for, the bounds) are
pure, in ``threatmesh.node.sync_policy``.

When the node asks:

- A peer joins (``PeerJoined`` from discovery — at start from the peer cache, after a
  partition heals, when a new peer is found): ask it for its heads (``SyncHeads``: the highest
  seq it holds per origin) and fetch every range we miss. At most ``CATCH_UP_PARALLEL`` peers
  at once, and one peer at most every ``CATCH_UP_MIN_INTERVAL_S``. A catch-up that fails
  (e.g. a restarted peer that dials before its sync protocol is served) is tried again after
  ``CATCH_UP_RETRY_S``, doubling, ``CATCH_UP_RETRIES`` times, while the peer stays connected:
  nothing else would ask again (no gap shows when the missed batches are the newest).
- A batch arrives above a hole in its origin's sequence: after ``GAP_GRACE_S`` (gossip may
  deliver out of order) the holes still open are fetched from the origin if connected, then
  from the supernodes (they keep a longer history), then from other connected peers.

Bounds on the serving side (hostile askers): ``MAX_FRAME_BYTES`` per request, a read deadline,
at most ``SERVE_PARALLEL`` requests served at once (``SERVE_PARALLEL_PER_PEER`` per peer); a
request beyond that, a malformed one, or a range that is too wide is answered with ``error``
and the stream closed. Store reads run in a worker thread, so serving never stalls the node.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import trio
from google.protobuf.message import DecodeError
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.utils import encode_varint_prefixed, read_varint_prefixed_bytes_limited
from trio_typing import TaskStatus

from threatmesh.discovery import PeerJoined
from threatmesh.node.logs import get_logger
from threatmesh.node.store import Store
from threatmesh.node.stream import IndicatorStream, Ingested
from threatmesh.node.sync_policy import (
    PAGE_MAX_MESSAGES,
    SyncRequestError,
    check_range,
    gap_sources,
    page,
    ranges_to_fetch,
    retry_delay_s,
)
from threatmesh.pubsub.libp2p_gossipsub import ThreatmeshPubsub
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.transports.libp2p_host import connected_peers

log = get_logger("threatmesh.sync")

PROTOCOL_ID = TProtocol("/threatmesh/sync/1.0.0")
MAX_FRAME_BYTES = 4 * 1024 * 1024
REQUEST_TIMEOUT_S = 10.0  # one request: open, write, read the answer
SERVE_PARALLEL = 8
SERVE_PARALLEL_PER_PEER = 2
MAX_HEADS = 4096  # origins in one SyncHeads answer
CATCH_UP_PARALLEL = 4
CATCH_UP_MIN_INTERVAL_S = 1.0  # per peer: a heads request is cheap; joins are what trigger it
MAX_REMEMBERED_PEERS = 4096  # when catch-up last ran with a peer (pruned beyond this)
CATCH_UP_QUEUE = 256  # peers waiting for a catch-up; more are dropped (they come back later)
GAP_GRACE_S = 2.0
CATCH_UP_RETRY_S = 2.0  # first retry of a failed catch-up; doubles each time
CATCH_UP_RETRIES = 4
MAX_PAGES_PER_RANGE = 1_000


class SyncError(Exception):
    """A sync request failed: the peer refused, broke the protocol, or did not answer."""


@dataclass
class SyncCounters:
    requests_served: int = 0
    requests_refused: int = 0  # malformed, too wide, or over the serving bounds
    batches_served: int = 0
    batches_withheld: int = 0  # held but not for that asker
    requests_sent: int = 0
    request_failures: int = 0
    catch_ups: int = 0  # rounds with a peer (heads, then ranges)
    batches_fetched: int = 0  # new batches stored from catch-up
    batches_not_for_us: int = 0  # withheld by the server or sealed for others
    invalid_fetched: int = 0  # bad signature, wrong origin or seq, invalid batch
    gaps_detected: int = 0
    last_catch_up_ms: int = 0


class Sync:
    def __init__(
        self,
        *,
        host: IHost,
        store: Store,
        stream: IndicatorStream,
        pubsub: ThreatmeshPubsub,
        swarm: str,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._host = host
        self._store = store
        self._stream = stream
        self._pubsub = pubsub
        self._swarm = swarm
        self._wall_ms = wall_ms
        self._ids = itertools.count(1)
        self._serving = trio.Semaphore(SERVE_PARALLEL)
        self._serving_by_peer: dict[ID, int] = {}
        self._last_catch_up: dict[ID, float] = {}
        self._queue_send, self._queue_receive = trio.open_memory_channel[ID](CATCH_UP_QUEUE)
        self._queued: set[ID] = set()
        self._failures: dict[ID, int] = {}  # failed catch-ups in a row, per peer
        self._nursery: trio.Nursery | None = None
        self._gaps: set[str] = set()  # origins with a gap check pending
        self._gap_send, self._gap_receive = trio.open_memory_channel[str](CATCH_UP_QUEUE)
        self.counters = SyncCounters()
        # Peers to ask first for a gap after its origin: the supernodes, which keep a longer
        # history (set by the node; peer IDs as text).
        self.preferred_sources: Callable[[], Iterable[str]] = tuple

    # Service ------------------------------------------------------------------------------

    async def run(
        self,
        membership: trio.MemoryReceiveChannel[Any],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve, and catch up with peers as ``membership`` (discovery events) says they join."""
        self._host.set_stream_handler(PROTOCOL_ID, self._serve)
        self._stream.on_gap = self.gap
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_membership, membership)
            for _ in range(CATCH_UP_PARALLEL):
                nursery.start_soon(self._catch_up_worker)
            nursery.start_soon(self._gap_worker)
            task_status.started()

    def catch_up_soon(self, peer: ID) -> None:
        """Queue a catch-up with ``peer`` (ignored if one is queued or happened recently)."""
        last = self._last_catch_up.get(peer)
        if peer in self._queued or (
            last is not None and trio.current_time() - last < CATCH_UP_MIN_INTERVAL_S
        ):
            return
        try:
            self._queue_send.send_nowait(peer)
        except trio.WouldBlock:
            return
        self._queued.add(peer)

    def gap(self, origin: str) -> None:
        """A batch of ``origin`` arrived above a hole in its sequence (from the stream)."""
        if origin in self._gaps:
            return
        try:
            self._gap_send.send_nowait(origin)
        except trio.WouldBlock:
            return
        self._gaps.add(origin)
        self.counters.gaps_detected += 1

    async def _watch_membership(self, membership: trio.MemoryReceiveChannel[Any]) -> None:
        with membership:
            async for event in membership:
                if isinstance(event, PeerJoined):
                    self.catch_up_soon(ID.from_base58(event.peer_id))

    async def _catch_up_worker(self) -> None:
        async for peer in self._queue_receive:
            self._queued.discard(peer)
            now = trio.current_time()
            if len(self._last_catch_up) >= MAX_REMEMBERED_PEERS:
                # Only the last CATCH_UP_MIN_INTERVAL_S matter: forget the older ones.
                self._last_catch_up = {
                    p: t
                    for p, t in self._last_catch_up.items()
                    if now - t < CATCH_UP_MIN_INTERVAL_S
                }
            self._last_catch_up[peer] = now
            try:
                await self.catch_up(peer)
            except SyncError as error:
                log.info("catch-up failed", peer=str(peer), error=str(error))
                self._retry_later(peer)
            else:
                self._failures.pop(peer, None)

    def _retry_later(self, peer: ID) -> None:
        failures = self._failures.get(peer, 0) + 1
        delay_s = retry_delay_s(failures, first_s=CATCH_UP_RETRY_S, retries=CATCH_UP_RETRIES)
        if delay_s is None or self._nursery is None:
            self._failures.pop(peer, None)
            return
        if len(self._failures) >= MAX_REMEMBERED_PEERS:
            self._failures.clear()
        self._failures[peer] = failures
        self._nursery.start_soon(self._retry, peer, delay_s)

    async def _retry(self, peer: ID, delay_s: float) -> None:
        await trio.sleep(delay_s)
        if peer in connected_peers(self._host):
            self.catch_up_soon(peer)
        else:
            self._failures.pop(peer, None)  # it left: its next join starts afresh

    async def _gap_worker(self) -> None:
        async for first in self._gap_receive:
            await trio.sleep(GAP_GRACE_S)  # one grace for every origin reported meanwhile
            origins = [first]
            while True:
                try:
                    origins.append(self._gap_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            for origin in origins:
                self._gaps.discard(origin)
                await self._fill_gaps(origin)

    # Asking -------------------------------------------------------------------------------

    async def catch_up(self, peer: ID) -> int:
        """Fetch from ``peer`` every batch we miss of the origins it holds; how many we stored."""
        self.counters.catch_ups += 1
        answer = await self._ask(peer, pb.SyncRequest(heads=pb.SyncHeads()))
        stored = 0
        for head in answer.heads[:MAX_HEADS]:
            origin = ID(head.origin)
            stored += await self._fetch_missing(peer, origin, head.highest_seq)
        self.counters.last_catch_up_ms = self._wall_ms()
        if stored:
            log.info("caught up", peer=str(peer), batches=stored)
        return stored

    async def _fill_gaps(self, origin_text: str) -> None:
        origin = ID.from_base58(origin_text)
        seqs = await trio.to_thread.run_sync(self._store.origin_seqs, origin_text)
        if not seqs.missing:
            return
        highest = await trio.to_thread.run_sync(self._store.last_seq, origin_text)
        preferred = [ID.from_base58(text) for text in self.preferred_sources()]
        for source in gap_sources(origin, self._pubsub.peers, preferred):
            try:
                await self._fetch_missing(source, origin, highest)
            except SyncError as error:
                log.info("gap fill failed", peer=str(source), error=str(error))
                continue
            seqs = await trio.to_thread.run_sync(self._store.origin_seqs, origin_text)
            if not seqs.missing:
                return

    async def _fetch_missing(self, peer: ID, origin: ID, their_highest: int) -> int:
        origin_text = origin.to_base58()
        seqs = await trio.to_thread.run_sync(self._store.origin_seqs, origin_text)
        highest = await trio.to_thread.run_sync(self._store.last_seq, origin_text)
        stored = 0
        for first, last in ranges_to_fetch(
            missing=seqs.missing, highest_stored=highest, their_highest=their_highest
        ):
            stored += await self._fetch_range(peer, origin, first, last)
        return stored

    async def _fetch_range(self, peer: ID, origin: ID, first: int, last: int) -> int:
        stored = 0
        next_seq = first
        for _ in range(MAX_PAGES_PER_RANGE):
            request = pb.SyncRange(origin=origin.to_bytes(), from_seq=next_seq, to_seq=last)
            answer = await self._ask(peer, pb.SyncRequest(range=request))
            for raw in answer.messages:
                outcome = await self._stream.ingest(raw, origin=origin, seqs=(next_seq, last))
                if outcome is Ingested.STORED:
                    stored += 1
                    self.counters.batches_fetched += 1
                elif outcome is Ingested.NOT_FOR_US:
                    self.counters.batches_not_for_us += 1
                elif outcome is Ingested.INVALID:
                    self.counters.invalid_fetched += 1
            withheld = [seq for seq in answer.withheld if next_seq <= seq <= last]
            if withheld:
                self.counters.batches_not_for_us += len(withheld)
                await trio.to_thread.run_sync(
                    self._store.mark_withheld, origin.to_base58(), withheld, self._wall_ms()
                )
            if answer.next_seq == 0 or not next_seq < answer.next_seq <= last:
                return stored
            next_seq = answer.next_seq
        return stored

    async def _ask(self, peer: ID, request: pb.SyncRequest) -> pb.SyncResponse:
        request.request_id = next(self._ids)
        self.counters.requests_sent += 1
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                stream = await self._host.new_stream(peer, [PROTOCOL_ID])
                try:
                    await stream.write(encode_varint_prefixed(request.SerializeToString()))
                    raw = await read_varint_prefixed_bytes_limited(stream, MAX_FRAME_BYTES)
                finally:
                    await stream.close()
            answer = pb.SyncResponse.FromString(raw)
        except Exception as error:  # no answer, a broken stream or a frame that is no answer
            self.counters.request_failures += 1
            raise SyncError(f"{peer}: {type(error).__name__}: {error}") from None
        if answer.error:  # a refusal may come before the request was read: no id then
            self.counters.request_failures += 1
            raise SyncError(f"{peer} refused: {answer.error}")
        if answer.request_id != request.request_id:
            self.counters.request_failures += 1
            raise SyncError(
                f"{peer}: answered request {answer.request_id}, not {request.request_id}"
            )
        return answer

    # Serving ------------------------------------------------------------------------------

    async def _serve(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            if self._serving_by_peer.get(peer, 0) >= SERVE_PARALLEL_PER_PEER:
                await self._refuse(stream, 0, "busy: too many requests from you at once")
                return
            self._serving_by_peer[peer] = self._serving_by_peer.get(peer, 0) + 1
            try:
                try:
                    self._serving.acquire_nowait()
                except trio.WouldBlock:
                    await self._refuse(stream, 0, "busy: serving others, ask again later")
                    return
                try:
                    await self._answer(stream, peer)
                finally:
                    self._serving.release()
            finally:
                self._serving_by_peer[peer] -= 1
                if not self._serving_by_peer[peer]:
                    del self._serving_by_peer[peer]
        except Exception as error:  # a broken stream from one asker must not hurt the node
            log.debug("sync stream ended", peer=str(peer), error=str(error))
        finally:
            await stream.close()

    async def _answer(self, stream: INetStream, peer: ID) -> None:
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            raw = await read_varint_prefixed_bytes_limited(stream, MAX_FRAME_BYTES)
            try:
                request = pb.SyncRequest.FromString(raw)
                response = await trio.to_thread.run_sync(self._respond, request, peer)
            except (DecodeError, SyncRequestError) as error:
                await self._refuse(stream, 0, str(error) or "not a SyncRequest")
                return
            response.request_id = request.request_id
            self.counters.requests_served += 1
            await stream.write(encode_varint_prefixed(response.SerializeToString()))

    def _respond(self, request: pb.SyncRequest, asker: ID) -> pb.SyncResponse:
        query = request.WhichOneof("query")
        if query == "heads":
            heads = self._store.heads(limit=MAX_HEADS)
            return pb.SyncResponse(
                heads=[
                    pb.OriginHead(origin=ID.from_base58(origin).to_bytes(), highest_seq=seq)
                    for origin, seq in heads
                ]
            )
        if query == "range":
            origin, first, last = check_range(request.range)
            batches = self._store.log_range(
                origin.to_base58(), first, last, limit=PAGE_MAX_MESSAGES + 1
            )
            response = page(batches, asker, self._pubsub.audience, self._swarm)
            self.counters.batches_served += len(response.messages)
            self.counters.batches_withheld += len(response.withheld)
            return response
        raise SyncRequestError("empty request: ask for heads or a range")

    async def _refuse(self, stream: INetStream, request_id: int, reason: str) -> None:
        self.counters.requests_refused += 1
        answer = pb.SyncResponse(request_id=request_id, error=reason[:200])
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            await stream.write(encode_varint_prefixed(answer.SerializeToString()))

    # Views --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            **asdict(self.counters),
            "queued_catch_ups": len(self._queued),
            "pending_gaps": len(self._gaps),
        }
