"""The host we build: secure channels only, all three transports, mplex fallback, limits."""

from __future__ import annotations

from pathlib import Path

import libp2p.security.secio.transport as secio
import pytest
import trio
from kit import Swarm
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import RetryConfig
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from multiaddr import Multiaddr

from threatmesh.identity import generate_identity
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.errors import TransportError
from threatmesh.transports.libp2p_host import (
    HostSettings,
    build_host,
    check_settings,
    connect,
    is_connected,
)
from threatmesh.transports.swarm_key import generate_swarm_key, write_swarm_key


def _raw_host(sec_opt: dict[TProtocol, object], **kwargs: object):  # type: ignore[no-untyped-def]
    """A stock py-libp2p host, not ours: it offers only what the test gives it."""
    host = new_host(key_pair=create_new_key_pair(), sec_opt=sec_opt, **kwargs)
    host.get_network().retry_config = RetryConfig(max_retries=0)
    return host


def _noise_option():  # type: ignore[no-untyped-def]
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.security.noise.transport import PROTOCOL_ID, Transport

    key_pair = create_new_key_pair()
    return key_pair, {
        TProtocol(PROTOCOL_ID): Transport(key_pair, noise_privkey=x25519().private_key)
    }


async def test_we_offer_noise_only() -> None:
    host = build_host(generate_identity(), HostSettings(listen_addrs=()))
    offered = list(host.get_network().upgrader.security_multistream.transports)
    assert offered == ["/noise"]


async def test_tls_is_an_option() -> None:
    settings = HostSettings(listen_addrs=(), security=("noise", "tls"))
    host = build_host(generate_identity(), settings)
    assert list(host.get_network().upgrader.security_multistream.transports) == [
        "/noise",
        "/tls/1.0.0",
    ]


@pytest.mark.parametrize(
    "sec_opt",
    [
        {TProtocol(PLAINTEXT_PROTOCOL_ID): "plaintext"},
        {TProtocol(secio.ID): "secio"},
    ],
    ids=["plaintext", "secio"],
)
async def test_insecure_dialer_is_refused(swarm: Swarm, sec_opt: dict[TProtocol, str]) -> None:
    node = await swarm.start("listener")
    key_pair = create_new_key_pair()
    protocol = next(iter(sec_opt))
    transport = (
        InsecureTransport(key_pair)
        if protocol == PLAINTEXT_PROTOCOL_ID
        else secio.Transport(key_pair)
    )
    dialer = new_host(key_pair=key_pair, sec_opt={protocol: transport})
    dialer.get_network().retry_config = RetryConfig(max_retries=0)
    peer_info = swarm.peer_info("listener")
    async with dialer.run([]):
        with pytest.raises(TransportError):
            await connect(dialer, peer_info, timeout_s=5)
        assert not is_connected(dialer, peer_info)
    assert node.peers() == []


@pytest.mark.parametrize(
    "listen",
    [
        "/ip4/127.0.0.1/tcp/0",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "/ip4/127.0.0.1/tcp/0/ws",
        "/ip6/::1/tcp/0",
    ],
)
async def test_dial_each_transport(swarm: Swarm, listen: str) -> None:
    listener = await swarm.start("listener", listen=(listen,))
    # The dialer listens on TCP only and must still dial QUIC and WebSocket addresses.
    dialer = await swarm.start("dialer")
    await swarm.connect("dialer", "listener")
    assert listener.peer_id.to_base58() in dialer.peers()


async def test_mplex_only_peer_is_served(swarm: Swarm) -> None:
    listener = await swarm.start("listener")
    key_pair, noise = _noise_option()
    dialer = new_host(
        key_pair=key_pair, sec_opt=noise, muxer_opt={TProtocol(MPLEX_PROTOCOL_ID): Mplex}
    )
    async with dialer.run([]):
        await connect(dialer, swarm.peer_info("listener"), timeout_s=5)
        connection = dialer.get_network().connections[listener.peer_id][0]
        assert isinstance(connection.muxed_conn, Mplex)


