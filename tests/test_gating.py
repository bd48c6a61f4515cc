"""TLP gating: pubsub/gating.py (the decision) and its hooks in pubsub/libp2p_gossipsub.py.

Adapter tests use bare hosts with our pubsub (the ``net`` fixture of test_gossipsub_adapter).
``a`` publishes; ``b`` is trusted at AMBER; ``c`` is not trusted (CLEAR). Every peer runs our
pubsub with an open audience, so ``c`` subscribes and GRAFTs like any peer would.
Ordering (see test_gossipsub_adapter): once a later message from ``a`` has reached ``c``, every
earlier RPC ``a`` sent to ``c`` has been handled.
"""

from __future__ import annotations

import pytest
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from test_gossipsub_adapter import Net, Peer, net, receive_until, wait_until

from threatmesh.identity import generate_identity
from threatmesh.pubsub.gating import Audience, may_receive, swarm_topic_levels
from threatmesh.pubsub.libp2p_gossipsub import GossipSettings, IgnoreMessage, message_id, withhold
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.topics import control_topic, tlp_topic

__all__ = ["net"]  # the fixture, imported for pytest

SWARM = "gate"
SECRET = tlp_topic(SWARM, pb.TLP_AMBER)
PUBLIC = tlp_topic(SWARM, pb.TLP_CLEAR)


def _id() -> ID:
    return generate_identity().peer_id


# The decision -----------------------------------------------------------------------------


@pytest.mark.parametrize("peer_level", [pb.TLP_CLEAR, pb.TLP_GREEN, pb.TLP_AMBER, pb.TLP_RED])
@pytest.mark.parametrize("topic_level", [pb.TLP_CLEAR, pb.TLP_GREEN, pb.TLP_AMBER, pb.TLP_RED])
def test_a_peer_receives_a_topic_at_or_below_its_trust(peer_level: int, topic_level: int) -> None:
    assert may_receive(peer_level, topic_level) == (peer_level >= topic_level)


def test_audience_defaults_unknown_peers_to_clear_and_itself_to_red() -> None:
    me, friend, stranger = _id(), _id(), _id()
    audience = Audience.for_swarm(SWARM, {friend: pb.TLP_GREEN}, me)
    levels = swarm_topic_levels(SWARM)
    assert levels[control_topic(SWARM)] == pb.TLP_CLEAR
    assert audience.allows(stranger, PUBLIC)
    assert audience.allows(stranger, control_topic(SWARM))
    assert not audience.allows(stranger, tlp_topic(SWARM, pb.TLP_GREEN))
    assert audience.allows(friend, tlp_topic(SWARM, pb.TLP_GREEN))
    assert not audience.allows(friend, SECRET)
    assert all(audience.allows(me, topic) for topic in levels)
    assert audience.allows(stranger, "/another/app/topic")  # not ours: not gated
    assert audience.sealed_topics() == {
        tlp_topic(SWARM, level) for level in (pb.TLP_AMBER, pb.TLP_AMBER_STRICT, pb.TLP_RED)
    }
    assert audience.gated_topics() == audience.sealed_topics() | {tlp_topic(SWARM, pb.TLP_GREEN)}


def test_withhold_cuts_messages_ihave_and_graft_of_refused_topics_only() -> None:
    secret = rpc_pb2.Message(data=b"s", topicIDs=[SECRET])
    public = rpc_pb2.Message(data=b"p", topicIDs=[PUBLIC])
    rpc = rpc_pb2.RPC(
        publish=[secret, public],
        control=rpc_pb2.ControlMessage(
            ihave=[
                rpc_pb2.ControlIHave(topicID=SECRET, messageIDs=[b"x"]),
                rpc_pb2.ControlIHave(topicID=PUBLIC, messageIDs=[b"y"]),
            ],
            graft=[rpc_pb2.ControlGraft(topicID=SECRET)],
        ),
    )
    kept, cut = withhold(rpc, lambda topic: topic != SECRET)
    assert kept is not None
    assert cut == 1
    assert [m.data for m in kept.publish] == [b"p"]
    assert [i.topicID for i in kept.control.ihave] == [PUBLIC]
    assert not kept.control.graft
    assert len(rpc.publish) == 2  # the caller's RPC is not modified

    assert withhold(rpc, lambda topic: True) == (rpc, 0)  # nothing refused: no copy
    only_secret = rpc_pb2.RPC(publish=[secret])
    assert withhold(only_secret, lambda topic: topic != SECRET) == (None, 1)
    secret_graft = rpc_pb2.RPC(control=rpc_pb2.ControlMessage(graft=[{"topicID": SECRET}]))
    assert withhold(secret_graft, lambda topic: topic != SECRET) == (None, 0)


