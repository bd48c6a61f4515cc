"""The pieces of the supernode service one at a time: roles (pure), the engine's steps (pure),
dial-back and the relay adapter (two or three bare hosts on 127.0.0.1), config, event records.
"""

from __future__ import annotations

import socket

import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo

from threatmesh.discovery import SupernodeDropped, SupernodeElected
from threatmesh.identity import generate_identity
from threatmesh.node.config import NodeConfig, parse_config
from threatmesh.node.errors import ConfigError
from threatmesh.node.records import event_record
from threatmesh.node.supernodes import SupernodeSettings
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.reputation import (
    Announcement,
    ElectionConfig,
    MeshDegree,
    SupernodeEngine,
    announcement_from_status,
    needs_relay,
    roles_for,
)
from threatmesh.reputation.roles import relays_to_reserve
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.dial_back import dial_back, dial_back_addrs
from threatmesh.transports.libp2p_host import HostSettings, build_host, connect, running
from threatmesh.transports.relay import (
    Relay,
    RelayError,
    circuit_addr,
    is_circuit,
    split_circuit,
)
from threatmesh.transports.swarm_key import generate_swarm_key

LOOPBACK = (parse_listen_addr("/ip4/127.0.0.1/tcp/0"),)
CONFIGURED = MeshDegree(6, 4, 12)
EPOCH_MS = 1_760_000_000_000


# Roles ---------------------------------------------------------------------------------------


def test_a_supernode_takes_every_role_and_a_member_keeps_its_configuration() -> None:
    supernode = roles_for(
        our_peer_id="me",
        supernodes=("x", "me"),
        configured_dht_server=False,
        needs_relay=False,
        configured_mesh=CONFIGURED,
        supernode_degree=12,
    )
    assert supernode.dht_server
    assert supernode.relay_hop
    assert supernode.mesh == MeshDegree(12, 8, 24)
    assert supernode.names() == ("supernode", "dht-server", "relay")
    member = roles_for(
        our_peer_id="me",
        supernodes=("x", "y"),
        configured_dht_server=False,
        needs_relay=False,
        configured_mesh=CONFIGURED,
        supernode_degree=12,
    )
    assert member.names() == ()
    assert member.mesh == CONFIGURED
    assert member.relays == ()


def test_an_unreachable_node_reserves_on_the_first_two_supernodes_other_than_itself() -> None:
    roles = roles_for(
        our_peer_id="me",
        supernodes=("a", "b", "c"),
        configured_dht_server=False,
        needs_relay=True,
        configured_mesh=CONFIGURED,
        supernode_degree=12,
    )
    assert roles.relays == ("a", "b")
    assert roles.names() == ("relayed",)
    assert relays_to_reserve("a", ("a", "b", "c")) == ("b", "c")


@pytest.mark.parametrize(
    ("has_addrs", "session_intervals", "witnesses", "verified_by", "expected"),
    [
        (False, 0, 0, 0, True),  # no address at all: at once
        (True, 0, 5, 0, False),  # too early to tell
        (True, 3, 1, 0, False),  # not enough witnesses
        (True, 3, 2, 0, True),  # nobody dialled us back
        (True, 3, 5, 1, False),  # somebody did
    ],
)
def test_needs_relay(
    has_addrs: bool, session_intervals: int, witnesses: int, verified_by: int, expected: bool
) -> None:
    assert (
        needs_relay(
            has_addrs=has_addrs,
            session_ms=session_intervals * 1000,
            interval_ms=1000,
            fresh_witnesses=witnesses,
            verified_by=verified_by,
        )
        is expected
    )


# The engine ----------------------------------------------------------------------------------


def _wire(announcement: Announcement, received_ms: int) -> Announcement:
    """``announcement`` as another node receives it: through the wire format."""
    status = pb.Status.FromString(announcement.to_status().SerializeToString())
    return announcement_from_status(
        status,
        sender=announcement.sender,
        sent_ms=announcement.sent_ms,
        received_ms=received_ms,
    )


