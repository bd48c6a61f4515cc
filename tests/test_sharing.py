"""Sharing restrictions end to end (issue: trust, vouches, gating, sealing), with real nodes.

Nodes are in-process ``Node``s on 127.0.0.1 (the ``swarm`` fixture). Trust is written to each
node's trust file, as ``threatmesh trust add`` does, and the running node picks it up (it polls
the file every second); tests wait, bounded, until the node's effective level shows it.

The spy is a raw py-libp2p peer: our transport (it must speak Noise to connect at all) but
py-libp2p's own, stock ``Pubsub`` and ``GossipSub``, subscribed to every topic, which records
every byte that arrives on its pubsub streams.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from kit import Swarm, wait_until
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from threatmesh.identity import (
    Identity,
    TrustStore,
    VouchStatement,
    generate_identity,
    sign_vouch,
    vouch_signing_bytes,
)
from threatmesh.node.node import Node
from threatmesh.pubsub.indicators import IndicatorError
from threatmesh.pubsub.libp2p_gossipsub import GossipSettings, build_pubsub, running_pubsub
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.topics import TLP_LEVELS, control_topic, tlp_topic
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.libp2p_host import HostSettings, build_host, connect, running

SWARM = "public"
LEVEL_NAMES = dict(TLP_LEVELS)
LOOPBACK = (parse_listen_addr("/ip4/127.0.0.1/tcp/0"),)
DELIVERY_TIMEOUT_S = 20
# Short intervals keep the tests quick; the behaviour does not depend on them.
FAST = {"announce_interval_s": 1.0}


def _now_ms() -> int:
    return int(time.time() * 1000)


def trust(node: Node, peer: Node | ID, level: int) -> None:
    """``threatmesh trust add`` on ``node``'s home (the running node reloads the file)."""
    peer_id = peer.peer_id if isinstance(peer, Node) else peer
    TrustStore(node.home.trust_file).add(peer_id.to_base58(), level, now_ms=_now_ms())


async def wait_for_level(node: Node, peer: Node | ID, level: int, timeout_s: float = 10) -> None:
    peer_id = peer.peer_id if isinstance(peer, Node) else peer
    await wait_until(lambda: node.sharing.level_of(peer_id.to_base58()) == level, timeout_s)


def marker(level: int, tag: str) -> str:
    return f"{LEVEL_NAMES[level]}-{tag}-marker.example"


async def publish_at_every_level(node: Node, tag: str) -> None:
    for level, name in TLP_LEVELS:
        await node.publish([{"value": marker(level, tag)}], tlp=name)


def stored(node: Node, value: str) -> bool:
    return bool(node.store.query(value=value))


# The spy ----------------------------------------------------------------------------------


class _RecordingStream:
    """An INetStream that keeps a copy of every byte read from it."""

    def __init__(self, stream: INetStream, sink: bytearray) -> None:
        self._stream = stream
        self._sink = sink

    async def read(self, n: int | None = None) -> bytes:
        data = await self._stream.read(n)
        self._sink += data
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@dataclass
class Spy:
    identity: Identity
    pubsub: Pubsub
    received: bytearray = field(default_factory=bytearray)

    @property
    def peer_id(self) -> ID:
        return self.identity.peer_id

    def saw(self, text: str) -> bool:
        return text.encode() in self.received


async def _run_spy(swarm: str, *, task_status: Any) -> None:
    identity = generate_identity()
    host = build_host(identity, HostSettings(listen_addrs=LOOPBACK))
    async with running(host, LOOPBACK):
        # Stock router and pubsub; only a heartbeat fast enough to GRAFT eagerly.
        router = GossipSub(
            protocols=["/meshsub/1.2.0", "/meshsub/1.1.0", "/meshsub/1.0.0"],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
        )
        pubsub = Pubsub(host, router)
        spy = Spy(identity, pubsub)
        for protocol in router.get_protocols():

            async def record(stream: INetStream) -> None:
                await pubsub.stream_handler(_RecordingStream(stream, spy.received))  # type: ignore[arg-type]

            host.set_stream_handler(protocol, record)
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            for level, _ in TLP_LEVELS:
                await pubsub.subscribe(tlp_topic(swarm, level))
            await pubsub.subscribe(control_topic(swarm))
            task_status.started(spy)
            await trio.sleep_forever()


