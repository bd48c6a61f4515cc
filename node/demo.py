"""``threatmesh demo``: a small swarm on loopback, publishing at every TLP level, shown live.

It starts N in-process nodes on 127.0.0.1 (temporary homes), links them into a connected but
not complete mesh (each node bootstraps to the two before it), waits until the mesh has formed,
then has several nodes publish sample indicators at each level and prints every arrival at
every node as it happens. It ends by itself once every node has every indicator, or after
``timeout_s``, and prints a summary (``--json``: one JSON object).

The sample values are documentation addresses and names (RFC 5737, RFC 2606) and hashes of
short strings: nothing here is a real indicator, and no traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from threatmesh.node.config import NodeConfig
from threatmesh.node.home import Home
from threatmesh.node.node import Node
from threatmesh.pubsub.topics import TLP_LEVELS, tlp_topic

MESH_READY_TIMEOUT_S = 30.0


def sample_records(publisher: int, tlp_name: str, count: int) -> list[dict[str, Any]]:
    """``count`` distinct sample indicators for one publisher and level."""
    records: list[dict[str, Any]] = []
    for index in range(count):
        kind = index % 4
        token = f"{publisher}-{tlp_name}-{index}"
        if kind == 0:
            value = f"198.51.{publisher % 256}.{index % 256}"
        elif kind == 1:
            value = f"c2-{token}.example.com"
        elif kind == 2:
            value = hashlib.sha256(token.encode()).hexdigest()
        else:
            value = f"https://{token}.example.org/payload"
        records.append(
            {
                "value": value,
                "confidence": 60 + index % 40,
                "tags": ["demo", tlp_name],
                "provider": f"demo-node-{publisher}",
                "description": f"demo indicator {token}",
            }
        )
    return records


@dataclass
class DemoResult:
    nodes: int
    published: int
    expected_deliveries: int
    deliveries: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def percentile(fraction: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1)

        return {
            "nodes": self.nodes,
            "published": self.published,
            "expected_deliveries": self.expected_deliveries,
            "deliveries": self.deliveries,
            "complete": self.deliveries >= self.expected_deliveries,
            "latency_ms_p50": percentile(0.5),
            "latency_ms_p99": percentile(0.99),
            "seconds": round(self.seconds, 2),
        }


async def run_demo(
    *,
    nodes: int,
    publishers: int,
    per_level: int,
    timeout_s: float,
    on_arrival: Callable[[str, dict[str, Any]], None],
    base: Path | None = None,
) -> DemoResult:
    """Run the demo; ``on_arrival(node_name, record)`` is called for every delivery."""
    with tempfile.TemporaryDirectory(prefix="threatmesh-demo-") as temporary:
        root = base or Path(temporary)
        async with trio.open_nursery() as nursery:
            swarm = await _start_nodes(nursery, root, nodes)
            await _wait_for_mesh(swarm)
            publishing = [swarm[index % nodes] for index in range(publishers)]
            per_node = per_level * len(TLP_LEVELS)
            result = DemoResult(
                nodes=nodes,
                published=per_node * len(publishing),
                expected_deliveries=per_node * len(publishing) * nodes,
            )
            done = trio.Event()
            sent_at: dict[str, float] = {}
            for name, node in enumerate(swarm):
                nursery.start_soon(_watch, node, f"node-{name}", result, sent_at, on_arrival, done)
            started = time.monotonic()
            with trio.move_on_after(timeout_s):
                async with trio.open_nursery() as publish_nursery:
                    for number, node in enumerate(publishing):
                        publish_nursery.start_soon(_publish_all, node, number, per_level, sent_at)
                await done.wait()
            result.seconds = time.monotonic() - started
            nursery.cancel_scope.cancel()
    return result


async def _start_nodes(nursery: trio.Nursery, root: Path, count: int) -> list[Node]:
    started: list[Node] = []
    for index in range(count):
        home = Home(root / f"node-{index}")
        home.init()
        bootstrap = tuple(node.addrs[0] for node in started[-2:])
        config = NodeConfig(
            swarm="demo",
            listen=("/ip4/127.0.0.1/tcp/0",),
            bootstrap=bootstrap,
            bootstrap_backoff_cap_s=1.0,
            mdns=False,  # the demo stays on 127.0.0.1
        )
        node = Node(config, home)
        await nursery.start(node.run)
        started.append(node)
    return started


async def _wait_for_mesh(swarm: list[Node]) -> None:
    """Wait, bounded, until every node knows a subscribed peer on every TLP topic."""
    topics = [tlp_topic("demo", tlp) for tlp, _ in TLP_LEVELS]

    def ready() -> bool:
        return all(
            node.pubsub.peer_topics.get(topic) for node in swarm for topic in topics
        ) and all(node.pubsub.gossip.mesh.get(topic) for node in swarm for topic in topics)

    with trio.fail_after(MESH_READY_TIMEOUT_S):
        while not ready():  # noqa: ASYNC110 - py-libp2p has no event for mesh changes
            await trio.sleep(0.1)


async def _publish_all(node: Node, number: int, per_level: int, sent_at: dict[str, float]) -> None:
    for _, tlp_name in TLP_LEVELS:
        records = sample_records(number, tlp_name, per_level)
        now = time.monotonic()
        for record in records:
            sent_at[record["value"]] = now
        await node.publish(records, tlp=tlp_name)


async def _watch(
    node: Node,
    name: str,
    result: DemoResult,
    sent_at: dict[str, float],
    on_arrival: Callable[[str, dict[str, Any]], None],
    done: trio.Event,
) -> None:
    from threatmesh.node.records import received_record

    async for item in node.subscribe():
        record = received_record(item.indicator, item.origin)
        result.deliveries += 1
        if item.indicator.value in sent_at:
            result.latencies_ms.append((time.monotonic() - sent_at[item.indicator.value]) * 1000)
        on_arrival(name, record)
        if result.deliveries >= result.expected_deliveries:
            done.set()