async def test_one_connection_per_peer_so_no_happy_eyeballs_wait() -> None:
    # py-libp2p waits 250 ms after each dialled address unless the peer already has
    # max_connections_per_peer connections (swarm.py, _HAPPY_EYEBALLS_DELAY); at 1, the first
    # success ends the wait. bench/connect_latency.py measures the effect.
    host = build_host(generate_identity(), HostSettings(listen_addrs=()))
    assert host.get_network().connection_config.max_connections_per_peer == 1
    assert host.get_network().retry_config.max_retries == 0


async def test_wrong_peer_id_is_refused(swarm: Swarm) -> None:
    await swarm.start("listener")
    dialer = await swarm.start("dialer")
    impostor = PeerInfo(generate_identity().peer_id, swarm.peer_info("listener").addrs)
    with pytest.raises(TransportError):
        await connect(dialer.host, impostor, timeout_s=5)


async def test_unreachable_peer_is_an_error_not_a_hang(swarm: Swarm) -> None:
    dialer = await swarm.start("dialer")
    with trio.socket.socket() as probe:  # a port that was free a moment ago: refused
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nobody = PeerInfo(generate_identity().peer_id, [Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")])
    with pytest.raises(TransportError):
        await connect(dialer.host, nobody, timeout_s=5)


def test_quic_with_psk_is_refused_at_start() -> None:
    settings = HostSettings(
        listen_addrs=(parse_listen_addr("/ip4/127.0.0.1/udp/0/quic-v1"),), psk=b"\x01" * 32
    )
    with pytest.raises(TransportError, match="QUIC cannot be used in a private swarm"):
        check_settings(settings)


def test_unknown_security_is_refused() -> None:
    with pytest.raises(TransportError, match="unknown security protocol"):
        build_host(generate_identity(), HostSettings(listen_addrs=(), security=("plaintext",)))


# Private swarms, with our host builder ---------------------------------------------------


def _key_file(path: Path) -> str:
    write_swarm_key(path, generate_swarm_key())
    return str(path)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[str, str]:
    return _key_file(tmp_path / "swarm.key"), _key_file(tmp_path / "other.key")


async def test_same_key_connects(swarm: Swarm, keys: tuple[str, str]) -> None:
    listener = await swarm.start("listener", psk_file=keys[0])
    dialer = await swarm.start("dialer", psk_file=keys[0])
    await swarm.connect("dialer", "listener")
    assert dialer.peers() == [listener.peer_id.to_base58()]


@pytest.mark.parametrize(
    ("listener_key", "dialer_key"),
    [(0, 1), (0, None), (None, 0)],
    ids=["wrong-key", "dialer-without-key", "listener-without-key"],
)
async def test_other_key_is_refused_within_2s(
    swarm: Swarm, keys: tuple[str, str], listener_key: int | None, dialer_key: int | None
) -> None:
    # A dialer holding a key says why it was refused; one without a key cannot know.
    reason = "swarm key" if dialer_key is not None else None

    def key(index: int | None) -> str:
        return "" if index is None else keys[index]

    listener = await swarm.start("listener", psk_file=key(listener_key))
    dialer = await swarm.start("dialer", psk_file=key(dialer_key))
    started = trio.current_time()
    with pytest.raises(TransportError, match=reason):
        await connect(dialer.host, swarm.peer_info("listener"), timeout_s=5)
    assert trio.current_time() - started < 2.0
    assert dialer.peers() == []
    assert listener.peers() == []


async def test_connection_limit_admits_max_connections_peers(swarm: Swarm) -> None:
    listener = await swarm.start("listener", max_connections=2, low_watermark=0, high_watermark=2)
    for name in ("b", "c", "d"):
        await swarm.start(name)
    await swarm.connect("b", "listener")
    await swarm.connect("c", "listener")
    with pytest.raises(TransportError, match=r"refused|unable to connect"):
        await swarm.connect("d", "listener")
    assert sorted(listener.peers()) == sorted(
        [swarm["b"].peer_id.to_base58(), swarm["c"].peer_id.to_base58()]
    )