async def start_spy(nursery: trio.Nursery, nodes: list[Node]) -> Spy:
    spy: Spy = await nursery.start(_run_spy, SWARM)
    for node in nodes:
        info = PeerInfo(node.peer_id, node.host.get_transport_addrs())
        await connect(spy.pubsub.host, info, timeout_s=5)
    for node in nodes:
        await wait_until(lambda node=node: node.peer_id in spy.pubsub.peers, timeout_s=10)
        # The spy's CLEAR subscription is accepted by every node: the spy is a normal peer.
        await node.pubsub.wait_for_subscription(spy.peer_id, tlp_topic(SWARM, pb.TLP_CLEAR))
    return spy


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


# Acceptance -------------------------------------------------------------------------------


async def test_a_spy_sees_clear_and_green_once_vouched_and_never_amber_or_red(
    swarm: Swarm, nursery: trio.Nursery
) -> None:
    a = await swarm.start("a", **FAST)
    b = await swarm.start("b", bootstrap=(swarm.addr("a"),), **FAST)
    c = await swarm.start("c", bootstrap=(swarm.addr("a"), swarm.addr("b")), **FAST)
    nodes = [a, b, c]
    for node in nodes:
        for other in nodes:
            if other is not node:
                trust(node, other, pb.TLP_RED)
    for node in nodes:
        for other in nodes:
            if other is not node:
                await wait_for_level(node, other, pb.TLP_RED)
    spy = await start_spy(nursery, nodes)

    # Round 1: the spy is trusted by nobody.
    for index, node in enumerate(nodes):
        await publish_at_every_level(node, f"r1-{index}")
    r1 = [f"r1-{index}" for index in range(3)]
    with trio.fail_after(DELIVERY_TIMEOUT_S):
        for tag in r1:
            await wait_until(lambda tag=tag: spy.saw(marker(pb.TLP_CLEAR, tag)), 20)
            # ... and every trusted node got every level (sealed batches opened).
            for node in nodes:
                for level, _ in TLP_LEVELS:
                    value = marker(level, tag)
                    await wait_until(lambda n=node, v=value: stored(n, v), 20)

    before_vouches = bytes(spy.received)
    # Vouches: every node vouches for the spy; each node counts the two others' vouches.
    for node in nodes:
        await node.sharing.vouch(spy.peer_id.to_base58(), pb.TLP_GREEN)
    for node in nodes:
        await wait_for_level(node, spy.peer_id, pb.TLP_GREEN)
        await node.pubsub.wait_for_subscription(spy.peer_id, tlp_topic(SWARM, pb.TLP_GREEN))

    # Round 2: GREEN reaches the spy now; AMBER and RED still never do.
    for index, node in enumerate(nodes):
        await publish_at_every_level(node, f"r2-{index}")
    for index in range(3):
        await wait_until(lambda i=index: spy.saw(marker(pb.TLP_GREEN, f"r2-{i}")), 20)
        await wait_until(lambda i=index: spy.saw(marker(pb.TLP_CLEAR, f"r2-{i}")), 20)
    for tag in [*r1, "r2-0", "r2-1", "r2-2"]:
        for level in (pb.TLP_AMBER, pb.TLP_AMBER_STRICT, pb.TLP_RED):
            assert not spy.saw(marker(level, tag)), (LEVEL_NAMES[level], tag)
    # Before the vouches, not even GREEN (recent GREEN may be replayed to it after them).
    for tag in r1:
        assert marker(pb.TLP_GREEN, tag).encode() not in before_vouches
        assert marker(pb.TLP_CLEAR, tag).encode() in before_vouches
    # The nodes did withhold things from the spy (it asked: it subscribed and grafted).
    assert sum(node.pubsub.counters.withheld_subscriptions for node in nodes) >= 3


