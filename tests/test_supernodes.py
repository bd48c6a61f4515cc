"""Supernodes end to end (issue #6): status announcements, dial-back, election, roles, relay.

In-process nodes on 127.0.0.1 (the ``swarm`` fixture) announce every ``INTERVAL_S`` and need
no minimum record to be elected: in production the 60 s record is what bounds the first
election; here the election, the adoption delay and the roles are under test. Waits are
bounded and wake on the service's events (``Supernodes.ticked`` after every election), never
on a timer; the few states with no event of their own (a relayed connection, a stored
indicator) are polled by ``wait_until``.

Load: py-libp2p spends about a millisecond of CPU per control message per node (see
bench/README.md: ~12 ms per batch per node on a 10-node mesh, most of it per-message
overhead), and every node receives every announcement several times, so one process carries 6
nodes at a 1 s interval comfortably (~30 % of a core) and 8 not reliably. The 20-node runs
are in tests/test_supernodes_slow.py (skipped unless asked for).

Measured times are printed (``pytest -s``) in announce intervals.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence

import httpx
import pytest
import trio
from kit import Swarm, wait_until
from libp2p.kad_dht.kad_dht import DHTMode
from libp2p.peer.peerinfo import PeerInfo

from threatmesh.discovery import SupernodeDropped, SupernodeElected
from threatmesh.identity import TrustStore, generate_identity
from threatmesh.node.cli import main as cli_main
from threatmesh.node.node import Node
from threatmesh.pubsub.libp2p_gossipsub import GossipSettings, build_pubsub, running_pubsub
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.topics import control_topic
from threatmesh.reputation import peer_id_bytes
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.libp2p_host import HostSettings, build_host, connect, running

INTERVAL_S = 1.0
FAST = {
    "announce_interval_s": INTERVAL_S,
    "supernode_min_record_s": 0,
    "supernode_min_record_untrusted_s": 0,
}
TIMEOUT_S = 30 * INTERVAL_S
# The bound of issue #6 is 3 intervals; a status takes a few ms to arrive and be read, and
# the timer that runs the election may fire that much late on a loaded machine.
WITHIN_3_INTERVALS_S = 3 * INTERVAL_S + 0.3


async def any_event(events: Iterable[trio.Event]) -> None:
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


async def until(predicate: Callable[[], bool], nodes: Sequence[Node], timeout_s: float) -> None:
    """Wait, bounded, until ``predicate()`` holds, looking again after each election."""
    with trio.fail_after(timeout_s):
        while not predicate():
            await any_event([node.supernodes.ticked for node in nodes])


def pid(node: Node) -> str:
    return str(node.peer_id.to_base58())


def agreed(nodes: Sequence[Node], size: int, *, without: str | None = None) -> bool:
    sets = {frozenset(node.supernodes.current) for node in nodes}
    if len(sets) != 1:
        return False
    [members] = sets
    return len(members) == size and without not in members


def trust(node: Node, peers: Iterable[Node], level: int) -> None:
    """``threatmesh trust add`` (the running node reloads the file within a second)."""
    store = TrustStore(node.home.trust_file)
    for peer in peers:
        store.add(pid(peer), level, now_ms=int(time.time() * 1000))


async def start_nodes(swarm: Swarm, names: Sequence[str], **overrides: object) -> list[Node]:
    config = {**FAST, **overrides}
    nodes = [await swarm.start(names[0], **config)]
    for name in names[1:]:
        nodes.append(await swarm.start(name, bootstrap=(swarm.addr(names[0]),), **config))
    return nodes


def candidate(node: Node, peer_id: str) -> dict[str, object]:
    [found] = [c for c in node.supernodes.report()["candidates"] if c["peer_id"] == peer_id]
    return dict(found)


def _reasons(node: Node, peer_id: str) -> list[str]:
    return [str(reason) for reason in candidate(node, peer_id)["reasons"]]  # type: ignore[attr-defined]


async def test_six_nodes_agree_within_3_intervals_and_replace_a_stopped_supernode_within_3(
    swarm: Swarm, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"n{index}" for index in range(6)]
    nodes = await start_nodes(swarm, names)
    started = trio.current_time()
    await until(lambda: agreed(nodes, 3), nodes, TIMEOUT_S)
    agreement_s = trio.current_time() - started

    # Steady: nobody changes the set over the next 3 intervals.
    changes = sum(node.supernodes.counters.set_changes for node in nodes)
    chosen = nodes[0].supernodes.current
    with trio.move_on_after(3 * INTERVAL_S):
        await until(lambda: not agreed(nodes, 3), nodes, TIMEOUT_S)
    assert sum(node.supernodes.counters.set_changes for node in nodes) == changes
    assert set(nodes[0].supernodes.current) == set(chosen)

    # What the local API and the CLI show (issue #6 format), and the role events.
    first = nodes[0]
    response = await trio.to_thread.run_sync(
        lambda: httpx.get(
            f"{first.api_url}/v1/supernodes",
            headers={"Authorization": f"Bearer {first.home.api_token()}"},
            timeout=5,
        )
    )
    report = response.json()
    assert set(report["supernodes"]) == set(chosen)
    assert {c["peer_id"] for c in report["candidates"]} == {pid(node) for node in nodes}
    for entry in report["candidates"]:
        assert set(entry) == {"peer_id", "score", "eligible", "reasons"}
        assert entry["eligible"]
        assert entry["reasons"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        await trio.to_thread.run_sync(
            cli_main, ["supernodes", "--home", str(first.home.path), "--json"]
        )
    assert exit_info.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["supernodes"]) == set(chosen)
    assert len(printed["candidates"]) == len(nodes)
    assert first.status()["supernodes"]["supernodes"] == list(first.supernodes.current)

    # Stop a supernode (its node is cancelled: no more announcements, sockets closed).
    victim_name = next(name for name in names if pid(swarm[name]) in chosen)
    events = nodes[0 if swarm[names[0]] is not swarm[victim_name] else 1].events()
    victim = swarm.stop(victim_name)
    survivors = [node for node in nodes if node is not victim]
    stopped = trio.current_time()
    await until(lambda: agreed(survivors, 3, without=pid(victim)), survivors, TIMEOUT_S)
    replacement_s = trio.current_time() - stopped
    with events:
        received = []
        while True:
            try:
                received.append(events.receive_nowait())
            except trio.WouldBlock:
                break
    assert SupernodeDropped in {type(event) for event in received}
    [dropped] = [event for event in received if isinstance(event, SupernodeDropped)]
    assert dropped.peer_id == pid(victim)
    [elected] = [event for event in received if isinstance(event, SupernodeElected)]
    assert elected.peer_id in survivors[0].supernodes.current

    with capsys.disabled():
        print(
            f"\n6 nodes, {INTERVAL_S:g} s interval: agreed {agreement_s / INTERVAL_S:.2f} "
            f"intervals after the last start; replacement agreed "
            f"{replacement_s / INTERVAL_S:.2f} intervals after a supernode stopped"
        )
    assert agreement_s <= WITHIN_3_INTERVALS_S
    assert replacement_s <= WITHIN_3_INTERVALS_S


async def test_a_node_lying_about_its_reachability_is_found_out_and_never_elected(
    swarm: Swarm,
) -> None:
    honest = await start_nodes(swarm, ["h0", "h1", "h2", "h3"], supernode_seats=8)

    def lie(node: Node) -> None:
        # It listens, but announces a closed port and an honest node's address instead.
        node.supernodes._our_addrs = lambda: ["/ip4/127.0.0.1/tcp/1", honest[0].listen_addrs()[0]]

    liar = await swarm.start(
        "liar", prepare=lie, bootstrap=(swarm.addr("h0"),), supernode_seats=8, **FAST
    )
    nodes = [*honest, liar]
    seen_with_liar: list[str] = []

    def check() -> bool:
        seen_with_liar.extend(pid(n) for n in nodes if pid(liar) in n.supernodes.current)
        return agreed(honest, 4) and all(
            n.supernodes.counters.dial_backs_unreachable >= 2 for n in honest
        )

    # Every honest node dialled the liar back (twice, the retry included: the only failures
    # here) and the honest nodes hold 4 of the 8 seats; the liar took none on any node.
    await until(check, nodes, TIMEOUT_S)
    assert not seen_with_liar
    for node in honest:
        entry = candidate(node, pid(liar))
        assert not entry["eligible"]
        assert any("not verified reachable" in reason for reason in _reasons(node, pid(liar)))
        assert pid(liar) not in node.supernodes.engine.ledger.verified(node.supernodes._wall_ms())


async def test_roles_are_taken_up_with_a_seat_and_dropped_with_it(swarm: Swarm) -> None:
    # DHT client by configuration, so that the supernode's server mode shows; an untrusted
    # candidate needs an hour of record, so losing trust loses the seat.
    nodes = await start_nodes(
        swarm,
        ["r0", "r1", "r2", "r3"],
        supernode_seats=1,
        dht_mode="client",
        supernode_min_record_untrusted_s=3600,
    )
    for node in nodes:
        trust(node, [peer for peer in nodes if peer is not node], pb.TLP_GREEN)
    await until(lambda: agreed(nodes, 1), nodes, TIMEOUT_S)
    [holder_id] = nodes[0].supernodes.current
    holder = next(node for node in nodes if pid(node) == holder_id)
    others = [node for node in nodes if node is not holder]
    assert all(node.sharing.level_of(holder_id) == pb.TLP_GREEN for node in others)

    # Taken up: DHT server, relay hop offered, larger mesh degree, "supernode" announced;
    # every other node protects it and keeps it in its peer cache as a supernode.
    await until(lambda: holder.discovery.dht.mode == DHTMode.SERVER, nodes, TIMEOUT_S)
    assert holder.supernodes.is_supernode
    assert holder.supernodes.relay.hop_offered
    assert holder.pubsub.gossip.degree == 12
    assert "supernode" in holder.status()["supernodes"]["roles"]
    for node in others:
        assert node.discovery.dht.mode == DHTMode.CLIENT
        assert not node.supernodes.relay.hop_offered
        assert node.pubsub.gossip.degree == 6
        assert node.discovery.is_protected(holder.peer_id)
        cached = node.discovery.peer_cache.get(holder_id)
        assert cached is not None
        assert cached.supernode

    # Dropped: the others stop trusting it; a trusted node takes the seat everywhere.
    events = others[0].events()
    for node in others:
        TrustStore(node.home.trust_file).remove(holder_id)
    await until(
        lambda: agreed(nodes, 1, without=holder_id) and not holder.supernodes.is_supernode,
        nodes,
        TIMEOUT_S,
    )
    [successor_id] = nodes[0].supernodes.current
    successor = next(node for node in nodes if pid(node) == successor_id)
    await until(
        lambda: (
            holder.discovery.dht.mode == DHTMode.CLIENT
            and successor.discovery.dht.mode == DHTMode.SERVER
        ),
        nodes,
        TIMEOUT_S,
    )
    assert not holder.supernodes.relay.hop_offered
    assert successor.supernodes.relay.hop_offered
    assert holder.pubsub.gossip.degree == 6
    assert successor.pubsub.gossip.degree == 12
    for node in [n for n in nodes if n is not holder]:
        assert not node.discovery.is_protected(holder.peer_id) or node is successor
        cached = node.discovery.peer_cache.get(holder_id)
        assert cached is not None
        assert not cached.supernode
    assert any("< 3600 s needed" in str(reason) for reason in _reasons(others[0], holder_id))
    with events:
        kinds = []
        while True:
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                break
            kinds.append((type(event), getattr(event, "peer_id", None)))
    assert (SupernodeDropped, holder_id) in kinds
    assert (SupernodeElected, successor_id) in kinds


def _relayed(node: Node, peer: Node) -> bool:
    connections = node.host.get_network().connections.get(peer.peer_id) or []
    return any(
        "/p2p-circuit" in str(addr)
        for connection in connections
        for addr in connection.get_transport_addresses()
    )


def _stored(node: Node, value: str) -> bool:
    return bool(node.store.query(value=value))


async def test_unreachable_nodes_exchange_indicators_through_a_supernode_relay(
    swarm: Swarm,
) -> None:
    """Two nodes that listen on no address at all reach each other only through a
    supernode's relay: AMBER between them (their supernodes are not trusted for AMBER, so
    no supernode ever forwards it) travels over the relayed connection, both ways."""
    reachable = await start_nodes(swarm, ["a", "b", "c"])
    unreachable = [
        await swarm.start(name, listen=(), bootstrap=(swarm.addr("a"),), **FAST)
        for name in ("u1", "u2")
    ]
    u1, u2 = unreachable
    nodes = [*reachable, *unreachable]
    for node in nodes:
        trust(node, reachable, pb.TLP_GREEN)
    assert not u1.addrs
    assert not u2.addrs

    # Each unreachable node holds relay slots on supernodes and announces circuit addresses;
    # neither is ever a candidate that could win (never dialled back: it has no address).
    def relayed_and_announced() -> bool:
        return all(
            node.supernodes.relay.held()
            and any(
                "/p2p-circuit" in str(addr)
                for addr in other.supernodes.announced_addrs(node.peer_id)
            )
            for node, other in ((u1, u2), (u2, u1))
        )

    await until(relayed_and_announced, nodes, TIMEOUT_S)
    assert agreed(reachable, 3)
    for node in unreachable:
        assert "relayed" in node.status()["supernodes"]["roles"]
        held = {str(relay) for relay in node.supernodes.relay.held()}
        assert held <= set(node.supernodes.current)
        entry = candidate(reachable[0], pid(node))
        assert not entry["eligible"]
    served = sum(node.supernodes.relay.reservations_served() for node in reachable)
    assert served >= 2

    # u2 trusts u1 at AMBER, so it dials u1 (through the relay: u1 has no other address).
    trust(u2, [u1], pb.TLP_AMBER)
    await wait_until(lambda: _relayed(u2, u1) and _relayed(u1, u2), TIMEOUT_S)
    trust(u1, [u2], pb.TLP_AMBER)
    for node, peer in ((u1, u2), (u2, u1)):
        await wait_until(lambda n=node, p=peer: n.sharing.level_of(pid(p)) == pb.TLP_AMBER)

    await u2.publish([{"value": "from-u2.relay.example"}], tlp="amber")
    await wait_until(lambda: _stored(u1, "from-u2.relay.example"), TIMEOUT_S)
    await u1.publish([{"value": "from-u1.relay.example"}], tlp="amber")
    await wait_until(lambda: _stored(u2, "from-u1.relay.example"), TIMEOUT_S)
    await u1.publish([{"value": "clear-from-u1.relay.example"}], tlp="clear")
    await wait_until(
        lambda: all(_stored(n, "clear-from-u1.relay.example") for n in reachable), TIMEOUT_S
    )
    for node in reachable:
        assert not _stored(node, "from-u2.relay.example")
        assert not _stored(node, "from-u1.relay.example")
    assert _relayed(u1, u2)
    assert u2.supernodes.relay.counters.circuits_dialled >= 1
    assert u1.supernodes.relay.counters.circuits_accepted >= 1


async def test_a_malformed_status_is_rejected_and_counts_against_its_sender(swarm: Swarm) -> None:
    judge = await swarm.start("judge", **FAST)
    liar = generate_identity()
    me = liar.peer_id.to_base58()
    now_ms = int(time.time() * 1000)
    # Its views name itself: an announcer vouching for its own uptime.
    status = pb.Status(
        uptime_s=3600,
        addrs=["/ip4/127.0.0.1/tcp/1"],
        started_ms=now_ms - 3_600_000,
        seq=1,
        views=[pb.PeerView(peer_id=peer_id_bytes(me), reputation_permille=1000, heard_for_s=60)],
    )
    topic = control_topic("public")
    loopback = (parse_listen_addr("/ip4/127.0.0.1/tcp/0"),)
    host = build_host(liar, HostSettings(listen_addrs=loopback))
    async with running(host, loopback):
        pubsub = build_pubsub(host, GossipSettings())
        async with running_pubsub(pubsub):
            await pubsub.subscribe(topic)
            await connect(host, PeerInfo(judge.peer_id, judge.host.get_transport_addrs()), 5)
            await pubsub.wait_for_subscription(judge.peer_id, topic)
            control = pb.Control(sent_ms=now_ms, status=status)
            await pubsub.publish(topic, control.SerializeToString())
            await wait_until(lambda: judge.supernodes.counters.announcements_rejected >= 1)
            scorer = judge.pubsub.gossip.scorer
            assert scorer is not None
            await wait_until(
                lambda: scorer.invalid_messages.get(host.get_id(), {}).get(topic, 0) > 0.9, 5
            )
    assert judge.supernodes.engine.book.get(me) is None
