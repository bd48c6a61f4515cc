"""One threatmesh node for ``bench/throughput.py``, run as its own process.

Run by the bench, not by hand (it prints ``{"event": "loaded"}``, waits for a line on stdin,
then starts the node and prints ``{"event": "ready", "addr": ..., "pid": ...}``)::

    python bench/_node_worker.py --home DIR --name node-3 --listen /ip4/127.0.0.1/tcp/P \
        [--bootstrap MULTIADDR ...]

The home must exist (the bench initialises it, so it knows every peer ID up front). The
worker starts a ``Node``, subscribes to every level, and speaks JSON lines: commands on
stdin, one answer line on stdout per command (with the command's ``id``), nothing else on
stdout (logs go to stderr, level warning).

Commands:

- ``{"cmd": "mesh"}``: connected peers (IDs and count), peers subscribed to the bench topic,
  mesh size and D_lo.
- ``{"cmd": "publish", "phase": "max"|"lat", "start_at": WALL_S, "seconds": S, "count": N,
  "rate": R|null, "concurrency": K, "chunk": C}``: answers at once; from ``start_at`` it
  publishes up to ``count`` indicators for at most ``seconds``, either as fast as
  ``Node.publish`` takes them (``rate`` null: ``concurrency`` calls of ``chunk`` indicators
  each in flight) or paced at ``rate`` indicators/s (one call every ``TICK_S``).
- ``{"cmd": "stats", "hist": bool}``: per phase, what we published and what our subscriber
  received (count, first and last receive time, latency histogram if asked), and the node's
  stream and pubsub counters.
- ``{"cmd": "stop"}``: answers, then the node stops and the process exits.

The indicators, their publish-time stamp and the latency histogram are ``_workload``'s. A
paced phase stamps each call's indicators when the call is made, so time spent waiting for
the batch window or for ``Node.publish`` counts as latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from _workload import TIME_CHARS, IndicatorFactory, Reception

from threatmesh.node.config import NodeConfig
from threatmesh.node.home import Home
from threatmesh.node.logs import configure_logging
from threatmesh.node.node import Node
from threatmesh.node.stream import StreamError
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.topics import tlp_topic

SWARM = "bench"
TOPIC = tlp_topic(SWARM, pb.TLP_CLEAR)
# Paced publishing: one publish call per tick.
TICK_S = 0.01
# Paced publish calls in flight at most (Node.publish holds a call until its batch is out).
MAX_PACED_CALLS = 64


@dataclass
class PhaseStats:
    """One phase at this node: what its subscriber received, and what it published."""

    reception: Reception = field(default_factory=Reception)
    published: int = 0
    publish_calls: int = 0
    publish_errors: list[str] = field(default_factory=list)
    paced_behind: int = 0  # ticks at which MAX_PACED_CALLS calls were still in flight
    first_publish: float = 0.0
    last_publish: float = 0.0
    publish_done: bool = False

    def as_dict(self, with_hist: bool) -> dict[str, Any]:
        return {
            **self.reception.as_dict(with_hist),
            "published": self.published,
            "publish_calls": self.publish_calls,
            "publish_errors": self.publish_errors[:5],
            "publish_error_count": len(self.publish_errors),
            "paced_behind": self.paced_behind,
            "first_publish": self.first_publish,
            "last_publish": self.last_publish,
            "publish_done": self.publish_done,
        }


class Worker:
    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self.phases: dict[str, PhaseStats] = {}

    def phase(self, name: str) -> PhaseStats:
        stats = self.phases.get(name)
        if stats is None:
            stats = self.phases[name] = PhaseStats()
        return stats

    # Receiving ------------------------------------------------------------------------

    async def receive(self) -> None:
        our_peer_id = self.node.peer_id.to_base58()
        current_phase = ""
        reception = Reception()
        async for item in self.node.subscribe():
            now = time.time()
            description = item.indicator.description
            phase = description[TIME_CHARS + 1 : TIME_CHARS + 4]
            if phase != current_phase:
                current_phase = phase
                reception = self.phase(phase).reception
            reception.add(now, float(description[:TIME_CHARS]))
            if item.origin == our_peer_id:
                reception.received_self += 1

    # Publishing -----------------------------------------------------------------------

    async def publish(self, command: dict[str, Any]) -> None:
        """Publish as ``command`` says. At its deadline no new call starts, but calls in flight
        finish (``Node.publish`` bounds them): a cancelled call may already have handed its
        indicators on, and they would be delivered without being counted as published."""
        stats = self.phase(command["phase"])
        factory = IndicatorFactory(self.name, command["phase"])
        await trio.sleep_until(trio.current_time() + max(0.0, command["start_at"] - time.time()))
        deadline = trio.current_time() + command["seconds"]
        try:
            if command.get("rate"):
                await self._publish_paced(command, factory, stats, deadline)
            else:
                await self._publish_flat_out(command, factory, stats, deadline)
        finally:
            stats.publish_done = True

    async def _publish_one(self, indicators: list[pb.Indicator], stats: PhaseStats) -> None:
        stats.publish_calls += 1
        try:
            published = await self.node.publish(indicators, tlp="clear")
        except StreamError as error:
            stats.publish_errors.append(str(error))
            return
        stats.published += published
        stats.last_publish = time.time()

    @staticmethod
    def _take(wanted: int, budget: list[int]) -> int:
        """Take up to ``wanted`` from the phase's remaining ``budget[0]`` indicators."""
        count = min(wanted, budget[0])
        budget[0] -= count
        return count

    async def _publish_flat_out(
        self, command: dict[str, Any], factory: IndicatorFactory, stats: PhaseStats, deadline: float
    ) -> None:
        budget = [int(command["count"])]

        async def pump() -> None:
            while trio.current_time() < deadline and (
                count := self._take(int(command["chunk"]), budget)
            ):
                sent = time.time()
                if not stats.first_publish:
                    stats.first_publish = sent
                await self._publish_one(factory.make(count, sent), stats)

        async with trio.open_nursery() as nursery:
            for _ in range(int(command["concurrency"])):
                nursery.start_soon(pump)

    async def _publish_paced(
        self, command: dict[str, Any], factory: IndicatorFactory, stats: PhaseStats, deadline: float
    ) -> None:
        budget = [int(command["count"])]
        rate = float(command["rate"])
        calls = trio.CapacityLimiter(MAX_PACED_CALLS)
        started = trio.current_time()
        owed = 0.0

        async def one(indicators: list[pb.Indicator]) -> None:
            async with calls:
                await self._publish_one(indicators, stats)

        async with trio.open_nursery() as nursery:
            tick = 0
            while budget[0] > 0 and started + (tick + 1) * TICK_S < deadline:
                tick += 1
                await trio.sleep_until(started + tick * TICK_S)
                owed += rate * TICK_S
                count = self._take(int(owed), budget)
                owed -= count
                if count == 0:
                    continue
                sent = time.time()
                if not stats.first_publish:
                    stats.first_publish = sent
                if calls.available_tokens == 0:
                    stats.paced_behind += 1
                nursery.start_soon(one, factory.make(count, sent))

    # Commands -------------------------------------------------------------------------

    def mesh(self) -> dict[str, Any]:
        return {
            "peer_ids": sorted(self.node.peers()),
            "peers": len(self.node.peers()),
            "topic_peers": len(self.node.pubsub.peer_topics.get(TOPIC, ())),
            "mesh": len(self.node.pubsub.gossip.mesh.get(TOPIC, ())),
            "mesh_low": self.node.pubsub.gossip.degree_low,
        }

    def stats(self, with_hist: bool) -> dict[str, Any]:
        status = self.node.status()
        return {
            "phases": {name: s.as_dict(with_hist) for name, s in self.phases.items()},
            "stream": status["stream"],
            "pubsub": status["pubsub"],
        }


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _commands(worker: Worker, nursery: trio.Nursery) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    while True:
        chunk = await stdin.receive_some(65536)
        if not chunk:  # the bench went away: stop
            nursery.cancel_scope.cancel()
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            command = json.loads(line)
            answer: dict[str, Any] = {"id": command.get("id")}
            kind = command["cmd"]
            if kind == "mesh":
                answer.update(worker.mesh())
            elif kind == "publish":
                nursery.start_soon(worker.publish, command)
                answer["ok"] = True
            elif kind == "stats":
                answer.update(worker.stats(bool(command.get("hist"))))
            elif kind == "stop":
                answer["ok"] = True
                _answer(answer)
                nursery.cancel_scope.cancel()
                return
            else:
                answer["error"] = f"unknown command {kind!r}"
            _answer(answer)