async def test_red_reaches_only_the_peers_its_publisher_trusts_at_red(swarm: Swarm) -> None:
    a = await swarm.start("a", **FAST)
    b = await swarm.start("b", bootstrap=(swarm.addr("a"),), **FAST)
    c = await swarm.start("c", bootstrap=(swarm.addr("a"),), **FAST)
    d = await swarm.start("d", bootstrap=(swarm.addr("b"), swarm.addr("c")), **FAST)
    trust(a, b, pb.TLP_RED)
    trust(a, c, pb.TLP_AMBER)
    trust(b, a, pb.TLP_RED)
    trust(b, d, pb.TLP_RED)
    trust(c, a, pb.TLP_AMBER)
    trust(d, b, pb.TLP_RED)
    await wait_for_level(a, b, pb.TLP_RED)
    await wait_for_level(a, c, pb.TLP_AMBER)
    await wait_for_level(b, d, pb.TLP_RED)
    red = tlp_topic(SWARM, pb.TLP_RED)
    await b.pubsub.wait_for_subscription(d.peer_id, red)
    await a.pubsub.wait_for_subscription(b.peer_id, red)

    await a.publish([{"value": "red-for-b.example"}], tlp="red")
    await a.publish([{"value": "clear-after.example"}], tlp="clear")
    await wait_until(lambda: stored(b, "red-for-b.example"), DELIVERY_TIMEOUT_S)
    # b forwarded the sealed batch to d (it trusts d at RED); d could not open it.
    await wait_until(lambda: d.stream.counters.sealed_not_for_us >= 1, DELIVERY_TIMEOUT_S)
    for node in (c, d):
        await wait_until(lambda n=node: stored(n, "clear-after.example"), DELIVERY_TIMEOUT_S)
    assert not stored(c, "red-for-b.example")
    assert not stored(d, "red-for-b.example")
    # a never sent RED to c at all: c is not even among a's RED subscribers.
    assert c.peer_id not in a.pubsub.peer_topics.get(red, set())
    assert c.stream.counters.sealed_not_for_us == 0


async def test_green_through_two_vouches_and_a_revocation_takes_it_away_within_an_interval(
    swarm: Swarm,
) -> None:
    interval_s = 2.0
    judge = await swarm.start("judge", announce_interval_s=interval_s)
    v1 = await swarm.start("v1", bootstrap=(swarm.addr("judge"),), announce_interval_s=interval_s)
    v2 = await swarm.start("v2", bootstrap=(swarm.addr("judge"),), announce_interval_s=interval_s)
    subject = await swarm.start(
        "subject", bootstrap=(swarm.addr("judge"),), announce_interval_s=interval_s
    )
    trust(judge, v1, pb.TLP_GREEN)
    trust(judge, v2, pb.TLP_AMBER)
    await wait_for_level(judge, v1, pb.TLP_GREEN)
    await wait_for_level(judge, v2, pb.TLP_AMBER)
    green = tlp_topic(SWARM, pb.TLP_GREEN)
    await v1.pubsub.wait_for_subscription(judge.peer_id, control_topic(SWARM))
    await v2.pubsub.wait_for_subscription(judge.peer_id, control_topic(SWARM))

    await v1.sharing.vouch(subject.peer_id.to_base58(), pb.TLP_GREEN)
    await wait_until(lambda: judge.sharing.counters.vouches_accepted >= 1, 10)
    assert judge.sharing.level_of(subject.peer_id.to_base58()) == pb.TLP_CLEAR  # one is not enough
    # A vouch names GREEN at most in effect, whatever level it names.
    await v2.sharing.vouch(subject.peer_id.to_base58(), pb.TLP_RED)
    await wait_for_level(judge, subject, pb.TLP_GREEN)
    await judge.pubsub.wait_for_subscription(subject.peer_id, green)
    await judge.publish([{"value": "green-for-subject.example"}], tlp="green")
    await wait_until(lambda: stored(subject, "green-for-subject.example"), DELIVERY_TIMEOUT_S)

    revoked_at = trio.current_time()
    await v2.sharing.revoke(subject.peer_id.to_base58())
    await wait_for_level(judge, subject, pb.TLP_CLEAR, timeout_s=interval_s)
    took = trio.current_time() - revoked_at
    assert took <= interval_s
    assert subject.peer_id not in judge.pubsub.peer_topics.get(green, set())


