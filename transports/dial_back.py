"""Dial-back: does a peer really listen where it says it does?

A peer's announced addresses prove nothing by themselves, and neither does a connection we
already have with it: py-libp2p's ``host.connect`` reuses an existing connection (so "it
connected" would be true of a peer that listens nowhere), and a connection the peer opened to
us says nothing about its listening address. ``dial_back`` therefore opens a *new* raw
connection to one announced address with the host's own transport, runs the security
handshake (Noise or TLS, through the swarm's upgrader, with the swarm key when there is one)
expecting the announced peer ID, and closes it. The remote side sees a connection that ends
after the handshake; py-libp2p logs that as an ERROR "fail to upgrade mux" (``network/
swarm.py:2185``), which ``node/logs.py`` filters as noise.

Rules:
- Only direct transports are tried: TCP and WebSocket. A ``/p2p-circuit`` address is reachable
  through a relay, not reachable: it never counts. QUIC is skipped (its transport returns an
  already muxed connection that the swarm would keep); a node listens on TCP by default.
- Addresses that are not on loopback are tried first, then loopback ones (a peer on this
  machine); at most ``MAX_ADDRS_TRIED`` of them, all within one ``timeout_s``.
- Success: the handshake completed and the remote peer ID is the expected one. Anything else
  (refused, timed out, another peer ID, a bad address) is a failure, never an exception.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any, cast

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from threatmesh.transports import pnet

MAX_ADDRS_TRIED = 3
DIRECT_TRANSPORTS = ("tcp",)  # WebSocket is /tcp/.../ws: still "tcp" in the address


def dial_back_addrs(addrs: Iterable[str]) -> list[Multiaddr]:
    """The announced ``addrs`` worth dialling back, best first (module rules)."""
    public: list[Multiaddr] = []
    loopback: list[Multiaddr] = []
    for text in addrs:
        if "/p2p-circuit" in text or "/quic" in text:
            continue
        try:
            addr = Multiaddr(text.split("/p2p/", 1)[0])
        except Exception:  # multiaddr raises several types for text it cannot parse
            continue
        parts = str(addr).split("/")
        if len(parts) < 5 or parts[1] not in ("ip4", "ip6", "dns", "dns4", "dns6"):
            continue
        if parts[3] not in DIRECT_TRANSPORTS:
            continue
        if parts[1] in ("ip4", "ip6"):
            try:
                ip = ipaddress.ip_address(parts[2])
            except ValueError:
                continue
            if ip.is_unspecified:
                continue
            (loopback if ip.is_loopback else public).append(addr)
        else:
            public.append(addr)
    return (public + loopback)[:MAX_ADDRS_TRIED]


async def dial_back(host: IHost, peer_id: ID, addrs: Sequence[str], *, timeout_s: float) -> bool:
    """True if a new connection to one of ``addrs`` reaches ``peer_id`` (module rules)."""
    candidates = dial_back_addrs(addrs)
    if not candidates:
        return False
    with trio.move_on_after(timeout_s):
        for addr in candidates:
            if await _handshake(host, peer_id, addr):
                return True
    return False


async def _handshake(host: IHost, peer_id: ID, addr: Multiaddr) -> bool:
    # The swarm's transport manager and upgrader are not in py-libp2p's INetwork interface.
    network = cast(Any, host.get_network())
    transport = network.transport_manager.transport_for_dialing(addr)
    if transport is None:
        return False
    raw: Any = None
    secured: Any = None
    try:
        raw = await transport.dial(addr)
        if network.psk is not None:  # as the swarm does on its own dials (swarm.py:1139)
            raw = pnet.protect(raw, network.psk)
        secured = await network.upgrader.upgrade_security(raw, True, peer_id)
        return bool(secured.get_remote_peer() == peer_id)
    except Exception:  # refused, reset, wrong peer (SecurityUpgradeFailure), bad address, ...
        return False
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                if secured is not None:
                    await secured.close()
                elif raw is not None:
                    await raw.close()
            except Exception:  # closing a broken connection may raise anything
                pass