def _wait_for_start() -> None:
    """Say we are loaded, then block until the bench says ``start`` (a line on stdin).

    The bench imports every worker at once but starts the nodes one after another, each once
    the peers it bootstraps to listen: a first dial that is refused puts the peer in
    py-libp2p's negative dial cache for 60 s (``swarm.py`` ``_NegativePeerCache``), and every
    bootstrap retry in that time fails without dialling. Read byte by byte, so nothing after
    the line is buffered away from the command loop."""
    _answer({"event": "loaded"})
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(sys.stdin.fileno(), 1)
        if not byte:
            raise SystemExit("the bench went away before start")
        line += byte


async def main(args: argparse.Namespace) -> None:
    configure_logging("warning")
    home = Home(Path(args.home))
    config = NodeConfig(
        swarm=SWARM,
        listen=(args.listen,),
        bootstrap=tuple(args.bootstrap),
        bootstrap_backoff_cap_s=1.0,
    )
    async with Node(config, home) as node, trio.open_nursery() as nursery:
        worker = Worker(node, args.name)
        nursery.start_soon(worker.receive)
        _answer({"event": "ready", "addr": node.addrs[0], "pid": os.getpid()})
        nursery.start_soon(_commands, worker, nursery)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--bootstrap", action="append", default=[])
    arguments = parser.parse_args()
    _wait_for_start()
    trio.run(main, arguments)
