"""The indicator stream through real in-process nodes: publish, receive, store, API."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
import trio
import trio.testing
from kit import Swarm, wait_until
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from threatmesh.identity import TrustStore
from threatmesh.node.home import Home
from threatmesh.node.node import Node
from threatmesh.node.stream import Received, StreamError, Subscription
from threatmesh.pubsub.indicators import IndicatorError
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.topics import tlp_topic
from threatmesh.transports.errors import TransportError
from threatmesh.transports.libp2p_host import connect

DELIVERY_TIMEOUT_S = 30


async def _mesh(swarm: Swarm, count: int) -> list[Node]:
    """``count`` nodes in a line a-b-c-..., each subscribed, with the mesh formed."""
    nodes = [await swarm.start("n0")]
    for index in range(1, count):
        nodes.append(await swarm.start(f"n{index}", bootstrap=(swarm.addr(f"n{index - 1}"),)))
    topic = tlp_topic("public", pb.TLP_CLEAR)
    await wait_until(
        lambda: all(node.pubsub.gossip.mesh.get(topic) for node in nodes), timeout_s=20
    )
    return nodes


async def _collect(node: Node, count: int, into: list[Received]) -> None:
    async for item in node.subscribe():
        into.append(item)
        if len(into) >= count:
            return


def _records(count: int, prefix: str = "x") -> list[dict[str, object]]:
    return [{"value": f"{prefix}{index}.example.com", "tags": ["test"]} for index in range(count)]


async def test_published_indicators_reach_every_node_and_store(swarm: Swarm) -> None:
    a, b, c = await _mesh(swarm, 3)
    got: dict[str, list[Received]] = {"b": [], "c": []}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, b, 3, got["b"])
        nursery.start_soon(_collect, c, 3, got["c"])
        await wait_until(lambda: b.stream._subscribers and c.stream._subscribers)
        with trio.fail_after(DELIVERY_TIMEOUT_S):
            assert await a.publish(_records(3), tlp="clear", provider="unit") == 3
    for name in ("b", "c"):
        assert sorted(item.indicator.value for item in got[name]) == [
            "x0.example.com",
            "x1.example.com",
            "x2.example.com",
        ]
        assert {item.origin for item in got[name]} == {a.peer_id.to_base58()}
    # Every node stored them, c through b (a line: a-b-c).
    for node in (a, b, c):
        stored = node.store.query(value="x1.example.com")
        assert len(stored) == 1
        assert stored[0].indicator.provider == "unit"
        assert stored[0].origins == (a.peer_id.to_base58(),)


async def test_burst_of_10000_arrives_complete(swarm: Swarm) -> None:
    a, b, c = await _mesh(swarm, 3)
    total = 10_000
    got: dict[str, list[Received]] = {"b": [], "c": []}
    records = _records(total, prefix="burst")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, b, total, got["b"])
        nursery.start_soon(_collect, c, total, got["c"])
        await wait_until(lambda: b.stream._subscribers and c.stream._subscribers)
        with trio.fail_after(120):
            # as fast as the API takes them: many concurrent publish calls
            async with trio.open_nursery() as publishers:
                for start in range(0, total, 500):
                    publishers.start_soon(a.publish, records[start : start + 500])
    for name in ("b", "c"):
        assert len({item.indicator.value for item in got[name]}) == total
    assert a.stream.counters.published_indicators == total
    assert b.stream.dropped_local() == 0
    assert c.store.count() == total


async def test_bad_record_names_field_and_position(swarm: Swarm) -> None:
    a = await swarm.start("a")
    with pytest.raises(IndicatorError, match=r"line 2: field 'value'"):
        await a.publish([{"value": "good.example.com"}, {"value": "999.1.1.1", "itype": "ipv4"}])
    assert a.stream.counters.published_indicators == 0


async def test_sequence_numbers_continue_after_restart(swarm: Swarm) -> None:
    a = await swarm.start("a")
    await a.publish(_records(2, "before"), tlp="green")
    last = a.store.last_seq(a.peer_id.to_base58())
    assert last >= 1
    swarm.nodes.clear()
    # a new Node on the same home continues where the old one stopped
    restarted = Node(a.config, a.home)
    assert restarted.stream._batcher.last_seq == last
    restarted.store.close()


async def test_invalid_batch_from_a_peer_is_rejected_and_counted(swarm: Swarm) -> None:
    a, b = await _mesh(swarm, 2)
    topic = tlp_topic("public", pb.TLP_CLEAR)
    # b publishes a batch that claims RED on the CLEAR topic, bypassing its own checks
    bad = pb.Batch(
        seq=1,
        sent_ms=1,
        tlp=pb.TLP_RED,
        indicators=[pb.Indicator(value="1.2.3.4", itype=pb.ITYPE_IPV4, tlp=pb.TLP_RED)],
    )
    b.pubsub.topic_validators.pop(topic, None)  # so b's own validator does not stop it
    await b.pubsub.publish(topic, bad.SerializeToString())
    await wait_until(lambda: a.stream.counters.invalid_batches >= 1)
    assert a.store.count() == 0
    # ... and it counts against b in a's GossipSub score (P4, invalid messages)
    assert a.pubsub.gossip.scorer.score(b.peer_id, [topic]) < 0


async def test_api_publish_and_stream(swarm: Swarm) -> None:
    a, b = await _mesh(swarm, 2)
    # AMBER reaches b only once a trusts it at AMBER (the trust file, reloaded live).
    TrustStore(a.home.trust_file).add(b.peer_id.to_base58(), pb.TLP_AMBER, now_ms=1)
    await wait_until(lambda: a.sharing.level_of(b.peer_id.to_base58()) == pb.TLP_AMBER)
    await a.pubsub.wait_for_subscription(b.peer_id, tlp_topic("public", pb.TLP_AMBER))
    token = b.home.api_token()
    headers = {"Authorization": f"Bearer {a.home.api_token()}"}
    lines: list[dict[str, object]] = []

    def read_stream() -> None:
        with httpx.stream(
            "GET",
            f"{b.api_url}/v1/stream",
            params={"tlp": "amber"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(5, read=DELIVERY_TIMEOUT_S),
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(json.loads(line))
                if len(lines) == 2:
                    return

    body = "\n".join(
        [
            json.dumps({"value": "203.0.113.7", "confidence": 80}),
            json.dumps({"value": "not a thing at all"}),
            json.dumps({"value": "evil.example.net", "tags": ["c2"]}),
            json.dumps({"value": "1.2.3.4", "confidance": 3}),
        ]
    )

    def publish() -> httpx.Response:
        return httpx.post(
            f"{a.api_url}/v1/publish",
            params={"tlp": "amber", "format": "jsonl"},
            content=body.encode(),
            headers=headers,
            timeout=DELIVERY_TIMEOUT_S,
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, read_stream)
        await wait_until(lambda: bool(b.stream._subscribers))
        response = await trio.to_thread.run_sync(publish)
    assert response.status_code == 200
    result = response.json()
    assert result["accepted"] == 2
    assert [rejected["line"] for rejected in result["rejected"]] == [2, 4]
    assert "confidance" in result["rejected"][1]["reason"]
    assert sorted(line["value"] for line in lines) == ["203.0.113.7", "evil.example.net"]
    for line in lines:
        assert line["tlp"] == "amber"
        assert line["origin"] == a.peer_id.to_base58()
        assert {"value", "itype", "tlp", "confidence", "tags", "provider"} <= set(line)
        assert {"first_seen", "last_seen"} <= set(line)


def test_peer_id_text_roundtrip() -> None:
    from threatmesh.identity import generate_identity

    peer = generate_identity().peer_id
    assert ID(peer.to_bytes()).to_base58() == peer.to_base58()


@pytest.mark.parametrize("count", [10, 5000], ids=["closed-by-window", "closed-by-size"])
async def test_a_batch_that_cannot_be_stored_is_reported_to_the_publisher(
    swarm: Swarm, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await swarm.start("a")

    def broken_store(**_: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(a.store, "add_batch", broken_store)
    with pytest.raises(StreamError, match="disk full"):
        await a.publish(_records(count, "lost"))
    assert a.stream.counters.published_indicators == 0


async def test_a_peer_that_failed_a_dial_is_dialled_again_at_once(swarm: Swarm) -> None:
    # py-libp2p blocks a peer for 60 s after a failed dial, so nodes started together could
    # give up on each other; our connect dials again. b is dialled before it listens.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    a = await swarm.start("a")
    b_identity = Home(a.home.path.parent / "b")
    peer_id = b_identity.init()[0].peer_id
    b_addr = PeerInfo(peer_id, [Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")])
    with pytest.raises(TransportError):
        await connect(a.host, b_addr, timeout_s=5)
    await swarm.start("b", listen=(f"/ip4/127.0.0.1/tcp/{port}",))
    await connect(a.host, b_addr, timeout_s=5)
    assert a.peers() == [peer_id.to_base58()]


def _indicators(count: int, prefix: str) -> list[pb.Indicator]:
    return [
        pb.Indicator(itype=pb.ITYPE_FQDN, value=f"{prefix}{index}.example")
        for index in range(count)
    ]


async def test_a_subscription_yields_batches_in_order_and_counts_what_overflows() -> None:
    subscription = Subscription(frozenset({pb.TLP_CLEAR}), buffer=5)
    assert subscription.offer_batch(_indicators(3, "a"), "origin-a", 1) == 0
    assert subscription.offer_batch(_indicators(4, "b"), "origin-b", 7) == 2  # room for 2
    got = [await subscription.receive() for _ in range(5)]
    assert [(r.indicator.value, r.origin, r.seq) for r in got] == [
        ("a0.example", "origin-a", 1),
        ("a1.example", "origin-a", 1),
        ("a2.example", "origin-a", 1),
        ("b0.example", "origin-b", 7),
        ("b1.example", "origin-b", 7),
    ]
    assert subscription.dropped == 2
    # Reading made room again.
    assert subscription.offer_batch(_indicators(5, "c"), "origin-c", 2) == 0
    subscription.close()
    assert [item async for item in subscription] == []
    assert subscription.offer_batch(_indicators(1, "d"), "origin-d", 3) == 0


async def _read_values(subscription: Subscription, into: list[str]) -> None:
    async for item in subscription:
        into.append(item.indicator.value)


async def test_a_waiting_subscriber_wakes_for_a_batch_and_ends_when_closed() -> None:
    subscription = Subscription(frozenset({pb.TLP_CLEAR}), buffer=10)
    got: list[str] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_values, subscription, got)
            await trio.testing.wait_all_tasks_blocked()
            subscription.offer_batch(_indicators(2, "w"), "origin", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert got == ["w0.example", "w1.example"]
            subscription.close()


async def test_two_readers_of_one_subscription_share_it_and_both_end_at_close() -> None:
    subscription = Subscription(frozenset({pb.TLP_CLEAR}), buffer=10)
    got: list[str] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_values, subscription, got)
            nursery.start_soon(_read_values, subscription, got)
            await trio.testing.wait_all_tasks_blocked()
            subscription.offer_batch(_indicators(3, "s"), "origin", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(got) == ["s0.example", "s1.example", "s2.example"]
            subscription.close()  # both readers end
