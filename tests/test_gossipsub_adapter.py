"""pubsub/libp2p_gossipsub.py: one test per upstream default we change.

Every node here is a bare host + our pubsub on 127.0.0.1 (the ``net`` fixture), not a full
``Node``, so each test sees only the adapter. Waits are bounded by ``trio.fail_after``.

Ordering used by several tests: py-libp2p reads one peer's RPCs in order and starts one
``push_msg`` task per message; delivery to subscribers happens in that task's first step. So
once a later message from the same peer has been delivered, every earlier one from that peer
has been handled (delivered or dropped).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from google.protobuf.message import DecodeError
from libp2p.abc import ISubscriptionAPI
from libp2p.io.exceptions import MessageTooLarge
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.utils import encode_varint_prefixed
from trio_typing import TaskStatus

import threatmesh.pubsub.libp2p_gossipsub as adapter
from threatmesh.identity import generate_identity
from threatmesh.pubsub.libp2p_gossipsub import (
    PROTOCOLS,
    GossipSettings,
    PublishError,
    RpcReader,
    ThreatmeshGossipSub,
    ThreatmeshPubsub,
    build_pubsub,
    message_id,
    run_pubsub,
    running_pubsub,
)
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.libp2p_host import HostSettings, build_host, connect, is_connected
from threatmesh.transports.libp2p_host import running as running_host

TOPIC = "/threatmesh/test/tlp/clear/1"
LISTEN = (parse_listen_addr("/ip4/127.0.0.1/tcp/0"),)


async def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> None:
    """Bounded polling, only for py-libp2p state that has no event (scores, caches, backoff)."""
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - no event exists for this state
            await trio.sleep(poll_s)


@dataclass
class Peer:
    pubsub: ThreatmeshPubsub

    @property
    def id(self) -> ID:
        return self.pubsub.my_id

    @property
    def router(self) -> ThreatmeshGossipSub:
        return self.pubsub.gossip

    @property
    def info(self) -> PeerInfo:
        return PeerInfo(self.id, self.pubsub.host.get_addrs())


async def _serve(settings: GossipSettings, *, task_status: TaskStatus[Peer]) -> None:
    host = build_host(generate_identity(), HostSettings(listen_addrs=LISTEN))
    async with running_host(host, LISTEN):
        pubsub = build_pubsub(host, settings)
        async with running_pubsub(pubsub):
            task_status.started(Peer(pubsub))
            await trio.sleep_forever()


class Net:
    """Bare hosts with our pubsub, each served by a task of the fixture's nursery."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    async def start(self, settings: GossipSettings | None = None) -> Peer:
        with trio.fail_after(5):
            peer: Peer = await self._nursery.start(_serve, settings or GossipSettings())
        return peer

    async def connect(self, dialer: Peer, listener: Peer) -> None:
        await connect(dialer.pubsub.host, listener.info, timeout_s=5)
        await dialer.pubsub.wait_for_peer(listener.id)
        await listener.pubsub.wait_for_peer(dialer.id)


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    async with trio.open_nursery() as nursery:
        yield Net(nursery)
        nursery.cancel_scope.cancel()


async def receive(subscription: ISubscriptionAPI, count: int, timeout_s: float = 10) -> list[bytes]:
    with trio.fail_after(timeout_s):
        return [(await subscription.get()).data for _ in range(count)]


async def receive_until(
    subscription: ISubscriptionAPI, last: bytes, timeout_s: float = 10
) -> list[bytes]:
    """Everything delivered up to and including ``last``."""
    got: list[bytes] = []
    with trio.fail_after(timeout_s):
        while not got or got[-1] != last:
            got.append((await subscription.get()).data)
    return got


async def subscribed_pair(net: Net) -> tuple[Peer, Peer, ISubscriptionAPI]:
    """a publishes, b is subscribed to TOPIC; both know it."""
    a, b = await net.start(), await net.start()
    subscription = await b.pubsub.subscribe(TOPIC)
    await net.connect(b, a)
    await a.pubsub.wait_for_subscription(b.id, TOPIC)
    return a, b, subscription


