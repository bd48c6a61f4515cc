"""The one adapter between threatmesh and py-libp2p 0.8.1's host construction.

``build_host`` makes the libp2p host every node runs. Each place where py-libp2p's default is
wrong for us is fixed here, and only here:

- Security. ``libp2p.new_swarm`` (``libp2p/__init__.py``, the ``sec_opt or {...}`` default)
  offers Noise, TLS, **secio and plaintext** when ``sec_opt`` is not given. A peer that only
  speaks plaintext would be accepted with no authentication at all. We always pass
  ``sec_opt``: Noise, plus TLS 1.3 when the operator asks for it. Never secio or plaintext.
- Muxers. Yamux first, mplex as a fallback for older peers (the libp2p spec order).
- Connect latency. ``network/swarm.py`` (``_HAPPY_EYEBALLS_DELAY = 0.250``) waits 250 ms after
  each dialled address unless the peer already has ``max_connections_per_peer`` connections;
  the default of 3 means every single-address dial waits the full 250 ms. One connection per
  peer is all we use, so ``max_connections_per_peer=1`` ends the wait at the first success.
- Retries. ``RetryConfig`` retries a failed dial 3 times with backoff. A refusal (wrong swarm
  key, wrong peer ID) does not get better with retries; callers that want to retry (bootstrap)
  do it themselves with their own capped backoff.
- Private swarms. py-libp2p's pnet speaks Salsa20 with an 8-byte nonce, not the spec's
  XSalsa20 with 24: ``threatmesh.transports.pnet.install()`` swaps in the spec version.
  QUIC brings its own TLS and py-libp2p wraps it with the PSK before it checks for QUIC
  (``swarm.py`` around the ``new_protected_conn`` call), so QUIC + PSK cannot work; like
  go-libp2p we refuse that combination at start-up.
- Resource limits. The default resource manager allows 1000 connections and 512 MiB; we size
  it from the node's config (``HostSettings``), so that ``max_connections`` peers are admitted
  and the next is refused.
- The swarm's auto-connector dials any peer in the peerstore until it holds half of
  ``max_connections``; discovery decides whom to connect to, so it is replaced by a no-op.
- Stopping ``host.run`` does not close the listening sockets (see ``running``).
- A failed dial blocks the peer for 60 s (negative cache); ``connect`` clears it first.
- A refused connection looks like a success: a listener that denies a connection (limits)
  closes it after the upgrade, and ``host.connect()`` returns normally. ``connect`` here checks
  that a live connection exists afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import trio
from libp2p import new_host
from libp2p.abc import IHost, IMuxedConn, ISecureTransport
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import MultiError
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.rcmgr import ResourceManager
from libp2p.rcmgr.connection_limits import ConnectionLimits
from libp2p.rcmgr.manager import ResourceLimits
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.tls.transport import PROTOCOL_ID as TLS_PROTOCOL_ID
from libp2p.security.tls.transport import TLSTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.quic.transport import QUICTransport
from libp2p.transport.tcp.tcp import TCP
from libp2p.transport.websocket.transport import WebsocketTransport
from multiaddr import Multiaddr

from threatmesh.identity import Identity
from threatmesh.transports import pnet
from threatmesh.transports.addrs import TransportKind, transport_kind
from threatmesh.transports.errors import PnetError, TransportError

# The security protocols we offer, in preference order. Plaintext and secio are never here.
SECURITY_NOISE = "noise"
SECURITY_TLS = "tls"


@dataclass(frozen=True)
class HostSettings:
    """Everything ``build_host`` needs besides the identity. Bounds are part of the contract."""

    listen_addrs: tuple[Multiaddr, ...]
    psk: bytes | None = None
    security: tuple[str, ...] = (SECURITY_NOISE,)
    max_connections: int = 256
    max_connections_per_ip: int = 64
    max_pending_inbound: int = 64
    max_streams: int = 8192
    max_memory_mb: int = 256
    dial_timeout_s: float = 10.0
    upgrade_timeout_s: float = 10.0


def _security_options(
    identity: Identity, security: Sequence[str]
) -> dict[TProtocol, ISecureTransport]:
    options: dict[TProtocol, ISecureTransport] = {}
    for name in security:
        if name == SECURITY_NOISE:
            options[TProtocol(NOISE_PROTOCOL_ID)] = NoiseTransport(
                identity.key_pair, noise_privkey=create_new_x25519_key_pair().private_key
            )
        elif name == SECURITY_TLS:
            options[TProtocol(TLS_PROTOCOL_ID)] = TLSTransport(identity.key_pair)
        else:
            raise TransportError(f"unknown security protocol {name!r}; expected noise or tls")
    if not options:
        raise TransportError("at least one security protocol (noise or tls) is required")
    return options


def _muxer_options() -> dict[TProtocol, type[IMuxedConn]]:
    return {TProtocol(YAMUX_PROTOCOL_ID): Yamux, TProtocol(MPLEX_PROTOCOL_ID): Mplex}


def _resource_manager(settings: HostSettings) -> ResourceManager:
    return ResourceManager(
        limits=ResourceLimits(
            # +1: measured on 0.8.1, ResourceLimits(max_connections=N) admits N-1 peers (the
            # listener's own accounting holds one slot); the operator's number is the number
            # of peers. tests/test_transports.py pins it.
            max_connections=settings.max_connections + 1,
            max_memory_mb=settings.max_memory_mb,
            max_streams=settings.max_streams,
        ),
        connection_limits=ConnectionLimits(
            max_pending_inbound=settings.max_pending_inbound,
            max_established_total=settings.max_connections,
            max_established_per_peer=2,
        ),
    )


def check_settings(settings: HostSettings) -> None:
    """Refuse combinations that cannot work, before anything listens."""
    kinds = [transport_kind(addr) for addr in settings.listen_addrs]
    if settings.psk is not None and TransportKind.QUIC in kinds:
        raise TransportError(
            "QUIC cannot be used in a private swarm (--psk): QUIC has its own TLS and libp2p "
            "private networks only cover TCP and WebSocket; listen on /tcp or /ws instead"
        )
    if settings.psk is not None and len(settings.psk) != 32:
        raise TransportError("a private-swarm key must be 32 bytes")


def build_host(identity: Identity, settings: HostSettings) -> IHost:
    """A libp2p host with our transports, security, muxers, limits and (optional) PSK.

    The host is not listening yet: run it with ``host.run(settings.listen_addrs)``.
    """
    check_settings(settings)
    if settings.psk is not None:
        pnet.install()
    host = new_host(
        key_pair=identity.key_pair,
        sec_opt=_security_options(identity, settings.security),
        muxer_opt=_muxer_options(),
        listen_addrs=list(settings.listen_addrs),
        psk=settings.psk.hex() if settings.psk is not None else None,
        resource_manager=_resource_manager(settings),
        connection_config=ConnectionConfig(
            max_connections=settings.max_connections,
            # py-libp2p's swarm also runs an auto-connector and a pruner from these marks
            # (defaults: keep 50..300). Finding and pruning peers is the discovery service's
            # job, so the swarm's own keeps only the hard cap.
            min_connections=0,
            low_watermark=0,
            high_watermark=settings.max_connections,
            max_connections_per_peer=1,
            dial_timeout=settings.dial_timeout_s,
            inbound_upgrade_timeout=settings.upgrade_timeout_s,
            outbound_upgrade_timeout=settings.upgrade_timeout_s,
        ),
    )
    network = _swarm(host)
    network.retry_config = RetryConfig(max_retries=0)
    network.auto_connector = _NoAutoConnector()  # type: ignore[assignment]
    _add_dial_transports(host, identity, settings)
    return host


def _swarm(host: IHost) -> Swarm:
    """The host's network as the concrete Swarm (``new_host`` always builds one)."""
    return cast(Swarm, host.get_network())