# The adapter ------------------------------------------------------------------------------


async def _trio(net: Net, settings: GossipSettings | None = None) -> tuple[Peer, Peer, Peer]:
    """a trusts b at AMBER and c at nothing; b and c subscribe to both topics and connect to a."""
    a, b, c = await net.start(settings), await net.start(settings), await net.start(settings)
    await a.pubsub.set_audience(Audience.for_swarm(SWARM, {b.id: pb.TLP_AMBER}, a.id))
    for topic in (SECRET, PUBLIC):
        await a.pubsub.subscribe(topic)
    for peer in (b, c):
        await peer.pubsub.subscribe(SECRET)
        await peer.pubsub.subscribe(PUBLIC)
        await net.connect(peer, a)
        await a.pubsub.wait_for_subscription(peer.id, PUBLIC)
    return a, b, c


async def test_an_untrusted_peer_gets_nothing_of_a_gated_topic_by_any_path(net: Net) -> None:
    a, b, c = await _trio(net)
    b_secret = await b.pubsub.subscribe(SECRET)
    c_public = await c.pubsub.subscribe(PUBLIC)
    c_secret = await c.pubsub.subscribe(SECRET)

    # Subscription: c's SUBSCRIBE(SECRET) was withheld, b's taken in.
    assert b.id in a.pubsub.peer_topics[SECRET]
    assert c.id not in a.pubsub.peer_topics.get(SECRET, set())
    assert SECRET in a.pubsub.withheld_subscriptions()[c.id]
    # GRAFT: c joins a's mesh like any peer; a answers with PRUNE.
    await c.router.emit_graft(SECRET, a.id)
    await wait_until(lambda: a.pubsub.counters.withheld_grafts >= 1, timeout_s=5)
    assert c.id not in a.router.mesh[SECRET]

    # Publish and forwarding.
    await a.pubsub.publish(SECRET, b"secret 1")
    assert await receive_until(b_secret, b"secret 1") == [b"secret 1"]
    # IWANT for the secret message's ID: the reply is cut before it is queued.
    withheld_before = a.pubsub.counters.withheld_messages
    await c.router.emit_iwant([message_id(rpc_pb2.Message(data=b"secret 1"))], a.id)
    await wait_until(lambda: a.pubsub.counters.withheld_messages > withheld_before, timeout_s=5)
    # The last line: a signed secret message written straight to c's stream is cut too.
    signed = a.router.mcache.get(message_id(rpc_pb2.Message(data=b"secret 1")))
    assert signed is not None
    assert await a.pubsub.write_msg(a.pubsub.peers[c.id], rpc_pb2.RPC(publish=[signed]))

    await a.pubsub.publish(PUBLIC, b"public end")
    assert await receive_until(c_public, b"public end") == [b"public end"]
    assert c_secret.receive_channel.statistics().current_buffer_used == 0  # type: ignore[attr-defined]
    # IHAVE: a's gossip about SECRET (non-mesh subscribers get IHAVE) never names c.
    gossip = a.router.gossip_heartbeat()
    assert not any(SECRET in topics for peer, topics in gossip.items() if peer == c.id)
    assert PUBLIC in gossip.get(c.id, {PUBLIC: []}) or c.id in a.router.mesh[PUBLIC]


