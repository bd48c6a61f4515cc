"""The DHT adapter with in-process hosts on 127.0.0.1: our protocol id only, swarms kept
apart, lookups across several hops, providers deduplicated, junk on the wire survived."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio
import varint
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.network.stream.net_stream import INetStream
from test_discovery_kit import LocalPeer, LocalSwarm, local_swarm, wait_until

from threatmesh.discovery.libp2p_kad import IPFS_KAD_PROTOCOL_ID, KadSettings, dht_key
from threatmesh.discovery.rendezvous import rendezvous_key
from threatmesh.identity import generate_identity
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.libp2p_host import HostSettings, build_host, connect, running

OURS = TProtocol("/threatmesh/s1/kad/1.0.0")


def _record_protocols(peer: LocalPeer) -> list[str]:
    """Every protocol ``peer``'s host is asked to open a stream with, from now on."""
    asked: list[str] = []
    original = peer.host.new_stream

    async def recording(peer_id, protocol_ids):  # type: ignore[no-untyped-def]
        asked.extend(str(p) for p in protocol_ids)
        return await original(peer_id, protocol_ids)

    peer.host.new_stream = recording  # type: ignore[method-assign]
    return asked


def _count_inbound(peer: LocalPeer, protocol: TProtocol) -> list[int]:
    """Wrap ``peer``'s handler of ``protocol``; the list's one item counts inbound streams."""
    count = [0]
    mux = peer.host.get_mux()
    handler = mux.handlers[protocol]

    async def counting(stream: INetStream) -> None:
        count[0] += 1
        await handler(stream)

    mux.handlers[protocol] = counting
    return count


async def _chain(swarm: LocalSwarm, names: list[str], **options: object) -> list[LocalPeer]:
    """Peers connected in a line, each only to the next; routing tables filled."""
    peers = [await swarm.start(name, dht_only=True, **options) for name in names]  # type: ignore[arg-type]
    for left, right in itertools.pairwise(names):
        await swarm.connect(left, right)
    await wait_until(
        lambda: all(
            p.dht.routing_table_size() >= (1 if i in (0, len(peers) - 1) else 2)
            for i, p in enumerate(peers)
        ),
        timeout_s=10,
    )
    return peers