def _add_dial_transports(host: IHost, identity: Identity, settings: HostSettings) -> None:
    """Let the host dial every transport we run, not only those it listens on.

    ``new_swarm`` builds its transports from the listen addresses alone, so a node listening
    on TCP only could not dial a peer that gave a QUIC address. QUIC is left out of a private
    swarm (see the module docstring).
    """
    network = _swarm(host)
    manager = network.transport_manager
    present = {type(transport).__name__ for transport in manager.get_transports()}
    if "TCP" not in present:
        manager.add_transport(TCP())
    if "WebsocketTransport" not in present:
        manager.add_transport(WebsocketTransport(network.upgrader))
    if "QUICTransport" not in present and settings.psk is None:
        manager.add_transport(QUICTransport(identity.key_pair.private_key))


class _NoAutoConnector:
    """Stands in for py-libp2p's ``network/auto_connector.py`` ``AutoConnector``.

    Upstream dials peerstore peers until the connection count reaches the midpoint of the
    low and high watermarks (128 of 256 here), every 30 s, whatever swarm they belong to.
    Which peers to keep connected is the discovery service's decision, so the swarm's own
    dialler does nothing. The swarm calls exactly these methods.
    """

    _is_connecting = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def run_background_task(self, nursery: trio.Nursery) -> None:
        return None

    async def maybe_connect(self) -> None:
        return None

    def record_disconnect(self, peer_id: object) -> None:
        return None