async def subscribed_line(net: Net) -> tuple[Peer, Peer, Peer, ISubscriptionAPI]:
    """a - b - c, all subscribed to TOPIC, meshed along the line; c's subscription."""
    a, b, c = await net.start(), await net.start(), await net.start()
    for peer in (a, b, c):
        await peer.pubsub.subscribe(TOPIC)
    await net.connect(b, a)
    await net.connect(c, b)
    await a.pubsub.wait_for_mesh(b.id, TOPIC)
    await b.pubsub.wait_for_mesh(c.id, TOPIC)
    return a, b, c, c.pubsub.subscribed_topics_receive[TOPIC]


# Protocols ----------------------------------------------------------------------------------


async def test_only_spec_gossipsub_versions_are_offered(net: Net) -> None:
    assert PROTOCOLS == ("/meshsub/1.2.0", "/meshsub/1.1.0", "/meshsub/1.0.0")
    a, b = await net.start(), await net.start()
    assert a.pubsub.protocols == PROTOCOLS  # upstream offers 1.0-1.4, 2.0 (drafts) too
    assert not any("floodsub" in protocol for protocol in a.pubsub.protocols)
    await net.connect(b, a)
    assert a.router.peer_protocol[b.id] == "/meshsub/1.2.0"


# Heartbeat ----------------------------------------------------------------------------------


