"""The mDNS LAN beacon on loopback (zeroconf bound to 127.0.0.1), in one process: nodes of a
swarm find and connect to each other with no bootstrap; other swarms and other keys do not.

Swarm names are random per test so that concurrent test runs on this machine, which share
the loopback multicast group, never see each other.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import structlog
from test_discovery_kit import LocalPeer, fast_settings, local_swarm, wait_until

from threatmesh.discovery.mdns import MdnsBeacon, mdns_fingerprint
from threatmesh.transports.swarm_key import generate_swarm_key

LAN = fast_settings(mdns=True, mdns_interfaces=("127.0.0.1",))
FIND_TIMEOUT_S = 20.0  # zeroconf probes ~1.5 s before announcing, then resolves in its thread


def _swarm_name() -> str:
    return f"lan-{secrets.token_hex(4)}"


def _beacon(peer: LocalPeer) -> MdnsBeacon:
    assert peer.discovery is not None
    assert peer.discovery.beacon is not None
    return peer.discovery.beacon


async def test_two_nodes_on_a_lan_find_each_other_and_other_swarms_do_not(
    tmp_path: Path,
) -> None:
    ours, theirs = _swarm_name(), _swarm_name()
    async with local_swarm(tmp_path) as swarm:
        a = await swarm.start("a", swarm=ours, settings=LAN)
        b = await swarm.start("b", swarm=ours, settings=LAN)
        stranger = await swarm.start("stranger", swarm=theirs, settings=LAN)
        assert _beacon(a).service_type == f"_p2p-{mdns_fingerprint(ours, None)}._udp.local."
        assert ours not in _beacon(a).service_type
        await wait_until(lambda: b.peer_id in a.connected_peers(), timeout_s=FIND_TIMEOUT_S)
        await wait_until(lambda: a.peer_id in b.dht.routing_table_peers(), timeout_s=10)
        # The stranger advertised all along on the same interface; nobody found it.
        assert stranger.peer_id not in a.connected_peers() | b.connected_peers()
        assert _beacon(stranger).found == 0
        # Whichever beacon heard the other first dialled; the other may still be resolving.
        assert _beacon(a).found + _beacon(b).found >= 1
        assert _beacon(a).dropped == _beacon(b).dropped == 0


async def test_private_swarms_find_only_holders_of_the_same_key(tmp_path: Path) -> None:
    name = _swarm_name()  # the same name, different keys: the key decides
    key, other_key = generate_swarm_key(), generate_swarm_key()
    async with local_swarm(tmp_path) as swarm:
        a = await swarm.start("a", swarm=name, settings=LAN, psk=key)
        b = await swarm.start("b", swarm=name, settings=LAN, psk=key)
        outsider = await swarm.start("outsider", swarm=name, settings=LAN, psk=other_key)
        service = _beacon(a).service_type
        assert key.hex()[:11] not in service
        assert mdns_fingerprint(name, key) in service
        await wait_until(lambda: b.peer_id in a.connected_peers(), timeout_s=FIND_TIMEOUT_S)
        assert _beacon(outsider).found == 0
        assert outsider.peer_id not in a.connected_peers()


async def test_the_zeroconf_callback_reaches_trio_from_its_own_thread(tmp_path: Path) -> None:
    """The tap hands peers to trio: the trio side runs in the trio thread, never zeroconf's."""
    name = _swarm_name()
    delivered_in: list[str] = []

    def watch(peer: LocalPeer) -> None:
        beacon = _beacon(peer)
        original = beacon._deliver

        def deliver(info: object) -> None:
            delivered_in.append(threading.current_thread().name)
            original(info)  # type: ignore[arg-type]

        beacon._deliver = deliver  # type: ignore[method-assign]

    async with local_swarm(tmp_path) as swarm:
        a = await swarm.start("a", swarm=name, settings=LAN, before_run=watch)
        b = await swarm.start("b", swarm=name, settings=LAN)
        await wait_until(lambda: b.peer_id in a.connected_peers(), timeout_s=FIND_TIMEOUT_S)
    assert delivered_in
    assert set(delivered_in) == {threading.main_thread().name}


async def test_mdns_can_be_switched_off(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        a = await swarm.start("a", settings=fast_settings(mdns=False))
        assert a.discovery is not None
        assert a.discovery.beacon is None
        assert a.discovery.status()["mdns_found"] == 0


async def test_a_beacon_that_cannot_start_leaves_the_node_running(tmp_path: Path) -> None:
    # 10.213.255.254 is on no interface here (the netns test uses 10.213.0.0/30 inside its
    # own namespaces), so zeroconf cannot bind to it.
    broken = fast_settings(mdns=True, mdns_interfaces=("10.213.255.254",))
    name = _swarm_name()
    async with local_swarm(tmp_path) as swarm:
        with structlog.testing.capture_logs() as logs:
            a = await swarm.start("a", swarm=name, settings=broken)
            await wait_until(
                lambda: any(e["event"].startswith("mDNS beacon stopped") for e in logs), 10
            )
        b = await swarm.start("b", swarm=name, settings=fast_settings(bootstrap=(a.addr,)))
        await wait_until(lambda: b.peer_id in a.dht.routing_table_peers(), timeout_s=10)
        assert not a.stopped.is_set()