# A clean close sends Noise/Yamux goodbyes on every connection; bound it so a stuck peer
# cannot hold up shutdown (`threatmesh run` must stop within 5 s).
HOST_CLOSE_TIMEOUT_S = 2.0


@asynccontextmanager
async def running(host: IHost, listen_addrs: Sequence[Multiaddr]) -> AsyncIterator[None]:
    """Listen on ``listen_addrs`` for the duration of the block; close everything after.

    ``BasicHost.run`` stops the swarm by cancelling it, and the swarm's cleanup
    (``network/swarm.py``, the ``finally`` of ``Swarm.run``) awaits inside that cancelled scope,
    so its first ``await`` raises Cancelled and the listening sockets stay open: the ports are
    not freed until the process exits. We close the host ourselves, shielded and bounded.
    """
    async with host.run(listen_addrs):
        try:
            yield
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(HOST_CLOSE_TIMEOUT_S):
                await host.close()


def _live(connections: Sequence[object]) -> bool:
    return any(not getattr(connection, "is_closed", False) for connection in connections)


def is_connected(host: IHost, peer_info: PeerInfo) -> bool:
    return _live(host.get_network().connections.get(peer_info.peer_id) or [])


def connected_peers(host: IHost) -> list[ID]:
    """Peers with at least one open connection (the swarm's table keeps closing ones)."""
    return [peer for peer, conns in list(host.get_network().connections.items()) if _live(conns)]


def _reason(error: BaseException) -> str:
    """The most telling message in ``error``'s chain: a pnet refusal if there is one.

    py-libp2p wraps a refused pnet handshake in SecurityUpgradeFailure, then SwarmException,
    then "no addresses established a successful connection"; the operator needs the first.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, PnetError):
            return str(current)
        pending.extend(
            link for link in (current.__cause__, current.__context__) if link is not None
        )
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if isinstance(current, MultiError):  # one error per address tried
            pending.extend(current.errors)
    return str(error) or type(error).__name__


async def connect(host: IHost, peer_info: PeerInfo, timeout_s: float = 10.0) -> None:
    """Connect to ``peer_info`` or raise TransportError; never report a refused conn as up.

    Every call really dials. py-libp2p keeps a peer whose dial failed in a 60 s negative
    cache (``network/swarm.py``, ``_NegativePeerCache``) and fails every dial to it within
    that time at once; our callers (bootstrap, discovery) have their own capped backoff, and
    with the cache nodes started together could give up on each other for good.
    """
    _swarm(host).unblock_peer(peer_info.peer_id)
    try:
        with trio.fail_after(timeout_s):
            await host.connect(peer_info)
    except trio.TooSlowError:
        raise TransportError(f"{peer_info.peer_id}: no connection within {timeout_s:g} s") from None
    except Exception as error:  # py-libp2p raises SwarmException, OpenConnectionError, ...
        raise TransportError(f"{peer_info.peer_id}: {_reason(error)}") from None
    if not is_connected(host, peer_info):
        raise TransportError(f"{peer_info.peer_id}: the peer closed the connection (refused)")
