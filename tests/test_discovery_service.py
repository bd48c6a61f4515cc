"""The Discovery service with in-process nodes on 127.0.0.1: a swarm formed from one seed,
surviving the seed, rejoining from the peer cache, membership events, pruning, bootstrap."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import structlog
import trio
from test_discovery_kit import fast_settings, local_swarm, wait_until

from threatmesh.discovery import EventsDropped, PeerJoined, PeerLeft
from threatmesh.discovery.events import MembershipEvent

SWARM_SIZE = 12
KNOWN_PEERS = 8  # each node must know at least this many swarm peers ...
MIN_CONNECTIONS = 4  # ... and hold at least this many connections
FORM_TIMEOUT_S = 20.0


def _dead_port() -> int:
    with socket.socket() as probe:  # nobody listens here afterwards: dials are refused at once
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _next_event(
    events: trio.MemoryReceiveChannel[MembershipEvent], kind: type, peer_id: str
) -> MembershipEvent:
    with trio.fail_after(10):
        async for event in events:
            if isinstance(event, kind) and getattr(event, "peer_id", None) == peer_id:
                return event
    raise AssertionError("event channel closed")


async def test_a_swarm_forms_from_one_seed_survives_it_and_rejoins_from_the_cache(
    tmp_path: Path,
) -> None:
    async with local_swarm(tmp_path) as swarm:
        seed = await swarm.start("seed")
        told_seed = fast_settings(bootstrap=(seed.addr,))
        names = [f"n{i:02}" for i in range(SWARM_SIZE - 1)]
        started = trio.current_time()
        for name in names:
            await swarm.start(name, settings=told_seed)

        def formed() -> bool:
            return all(
                peer.discovery is not None
                and len(peer.discovery.known_peers()) >= KNOWN_PEERS
                and len(peer.connected_peers()) >= MIN_CONNECTIONS
                for peer in swarm.running()
            )

        await wait_until(formed, timeout_s=FORM_TIMEOUT_S)
        formed_after_s = trio.current_time() - started

        # The seed goes away; lookups still work between any two of the others.
        await swarm.stop("seed")
        first, last = swarm[names[0]], swarm[names[-1]]
        with trio.fail_after(20):
            assert await first.dht.lookup_peer(last.peer_id) is not None
            assert await last.dht.lookup_peer(first.peer_id) is not None

        # A node restarts without any bootstrap address: its peer cache brings it back.
        restarted = swarm[names[3]]
        await swarm.stop(names[3])
        cache = json.loads((restarted.home / "peers.json").read_text())
        assert len(cache["peers"]) >= MIN_CONNECTIONS
        again = await swarm.start(
            names[3], identity=restarted.identity, settings=fast_settings(bootstrap=())
        )
        assert again.discovery is not None
        await wait_until(
            lambda: (
                len(again.connected_peers()) >= 1
                and len(again.discovery.known_peers()) >= KNOWN_PEERS // 2
            ),  # type: ignore[union-attr]
            timeout_s=15,
        )
        with trio.fail_after(20):
            assert await again.dht.lookup_peer(first.peer_id) is not None
        print(f"{SWARM_SIZE} nodes formed in {formed_after_s:.2f} s")


async def test_membership_events_report_joins_and_leaves(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        a = await swarm.start("a")
        assert a.discovery is not None
        events = a.discovery.events()
        b = await swarm.start("b", settings=fast_settings(bootstrap=(a.addr,)))
        joined = await _next_event(events, PeerJoined, b.peer_id.to_base58())
        assert isinstance(joined, PeerJoined)
        await swarm.stop("b")
        await _next_event(events, PeerLeft, b.peer_id.to_base58())
        await events.aclose()


async def test_a_slow_subscriber_loses_events_counted_and_never_blocks_the_node(
    tmp_path: Path,
) -> None:
    async with local_swarm(tmp_path) as swarm:
        a = await swarm.start("a")
        assert a.discovery is not None
        stuck = a.discovery.events(buffer=1)  # never read until the end
        watcher = a.discovery.events(buffer=64)
        others = [
            await swarm.start(f"p{i}", settings=fast_settings(bootstrap=(a.addr,)))
            for i in range(3)
        ]
        for other in others:  # the node kept going: every join reached the watcher
            await _next_event(watcher, PeerJoined, other.peer_id.to_base58())
        assert a.discovery.hub.dropped >= 2
        first = stuck.receive_nowait()
        assert isinstance(first, PeerJoined)
        for other in others:  # one more event makes room for the notice first
            await swarm.stop(other.name)
        with trio.fail_after(10):
            notice = await stuck.receive()
        assert isinstance(notice, EventsDropped)
        assert notice.count >= 2


async def test_connection_manager_prunes_to_the_low_watermark_but_not_protected_peers(
    tmp_path: Path,
) -> None:
    async with local_swarm(tmp_path) as swarm:
        hub = await swarm.start(
            "hub", settings=fast_settings(low_watermark=2, high_watermark=3, grace_period_s=0.0)
        )
        assert hub.discovery is not None
        manager = hub.discovery.connection_manager
        spokes = [await swarm.start(f"s{i}", dht_only=True) for i in range(5)]
        hub.discovery.protect(spokes[0].peer_id)
        with trio.fail_after(10):
            async with trio.open_nursery() as dialling:  # all at once: over the high mark
                for spoke in spokes:
                    dialling.start_soon(swarm.connect, spoke.name, "hub")
        await wait_until(lambda: manager.pruned >= 2, timeout_s=10)  # 4 or 5 seen: down to 2
        assert spokes[0].peer_id in hub.connected_peers()
        assert len(hub.connected_peers()) <= manager.watermarks.high


async def test_bootstrap_survives_bad_and_unreachable_addresses(tmp_path: Path) -> None:
    dead_peer = "16Uiu2HAmC7ntFGrBGYn5Mz5Pp5RXfg9kCrx6MYRiZVAgHSBYT6jf"
    async with local_swarm(tmp_path) as swarm:
        seed = await swarm.start("seed")
        with structlog.testing.capture_logs() as logs:
            node = await swarm.start(
                "node",
                settings=fast_settings(
                    bootstrap=(
                        "not a multiaddr",
                        f"/ip4/127.0.0.1/tcp/{_dead_port()}/p2p/{dead_peer}",
                        seed.addr,
                    ),
                    bootstrap_max_attempts=3,
                ),
            )
            await wait_until(lambda: seed.peer_id in node.connected_peers(), timeout_s=10)
            await wait_until(lambda: any("giving up" in e["event"] for e in logs), timeout_s=10)
        ignored = [e for e in logs if e["event"] == "bootstrap address ignored"]
        assert [e["address"] for e in ignored] == ["not a multiaddr"]
        about_dead = [
            e for e in logs if e.get("peer_id") == dead_peer and e["log_level"] != "debug"
        ]
        assert [e["event"] for e in about_dead] == [
            "peer not reachable; retrying with backoff",
            "peer unreachable; giving up",
        ]
        assert not node.stopped.is_set()


async def test_peer_cache_is_written_while_running_and_at_shutdown(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        a = await swarm.start("a")
        b = await swarm.start("b", settings=fast_settings(bootstrap=(a.addr,)))
        cache_of_a = a.home / "peers.json"

        def a_cached_b() -> bool:
            try:
                peers = json.loads(cache_of_a.read_text())["peers"]
            except (FileNotFoundError, ValueError):
                return False
            return [p["peer_id"] for p in peers] == [b.peer_id.to_base58()]

        await wait_until(a_cached_b, timeout_s=10)
        await swarm.stop("b")
        [entry] = json.loads((b.home / "peers.json").read_text())["peers"]
        assert entry["peer_id"] == a.peer_id.to_base58()
        assert entry["addrs"] == [str(addr) for addr in a.host.get_transport_addrs()]


async def test_a_corrupt_peer_cache_is_ignored_with_one_warning(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        seed = await swarm.start("seed")
        (tmp_path / "node").mkdir()
        (tmp_path / "node" / "peers.json").write_text('{"version": 1, "peers": [tru')
        with structlog.testing.capture_logs() as logs:
            node = await swarm.start("node", settings=fast_settings(bootstrap=(seed.addr,)))
            await wait_until(lambda: seed.peer_id in node.connected_peers(), timeout_s=10)
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert [e["event"] for e in warnings] == ["peer cache is corrupt; ignoring it"]


async def test_peers_of_another_swarm_are_not_cached_or_counted(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        a = await swarm.start("a")
        other = await swarm.start("other", swarm="s2", settings=fast_settings(bootstrap=(a.addr,)))
        await wait_until(lambda: other.peer_id in a.connected_peers(), timeout_s=10)
        assert a.discovery is not None
        await wait_until(lambda: a.dht.stats.not_in_swarm >= 1, timeout_s=10)
        assert a.discovery.record_connected_peers() == 0
        assert a.discovery.known_peers() == set()


async def test_status_reports_the_dht_and_counts(tmp_path: Path) -> None:
    async with local_swarm(tmp_path) as swarm:
        a = await swarm.start("a")
        assert a.discovery is not None
        status = a.discovery.status()
        assert status["dht_protocol"] == "/threatmesh/s1/kad/1.0.0"
        assert status["dht_mode"] == "server"
        assert status["connected"] == 0