async def test_trust_granted_and_withdrawn_at_run_time(net: Net) -> None:
    a, b, c = await _trio(net)
    c_public = await c.pubsub.subscribe(PUBLIC)
    c_secret = await c.pubsub.subscribe(SECRET)
    # Granted: c's withheld subscription is taken in without c doing anything.
    await a.pubsub.set_audience(
        Audience.for_swarm(SWARM, {b.id: pb.TLP_AMBER, c.id: pb.TLP_AMBER}, a.id)
    )
    assert c.id in a.pubsub.peer_topics[SECRET]
    assert c.id not in a.pubsub.withheld_subscriptions()
    await a.pubsub.publish(SECRET, b"for c now")
    assert await receive_until(c_secret, b"for c now") == [b"for c now"]
    await wait_until(lambda: c.id in a.router.mesh[SECRET], timeout_s=5)

    # Withdrawn: out of peer_topics and mesh, pruned, and nothing more reaches it.
    await a.pubsub.set_audience(Audience.for_swarm(SWARM, {b.id: pb.TLP_AMBER}, a.id))
    assert c.id not in a.pubsub.peer_topics.get(SECRET, set())
    assert c.id not in a.router.mesh[SECRET]
    assert SECRET in a.pubsub.withheld_subscriptions()[c.id]
    await wait_until(lambda: a.id not in c.router.mesh.get(SECRET, set()), timeout_s=5)
    await a.pubsub.publish(SECRET, b"not for c")
    await a.pubsub.publish(PUBLIC, b"end")
    await receive_until(c_public, b"end")
    assert c_secret.receive_channel.statistics().current_buffer_used == 0  # type: ignore[attr-defined]


async def test_gated_messages_go_to_every_trusted_subscriber_not_only_the_mesh(
    net: Net,
) -> None:
    one = GossipSettings(degree=1, degree_low=1, degree_high=1)
    a, b1, b2 = await net.start(one), await net.start(one), await net.start(one)
    trusted = {b1.id: pb.TLP_AMBER, b2.id: pb.TLP_AMBER}
    await a.pubsub.set_audience(Audience.for_swarm(SWARM, trusted, a.id))
    await a.pubsub.subscribe(SECRET)
    await a.pubsub.subscribe(PUBLIC)
    for peer in (b1, b2):
        await peer.pubsub.subscribe(SECRET)
        await peer.pubsub.subscribe(PUBLIC)
        await net.connect(peer, a)
        await a.pubsub.wait_for_subscription(peer.id, SECRET)
    await wait_until(lambda: len(a.router.mesh[SECRET]) == 1, timeout_s=5)
    await wait_until(lambda: len(a.router.mesh[PUBLIC]) == 1, timeout_s=5)
    assert set(a.router._get_peers_to_send([SECRET], a.id, a.id)) == {b1.id, b2.id}
    assert set(a.router._get_peers_to_send([PUBLIC], a.id, a.id)) == a.router.mesh[PUBLIC]
    # Forwarded messages too, except back to where they came from.
    assert set(a.router._get_peers_to_send([SECRET], b1.id, b1.id)) == {b2.id}


async def test_a_validator_can_ignore_a_message_without_penalising_the_forwarder(
    net: Net,
) -> None:
    a, b = await net.start(), await net.start()

    def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if msg.data.startswith(b"ignore"):
            raise IgnoreMessage("not ours to judge")
        return True

    b.pubsub.set_validator(PUBLIC, validate)
    subscription = await b.pubsub.subscribe(PUBLIC)
    await net.connect(a, b)
    await a.pubsub.wait_for_subscription(b.id, PUBLIC)
    await a.pubsub.publish(PUBLIC, b"ignore me")
    await a.pubsub.publish(PUBLIC, b"keep me")
    assert await receive_until(subscription, b"keep me") == [b"keep me"]
    assert b.pubsub.counters.ignored_messages == 1
    scorer = b.router.scorer
    assert scorer is not None
    assert scorer.invalid_messages.get(a.id, {}).get(PUBLIC, 0) == 0
    # Not marked seen: the same message can still be judged again (e.g. once keys change).
    assert not b.pubsub._is_msg_seen(rpc_pb2.Message(data=b"ignore me"))
