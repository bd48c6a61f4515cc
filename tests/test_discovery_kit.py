"""Test kit for discovery: named in-process libp2p hosts on 127.0.0.1, with a ``Discovery``
service or only a ``SwarmDht``, each stoppable on its own (to kill a seed mid-test).

Usage::

    async with local_swarm(tmp_path) as swarm:
        seed = await swarm.start("seed")
        a = await swarm.start("a", settings=fast_settings(bootstrap=(seed.addr,)))
        await swarm.stop("seed")

This module has no tests of its own; it lives beside them because only ``test_discovery_*``
files are ours to add (``tests/kit.py`` belongs to the node's tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from threatmesh.discovery.libp2p_kad import KadSettings, SwarmDht
from threatmesh.discovery.service import Discovery, DiscoverySettings
from threatmesh.identity import Identity, generate_identity
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.libp2p_host import HostSettings, build_host, connect, running

LOOPBACK_TCP = parse_listen_addr("/ip4/127.0.0.1/tcp/0")

# Short intervals so a swarm forms in seconds; the bounds a real node uses are the defaults.
FAST = DiscoverySettings(
    mdns=False,
    rendezvous_interval_s=5.0,
    rendezvous_max_interval_s=40.0,
    random_walk_interval_s=5.0,
    random_walk_max_interval_s=40.0,
    rejoin_interval_s=1.0,
    peer_cache_save_interval_s=0.5,
    membership_poll_s=1.0,
    connection_check_interval_s=0.5,
    dial_timeout_s=3.0,
    dial_backoff_first_s=0.2,
    dial_backoff_cap_s=2.0,
    bootstrap_backoff_cap_s=0.5,
    lookup_timeout_s=10.0,
)


def fast_settings(**overrides: Any) -> DiscoverySettings:
    return dataclasses.replace(FAST, **overrides)


@dataclass
class LocalPeer:
    name: str
    identity: Identity
    host: IHost
    dht: SwarmDht
    discovery: Discovery | None
    home: Path
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    @property
    def addr(self) -> str:
        """The full multiaddr others dial: ``/ip4/127.0.0.1/tcp/N/p2p/<id>``."""
        return f"{self.host.get_transport_addrs()[0]}/p2p/{self.peer_id.to_base58()}"

    @property
    def peer_info(self) -> PeerInfo:
        return PeerInfo(self.peer_id, self.host.get_transport_addrs())

    def connected_peers(self) -> set[ID]:
        return set(self.host.get_connected_peers())


class LocalSwarm:
    """Named in-process peers sharing one nursery."""

    def __init__(self, base: Path, nursery: trio.Nursery) -> None:
        self._base = base
        self._nursery = nursery
        self.peers: dict[str, LocalPeer] = {}

    def __getitem__(self, name: str) -> LocalPeer:
        return self.peers[name]

    def running(self) -> list[LocalPeer]:
        return [peer for peer in self.peers.values() if not peer.stopped.is_set()]

    async def start(
        self,
        name: str,
        *,
        swarm: str = "s1",
        settings: DiscoverySettings | None = None,
        dht_only: bool = False,
        kad_settings: KadSettings | None = None,
        psk: bytes | None = None,
        identity: Identity | None = None,
        before_run: Callable[[LocalPeer], None] | None = None,
    ) -> LocalPeer:
        """Start peer ``name``: a host, and a Discovery (or, with ``dht_only``, a SwarmDht)."""
        identity = identity if identity is not None else generate_identity()
        host_settings = HostSettings(listen_addrs=(LOOPBACK_TCP,), psk=psk)
        host = build_host(identity, host_settings)
        home = self._base / name
        home.mkdir(parents=True, exist_ok=True)
        discovery = None
        if dht_only:
            dht = SwarmDht(host, swarm=swarm, settings=kad_settings)
        else:
            discovery = Discovery(
                host,
                settings if settings is not None else FAST,
                swarm=swarm,
                psk=psk,
                peer_cache_path=home / "peers.json",
            )
            dht = discovery.dht
        peer = LocalPeer(name, identity, host, dht, discovery, home)
        if before_run is not None:
            before_run(peer)
        with trio.fail_after(10):
            await self._nursery.start(self._run, peer, host_settings)
        self.peers[name] = peer
        return peer

    async def _run(
        self,
        peer: LocalPeer,
        host_settings: HostSettings,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with peer.scope:
                async with (
                    running(peer.host, host_settings.listen_addrs),
                    trio.open_nursery() as services,
                ):
                    service = peer.discovery.run if peer.discovery else peer.dht.run
                    await services.start(service)
                    task_status.started()
        finally:
            peer.stopped.set()

    async def stop(self, name: str) -> None:
        """Stop peer ``name`` (host closed, cache saved) and wait, bounded, until it is.

        Like a process that exits, the peer's sockets are all closed at once: py-libp2p's
        ``Swarm.close`` closes connections one by one *before* its listeners, and with ten or
        more connections ``transports.libp2p_host.running``'s 2 s close bound expires first,
        leaving the listener accepting for a node that no longer runs.
        """
        peer = self.peers[name]
        network: Any = peer.host.get_network()
        with trio.fail_after(10):
            for listener in list(network.listeners.values()):
                await listener.close()
            async with trio.open_nursery() as closing:
                for conns in list(network.connections.values()):
                    for conn in list(conns):
                        closing.start_soon(conn.close)
            peer.scope.cancel()
            await peer.stopped.wait()

    async def connect(self, dialer: str, listener: str) -> None:
        await connect(self.peers[dialer].host, self.peers[listener].peer_info, timeout_s=5)


@asynccontextmanager
async def local_swarm(base: Path) -> AsyncIterator[LocalSwarm]:
    async with trio.open_nursery() as nursery:
        yield LocalSwarm(base, nursery)
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> None:
    """Wait, bounded, until ``predicate()``: for py-libp2p state that has no event (its
    connection table, routing table, peerstore)."""
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - py-libp2p's tables have no change event
            await trio.sleep(poll_s)