async def test_a_node_never_registers_or_dials_the_ipfs_dht(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        peers = await _chain(swarm, ["a", "b", "c"])
        a, _, c = peers
        for peer in peers:
            handlers = set(peer.host.get_mux().handlers)
            assert OURS in handlers
            assert IPFS_KAD_PROTOCOL_ID not in handlers

        # A stock py-libp2p DHT (speaking /ipfs/kad/1.0.0) connected to our node: never asked.
        stock_settings = HostSettings(listen_addrs=(parse_listen_addr("/ip4/127.0.0.1/tcp/0"),))
        stock_host = build_host(generate_identity(), stock_settings)
        async with running(stock_host, stock_settings.listen_addrs):
            stock = KadDHT(stock_host, DHTMode.SERVER)
            stock_inbound = [0]
            stock_handler = stock_host.get_mux().handlers[IPFS_KAD_PROTOCOL_ID]

            async def counting(stream: INetStream) -> None:
                stock_inbound[0] += 1
                await stock_handler(stream)

            stock_host.get_mux().handlers[IPFS_KAD_PROTOCOL_ID] = counting
            await connect(stock_host, a.peer_info, timeout_s=5)
            asked = _record_protocols(a)
            key = dht_key(b"indicator")
            with trio.fail_after(20):
                assert await a.dht.provide(key)
                assert await a.dht.lookup_peer(c.peer_id) is not None
                await a.dht.find_providers(key)
                await a.dht.random_walk()
            assert stock is not None
        assert asked, "the lookups opened no stream at all"
        assert IPFS_KAD_PROTOCOL_ID not in asked
        assert set(asked) <= {str(OURS), "/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"}
        assert stock_inbound == [0]
        assert stock_host.get_id() not in a.dht.routing_table_peers()
        assert a.dht.stats.not_in_swarm >= 1  # identified, not admitted


async def test_swarm_a_does_not_answer_swarm_b(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        a1, _a2, a3 = await _chain(swarm, ["a1", "a2", "a3"])
        key = dht_key(b"only in swarm a")
        with trio.fail_after(20):
            assert await a3.dht.provide(key)
        inbound_a1 = _count_inbound(a1, OURS)
        b1 = await swarm.start("b1", swarm="s2", dht_only=True)
        await swarm.connect("b1", "a1")
        await wait_until(lambda: b1.dht.stats.not_in_swarm >= 1, timeout_s=10)
        with trio.fail_after(30):
            assert await b1.dht.lookup_peer(a3.peer_id) is None
            assert await b1.dht.find_providers(key) == []
            assert await b1.dht.provide(key) is False
        assert inbound_a1 == [0]
        assert b1.dht.routing_table_size() == 0
        assert b1.peer_id not in a1.dht.routing_table_peers()
        # Swarm A still works, and its DHT has not heard of b1.
        with trio.fail_after(20):
            assert [p.peer_id for p in await a1.dht.find_providers(key)] == [a3.peer_id]


async def test_find_a_peer_by_id_across_six_nodes(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        peers = await _chain(swarm, [f"n{i}" for i in range(6)])
        first, last = peers[0], peers[-1]
        assert last.peer_id not in first.host.get_peerstore().peer_ids()
        with trio.fail_after(20):
            found = await first.dht.find_peer(last.peer_id)
        assert found is not None
        assert set(map(str, found.addrs)) >= set(map(str, last.host.get_transport_addrs()))


async def test_providers_come_back_once_each(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        peers = await _chain(swarm, [f"n{i}" for i in range(6)])
        key = dht_key(b"a shared indicator")
        providers = peers[1:4]
        with trio.fail_after(30):
            for peer in providers:
                assert await peer.dht.provide(key)
            found = await peers[5].dht.find_providers(key)
            # A provider asks too: its own record does not hide the others (upstream's
            # find_providers returns only local records once it has one).
            found_by_provider = await peers[1].dht.find_providers(key)
        ids = [info.peer_id for info in found]
        assert len(ids) == len(set(ids))
        assert set(ids) == {p.peer_id for p in providers}
        assert {info.peer_id for info in found_by_provider} == {p.peer_id for p in providers}
        for info in found:
            assert info.addrs
            assert all("/p2p/" not in str(addr) for addr in info.addrs)


async def test_client_mode_peers_stay_out_of_routing_tables(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        server = await swarm.start("server", dht_only=True)
        client = await swarm.start(
            "client", dht_only=True, kad_settings=KadSettings(mode=DHTMode.CLIENT)
        )
        assert OURS not in client.host.get_mux().handlers
        await swarm.connect("client", "server")
        await wait_until(lambda: client.dht.routing_table_size() == 1, timeout_s=10)
        await wait_until(lambda: server.dht.stats.not_in_swarm == 1, timeout_s=10)
        assert server.dht.routing_table_size() == 0
        with trio.fail_after(20):  # a client can still query
            assert await client.dht.lookup_peer(server.peer_id) is not None


@pytest.mark.parametrize(
    "junk",
    [
        b"\x05hello",  # not a protobuf Message
        b"\xff\xff\xff\xff\x0f",  # a 4 GiB length prefix
        b"\x03\x08",  # truncated, then EOF
        varint.encode(200) + bytes(range(200)),  # a length-prefixed blob of garbage
    ],
)
async def test_garbage_on_the_dht_stream_does_not_hurt_the_node(
    tmp_path: Path, junk: bytes
) -> None:
    async with local_swarm(tmp_path) as swarm:
        target, other = await _chain(swarm, ["target", "other"])
        attacker = await swarm.start("attacker", dht_only=True)
        await swarm.connect("attacker", "target")
        with trio.fail_after(10):
            stream = await attacker.host.new_stream(target.peer_id, [OURS])
            await stream.write(junk)
            await stream.close()
        # The node still answers a well-formed query from anyone.
        with trio.fail_after(20):
            assert await attacker.dht.lookup_peer(other.peer_id) is not None
        assert not target.stopped.is_set()


async def test_a_peer_answering_lookups_with_junk_is_survived(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        honest_a, honest_b = await _chain(swarm, ["honest_a", "honest_b"])
        liar = await swarm.start("liar", dht_only=True)

        async def lie(stream: INetStream) -> None:
            await stream.read(1024)
            bad = Message()
            bad.type = Message.MessageType.FIND_NODE
            peer = bad.closerPeers.add()
            peer.id = b"\x00not a peer id"
            peer.addrs.append(b"\xff\xfe not a multiaddr")
            payload = bad.SerializeToString() + b"\x00trailing junk"
            await stream.write(varint.encode(len(payload)) + payload)
            await stream.close()

        liar.host.set_stream_handler(OURS, lie)
        await swarm.connect("liar", "honest_a")
        await wait_until(lambda: liar.peer_id in honest_a.dht.routing_table_peers(), 10)
        with trio.fail_after(30):
            assert await honest_a.dht.lookup_peer(honest_b.peer_id) is not None
            await honest_a.dht.random_walk()
            await honest_a.dht.find_providers(dht_key(b"x"))
        assert not honest_a.stopped.is_set()


async def test_rendezvous_step_provides_and_finds_in_one_lookup(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        peers = await _chain(swarm, [f"n{i}" for i in range(5)])
        key = rendezvous_key("s1")
        members = peers[1:4]
        with trio.fail_after(30):
            for peer in members:
                streams_before = peer.dht.view.outbound_streams
                provided, found = await peer.dht.provide_and_find_providers(key)
                streams = peer.dht.view.outbound_streams - streams_before
                assert provided
                assert peer.peer_id in {info.peer_id for info in found}
            # The last one to arrive sees every member, each once.
            ids = [info.peer_id for info in found]
            assert sorted(map(str, ids)) == sorted(str(p.peer_id) for p in members)
            # One lookup (at most one FIND_NODE per other peer here), then one ADD_PROVIDER
            # and one GET_PROVIDERS per closest peer: never a second lookup.
            others = len(peers) - 1
            assert streams <= others + 2 * others