async def test_heartbeat_is_one_second_and_adaptive_gossip_cannot_raise_it(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await net.start(), await net.start()
    await a.pubsub.subscribe(TOPIC)
    await b.pubsub.subscribe(TOPIC)
    await net.connect(b, a)
    scorer = a.router.scorer
    assert scorer is not None
    beats: list[float] = []
    on_heartbeat = scorer.on_heartbeat

    def record(dt_seconds: float = 1.0) -> None:
        beats.append(trio.current_time())
        on_heartbeat(dt_seconds)

    monkeypatch.setattr(scorer, "on_heartbeat", record)
    # Make the (30 s) health recomputation due now: a mesh of 1 < D is "unhealthy", and with
    # adaptive gossip on upstream would set the interval to 30 s at this heartbeat.
    a.router.last_health_update = 0
    await wait_until(lambda: len(beats) >= 3, timeout_s=5, poll_s=0.05)
    assert max(later - earlier for earlier, later in itertools.pairwise(beats)) < 1.5
    assert a.router.heartbeat_interval == 1.0


# Spam limit ---------------------------------------------------------------------------------


async def test_our_own_burst_of_200_is_not_rate_limited(net: Net) -> None:
    a, _, subscription = await subscribed_pair(net)
    payloads = [f"indicator {i}".encode() for i in range(200)]
    for payload in payloads:
        await a.pubsub.publish(TOPIC, payload)
    assert sorted(await receive(subscription, 200)) == sorted(payloads)


# Scoring and validators ---------------------------------------------------------------------


async def test_five_invalid_messages_put_the_sender_below_zero_and_below_a_good_peer(
    net: Net,
) -> None:
    bad, good, judge = await net.start(), await net.start(), await net.start()
    judge.pubsub.set_validator(TOPIC, lambda forwarder, msg: not msg.data.startswith(b"bad"))
    subscription = await judge.pubsub.subscribe(TOPIC)
    for sender in (bad, good):
        await net.connect(sender, judge)
        await sender.pubsub.wait_for_subscription(judge.id, TOPIC)
    for i in range(5):
        await bad.pubsub.publish(TOPIC, f"bad {i}".encode())
        await good.pubsub.publish(TOPIC, f"good {i}".encode())
    assert sorted(await receive(subscription, 5)) == [f"good {i}".encode() for i in range(5)]
    scorer = judge.router.scorer
    assert scorer is not None
    # The counter decays by 1 % per heartbeat: more than 4 means the fifth has been counted.
    await wait_until(lambda: scorer.invalid_messages[bad.id][TOPIC] > 4, timeout_s=5)
    bad_score, good_score = scorer.score(bad.id, [TOPIC]), scorer.score(good.id, [TOPIC])
    assert bad_score < 0
    assert bad_score < good_score


# Peer exchange ------------------------------------------------------------------------------


async def _prune_with_px(net: Net, *, deliveries_before: int) -> tuple[Peer, Peer]:
    """pruner (not in TOPIC) answers pruned's GRAFT with PRUNE + PX naming `other`.

    Returns (pruned, other) once pruned has fully handled that PRUNE.
    """
    pruner, pruned, other = await net.start(), await net.start(), await net.start()
    subscription = await pruned.pubsub.subscribe(TOPIC)
    await other.pubsub.subscribe(TOPIC)
    await net.connect(pruned, pruner)
    await net.connect(other, pruner)
    await pruner.pubsub.wait_for_subscription(pruned.id, TOPIC)
    await pruner.pubsub.wait_for_subscription(other.id, TOPIC)
    for i in range(deliveries_before):  # first deliveries (P2) raise pruner's score at pruned
        await pruner.pubsub.publish(TOPIC, f"before {i}".encode())
    await receive(subscription, deliveries_before)
    await pruned.router.emit_graft(TOPIC, pruner.id)
    await wait_until(lambda: pruner.id in pruned.router.back_off.get(TOPIC, {}), timeout_s=5)
    # pruned handles a peer's control messages (PX dials included) before its next RPC.
    await pruner.pubsub.publish(TOPIC, b"after")
    await receive_until(subscription, b"after")
    return pruned, other


async def test_prune_carries_px_and_px_from_a_well_scored_peer_is_followed(net: Net) -> None:
    pruned, other = await _prune_with_px(net, deliveries_before=15)
    assert is_connected(pruned.pubsub.host, other.info)


async def test_px_from_a_peer_below_accept_px_threshold_is_ignored(net: Net) -> None:
    pruned, other = await _prune_with_px(net, deliveries_before=0)
    assert not is_connected(pruned.pubsub.host, other.info)


async def test_heartbeat_prune_of_an_oversubscribed_mesh_carries_px_and_backoff(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hub keeps a mesh of 1 (D_hi 2); three peers graft it, so its heartbeat prunes two.
    hub = await net.start(
        GossipSettings(heartbeat_interval_s=0.1, degree=1, degree_low=1, degree_high=2)
    )
    await hub.pubsub.subscribe(TOPIC)
    prunes: list[rpc_pb2.ControlPrune] = []
    for _ in range(3):
        spoke = await net.start()
        await spoke.pubsub.subscribe(TOPIC)
        handle_prune = spoke.router.handle_prune

        async def record(
            prune: rpc_pb2.ControlPrune, sender: ID, handle_prune: Any = handle_prune
        ) -> None:
            prunes.append(prune)
            await handle_prune(prune, sender)

        monkeypatch.setattr(spoke.router, "handle_prune", record)
        await net.connect(spoke, hub)
    await wait_until(lambda: len(prunes) >= 2, timeout_s=5)
    for prune in prunes:
        assert prune.backoff == GossipSettings().prune_backoff_s
        assert len(prune.peers) == 2  # the other two spokes


# IP colocation ------------------------------------------------------------------------------


async def test_peer_ip_is_tracked_for_colocation_scoring(net: Net) -> None:
    a, b = await net.start(), await net.start()
    await net.connect(b, a)
    for here, there in ((a, b), (b, a)):
        scorer = here.router.scorer
        assert scorer is not None
        assert scorer.ip_by_peer.get(there.id) == "127.0.0.1"


# Message IDs and the message cache ----------------------------------------------------------


async def test_the_same_payload_is_delivered_once_whoever_publishes_it(net: Net) -> None:
    a, c, b = await net.start(), await net.start(), await net.start()
    subscription = await b.pubsub.subscribe(TOPIC)
    for publisher in (a, c):
        await net.connect(publisher, b)
        await publisher.pubsub.wait_for_subscription(b.id, TOPIC)
    await a.pubsub.publish(TOPIC, b"same")
    await a.pubsub.publish(TOPIC, b"same")
    await c.pubsub.publish(TOPIC, b"same")
    await a.pubsub.publish(TOPIC, b"end a")
    await c.pubsub.publish(TOPIC, b"end c")
    got = await receive_until(subscription, b"end a")
    if b"end c" not in got:
        got += await receive_until(subscription, b"end c")
    assert got.count(b"same") == 1


async def test_iwant_for_a_content_id_is_served_from_the_cache(net: Net) -> None:
    # Fast heartbeats and a one-heartbeat window: the message leaves the IHAVE window (and so
    # the replay to new subscribers) quickly but stays in the cache for IWANT.
    settings = GossipSettings(heartbeat_interval_s=0.1, gossip_window=1, gossip_history=50)
    a = await net.start(settings)
    await a.pubsub.publish(TOPIC, b"wanted")
    wanted_id = message_id(rpc_pb2.Message(data=b"wanted"))
    assert a.router.mcache.get(wanted_id) is not None  # cached under its content ID
    await wait_until(lambda: wanted_id not in a.router.mcache.window(TOPIC), timeout_s=5)
    b = await net.start(settings)
    subscription = await b.pubsub.subscribe(TOPIC)
    await net.connect(b, a)
    await a.pubsub.wait_for_subscription(b.id, TOPIC)
    await b.router.emit_iwant([wanted_id], a.id)
    assert await receive(subscription, 1, timeout_s=5) == [b"wanted"]


# StrictSign ---------------------------------------------------------------------------------


async def test_an_unsigned_message_is_not_delivered(net: Net) -> None:
    a, b, subscription = await subscribed_pair(net)
    assert b.pubsub.strict_signing
    unsigned = rpc_pb2.Message(
        data=b"unsigned", topicIDs=[TOPIC], from_id=a.id.to_bytes(), seqno=(1).to_bytes(8, "big")
    )
    a.router.send_rpc(b.id, rpc_pb2.RPC(publish=[unsigned]))
    await a.pubsub.publish(TOPIC, b"signed")
    assert await receive_until(subscription, b"signed") == [b"signed"]


async def test_an_undecodable_rpc_resets_the_stream_and_the_node_goes_on(net: Net) -> None:
    a, b, subscription = await subscribed_pair(net)
    c = await net.start()
    await net.connect(c, b)
    stream = await c.pubsub.host.new_stream(b.id, [PROTOCOLS[0]])
    await stream.write(encode_varint_prefixed(b"\xff" * 32))  # not an RPC
    with trio.fail_after(5), pytest.raises(StreamReset):
        await stream.read()  # b reset the stream
    await a.pubsub.publish(TOPIC, b"still delivered")
    assert await receive(subscription, 1) == [b"still delivered"]


async def test_reading_an_rpc_sends_at_most_one_yamux_window_update(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = 0
    send_window_update = YamuxStream.send_window_update

    async def counting(self: YamuxStream, *args: Any, **kwargs: Any) -> None:
        nonlocal updates
        updates += 1
        await send_window_update(self, *args, **kwargs)

    monkeypatch.setattr(YamuxStream, "send_window_update", counting)
    a, _, subscription = await subscribed_pair(net)
    before = updates
    payloads = [b"m%d" % i * 100 for i in range(50)]  # ~10 KB in all, far below half a window
    for payload in payloads:
        await a.pubsub.publish(TOPIC, payload)
    assert await receive(subscription, 50) == payloads
    # Upstream's read loop reads the length byte by byte and then the body, and yamux sends
    # an update after every read: 150+ here. Ours reads each RPC at once: at most one each.
    assert updates - before <= len(payloads)


class _Chunks:
    """A stream that returns the given chunks, one per read, then end of stream."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.reads = 0

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        return self.chunks.pop(0) if self.chunks else b""


async def test_rpc_reader_cuts_rpcs_from_chunks_as_they_arrive() -> None:
    big = bytes(300)  # a two-byte length prefix
    wire = b"".join(encode_varint_prefixed(rpc) for rpc in (b"one", b"", big, b"four"))
    stream = _Chunks(wire[:2], wire[2:9], wire[9:])  # splits a prefix and a body
    reader = RpcReader(stream, limit=1000)  # type: ignore[arg-type]
    assert [await reader.next() for _ in range(4)] == [b"one", b"", big, b"four"]
    assert stream.reads == 3
    with pytest.raises(StreamEOF):
        await reader.next()


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (encode_varint_prefixed(bytes(1001)), MessageTooLarge),  # refused before the body
        (b"\xff" * 11, DecodeError),  # a length prefix that never ends
        (encode_varint_prefixed(b"cut short")[:5], StreamEOF),
    ],
)
async def test_rpc_reader_refuses_what_is_not_an_rpc(wire: bytes, error: type[Exception]) -> None:
    reader = RpcReader(_Chunks(wire), limit=1000)  # type: ignore[arg-type]
    with pytest.raises(error):
        await reader.next()


async def test_rpcs_queued_for_a_peer_go_out_in_one_write(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, subscription = await subscribed_pair(net)
    stream = a.pubsub.peers[b.id]
    writes = 0
    write = stream.write

    async def counting(data: bytes) -> None:
        nonlocal writes
        writes += 1
        await write(data)

    monkeypatch.setattr(stream, "write", counting)
    payloads = [b"queued %d" % i for i in range(20)]
    for payload in payloads:  # no await in between: all 20 wait in b's queue
        a.router.send_rpc(b.id, rpc_pb2.RPC(publish=[a.pubsub.sign(TOPIC, payload)]))
    assert await receive(subscription, 20) == payloads
    assert writes == 1  # upstream: 20


# Backpressure -------------------------------------------------------------------------------


async def test_burst_of_2000_through_publish_arrives_or_every_loss_is_counted(net: Net) -> None:
    source, fast, slow = await net.start(), await net.start(), await net.start()
    fast_sub = await fast.pubsub.subscribe(TOPIC)
    slow_sub = await slow.pubsub.subscribe(TOPIC)
    for subscriber in (fast, slow):
        await net.connect(subscriber, source)
        await source.pubsub.wait_for_subscription(subscriber.id, TOPIC)
    total = 2000
    payloads = [i.to_bytes(4, "big") + bytes(2044) for i in range(total)]  # 2 KB each
    fast_got: list[bytes] = []
    slow_got: list[bytes] = []

    async def read_fast() -> None:
        fast_got.extend(await receive(fast_sub, total, timeout_s=60))

    async def read_slow() -> None:
        with trio.fail_after(60):
            while len(slow_got) + slow.pubsub.counters.dropped_subscription < total:
                slow_got.append((await slow_sub.get()).data)
                await trio.sleep(0.001)  # a slow consumer (bounded: 1 ms per message)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_fast)
        nursery.start_soon(read_slow)
        for payload in payloads:
            await source.pubsub.publish(TOPIC, payload, timeout_s=10)
    elapsed = time.perf_counter() - started
    print(f"\n2000 x 2 KB to 2 subscribers in {elapsed:.2f} s; counters:")
    for name, peer in (("source", source), ("fast", fast), ("slow", slow)):
        print(f"  {name}: {peer.pubsub.counters_snapshot()}")
    assert source.pubsub.counters.dropped_outbound == 0  # the publisher itself loses nothing
    assert source.pubsub.counters.publish_timeouts == 0
    assert sorted(fast_got) == payloads
    assert len(set(slow_got)) == len(slow_got)
    assert len(slow_got) + slow.pubsub.counters.dropped_subscription == total


async def test_outbound_queues_hold_more_than_upstreams_32(net: Net) -> None:
    a, b, _ = await subscribed_pair(net)
    queue = a.pubsub.peer_queues[b.id]
    assert queue._queue.max_size == GossipSettings().outbound_queue_size
    # 100 RPCs queued without a checkpoint in between (as a burst of forwards would be).
    rpc = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"x", topicIDs=[TOPIC])])
    for _ in range(100):
        a.router.send_rpc(b.id, rpc)
    assert a.pubsub.counters.dropped_outbound == 0


async def test_a_full_outbound_queue_is_counted(net: Net) -> None:
    a, b, _ = await subscribed_pair(net)
    rpc = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"x", topicIDs=[TOPIC])])
    for _ in range(GossipSettings().outbound_queue_size + 10):
        a.router.send_rpc(b.id, rpc)
    assert a.pubsub.counters.dropped_outbound == 10
    assert a.pubsub.counters.dropped_outbound_messages == 10


async def test_publish_waits_for_room_and_raises_instead_of_dropping(net: Net) -> None:
    a, _, _ = await subscribed_pair(net)
    stuck = ID(b"\x00\x24stuck-peer-that-never-reads-its-queue")
    queue = RpcQueue()
    a.pubsub.peer_queues[stuck] = queue  # resized to ours on insertion
    a.pubsub.peer_topics[TOPIC].add(stuck)
    try:
        for _ in range(GossipSettings().publish_watermark + 1):
            assert queue.push(rpc_pb2.RPC())
        with pytest.raises(PublishError, match="stayed above"):
            await a.pubsub.publish(TOPIC, b"x", timeout_s=0.2)
        assert a.pubsub.counters.publish_timeouts == 1
    finally:
        a.pubsub.peer_topics[TOPIC].discard(stuck)
        del a.pubsub.peer_queues[stuck]


async def test_subscription_queue_holds_more_than_upstreams_32(net: Net) -> None:
    a, b, subscription = await subscribed_pair(net)
    for i in range(100):
        await a.pubsub.publish(TOPIC, f"m{i}".encode())
    await a.pubsub.publish(TOPIC, b"last")
    # Nobody reads until b has handled all 101 (seen "last" => handled every earlier one).
    last_id = message_id(rpc_pb2.Message(data=b"last"))
    await wait_until(lambda: b.pubsub.seen_messages.has(last_id), timeout_s=5)
    assert len(await receive_until(subscription, b"last")) == 101
    assert b.pubsub.counters.dropped_subscription == 0


async def test_a_full_subscription_queue_is_counted(net: Net) -> None:
    a, b = await net.start(), await net.start(GossipSettings(subscription_queue_size=8))
    subscription = await b.pubsub.subscribe(TOPIC)
    await net.connect(b, a)
    await a.pubsub.wait_for_subscription(b.id, TOPIC)
    for i in range(20):
        await a.pubsub.publish(TOPIC, f"m{i}".encode())
    await wait_until(lambda: b.pubsub.counters.dropped_subscription == 12, timeout_s=5)
    assert len(await receive(subscription, 8)) == 8


async def test_idontwant_only_for_received_large_messages_and_not_back_to_the_sender(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c, c_sub = await subscribed_line(net)
    sent: list[tuple[str, ID]] = []
    for name, peer in (("a", a), ("b", b)):

        async def spy(ids: list[bytes], to_peer: ID, name: str = name) -> None:
            sent.append((name, to_peer))

        monkeypatch.setattr(peer.router, "emit_idontwant", spy)
    large = bytes(GossipSettings().idontwant_min_bytes)
    small = large[:-1]
    await a.pubsub.publish(TOPIC, large)
    await a.pubsub.publish(TOPIC, small)
    assert await receive(c_sub, 2) == [large, small]
    assert sent == [("b", c.id)]


async def test_a_queued_copy_the_peer_said_idontwant_for_is_not_written(net: Net) -> None:
    a, b, subscription = await subscribed_pair(net)
    unwanted = a.pubsub.sign(TOPIC, b"unwanted" * 200)
    # As if b's IDONTWANT arrived after the copy was queued for it: the write skips it.
    a.router.dont_send_message_ids.setdefault(b.id, set()).add(message_id(unwanted))
    stream = a.pubsub.peers[b.id]
    assert await a.pubsub.write_msg(stream, rpc_pb2.RPC(publish=[unwanted]))
    await a.pubsub.publish(TOPIC, b"wanted")
    assert await receive(subscription, 1) == [b"wanted"]
    assert a.pubsub.counters.unwanted_cut == 1


async def test_our_signed_peer_record_goes_once_per_stream_not_with_every_rpc(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    carried: list[ID] = []
    consume = adapter.maybe_consume_signed_record

    def spy(msg: rpc_pb2.RPC, host: object, peer_id: ID) -> bool:
        if msg.HasField("senderRecord"):
            carried.append(peer_id)
        return consume(msg, host, peer_id)  # type: ignore[arg-type]

    monkeypatch.setattr(adapter, "maybe_consume_signed_record", spy)
    a, b, subscription = await subscribed_pair(net)
    payloads = [b"message %d" % i for i in range(20)]
    for payload in payloads:
        await a.pubsub.publish(TOPIC, payload)
    assert await receive(subscription, 20) == payloads
    # Upstream attaches it to all of them (and to every control RPC): 20+ verifications.
    assert carried.count(a.id) == 1
    assert b.pubsub.host.get_peerstore().get_peer_record(a.id) is not None


async def test_copies_of_a_seen_message_are_counted(net: Net) -> None:
    a, b, c = await net.start(), await net.start(), await net.start()
    for peer in (a, b, c):
        await peer.pubsub.subscribe(TOPIC)
    for dialer, listener in ((b, a), (c, a), (c, b)):
        await net.connect(dialer, listener)
    for peer, other in ((a, b), (a, c), (b, c), (c, b)):
        await peer.pubsub.wait_for_mesh(other.id, TOPIC)
    await a.pubsub.publish(TOPIC, b"small, so no IDONTWANT")  # b and c forward it to each other
    await wait_until(
        lambda: b.pubsub.counters.duplicate_messages + c.pubsub.counters.duplicate_messages >= 1,
        timeout_s=5,
    )
    assert a.pubsub.counters.duplicate_messages == 0


async def test_a_copy_with_a_bad_signature_sends_no_idontwant(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _, c_sub = await subscribed_line(net)
    sent: list[ID] = []

    async def spy(ids: list[bytes], to_peer: ID) -> None:
        sent.append(to_peer)

    monkeypatch.setattr(b.router, "emit_idontwant", spy)
    forged = a.pubsub.sign(TOPIC, bytes(GossipSettings().idontwant_min_bytes))
    forged.signature = bytes(len(forged.signature))
    a.router.send_rpc(b.id, rpc_pb2.RPC(publish=[forged]))
    await a.pubsub.publish(TOPIC, b"after")  # same stream: b handled the forged copy first
    assert await receive_until(c_sub, b"after") == [b"after"]
    assert sent == []  # the real payload would still be wanted


# Message size -------------------------------------------------------------------------------


async def test_oversized_publish_raises_and_the_largest_allowed_one_arrives(net: Net) -> None:
    settings = GossipSettings(max_message_bytes=64 * 1024)
    a, b = await net.start(settings), await net.start(settings)
    subscription = await b.pubsub.subscribe(TOPIC)
    await net.connect(b, a)
    await a.pubsub.wait_for_subscription(b.id, TOPIC)
    assert b.pubsub.max_inbound_rpc_size == 64 * 1024
    with pytest.raises(PublishError, match="over the limit"):
        await a.pubsub.publish(TOPIC, bytes(64 * 1024))
    largest = b"L" * settings.max_payload_bytes
    await a.pubsub.publish(TOPIC, largest)
    assert await receive(subscription, 1) == [largest]
    assert a.pubsub.counters.dropped_oversized == 0


# Running ------------------------------------------------------------------------------------


async def test_run_pubsub_can_be_started_in_a_nursery() -> None:
    host = build_host(generate_identity(), HostSettings(listen_addrs=LISTEN))
    pubsub = build_pubsub(host, GossipSettings())
    async with running_host(host, LISTEN), trio.open_nursery() as nursery:
        with trio.fail_after(5):
            await nursery.start(run_pubsub, pubsub)
        assert pubsub.gossip.manager.is_running
        nursery.cancel_scope.cancel()


async def test_forwarded_messages_are_not_kept_whole_for_the_equivocation_check(net: Net) -> None:
    a, b, subscription = await subscribed_pair(net)
    payloads = [bytes([i]) * 50_000 for i in range(5)]
    for payload in payloads:
        await a.pubsub.publish(TOPIC, payload)
    assert await receive(subscription, 5) == payloads
    # Upstream keeps up to 1,000 whole messages here.
    assert a.router.equivocation_detection == {}
    assert b.router.equivocation_detection == {}


async def test_other_content_under_a_seen_seqno_is_not_forwarded(net: Net) -> None:
    a, b, _ = await subscribed_pair(net)
    c = await net.start()
    c_subscription = await c.pubsub.subscribe(TOPIC)
    await net.connect(c, b)
    await b.pubsub.wait_for_mesh(c.id, TOPIC)
    first = a.pubsub.sign(TOPIC, b"first")
    twin = rpc_pb2.Message(
        data=b"other", topicIDs=[TOPIC], from_id=first.from_id, seqno=first.seqno
    )
    twin.signature = a.pubsub.sign_key.sign(  # type: ignore[union-attr]
        PUBSUB_SIGNING_PREFIX.encode() + twin.SerializeToString()
    )
    twin.key = first.key
    await a.pubsub.publish_message(first)
    assert await receive(c_subscription, 1) == [b"first"]
    a.router.send_rpc(b.id, rpc_pb2.RPC(publish=[twin]))
    await a.pubsub.publish(TOPIC, b"after")
    # b forwards neither the twin (upstream delivers it locally, as we do) nor keeps it.
    assert await receive_until(c_subscription, b"after") == [b"after"]