@pytest.mark.parametrize("forgery", ["bad signature", "wrong signer", "expired", "for oneself"])
async def test_forged_expired_and_self_vouches_are_rejected_and_penalised(
    swarm: Swarm, nursery: trio.Nursery, forgery: str
) -> None:
    judge = await swarm.start("judge", **FAST)
    friend = generate_identity()
    trust(judge, friend.peer_id, pb.TLP_GREEN)
    await wait_for_level(judge, friend.peer_id, pb.TLP_GREEN)
    # The forger: a bare host with our pubsub (no Sharing: it validates nothing it sends).
    forger_identity = friend if forgery == "bad signature" else generate_identity()
    host = build_host(forger_identity, HostSettings(listen_addrs=LOOPBACK))
    subject = generate_identity().peer_id.to_base58()
    now = _now_ms()
    if forgery == "bad signature":
        vouch = sign_vouch(friend, subject, pb.TLP_GREEN, now, now + 60_000)
        vouch = type(vouch)(**{**vouch.__dict__, "signature": bytes(len(vouch.signature))})
    elif forgery == "wrong signer":
        vouch = sign_vouch(friend, subject, pb.TLP_GREEN, now, now + 60_000)  # sent by another
    elif forgery == "expired":
        vouch = sign_vouch(forger_identity, subject, pb.TLP_GREEN, now - 120_000, now - 60_000)
    else:  # sign_vouch refuses to make one: sign the same bytes by hand
        me = forger_identity.peer_id.to_base58()
        signed = vouch_signing_bytes(me, me, pb.TLP_GREEN, now, now + 60_000)
        signature = forger_identity.key_pair.private_key.sign(signed)
        vouch = VouchStatement(me, me, pb.TLP_GREEN, now, now + 60_000, signature)
    control = pb.Control(
        sent_ms=now,
        vouch=pb.Vouch(
            voucher=ID.from_base58(vouch.voucher).to_bytes(),
            subject=ID.from_base58(vouch.subject).to_bytes(),
            level=pb.Tlp.ValueType(vouch.level),
            issued_ms=vouch.issued_ms,
            expires_ms=vouch.expires_ms,
            signature=vouch.signature,
        ),
    )
    topic = control_topic(SWARM)
    async with running(host, LOOPBACK):
        pubsub = build_pubsub(host, GossipSettings())
        async with running_pubsub(pubsub):
            await pubsub.subscribe(topic)
            await connect(host, PeerInfo(judge.peer_id, judge.host.get_transport_addrs()), 5)
            await pubsub.wait_for_subscription(judge.peer_id, topic)
            await pubsub.publish(topic, control.SerializeToString())
            await wait_until(lambda: judge.sharing.counters.control_rejected >= 1, 10)
            scorer = judge.pubsub.gossip.scorer
            assert scorer is not None
            await wait_until(
                lambda: scorer.invalid_messages.get(host.get_id(), {}).get(topic, 0) > 0.9, 5
            )
    assert judge.sharing.counters.vouches_accepted == 0
    assert judge.sharing.level_of(subject) == pb.TLP_CLEAR


async def test_an_indicator_held_at_amber_or_red_is_not_published_lower(swarm: Swarm) -> None:
    a = await swarm.start("a", **FAST)
    await a.publish([{"value": "secret.example"}, {"value": "203.0.113.50"}], tlp="amber")
    await a.publish([{"value": "open.example"}], tlp="green")
    # The Python API refuses the whole call, naming the record.
    with pytest.raises(IndicatorError) as refused:
        await a.publish([{"value": "fine.example"}, {"value": "secret.example"}], tlp="clear")
    assert refused.value.field == "tlp"
    assert refused.value.line == 2
    assert "no downgrade" in str(refused.value)
    assert not stored(a, "fine.example")
    # Same level or higher is fine; so is lowering what was only ever GREEN.
    assert await a.publish([{"value": "secret.example"}], tlp="red") == 1
    assert await a.publish([{"value": "open.example"}], tlp="clear") == 1
    # Through the API (``threatmesh publish``): the record is rejected, the rest go through.
    text = "\n".join(
        json.dumps(record)
        for record in (
            {"value": "ok.example"},
            {"value": "203.0.113.50"},
            {"value": "secret.example", "tlp": "amber"},
        )
    )
    result = await a.publish_text(text, fmt="jsonl", tlp_name="green", provider="")
    assert result["accepted"] == 1
    assert [r["line"] for r in result["rejected"]] == [2, 3]
    assert all("no downgrade" in r["reason"] for r in result["rejected"])
    assert result["rejected"][0]["reason"].startswith("field 'tlp'")
