"""Connect latency: our host against py-libp2p 0.8.1's stock connection settings, one run.

Each round starts a fresh dialer and connects it to a listener on 127.0.0.1 over TCP; the
stock host uses ``max_connections_per_peer=3`` (py-libp2p's default), which makes every dial
wait the 250 ms happy-eyeballs delay. Also times how long a peer with the wrong swarm key
takes to be refused. Prints medians and the ratio. Bounded: ROUNDS rounds, each under a
timeout. Run: ``python bench/connect_latency.py [ROUNDS]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
import time

import trio
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import PeerInfo

from threatmesh.identity import generate_identity
from threatmesh.node.logs import configure_logging
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.errors import TransportError
from threatmesh.transports.libp2p_host import HostSettings, build_host, connect, running

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
LISTEN = (parse_listen_addr("/ip4/127.0.0.1/tcp/0"),)


async def _time_connects(
    settings: HostSettings, stock: bool, psk_dialer: bytes | None
) -> list[float]:
    listener_identity = generate_identity()
    listener = build_host(listener_identity, settings)
    timings: list[float] = []
    async with running(listener, settings.listen_addrs):
        target = PeerInfo(listener_identity.peer_id, listener.get_transport_addrs())
        for _ in range(ROUNDS):
            dialer_settings = dataclasses.replace(settings, listen_addrs=(), psk=psk_dialer)
            dialer = build_host(generate_identity(), dialer_settings)
            if stock:  # py-libp2p's default: 3 connections per peer, so the 250 ms wait
                network = dialer.get_network()
                network.connection_config = ConnectionConfig(
                    max_connections_per_peer=3,
                    min_connections=0,
                    low_watermark=0,
                    high_watermark=network.connection_config.max_connections,
                    max_connections=network.connection_config.max_connections,
                )
            async with running(dialer, []):
                started = time.perf_counter()
                with contextlib.suppress(TransportError):
                    await connect(dialer, target, timeout_s=10)
                timings.append(time.perf_counter() - started)
    return timings


async def main() -> None:
    configure_logging("error")
    ours = await _time_connects(HostSettings(listen_addrs=LISTEN), False, None)
    stock = await _time_connects(HostSettings(listen_addrs=LISTEN), True, None)
    key, other = b"\x01" * 32, b"\x02" * 32
    wrong_key = await _time_connects(HostSettings(listen_addrs=LISTEN, psk=key), False, other)
    for name, values in (("ours", ours), ("stock", stock), ("wrong-key refusal", wrong_key)):
        print(
            f"{name:18} median {statistics.median(values) * 1000:7.1f} ms"
            f"   max {max(values) * 1000:7.1f} ms   ({len(values)} rounds)"
        )
    print(f"stock / ours (median): {statistics.median(stock) / statistics.median(ours):.1f}x")


if __name__ == "__main__":
    trio.run(main)
