"""The indicator stream of a node: publish path, receive path, local subscribers.

Publish: ``publish(indicators, tlp)`` hands the indicators to the batcher task through a
bounded channel (a full channel blocks the caller: backpressure, never a drop). The batcher
closes batches by count, bytes or window (``threatmesh.pubsub.batching``); each closed batch is
first written to the store (so an acknowledged indicator survives a crash), then published
on its TLP topic (which waits, bounded, for room in the peers' queues), then given to local
subscribers. ``publish`` returns once every indicator it was given is in a batch that went
through all three steps, or raises ``StreamError`` naming the step that failed.

Receive: one task per TLP topic reads the messages GossipSub delivered (validated by the
topic validator before they were forwarded), stores each batch under its origin and sequence
number, and gives the new ones to local subscribers. A batch seen before (the same origin and
sequence, e.g. our own publish coming back) is not given out twice.

Sealing: at AMBER, AMBER+STRICT and RED the payload is a ``SealedBatch`` (``pubsub/seal.py``)
wrapped for the recipients ``Sealing.recipients(tlp)`` names; receivers open it with their own
key. A sealed batch this node cannot open (it is not a recipient) is ignored: not stored, not
forwarded, and nobody is penalised for relaying it (``IgnoreMessage``).

Catch-up (``threatmesh.node.sync``): every stored batch keeps its origin's signed pubsub
message in the store's log, ours included (signed before it is stored, so what the node
acknowledged can be served after a crash). ``ingest`` takes such a message from a sync answer
and checks it exactly as a live one: signature, origin, topic, seal, validation, sequence
number. A received batch above a hole in its origin's sequence calls ``on_gap(origin)``.

Local subscribers get a bounded buffer each; a subscriber that falls behind loses indicators
one by one, counted in its ``dropped`` and in the node's status, and never slows the node.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import trio
from google.protobuf.message import DecodeError
from libp2p.abc import ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import signature_validator
from trio_typing import TaskStatus

from threatmesh.identity import Identity
from threatmesh.node.logs import get_logger
from threatmesh.node.store import AddResult, Store
from threatmesh.pubsub.batching import Batcher, BatchLimits
from threatmesh.pubsub.indicators import IndicatorError, validate_batch
from threatmesh.pubsub.libp2p_gossipsub import IgnoreMessage, PublishError, ThreatmeshPubsub
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.seal import SEALED_LEVELS, NotForUs, SealError, open_sealed, seal
from threatmesh.pubsub.topics import TLP_LEVELS, TopicError, parse_tlp_topic, tlp_topic

log = get_logger("threatmesh.stream")

# Publish requests waiting for the batcher; a full queue blocks publishers (backpressure).
PUBLISH_QUEUE_REQUESTS = 64
# Each local subscriber buffers this many indicators before it starts losing them.
SUBSCRIBER_BUFFER_INDICATORS = 50_000
# A subscriber's iteration yields to other tasks at least this often (see Subscription).
_CHECKPOINT_EVERY = 256
# How long publishing one batch may wait for room in the peers' outbound queues.
PUBLISH_TIMEOUT_S = 30.0


class StreamError(Exception):
    """Publishing failed; the message says at which step and why."""


@dataclass
class StreamCounters:
    published_indicators: int = 0
    published_batches: int = 0
    received_indicators: int = 0
    received_batches: int = 0
    duplicate_batches: int = 0
    invalid_batches: int = 0
    sealed_not_for_us: int = 0
    dropped_local: int = 0


@dataclass(frozen=True)
class Sealing:
    """How this node seals its batches at AMBER and above, and opens others'."""

    identity: Identity
    recipients: Callable[[int], Sequence[ID]]

    def seal(self, batch: pb.Batch) -> bytes:
        sealed = seal(
            batch.SerializeToString(),
            tlp=batch.tlp,
            origin=self.identity.peer_id,
            recipients=self.recipients(batch.tlp),
        )
        return sealed.SerializeToString()

    def open(self, message: rpc_pb2.Message, tlp: int) -> pb.Batch:
        """The batch inside a sealed message of ``tlp``'s topic.

        Raises DecodeError or IndicatorError for a malformed one (the origin's fault: it
        signed it), SealError (NotForUs included) for one this node cannot open.
        """
        sealed = pb.SealedBatch.FromString(message.data)
        if sealed.tlp != tlp:
            raise IndicatorError("tlp", f"the sealed batch says {sealed.tlp}, the topic {tlp}")
        inner = open_sealed(
            sealed,
            origin=ID(message.from_id),
            me=self.identity.peer_id,
            private_key=self.identity.key_pair.private_key,
        )
        return pb.Batch.FromString(inner)


