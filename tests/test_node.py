"""Node lifecycle, the local API and bootstrap, with in-process nodes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
import structlog
import trio
from kit import Swarm, wait_until

from threatmesh.node.config import NodeConfig
from threatmesh.node.home import Home
from threatmesh.node.node import Node


async def _get(url: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url, headers=headers)


async def _get_in_thread(url: str, token: str | None) -> httpx.Response:
    # httpx's async client runs on asyncio/anyio; the node runs on trio in this thread, so
    # the request goes from a worker thread with the sync client.
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return await trio.to_thread.run_sync(lambda: httpx.get(url, headers=headers, timeout=5))


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_node_context_manager_starts_and_stops_cleanly(tmp_path: Path) -> None:
    home = Home(tmp_path / "a")
    home.init()
    config = NodeConfig(listen=("/ip4/127.0.0.1/tcp/0",))
    async with Node(config, home) as node:
        assert node.api_url is not None
        assert home.api_addr() == node.api_url
        [addr] = node.addrs
        assert addr.startswith("/ip4/127.0.0.1/tcp/")
        assert addr.endswith(f"/p2p/{node.peer_id.to_base58()}")
        p2p_port = int(addr.split("/")[4])
        api_port = int(node.api_url.rsplit(":", 1)[1])
        assert not _port_is_free(p2p_port)
    assert home.api_addr() is None
    assert _port_is_free(p2p_port)
    assert _port_is_free(api_port)


async def test_status_api_needs_the_token(swarm: Swarm) -> None:
    node = await swarm.start("a")
    url = f"{node.api_url}/v1/status"
    assert (await _get_in_thread(url, None)).status_code == 401
    assert (await _get_in_thread(url, "wrong")).status_code == 401
    response = await _get_in_thread(url, node.home.api_token())
    assert response.status_code == 200
    body = response.json()
    assert {"peer_id", "addrs", "peers", "uptime_s", "swarm"} <= set(body)
    assert body["stream"]["dropped_local"] == 0
    assert body["peer_id"] == node.peer_id.to_base58()
    assert body["addrs"] == node.addrs
    assert body["swarm"] == "public"
    assert body["peers"] == []
    assert body["uptime_s"] >= 0


async def test_bootstrap_connects_and_status_lists_peers(swarm: Swarm) -> None:
    a = await swarm.start("a")
    b = await swarm.start("b", bootstrap=(swarm.addr("a"),))
    c = await swarm.start("c", bootstrap=(swarm.addr("a"),))
    await wait_until(lambda: len(a.peers()) == 2)
    assert sorted(a.status()["peers"]) == sorted([b.peer_id.to_base58(), c.peer_id.to_base58()])
    assert b.status()["peers"] == [a.peer_id.to_base58()]


async def test_unreachable_bootstrap_gives_up_after_capped_attempts(swarm: Swarm) -> None:
    with socket.socket() as probe:  # a port nobody listens on: dials are refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    peer = "16Uiu2HAmC7ntFGrBGYn5Mz5Pp5RXfg9kCrx6MYRiZVAgHSBYT6jf"
    with structlog.testing.capture_logs() as logs:
        node = await swarm.start(
            "a",
            bootstrap=(f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}",),
            bootstrap_max_attempts=3,
            bootstrap_backoff_cap_s=0.1,
        )
        await wait_until(lambda: any("giving up" in entry["event"] for entry in logs))
    [gave_up] = [entry for entry in logs if entry["event"] == "peer unreachable; giving up"]
    assert gave_up["attempts"] == 3
    assert gave_up["peer_id"] == peer
    assert gave_up["error"]
    assert node.status()["peers"] == []  # and the node still answers


async def test_swarm_name_is_reported(swarm: Swarm) -> None:
    node = await swarm.start("a", swarm="acme")
    assert node.status()["swarm"] == "acme"


@pytest.mark.parametrize("count", [5])
async def test_named_nodes_in_one_process(swarm: Swarm, count: int) -> None:
    names = [f"n{index}" for index in range(count)]
    await swarm.start(names[0])
    for name in names[1:]:
        await swarm.start(name, bootstrap=(swarm.addr(names[0]),))
    await wait_until(lambda: len(swarm[names[0]].peers()) == count - 1)
    assert len({swarm[name].peer_id for name in names}) == count


async def test_membership_events_through_the_api(swarm: Swarm) -> None:
    a = await swarm.start("a")
    events: list[dict[str, object]] = []

    def read_events() -> None:
        with httpx.stream(
            "GET",
            f"{a.api_url}/v1/events",
            headers={"Authorization": f"Bearer {a.home.api_token()}"},
            timeout=httpx.Timeout(5, read=20),
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                events.append(json.loads(line))
                if events[-1]["event"] == "joined":
                    return

    internal_subscribers = len(a.discovery.hub._subscribers)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, read_events)
        await wait_until(lambda: len(a.discovery.hub._subscribers) > internal_subscribers)
        b = await swarm.start("b", bootstrap=(swarm.addr("a"),))
    assert events[-1] == {"event": "joined", "peer_id": b.peer_id.to_base58(), "addrs": []}
