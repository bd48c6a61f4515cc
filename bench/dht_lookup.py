"""DHT lookup latency and hops, and time for a new node to reach 10 peers: N in-process
nodes on 127.0.0.1, each running ``Discovery`` and told only one seed's address.

Measures, in one trio process (every node shares one CPU, so absolute numbers are an upper
bound of what separate processes would see):

1. formation: time until every node knows at least ``--known`` swarm peers; then a settle
   time until connection counts stop changing (the first rendezvous rounds dial a lot);
2. lookups: ``--lookups`` lookups of a random node's peer ID from another random node,
   through the network (``SwarmDht.lookup_peer``: the iterative FIND_NODE, whatever the
   peerstore already holds); latency p50/p99, rounds ("hops") and queries per lookup;
3. join: a new node told only the seed; time until it knows 10 swarm peers, and until it
   holds 10 connections.

Rounds come from py-libp2p's own INFO record "Network lookup completed after N rounds (M
queries)" (``kad_dht/peer_routing.py``); lookups run one at a time so each record is ours.
Every wait is bounded. Run: ``python bench/dht_lookup.py [--nodes 50] [--lookups 100]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import structlog
import trio

from threatmesh.discovery import Discovery, DiscoverySettings
from threatmesh.identity import generate_identity
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.libp2p_host import HostSettings, build_host, running

LISTEN = (parse_listen_addr("/ip4/127.0.0.1/tcp/0"),)
ROUNDS = re.compile(r"after (\d+) rounds \((\d+) queries\)")


class _Rounds(logging.Handler):
    """Keeps the (rounds, queries) of the last lookup py-libp2p completed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last: tuple[int, int] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = ROUNDS.search(record.getMessage())
        if match:
            self.last = (int(match.group(1)), int(match.group(2)))


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _start(
    stack: AsyncExitStack, nursery: trio.Nursery, base: Path, name: str, settings: DiscoverySettings
) -> Discovery:
    host = build_host(generate_identity(), HostSettings(listen_addrs=LISTEN))
    await stack.enter_async_context(running(host, LISTEN))
    discovery = Discovery(
        host, settings, swarm="bench", psk=None, peer_cache_path=base / name / "peers.json"
    )
    with trio.fail_after(10):
        await nursery.start(discovery.run)
    return discovery


def _addr(discovery: Discovery) -> str:
    host = discovery.host
    return f"{host.get_transport_addrs()[0]}/p2p/{host.get_id().to_base58()}"


async def _wait(predicate, timeout_s: float) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - routing tables have no change event
            await trio.sleep(0.05)
    return time.perf_counter() - started


async def _settle(nodes: list[Discovery], quiet_s: float, timeout_s: float) -> float:
    """Wait until the total connection count has not changed for ``quiet_s``."""
    started = time.perf_counter()
    with trio.fail_after(timeout_s):
        last, since = -1, time.perf_counter()
        while time.perf_counter() - since < quiet_s:
            total = sum(len(n.host.get_connected_peers()) for n in nodes)
            if total != last:
                last, since = total, time.perf_counter()
            await trio.sleep(0.2)
    return time.perf_counter() - started


async def bench(args: argparse.Namespace) -> dict[str, object]:
    rounds = _Rounds()
    routing_log = logging.getLogger("libp2p.kad_dht.peer_routing")
    routing_log.addHandler(rounds)
    routing_log.setLevel(logging.INFO)
    routing_log.propagate = False  # its INFO lines are for us, not the terminal
    settings = DiscoverySettings(
        mdns=False,
        rendezvous_interval_s=args.interval,
        random_walk_interval_s=args.interval,
        connection_check_interval_s=5.0,
        membership_poll_s=5.0,
    )
    result: dict[str, object] = {"nodes": args.nodes}
    with tempfile.TemporaryDirectory() as base_dir:
        base = Path(base_dir)
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            seed = await _start(stack, nursery, base, "seed", settings)
            told_seed = DiscoverySettings(**{**settings.__dict__, "bootstrap": (_addr(seed),)})
            nodes = [seed]
            started = time.perf_counter()
            for index in range(args.nodes - 1):
                nodes.append(await _start(stack, nursery, base, f"n{index}", told_seed))
            _progress(f"{args.nodes} nodes started; waiting until each knows {args.known}")
            formed = await _wait(
                lambda: all(len(n.known_peers()) >= args.known for n in nodes), args.timeout
            )
            result["formation_s"] = round(time.perf_counter() - started, 2)
            result["formation_wait_after_last_start_s"] = round(formed, 2)
            # Let the first rendezvous rounds and walks finish (connections stop changing),
            # so the lookups below measure the DHT, not a swarm still dialling itself.
            _progress(f"formed: {result}")
            result["settle_s"] = round(await _settle(nodes, args.settle, args.timeout), 2)
            _progress(f"settled: {result}")
            result["connections_median"] = statistics.median(
                len(n.host.get_connected_peers()) for n in nodes
            )
            result["routing_table_median"] = statistics.median(
                n.dht.routing_table_size() for n in nodes
            )

            latencies: list[float] = []
            hops: list[int] = []
            queries: list[int] = []
            found = 0
            for _ in range(args.lookups):
                source, target = random.sample(nodes, 2)
                rounds.last = None
                begin = time.perf_counter()
                with trio.fail_after(60):
                    info = await source.dht.lookup_peer(target.host.get_id())
                latencies.append(time.perf_counter() - begin)
                found += info is not None
                if rounds.last is not None:
                    hops.append(rounds.last[0])
                    queries.append(rounds.last[1])
            result["lookups"] = args.lookups
            result["lookups_found"] = found
            result["lookup_p50_ms"] = round(1000 * _percentile(latencies, 0.50), 1)
            result["lookup_p99_ms"] = round(1000 * _percentile(latencies, 0.99), 1)
            result["lookup_rounds_mean"] = round(statistics.mean(hops), 2) if hops else None
            result["lookup_rounds_max"] = max(hops) if hops else None
            result["lookup_queries_mean"] = round(statistics.mean(queries), 1) if queries else None

            _progress(f"lookups done: {result}")
            begin = time.perf_counter()
            newcomer = await _start(stack, nursery, base, "newcomer", told_seed)
            await _wait(lambda: len(newcomer.known_peers()) >= 10, args.timeout)
            result["join_known_10_s"] = round(time.perf_counter() - begin, 2)
            await _wait(lambda: len(newcomer.host.get_connected_peers()) >= 10, args.timeout)
            result["join_connected_10_s"] = round(time.perf_counter() - begin, 2)
            _progress(f"done: {result}; closing the hosts")
            # Close every host at once: one by one, each takes up to running()'s 2 s bound.
            with trio.move_on_after(10):
                async with trio.open_nursery() as closing:
                    for node in [*nodes, newcomer]:
                        closing.start_soon(node.host.close)
            nursery.cancel_scope.cancel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--known", type=int, default=10, help="peers each node must know")
    parser.add_argument("--interval", type=float, default=10.0, help="rendezvous/walk interval")
    parser.add_argument("--settle", type=float, default=3.0, help="quiet time before lookups")
    parser.add_argument("--timeout", type=float, default=180.0, help="bound of each wait")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    print(json.dumps(trio.run(bench, args), indent=1))


if __name__ == "__main__":
    main()
