"""Churn: nothing is lost while nodes crash and come back (the resilience issue's acceptance).

``--nodes`` (default 20) ``threatmesh run`` processes on 127.0.0.1, each bootstrapping to the
two started before it. ``--publishers`` of them (default 3) publish indicators at a steady
``--rate`` (indicators/s in total, in requests of ``--chunk``) for ``--seconds`` (default 60)
through their local API. Meanwhile a bounded loop SIGKILLs a random other node and restarts
it (same home: same identity, store and peer cache) after 1-5 s, until ``--churn`` (default
0.3) of the non-publishing nodes have been killed at least once. Then it waits until every
node's store holds every indicator acknowledged by a publisher, and reports the time from the
end of publishing to full convergence, kills, what each node was missing at the end of
publishing, and catch-up counters. Loopback only; every wait is bounded; every process is
killed in a ``finally``.

Run: ``python bench/churn.py [--nodes 20] [--publishers 3] [--seconds 60] [--rate 150]
[--churn 0.3] [--json]``. Stores are read read-only with sqlite3 (the nodes keep writing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 300.0


class NodeProc:
    def __init__(self, home: Path, bootstrap: list[str]) -> None:
        self.home = home
        self.bootstrap = bootstrap
        self.process: subprocess.Popen[bytes] | None = None
        self.addr = ""
        self.api = ""
        self.kills = 0

    def start(self) -> None:
        (self.home / "api.addr").unlink(missing_ok=True)
        flags = ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--api", "127.0.0.1:0"]
        for addr in self.bootstrap:
            flags += ["--bootstrap", addr]
        log = (self.home.parent / f"{self.home.name}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "threatmesh", "run", "--home", str(self.home), *flags],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert self.process.stdout is not None
        if not self.addr:
            self.addr = self.process.stdout.readline().decode().strip()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.home / "api.addr").exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{self.home.name} did not start")
            time.sleep(0.05)
        self.api = (self.home / "api.addr").read_text().strip()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.kills += 1

    def status(self) -> dict[str, Any]:
        token = (self.home / "api.token").read_text().strip()
        response = httpx.get(
            f"{self.api}/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def held_values(home: Path, prefix: str) -> set[str]:
    path = home / "store.sqlite3"
    if not path.exists():
        return set()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        rows = db.execute("SELECT value FROM indicators WHERE value LIKE ?", (f"{prefix}%",))
        return {value for (value,) in rows}


def publish_loop(
    node: NodeProc, name: str, rate: float, chunk: int, seconds: float, acked: list[str]
) -> None:
    token = (node.home / "api.token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    interval = chunk / rate
    started = time.monotonic()
    for request in range(int(seconds / interval) + 1):  # bounded
        due = started + request * interval
        if due - started > seconds:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        values = [f"churn-{name}-{request}-{index}.example.net" for index in range(chunk)]
        body = "\n".join(json.dumps({"value": value}) for value in values)
        try:
            response = httpx.post(
                f"{node.api}/v1/publish",
                params={"tlp": "clear"},
                content=body.encode(),
                headers=headers,
                timeout=30,
            )
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            acked.extend(values)


def churn_loop(
    nodes: list[NodeProc], targets: int, stop: threading.Event, rng: random.Random, log: list[str]
) -> None:
    """Kill and restart nodes until ``stop`` (publishing ended), ``targets`` distinct ones
    first; bounded by a count."""
    killed: set[int] = set()
    for _ in range(10 * len(nodes)):  # bounded
        if stop.is_set():
            break
        candidates = [i for i in range(len(nodes)) if i not in killed] or list(range(len(nodes)))
        index = rng.choice(candidates)
        node = nodes[index]
        node.kill()
        log.append(f"{time.monotonic():.1f} kill {node.home.name}")
        time.sleep(rng.uniform(1.0, 5.0))
        node.start()
        log.append(f"{time.monotonic():.1f} restart {node.home.name}")
        killed.add(index)
        if len(killed) >= targets:
            # Keep churning the same ones until publishing ends, at a gentler pace.
            time.sleep(rng.uniform(2.0, 6.0))


@contextlib.contextmanager
def swarm(base: Path, count: int) -> Iterator[list[NodeProc]]:
    nodes: list[NodeProc] = []
    try:
        for index in range(count):
            home = base / f"n{index:02d}"
            subprocess.run(
                [sys.executable, "-m", "threatmesh", "init", "--home", str(home)],
                check=True,
                capture_output=True,
            )
            node = NodeProc(home, [n.addr for n in nodes[-2:]])
            node.start()
            nodes.append(node)
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=150.0, help="indicators/s in total")
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--churn", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with (
        tempfile.TemporaryDirectory(prefix="threatmesh-churn-") as temporary,
        swarm(Path(temporary), args.nodes) as nodes,
    ):
        publishers = nodes[: args.publishers]
        others = nodes[args.publishers :]
        time.sleep(3)  # let the mesh form (bootstrap + first heartbeats)
        acked: dict[str, list[str]] = {f"p{i}": [] for i in range(len(publishers))}
        threads = [
            threading.Thread(
                target=publish_loop,
                args=(
                    node,
                    name,
                    args.rate / len(publishers),
                    args.chunk,
                    args.seconds,
                    acked[name],
                ),
            )
            for (name, node) in zip(acked, publishers, strict=True)
        ]
        churn_log: list[str] = []
        targets = max(1, round(args.churn * len(others)))
        stop = threading.Event()
        churner = threading.Thread(target=churn_loop, args=(others, targets, stop, rng, churn_log))
        started = time.monotonic()
        for thread in [*threads, churner]:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.seconds + 120)
        published_at = time.monotonic()
        stop.set()
        everything = {value for values in acked.values() for value in values}
        missing_at_end = {
            n.home.name: len(everything - held_values(n.home, "churn-")) for n in nodes
        }
        churner.join(timeout=120)  # its last restart, if one is under way
        converged_at = None
        deadline = published_at + CONVERGE_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(not (everything - held_values(n.home, "churn-")) for n in nodes):
                converged_at = time.monotonic()
                break
            time.sleep(0.5)
        final_missing = {
            n.home.name: len(everything - held_values(n.home, "churn-")) for n in nodes
        }
        sync = {}
        for node in nodes:
            with contextlib.suppress(Exception):
                sync[node.home.name] = node.status()["sync"]
        report = {
            "nodes": args.nodes,
            "publishers": len(publishers),
            "seconds": round(published_at - started, 1),
            "acknowledged": len(everything),
            "churn_target_nodes": targets,
            "killed_nodes": sum(1 for n in others if n.kills),
            "kills": sum(n.kills for n in others),
            "missing_at_end_of_publishing": sum(missing_at_end.values()),
            "converged": converged_at is not None,
            "convergence_s": None
            if converged_at is None
            else round(converged_at - published_at, 2),
            "final_missing": {k: v for k, v in final_missing.items() if v},
            "batches_fetched": sum(s.get("batches_fetched", 0) for s in sync.values()),
            "catch_ups": sum(s.get("catch_ups", 0) for s in sync.values()),
            "gaps_detected": sum(s.get("gaps_detected", 0) for s in sync.values()),
        }
        if args.json:
            print(json.dumps(report, sort_keys=True))
        else:
            for key, value in report.items():
                print(f"{key:>30}: {value}")
        if not report["converged"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
