"""Parsing and classifying the multiaddrs an operator gives us.

Rules: a listen address names exactly one transport we run (TCP, QUIC v1, or WebSocket over
TCP) on an ip4/ip6 host; a dial (bootstrap) address must end in ``/p2p/<peer id>`` so that the
Noise handshake can check who answered. Errors name the address and what is expected.
"""

from __future__ import annotations

import enum

from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from threatmesh.transports.errors import ListenAddressError


class TransportKind(enum.StrEnum):
    TCP = "tcp"
    QUIC = "quic"
    WEBSOCKET = "ws"


def parse_multiaddr(text: str) -> Multiaddr:
    try:
        return Multiaddr(text)
    except Exception as error:  # multiaddr raises several ValueError subclasses and others
        raise ListenAddressError(f"{text!r} is not a valid multiaddr ({error})") from None


def transport_kind(addr: Multiaddr) -> TransportKind:
    """The one transport ``addr`` needs, or ListenAddressError if we do not run it."""
    names = [protocol.name for protocol in addr.protocols()]
    if not names or names[0] not in {"ip4", "ip6", "dns", "dns4", "dns6"}:
        raise ListenAddressError(f"{addr}: expected an /ip4, /ip6, /dns4 or /dns6 address")
    stack = [name for name in names[1:] if name != "p2p"]
    if stack == ["tcp"]:
        return TransportKind.TCP
    if stack == ["udp", "quic-v1"]:
        return TransportKind.QUIC
    if stack == ["tcp", "ws"]:
        return TransportKind.WEBSOCKET
    raise ListenAddressError(
        f"{addr}: unsupported transport; expected .../tcp/PORT, .../udp/PORT/quic-v1 "
        "or .../tcp/PORT/ws"
    )


def parse_listen_addr(text: str) -> Multiaddr:
    addr = parse_multiaddr(text)
    names = [protocol.name for protocol in addr.protocols()]
    if names[0] not in {"ip4", "ip6"}:
        raise ListenAddressError(f"{text}: a listen address must start with /ip4 or /ip6")
    if "p2p" in names:
        raise ListenAddressError(f"{text}: a listen address must not contain /p2p")
    transport_kind(addr)
    return addr


def parse_peer_addr(text: str) -> PeerInfo:
    """A dialable address with its peer ID: ``/ip4/1.2.3.4/tcp/4001/p2p/<peer id>``."""
    addr = parse_multiaddr(text)
    transport_kind(addr)
    peer_id_text = addr.get_peer_id()
    if peer_id_text is None:
        raise ListenAddressError(f"{text}: a peer address must end in /p2p/<peer id>")
    try:
        peer_id = ID.from_base58(peer_id_text)
    except Exception:
        raise ListenAddressError(f"{text}: {peer_id_text!r} is not a valid peer ID") from None
    return PeerInfo(peer_id, [addr.decapsulate(Multiaddr(f"/p2p/{peer_id_text}"))])


def with_peer_id(addr: Multiaddr, peer_id: ID) -> str:
    """The full multiaddr ``<addr>/p2p/<peer id>`` that others dial."""
    return f"{addr}/p2p/{peer_id.to_base58()}"