class Ingested(enum.Enum):
    """What ``IndicatorStream.ingest`` did with a batch from catch-up."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    NOT_FOR_US = "not for us"  # sealed for others
    INVALID = "invalid"  # bad signature, wrong origin, topic or seq, invalid batch


@dataclass
class _Request:
    indicators: Sequence[pb.Indicator]
    tlp: int
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None


@dataclass
class Received:
    """An indicator as a subscriber sees it: who sent it, in which batch."""

    indicator: pb.Indicator
    origin: str
    seq: int


class Subscription:
    """A local subscriber's bounded buffer. Iterate it; ``dropped`` counts what it missed.

    It holds whole batches and yields their indicators one by one: handing out costs one
    append per batch, not a channel send per indicator (which was ~8 % of a relaying node's
    CPU in bench/throughput.py). ``buffer`` bounds the indicators held; what does not fit
    when a batch arrives is dropped and counted. Iteration ends once it is closed.
    """

    def __init__(self, tlps: frozenset[int], buffer: int) -> None:
        self.tlps = tlps
        self.dropped = 0
        self._room = buffer
        self._batches: deque[tuple[Sequence[pb.Indicator], str, int]] = deque()
        self._next = 0  # index into the first batch
        self._arrived = trio.Event()
        self._closed = False
        self._yielded = 0

    def offer_batch(self, indicators: Sequence[pb.Indicator], origin: str, seq: int) -> int:
        """Buffer what fits of a batch's indicators; return how many were dropped."""
        if self._closed:
            return 0
        kept = indicators if len(indicators) <= self._room else indicators[: self._room]
        dropped = len(indicators) - len(kept)
        self.dropped += dropped
        if kept:
            self._batches.append((kept, origin, seq))
            self._room -= len(kept)
            self._wake()
        return dropped

    def close(self) -> None:
        self._closed = True
        self._batches.clear()
        self._wake()

    def _wake(self) -> None:
        # Every waiting reader holds the current event; the next ones wait on a fresh one.
        self._arrived.set()
        self._arrived = trio.Event()

    def __aiter__(self) -> AsyncIterator[Received]:
        return self

    async def __anext__(self) -> Received:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> Received:
        """The next indicator; raises ``trio.EndOfChannel`` once closed."""
        self._yielded += 1
        if self._yielded % _CHECKPOINT_EVERY == 0:
            await trio.lowlevel.checkpoint()  # a consumer that never waits still lets others run
        while not self._batches:
            if self._closed:
                raise trio.EndOfChannel
            await self._arrived.wait()
        indicators, origin, seq = self._batches[0]
        indicator = indicators[self._next]
        self._next += 1
        self._room += 1
        if self._next == len(indicators):
            self._batches.popleft()
            self._next = 0
        return Received(indicator, origin, seq)


