"""``threatmesh demo``: a small swarm on loopback, publishing at every TLP level, shown live.

It starts N in-process nodes on 127.0.0.1 (temporary homes), links them into a connected but
not complete mesh (each node bootstraps to the two before it), waits until the mesh has formed,
then has several nodes publish sample indicators at each level and prints every arrival at
every node as it happens. It ends by itself once every node has every indicator it may see,
or after ``timeout_s``, and prints a summary (``--json``: one JSON object).

Trust: the first N-1 nodes are a community that trust each other at RED (written to their
trust files before they start). The last node is a newcomer nobody trusts: it is connected
like the others, yet sees CLEAR only — GREEN and above are withheld from it and AMBER/RED are
sealed. A delivery above CLEAR at the newcomer is counted as a leak and fails the demo.

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

from threatmesh.identity import TLP_CLEAR, TLP_RED, TrustStore
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
    newcomer: str = ""
    deliveries: int = 0
    leaks: int = 0  # deliveries above CLEAR at the newcomer: must stay 0
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
            "newcomer": self.newcomer,
            "leaks": self.leaks,
            "complete": self.deliveries >= self.expected_deliveries and self.leaks == 0,
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
            community, newcomer = swarm[:-1], swarm[-1]
            await _wait_for_mesh(community, newcomer)
            publishing = [community[index % len(community)] for index in range(publishers)]
            per_node = per_level * len(TLP_LEVELS)
            result = DemoResult(
                nodes=nodes,
                published=per_node * len(publishing),
                # Every community node gets everything; the newcomer gets CLEAR only.
                expected_deliveries=per_node * len(publishing) * len(community)
                + per_level * len(publishing),
                newcomer=f"node-{nodes - 1}",
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
    homes = [Home(root / f"node-{index}") for index in range(count)]
    identities = [home.init()[0] for home in homes]
    for home in homes[:-1]:  # the community; the newcomer (last) is trusted by nobody
        store = TrustStore(home.trust_file)
        for identity in identities[:-1]:
            if identity.peer_id != home.identity().peer_id:
                store.add(identity.peer_id.to_base58(), TLP_RED, "demo community", now_ms=_ms())
    started: list[Node] = []
    for home in homes:
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


def _ms() -> int:
    return int(time.time() * 1000)


async def _wait_for_mesh(community: list[Node], newcomer: Node) -> None:
    """Wait, bounded, until every node knows a subscribed peer on every topic it may read,
    and the CLEAR mesh has formed everywhere."""
    topics = [tlp_topic("demo", tlp) for tlp, _ in TLP_LEVELS]
    clear = tlp_topic("demo", TLP_CLEAR)

    def ready() -> bool:
        return (
            all(node.pubsub.peer_topics.get(topic) for node in community for topic in topics)
            and all(node.pubsub.gossip.mesh.get(clear) for node in [*community, newcomer])
            and bool(newcomer.pubsub.peer_topics.get(clear))
        )

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
        if name == result.newcomer and item.indicator.tlp != TLP_CLEAR:
            result.leaks += 1
        result.deliveries += 1
        if item.indicator.value in sent_at:
            result.latencies_ms.append((time.monotonic() - sent_at[item.indicator.value]) * 1000)
        on_arrival(name, record)
        if result.deliveries >= result.expected_deliveries:
            done.set()