def test_three_engines_dial_back_elect_and_agree() -> None:
    config = ElectionConfig(
        announce_interval_ms=1000, seats=1, min_record_s=0, min_record_untrusted_s=0
    )
    peers = [generate_identity().peer_id.to_base58() for _ in range(3)]
    engines = [
        SupernodeEngine(our_peer_id=peer, started_ms=EPOCH_MS, config=config) for peer in peers
    ]
    now = EPOCH_MS
    for _round in range(4):
        now += 1000
        for engine in engines:
            for due in engine.begin_round(now):
                assert due.addrs == (f"/ip4/127.0.0.1/tcp/{peers.index(due.peer_id) + 1}",)
                engine.record_dial_back(due.peer_id, reachable=True, now_ms=now)
            engine.evaluate({}, now)
            ours = engine.announce(
                now,
                addrs=(f"/ip4/127.0.0.1/tcp/{peers.index(engine.our_peer_id) + 1}",),
                degree=2,
                roles=(),
                reputations={peer: 0.5 for peer in peers},
            )
            for other in engines:
                if other is not engine:
                    assert other.receive(_wire(ours, now))
            assert not engine.receive(ours)  # our own is recorded at once, never twice
    sets = {engine.supernodes for engine in engines}
    assert len(sets) == 1
    [chosen] = sets
    assert len(chosen) == 1
    for engine in engines:
        assert len(engine.verified_by(now)) == 2
        assert engine.wake_at_ms(now + 1000) <= now + 1000
    # No dial-back is due again before the recheck time (15 intervals).
    assert engines[0].begin_round(now + 1000) == []


# Settings, config, events ---------------------------------------------------------------------


def test_settings_follow_the_config() -> None:
    config = parse_config(
        "announce_interval_s = 2.0\nsupernode_seats = 0\nsupernode_min_record_s = 5\n"
        "supernode_min_record_untrusted_s = 50\nsupernode_mesh_degree = 9\n"
        "relay_max_reservations = 7\nip_colocation_threshold = 40\n"
    )
    settings = SupernodeSettings(
        announce_interval_s=config.announce_interval_s,
        seats=config.supernode_seats,
        min_record_s=config.supernode_min_record_s,
        min_record_untrusted_s=config.supernode_min_record_untrusted_s,
    )
    election = settings.election_config()
    assert election.seats is None  # 0: automatic
    assert election.announce_interval_ms == 2000
    assert (election.min_record_s, election.min_record_untrusted_s) == (5, 50)
    assert settings.dial_back_timeout_s == 1.0
    assert config.relay_max_reservations == 7
    assert config.ip_colocation_threshold == 40
    assert NodeConfig().supernode_seats == 3


def test_a_trusted_record_longer_than_the_untrusted_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="supernode_min_record_s"):
        parse_config("supernode_min_record_s = 600\n")


def test_role_changes_are_membership_events() -> None:
    assert event_record(SupernodeElected("P", 1.0)) == {
        "event": "supernode_elected",
        "peer_id": "P",
    }
    assert event_record(SupernodeDropped("P", 1.0)) == {
        "event": "supernode_dropped",
        "peer_id": "P",
    }


# Dial-back -----------------------------------------------------------------------------------


def test_dial_back_tries_direct_addresses_public_first_and_never_circuits() -> None:
    chosen = dial_back_addrs(
        [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip4/127.0.0.1/udp/4001/quic-v1",
            "/ip4/198.51.100.7/tcp/4001/p2p/16Uiu2HAmRelay/p2p-circuit",
            "/ip4/203.0.113.9/tcp/4001/ws",
            "/ip4/203.0.113.9/tcp/4001",
            "not a multiaddr",
        ]
    )
    assert [str(addr) for addr in chosen] == [
        "/ip4/203.0.113.9/tcp/4001/ws",
        "/ip4/203.0.113.9/tcp/4001",
        "/ip4/127.0.0.1/tcp/4001",
    ]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_dial_back_succeeds_only_for_the_peer_that_listens_there() -> None:
    dialer_id, target_id, other_id = (generate_identity() for _ in range(3))
    dialer = build_host(dialer_id, HostSettings(listen_addrs=LOOPBACK))
    target = build_host(target_id, HostSettings(listen_addrs=LOOPBACK))
    async with running(dialer, LOOPBACK), running(target, LOOPBACK):
        addr = str(target.get_transport_addrs()[0])
        # Already connected: dial-back still opens a new connection (and leaves none behind).
        await connect(dialer, PeerInfo(target.get_id(), target.get_transport_addrs()))
        assert await dial_back(dialer, target.get_id(), [addr], timeout_s=5)
        assert len(target.get_network().connections) == 1
        # Someone else's address, a closed port, a relayed address: not reachable.
        assert not await dial_back(dialer, other_id.peer_id, [addr], timeout_s=5)
        closed = f"/ip4/127.0.0.1/tcp/{_closed_port()}"
        assert not await dial_back(dialer, target.get_id(), [closed], timeout_s=5)
        relayed = circuit_addr(addr, target.get_id())
        assert not await dial_back(dialer, other_id.peer_id, [relayed], timeout_s=5)


