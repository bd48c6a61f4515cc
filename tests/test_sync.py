"""Catch-up (node/sync.py) with real in-process nodes on 127.0.0.1: restart, gaps, partitions,
what a server gives and withholds, and hostile askers.

"Down" is a node whose nursery is cancelled (its host closed, its store kept); it comes back
with the same home, so the same identity, store and peer cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from kit import Swarm, wait_until
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils import encode_varint_prefixed, read_varint_prefixed_bytes_limited

import threatmesh.node.sync as sync_module
from threatmesh.identity import TrustStore, generate_identity
from threatmesh.node.config import NodeConfig
from threatmesh.node.home import Home
from threatmesh.node.node import Node
from threatmesh.node.sync import MAX_FRAME_BYTES, PROTOCOL_ID, SERVE_PARALLEL_PER_PEER, SyncError
from threatmesh.pubsub.libp2p_gossipsub import IgnoreMessage
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.libp2p_host import HostSettings, build_host, connect, running

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
TIMEOUT_S = 30


def records(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"value": f"{prefix}-{index}.example.org"} for index in range(count)]


def holds(node: Node, prefix: str, count: int) -> bool:
    return all(node.store.query(value=f"{prefix}-{index}.example.org") for index in range(count))


class Restartable:
    """A node that can be stopped and started again from the same home."""

    def __init__(self, base: Path, name: str, nursery: trio.Nursery, **config: Any) -> None:
        self.home = Home(base / name)
        self.home.init()
        self._nursery = nursery
        self._config = NodeConfig(listen=(LOOPBACK,), mdns=False, bootstrap_backoff_cap_s=1.0)
        self._overrides = config
        self.node: Node | None = None
        self._scope: trio.CancelScope | None = None

    async def start(self, **overrides: Any) -> Node:
        config = self._config.with_overrides(**{**self._overrides, **overrides})

        async def serve(task_status: trio.TaskStatus[tuple[Node, trio.CancelScope]]) -> None:
            with trio.CancelScope() as scope:
                node = Node(config, self.home)
                async with trio.open_nursery() as inner:
                    await inner.start(node.run)
                    task_status.started((node, scope))

        with trio.fail_after(10):
            self.node, self._scope = await self._nursery.start(serve)
        return self.node

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        self.node = None
        await trio.lowlevel.checkpoint()  # let the node's scope unwind


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def test_a_restarted_node_catches_up_on_what_it_missed(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    a = Restartable(tmp_path, "a", nursery)
    b = Restartable(tmp_path, "b", nursery)
    node_a = await a.start()
    node_b = await b.start(bootstrap=(node_a.addrs[0],))
    await node_a.publish(records("before", 20), tlp="clear")
    await wait_until(lambda: holds(node_b, "before", 20), TIMEOUT_S)

    await b.stop()
    for round_ in range(5):  # several batches while b is away
        await node_a.publish(records(f"away{round_}", 50), tlp="clear")
    assert node_a.store.last_seq(node_a.peer_id.to_base58()) >= 6
    # py-libp2p replays the messages of its last few heartbeats (the mcache gossip window) to
    # a peer that subscribes: let them age out of it, so that only catch-up can bring them.
    mcache = node_a.pubsub.gossip.mcache
    await wait_until(lambda: not mcache.window("/threatmesh/public/tlp/clear/1"), TIMEOUT_S)

    node_b = await b.start()  # rejoins from its peer cache: no bootstrap given
    for round_ in range(5):
        await wait_until(lambda r=round_: holds(node_b, f"away{r}", 50), TIMEOUT_S)
    # The counters move after the rows are stored: wait for them too. Most batches come by
    # catch-up; one a published before it noticed b leave can wait in py-libp2p's pending
    # messages for b (gossipsub.py, ``_pending_messages``) and arrive live when b is back.
    # Without catch-up the rest never would (the waits above).
    await wait_until(
        lambda: (
            node_b.status()["sync"]["batches_fetched"] >= 1
            and node_b.status()["sync"]["catch_ups"] >= 1
        ),
        TIMEOUT_S,
    )
    assert node_a.status()["sync"]["requests_served"] >= 2


async def test_a_gap_in_an_origins_sequence_is_fetched(swarm: Swarm) -> None:
    a = await swarm.start("a")
    b = await swarm.start("b", bootstrap=(swarm.addr("a"),))
    topic = "/threatmesh/public/tlp/clear/1"
    await a.pubsub.wait_for_subscription(b.peer_id, topic)
    # b loses batches 2 and 3 of a on the way (as if dropped); it sees 1 and 4.
    original = b.pubsub.get_msg_validators

    def lose(msg: rpc_pb2.Message) -> Any:
        if ID(msg.from_id) == a.peer_id:
            seq = pb.Batch.FromString(msg.data).seq
            if seq in (2, 3):
                raise IgnoreMessage("lost on the way (test)")
        return original(msg)

    b.pubsub.get_msg_validators = lose  # type: ignore[method-assign]
    for index in range(4):
        await a.publish(records(f"g{index}", 3), tlp="clear")
    await wait_until(lambda: holds(b, "g3", 3), TIMEOUT_S)
    await wait_until(lambda: holds(b, "g1", 3) and holds(b, "g2", 3), TIMEOUT_S)
    assert b.status()["sync"]["gaps_detected"] >= 1
    assert b.store.origin_seqs(a.peer_id.to_base58()).missing == []


async def test_two_halves_converge_when_the_partition_heals(swarm: Swarm) -> None:
    nodes = [await swarm.start("n0")]
    for index in range(1, 4):
        nodes.append(await swarm.start(f"n{index}", bootstrap=(swarm.addr(f"n{index - 1}"),)))
    left, right = nodes[:2], nodes[2:]
    # Cut every link between the halves, and keep them cut: neither side can dial the other.
    heal = [cut(node, right) for node in left] + [cut(node, left) for node in right]
    for node in left:
        for other in right:
            await node.host.get_network().close_peer(other.peer_id)
    await wait_until(
        lambda: all(o.peer_id not in n.pubsub.peers for n in left for o in right), TIMEOUT_S
    )
    await left[0].publish(records("left", 30), tlp="clear")
    await right[1].publish(records("right", 30), tlp="clear")
    await wait_until(lambda: holds(left[1], "left", 30) and holds(right[0], "right", 30), TIMEOUT_S)
    assert not holds(left[1], "right", 1)

    for restore in heal:
        restore()
    await swarm.connect("n1", "n2")
    for node in nodes:
        await wait_until(lambda n=node: holds(n, "left", 30) and holds(n, "right", 30), TIMEOUT_S)


async def test_the_server_withholds_levels_the_asker_is_not_trusted_for(swarm: Swarm) -> None:
    a = await swarm.start("a")
    b = await swarm.start("b", bootstrap=(swarm.addr("a"),))
    c = await swarm.start("c", bootstrap=(swarm.addr("a"),))
    TrustStore(a.home.trust_file).add(b.peer_id.to_base58(), pb.TLP_RED, now_ms=1)
    await wait_until(lambda: a.sharing.level_of(b.peer_id.to_base58()) == pb.TLP_RED)
    for level in ("clear", "green", "red"):
        await a.publish(records(f"w-{level}", 2), tlp=level)
    # Ask a directly for its whole log, as b and as c.
    origin = a.peer_id
    as_b = await b.sync._ask(a.peer_id, _range(origin, 1, 100))
    as_c = await c.sync._ask(a.peer_id, _range(origin, 1, 100))
    assert len(as_b.messages) == 3
    assert list(as_b.withheld) == []
    assert len(as_c.messages) == 1  # CLEAR only
    assert len(as_c.withheld) == 2
    # What b got is the signed, sealed original: b can open RED, c never got its bytes.
    red = [rpc_pb2.Message.FromString(raw) for raw in as_b.messages][-1]
    assert pb.SealedBatch.FromString(red.data).tlp == pb.TLP_RED


def cut(node: Node, others: list[Node]) -> Any:
    """Make ``node`` unable to dial ``others`` (the test kit's partition); returns the undo."""
    network = node.host.get_network()
    blocked = {other.peer_id for other in others}
    original = network.dial_peer

    async def dial_peer(peer_id: ID) -> Any:
        if peer_id in blocked:
            raise SwarmException(f"{peer_id}: partitioned (test)")
        return await original(peer_id)

    network.dial_peer = dial_peer  # type: ignore[method-assign]

    def restore() -> None:
        network.dial_peer = original  # type: ignore[method-assign]

    return restore


def _range(origin: ID, first: int, last: int) -> pb.SyncRequest:
    return pb.SyncRequest(range=pb.SyncRange(origin=origin.to_bytes(), from_seq=first, to_seq=last))


async def test_hostile_requests_are_bounded_and_the_node_keeps_serving(swarm: Swarm) -> None:
    a = await swarm.start("a")
    await a.publish(records("h", 5), tlp="clear")
    identity = generate_identity()
    listen = (parse_listen_addr(LOOPBACK),)
    host = build_host(identity, HostSettings(listen_addrs=listen))
    async with running(host, listen):
        await connect(host, PeerInfo(a.peer_id, a.host.get_transport_addrs()), 5)

        async def exchange(payload: bytes) -> pb.SyncResponse | None:
            stream = await host.new_stream(a.peer_id, [PROTOCOL_ID])
            try:
                await stream.write(payload)
                with trio.fail_after(10):
                    raw = await read_varint_prefixed_bytes_limited(stream, MAX_FRAME_BYTES)
                return pb.SyncResponse.FromString(raw)
            except Exception:
                return None
            finally:
                await stream.close()

        garbage = await exchange(encode_varint_prefixed(b"\xff\xfe garbage \x00" * 10))
        assert garbage is not None
        assert garbage.error
        too_wide = await exchange(
            encode_varint_prefixed(_range(a.peer_id, 1, 10**9).SerializeToString())
        )
        assert too_wide is not None
        assert "at most" in too_wide.error
        oversized = await exchange(encode_varint_prefixed(b"x" * (MAX_FRAME_BYTES + 1)))
        assert oversized is None  # the frame is refused before it is read
        empty = await exchange(
            encode_varint_prefixed(pb.SyncRequest(request_id=9).SerializeToString())
        )
        assert empty is not None
        assert empty.error

        # A flood: many requests at once; beyond the per-peer bound they are refused, fast.
        answers: list[pb.SyncResponse | None] = []

        async def one() -> None:
            request = _range(a.peer_id, 1, 5)
            request.request_id = 7
            answers.append(await exchange(encode_varint_prefixed(request.SerializeToString())))

        with trio.fail_after(20):
            async with trio.open_nursery() as flood:
                for _ in range(4 * SERVE_PARALLEL_PER_PEER):
                    flood.start_soon(one)
        assert len(answers) == 4 * SERVE_PARALLEL_PER_PEER
        served = [x for x in answers if x is not None and not x.error]
        assert all(x.request_id == 7 and len(x.messages) == 1 for x in served)
        assert served  # some were answered
    assert a.status()["sync"]["requests_refused"] >= 3
    # The node still serves a well-behaved peer.
    b = await swarm.start("b", bootstrap=(swarm.addr("a"),))
    await wait_until(lambda: holds(b, "h", 5), TIMEOUT_S)


async def test_a_failed_catch_up_is_tried_again_while_the_peer_stays(
    swarm: Swarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when a restarted peer dials us before it serves the sync protocol: the first catch-up
    # fails, and no gap would ever ask again (what b missed are a's newest batches).
    monkeypatch.setattr(sync_module, "CATCH_UP_RETRY_S", 0.05)
    monkeypatch.setattr(sync_module, "CATCH_UP_MIN_INTERVAL_S", 0.0)  # it is under the retry's
    failed: set[int] = set()
    real_catch_up = sync_module.Sync.catch_up

    async def failing_first(self: sync_module.Sync, peer: ID) -> int:
        if id(self) not in failed:
            failed.add(id(self))
            raise SyncError("not served yet (test)")
        return await real_catch_up(self, peer)

    monkeypatch.setattr(sync_module.Sync, "catch_up", failing_first)
    a = await swarm.start("a")
    await a.publish(records("before-b", 5), tlp="clear")
    mcache = a.pubsub.gossip.mcache  # let gossip's replay window pass: only catch-up can bring them
    await wait_until(lambda: not mcache.window("/threatmesh/public/tlp/clear/1"), TIMEOUT_S)
    b = await swarm.start("b", bootstrap=(swarm.addr("a"),))
    await wait_until(lambda: holds(b, "before-b", 5), TIMEOUT_S)
    assert b.status()["sync"]["batches_fetched"] >= 1