class IndicatorStream:
    def __init__(
        self,
        *,
        pubsub: ThreatmeshPubsub,
        store: Store,
        swarm: str,
        our_peer_id: str,
        limits: BatchLimits,
        sealing: Sealing,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._pubsub = pubsub
        self._store = store
        self._swarm = swarm
        self._our_peer_id = our_peer_id
        self._sealing = sealing
        self._wall_ms = wall_ms
        # Continue after the highest sequence number we ever stored, gaps or not: a reused
        # number would be dropped as a duplicate by every receiver.
        self._batcher = Batcher(limits, last_seq=store.last_seq(our_peer_id))
        self._requests_send, self._requests_receive = trio.open_memory_channel[_Request](
            PUBLISH_QUEUE_REQUESTS
        )
        self._subscribers: set[Subscription] = set()
        self._waiting: dict[int, list[_Request]] = {}
        self.counters = StreamCounters()
        # Called with an origin's peer ID when one of its batches arrives above a hole.
        self.on_gap: Callable[[str], None] | None = None

    # Public -----------------------------------------------------------------------------

    async def publish(self, indicators: Sequence[pb.Indicator], tlp: int) -> int:
        """Publish ``indicators`` (already validated) at ``tlp``; return how many went out."""
        if not indicators:
            return 0
        request = _Request(indicators=indicators, tlp=tlp)
        await self._requests_send.send(request)
        await request.done.wait()
        if request.error is not None:
            raise StreamError(request.error)
        return len(indicators)

    def subscribe(
        self, tlps: Sequence[int] = (), buffer: int = SUBSCRIBER_BUFFER_INDICATORS
    ) -> Subscription:
        """A new local subscription to ``tlps`` (all levels when empty). Close it when done."""
        levels = frozenset(tlps) if tlps else frozenset(tlp for tlp, _ in TLP_LEVELS)
        subscription = Subscription(levels, buffer)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        self.counters.dropped_local += subscription.dropped
        subscription.close()

    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def dropped_local(self) -> int:
        return self.counters.dropped_local + sum(s.dropped for s in self._subscribers)

    # Services ---------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for tlp, _ in TLP_LEVELS:
                topic = tlp_topic(self._swarm, tlp)
                self._pubsub.set_validator(topic, self._validator_for(tlp))
                subscription = await self._pubsub.subscribe(topic)
                nursery.start_soon(self._receive_topic, subscription, tlp)
            nursery.start_soon(self._batch_publishes)
            task_status.started()

    async def _batch_publishes(self) -> None:
        """Feed publish requests to the batcher; emit batches as they close."""
        while True:
            deadline = self._batcher.next_deadline()
            request: _Request | None = None
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                request = await self._requests_receive.receive()
            now = trio.current_time()
            if request is not None:
                closed = self._batcher.add(request.indicators, request.tlp, now, self._wall_ms())
                self._waiting.setdefault(request.tlp, []).append(request)
                for batch in closed:
                    error = await self._emit(batch)
                    if error is not None:
                        # Conservative: every request waiting at this level may have had
                        # indicators in the failed batch, so each one reports the failure.
                        for waiting in self._waiting.get(request.tlp, []):
                            waiting.error = waiting.error or error
                if not self._batcher.has_open(request.tlp):
                    self._finish(request.tlp, None)
            for batch in self._batcher.due(now, self._wall_ms()):
                error = await self._emit(batch)
                self._finish(batch.tlp, error)

    async def _emit(self, batch: pb.Batch) -> str | None:
        """Store, publish, hand out one of our batches; an error text if a step failed."""
        try:
            message = self._pubsub.sign(
                tlp_topic(self._swarm, batch.tlp), await self._payload(batch)
            )
        except (PublishError, SealError) as error:
            log.error("cannot publish our batch", seq=batch.seq, error=str(error))
            return f"the batch could not be published: {error}"
        try:
            await trio.to_thread.run_sync(
                lambda: self._store.add_batch(
                    origin=self._our_peer_id,
                    seq=batch.seq,
                    tlp=batch.tlp,
                    indicators=batch.indicators,
                    received_ms=batch.sent_ms,
                    message=message.SerializeToString(),
                )
            )
        except Exception as error:
            log.error("cannot store our batch", seq=batch.seq, error=str(error))
            return f"the store refused the batch: {error}"
        self._hand_out(batch, self._our_peer_id)
        try:
            await self._pubsub.publish_message(message, timeout_s=PUBLISH_TIMEOUT_S)
        except PublishError as error:
            # Stored and logged: peers get it by catch-up (node/sync.py).
            log.warning("batch stored but not forwarded", seq=batch.seq, error=str(error))
            return f"stored locally but not forwarded to peers: {error}"
        self.counters.published_batches += 1
        self.counters.published_indicators += len(batch.indicators)
        return None

    async def _payload(self, batch: pb.Batch) -> bytes:
        if batch.tlp not in SEALED_LEVELS:
            return batch.SerializeToString()
        # Sealing costs ~60-110 µs per recipient (pubsub/seal.py): many recipients would
        # stall the event loop, so seal in a worker thread.
        return await trio.to_thread.run_sync(self._sealing.seal, batch)

    def _batch_of(self, message: rpc_pb2.Message, tlp: int) -> pb.Batch:
        if tlp in SEALED_LEVELS:
            return self._sealing.open(message, tlp)
        return pb.Batch.FromString(message.data)

    def _checked_batch(self, message: rpc_pb2.Message, tlp: int) -> pb.Batch:
        """The valid batch of a message of ``tlp``'s topic, live or from catch-up.

        Raises NotForUs (sealed for others), SealError, DecodeError or IndicatorError.
        """
        batch = self._batch_of(message, tlp)
        validate_batch(batch, topic_tlp=tlp, now_ms=self._wall_ms())
        return batch

    def _finish(self, tlp: int, error: str | None) -> None:
        for request in self._waiting.pop(tlp, []):
            request.error = request.error or error
            request.done.set()

    async def _receive_topic(self, subscription: ISubscriptionAPI, tlp: int) -> None:
        while True:
            message = await subscription.get()
            origin = _peer_id_text(message.from_id)
            if origin == self._our_peer_id:
                continue  # our own batches were stored and handed out when we published
            batch = self._batch_of(message, tlp)
            await self._store_and_hand_out(origin, batch, message.SerializeToString())

    async def _store_and_hand_out(self, origin: str, batch: pb.Batch, raw: bytes) -> bool:
        """Store a validated batch of another origin (with its signed message) and hand it out;
        False if it was stored before."""
        result = await trio.to_thread.run_sync(self._store_received, origin, batch, raw)
        if result.duplicate:
            self.counters.duplicate_batches += 1
            return False
        self.counters.received_batches += 1
        self.counters.received_indicators += len(batch.indicators)
        self._hand_out(batch, origin)
        if result.gap and self.on_gap is not None:
            self.on_gap(origin)
        return True

    def _store_received(self, origin: str, batch: pb.Batch, raw: bytes) -> AddResult:
        return self._store.add_batch(
            origin=origin,
            seq=batch.seq,
            tlp=batch.tlp,
            indicators=batch.indicators,
            received_ms=self._wall_ms(),
            message=raw,
        )

    async def ingest(self, raw: bytes, *, origin: ID, seqs: tuple[int, int]) -> Ingested:
        """Check, store and hand out a batch from a catch-up answer (see the module docstring).

        ``raw`` must be ``origin``'s signed pubsub message of a batch with a seq in ``seqs``
        (inclusive), on one of this swarm's TLP topics.
        """
        try:
            message = rpc_pb2.Message.FromString(raw)
            topic = parse_tlp_topic(message.topicIDs[0]) if len(message.topicIDs) == 1 else None
        except (DecodeError, TopicError):
            return Ingested.INVALID
        if topic is None or topic.swarm != self._swarm or ID(message.from_id) != origin:
            return Ingested.INVALID
        if not signature_validator(message):
            return Ingested.INVALID
        try:
            batch = self._checked_batch(message, topic.tlp)
        except NotForUs:
            return Ingested.NOT_FOR_US
        except (IndicatorError, DecodeError, SealError):
            return Ingested.INVALID
        if not seqs[0] <= batch.seq <= seqs[1]:
            return Ingested.INVALID
        stored = await self._store_and_hand_out(origin.to_base58(), batch, raw)
        return Ingested.STORED if stored else Ingested.DUPLICATE

    def _hand_out(self, batch: pb.Batch, origin: str) -> None:
        for subscription in list(self._subscribers):
            if batch.tlp in subscription.tlps:
                subscription.offer_batch(batch.indicators, origin, batch.seq)

    def _validator_for(self, tlp: int) -> Callable[[ID, rpc_pb2.Message], bool]:
        def validate(forwarder: ID, message: rpc_pb2.Message) -> bool:
            if _peer_id_text(message.from_id) == self._our_peer_id:
                # py-libp2p runs topic validators on our own publishes too; their indicators
                # were validated when they were published (Node.publish), so skip the repeat.
                return True
            try:
                self._checked_batch(message, tlp)
            except NotForUs as error:
                # We are not among its recipients: nobody's fault, and not ours to forward.
                self.counters.sealed_not_for_us += 1
                raise IgnoreMessage(str(error)) from None
            except (IndicatorError, DecodeError, SealError) as error:
                # Malformed or unopenable although addressed to us: the origin signed it.
                self.counters.invalid_batches += 1
                log.info("rejected a batch", forwarder=str(forwarder), reason=str(error))
                return False
            return True

        return validate


def _peer_id_text(raw: bytes) -> str:
    return ID(raw).to_base58()