# The relay adapter ---------------------------------------------------------------------------


def test_circuit_addresses() -> None:
    relay = generate_identity().peer_id
    text = circuit_addr("/ip4/127.0.0.1/tcp/4001/p2p/" + relay.to_base58(), relay)
    assert text == f"/ip4/127.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit"
    assert is_circuit(text)
    relay_id, relay_addr = split_circuit(text)
    assert relay_id == relay
    assert str(relay_addr) == "/ip4/127.0.0.1/tcp/4001"
    with pytest.raises(ValueError, match="not a circuit address"):
        split_circuit("/ip4/127.0.0.1/tcp/4001")


async def test_the_relay_serves_only_while_offered_and_only_peers_it_may_serve() -> None:
    relay_id, client_id, stranger_id = (generate_identity() for _ in range(3))
    relay_host = build_host(relay_id, HostSettings(listen_addrs=LOOPBACK))
    client_host = build_host(client_id, HostSettings(listen_addrs=()))
    stranger_host = build_host(stranger_id, HostSettings(listen_addrs=()))
    async with (
        running(relay_host, LOOPBACK),
        running(client_host, ()),
        running(stranger_host, ()),
        trio.open_nursery() as nursery,
    ):
        relay = Relay(relay_host, may_use=lambda peer_id: peer_id == client_host.get_id())
        client, stranger = Relay(client_host), Relay(stranger_host)
        for each in (relay, client, stranger):
            await nursery.start(each.run)
        relay_info = PeerInfo(relay_host.get_id(), relay_host.get_transport_addrs())

        with pytest.raises(RelayError, match="reservation failed"):
            await client.reserve(relay_info)  # no hop offered
        relay.offer_hop()
        expires_s = await client.reserve(relay_info)
        assert expires_s > 0
        assert client.held() == {relay_host.get_id(): expires_s}
        assert client.circuit_addrs() == [
            circuit_addr(relay_host.get_transport_addrs()[0], relay_host.get_id())
        ]
        with pytest.raises(RelayError, match="PERMISSION_DENIED"):
            await stranger.reserve(relay_info)
        assert relay.counters.hop_refused == 1
        assert relay.reservations_served() == 1

        # The stranger may not use the relay to reach the client either.
        with pytest.raises(RelayError):
            await stranger.dial(client_host.get_id(), client.circuit_addrs()[0])

        relay.withdraw_hop()
        with pytest.raises(RelayError):
            await client.reserve(relay_info)
        nursery.cancel_scope.cancel()


async def test_a_circuit_in_a_private_swarm_is_protected_by_the_swarm_key_both_ways() -> None:
    psk = generate_swarm_key()
    relay_id, target_id, dialer_id = (generate_identity() for _ in range(3))
    relay_host = build_host(relay_id, HostSettings(listen_addrs=LOOPBACK, psk=psk))
    target_host = build_host(target_id, HostSettings(listen_addrs=(), psk=psk))
    dialer_host = build_host(dialer_id, HostSettings(listen_addrs=(), psk=psk))
    async with (
        running(relay_host, LOOPBACK),
        running(target_host, ()),
        running(dialer_host, ()),
        trio.open_nursery() as nursery,
    ):
        relay, target, dialer = Relay(relay_host), Relay(target_host), Relay(dialer_host)
        for each in (relay, target, dialer):
            await nursery.start(each.run)
        relay.offer_hop()
        await target.reserve(PeerInfo(relay_host.get_id(), relay_host.get_transport_addrs()))
        await dialer.dial(target_host.get_id(), target.circuit_addrs()[0])
        [connection] = dialer_host.get_network().connections[target_host.get_id()]
        assert "/p2p-circuit" in str(connection.get_transport_addresses()[0])
        assert target.counters.circuits_accepted == 1
        nursery.cancel_scope.cancel()
