"""Indicator throughput and latency: a threatmesh mesh against Redis pub/sub, in one run.

threatmesh: ``--nodes`` nodes (default 10), each its own process (``_node_worker.py``) on
127.0.0.1, each bootstrapping to the two nodes started before it (connected, not complete).
``--publishers`` of them (default 3, spread over the chain) publish ~200-byte indicators
(``_workload.py``); every node, publishers included, subscribes to everything. The processes
import at once and the nodes start one after another (see ``_node_worker._wait_for_start``).
The bench waits until every node is connected to the two nodes before and after it and its
GossipSub mesh for the topic is formed (at least D_lo peers, or all subscribed when fewer), then:

(a) max: each publisher publishes ``--indicators`` indicators as fast as ``Node.publish``
    takes them (``--concurrency`` calls of ``--chunk`` in flight), for at most ``--seconds``;
(b) latency: paced, ``--rate`` indicators/s in total (default: half of what (a) delivered),
    for ``--seconds``.

Redis: the same two phases through Redis pub/sub: Debian's ``redis-server`` started here on a
free loopback port (installed with apt-get if missing and we are root; otherwise skipped with
a message), ``--publishers`` publisher processes pipelining ``--pipeline`` PUBLISH commands,
``--nodes`` subscriber processes (``_redis_worker.py``). Phase (b) runs at the same rate as
threatmesh's, so the latencies compare at equal load. The subscribers' output buffer limit is
lifted (``client-output-buffer-limit pubsub 0 0 0``): with Redis's default a subscriber that
falls 32 MB behind is disconnected, and phase (a) would lose messages instead of measuring.

Per phase it reports: ``delivered/s per subscriber``, the rate each subscriber received the
phase's indicators at (what it received / time from the first publish anywhere to its last
delivery), the minimum over subscribers, which is the headline, and the sum over subscribers
(``aggregate``); the publish rate; p50/p99/max publish-to-delivery latency over every delivery
(publish wall time in the indicator, ``time.time()`` at the receiver; 2 % bins); loss per
subscriber (published - received; must be 0); CPU seconds of every process in the phase, and
the CPU the rest of the machine used meanwhile (other load skews every figure). At the end:
RSS (VmRSS, and peak VmHWM) of every node, of redis-server and its subscribers, and the ratios
threatmesh/Redis. ``--json`` prints one JSON object instead of the table. ``bench/README.md``
says what each row means.

Run: ``python bench/throughput.py [--nodes 10] [--publishers 3] [--indicators N] [--rate R]
[--seconds S] [--json] [--no-redis | --no-threatmesh] [--profile DIR [--profile-gil]]``.
``--profile DIR`` records ``py-spy`` (collapsed stacks) of one relaying node and one publisher
during (a) and (b) (``<phase>-relay-<node>.txt``, ``<phase>-publisher-<node>.txt``).

Bounded: every wait has a timeout (start, mesh, each phase's drain); every process is killed
in a ``finally``. All processes share this machine's cores, so the figures are for the whole
system on it, not for one node.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _workload import PHASE_LATENCY, PHASE_MAX, merge_hists, percentile_ms  # noqa: E402

START_TIMEOUT_S = 60.0  # a worker process has imported everything (10 import at once)
NODE_START_TIMEOUT_S = 20.0  # a node is listening once told to start
MESH_TIMEOUT_S = 60.0  # every node's mesh is formed
MESH_SETTLE_S = 2.0  # two heartbeats more, once it does
PUBLISH_LEAD_S = 1.0  # publishers are told to start this long after the command
POLL_S = 0.5
STALL_S = 15.0  # a phase ends early when nothing new arrived anywhere for this long
REDIS_CHANNEL = "threatmesh-bench"
BOOTSTRAP_PEERS = 2  # each node bootstraps to this many nodes started before it
MACHINE = "(machine)"  # cpu_meter's key for the whole machine


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# Processes --------------------------------------------------------------------------------


class Child:
    """A process of the bench: JSON lines on stdin/stdout, stderr to a file, killed at the end."""

    def __init__(self, name: str, argv: Sequence[str], stderr_path: Path) -> None:
        self.name = name
        self.stderr_path = stderr_path
        with stderr_path.open("w") as stderr_file:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                text=True,
                bufsize=1,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read_json(self, timeout_s: float) -> dict[str, Any]:
        """The next JSON line from the child, waiting at most ``timeout_s``."""
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no answer within {timeout_s:g} s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited: {self.stderr_tail()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def request(self, message: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        self._next_id += 1
        self.send({**message, "id": self._next_id})
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.read_json(max(0.01, deadline - time.monotonic()))
            if answer.get("id") == self._next_id:
                return answer

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.stderr_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; never raises."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    result = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                result[key] = int(value.split()[0])
    return result


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (every core, every process), from boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_meter(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds each process used inside the block (filled in when it ends), and under
    ``"(machine)"`` what every process on the machine used: the difference is other load,
    which shares the cores with the bench (other test runs, say) and skews its figures."""
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    machine_before = machine_busy_s()
    used: dict[str, float] = {}
    try:
        yield used
    finally:
        used.update({name: round(cpu_s(pid) - before[name], 2) for name, pid in pids.items()})
        used[MACHINE] = round(machine_busy_s() - machine_before, 2)


@contextlib.contextmanager
def profiling(
    targets: dict[str, int], out_dir: Path | None, seconds: float, gil_only: bool = False
) -> Iterator[None]:
    """py-spy ``record`` (collapsed stacks, non-blocking) of ``targets`` during the block;
    ``gil_only``: only samples of the thread holding the GIL, i.e. Python CPU time, without
    waits (SQLite's fsync, epoll) that py-spy otherwise counts as active."""
    if out_dir is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in targets.items():
        argv = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "100",
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(out_dir / f"{name}.txt"),
        ]
        if gil_only:
            argv.append("--gil")
        with (out_dir / f"{name}.log").open("w") as messages:
            recorders.append(subprocess.Popen(argv, stdout=messages, stderr=subprocess.STDOUT))
    try:
        yield
    finally:
        for recorder in recorders:
            try:
                recorder.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
        log(f"py-spy profiles in {out_dir}")


# Phase results ----------------------------------------------------------------------------


@dataclass
class PhaseResult:
    """What publishers and subscribers of one phase reported, and the figures derived."""

    name: str
    published: int = 0
    first_publish: float = 0.0
    last_publish: float = 0.0
    publish_errors: int = 0
    subscribers: dict[str, dict[str, Any]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    target_rate: float | None = None
    # threatmesh only: batches and indicators the nodes received from peers in the phase
    # (from the stream counters), whose ratio says how well batching worked.
    batches_received: int = 0
    batched_indicators_received: int = 0

    def summary(self) -> dict[str, Any]:
        hist = merge_hists(sub.get("hist", {}) for sub in self.subscribers.values())
        rates = {  # a subscriber that received nothing counts, at 0
            name: sub["received"] / (sub["last_recv"] - self.first_publish)
            if sub["received"] and sub["last_recv"] > self.first_publish
            else 0.0
            for name, sub in self.subscribers.items()
        }
        last_delivery = max((sub["last_recv"] for sub in self.subscribers.values()), default=0.0)
        total_received = sum(sub["received"] for sub in self.subscribers.values())
        loss = {name: self.published - sub["received"] for name, sub in self.subscribers.items()}
        publish_span = self.last_publish - self.first_publish
        cpu_total = sum(value for name, value in self.cpu_s.items() if name != MACHINE)
        machine = self.cpu_s.get(MACHINE, cpu_total)
        per_subscriber = {}
        for name, sub in self.subscribers.items():
            own = merge_hists([sub.get("hist", {})])
            per_subscriber[name] = {
                "received": sub["received"],
                "received_self": sub.get("received_self", 0),
                "delivered_per_s": round(rates.get(name, 0.0)),
                "latency_ms_p50": _round(percentile_ms(own, 0.50)),
                "latency_ms_p99": _round(percentile_ms(own, 0.99)),
            }
        return {
            "published": self.published,
            "publish_errors": self.publish_errors,
            "indicators_per_batch": round(
                self.batched_indicators_received / self.batches_received, 1
            )
            if self.batches_received
            else None,
            "target_rate": self.target_rate,
            "publish_rate": round(self.published / publish_span) if publish_span > 0 else None,
            "seconds_first_publish_to_last_delivery": round(last_delivery - self.first_publish, 3)
            if last_delivery
            else None,
            "delivered_per_subscriber_min": round(min(rates.values())) if rates else 0,
            "delivered_per_subscriber_max": round(max(rates.values())) if rates else 0,
            "delivered_aggregate": round(total_received / (last_delivery - self.first_publish))
            if last_delivery > self.first_publish
            else 0,
            "latency_ms_p50": _round(percentile_ms(hist, 0.50)),
            "latency_ms_p99": _round(percentile_ms(hist, 0.99)),
            "latency_ms_max": _round(percentile_ms(hist, 1.0)),
            "deliveries": total_received,
            "loss_total": sum(loss.values()),
            "loss_per_subscriber": loss,
            "per_subscriber": per_subscriber,
            "cpu_s": self.cpu_s,
            "cpu_s_total": round(cpu_total, 1),
            "wall_s": round(self.wall_s, 2),
            "cpu_cores_busy": round(cpu_total / self.wall_s, 2) if self.wall_s else None,
            "other_load_cores": round(max(0.0, machine - cpu_total) / self.wall_s, 2)
            if self.wall_s
            else None,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# threatmesh -------------------------------------------------------------------------------


def _start_nodes(args: argparse.Namespace, base: Path, nodes: list[Child]) -> list[set[str]]:
    """Initialise every home here (so every peer ID is known), start every worker process at
    once, then start the nodes one after another. Each process goes into ``nodes`` as soon as
    it exists, so the caller stops it whatever happens next.

    Returns, per node, the peer IDs it must end up connected to (the two before it, which it
    bootstraps to, and the two after it, which bootstrap to it)."""
    from threatmesh.node.home import Home

    names = [f"node-{index}" for index in range(args.nodes)]
    ports = [free_port() for _ in names]
    peer_ids = []
    for name in names:
        identity, _ = Home(base / name).init()
        peer_ids.append(identity.peer_id.to_base58())
    addrs = [
        f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}" for port, peer in zip(ports, peer_ids, strict=True)
    ]
    for index, name in enumerate(names):
        argv = [
            sys.executable,
            str(BENCH_DIR / "_node_worker.py"),
            "--home",
            str(base / name),
            "--name",
            name,
            "--listen",
            f"/ip4/127.0.0.1/tcp/{ports[index]}",
        ]
        for earlier in addrs[max(0, index - BOOTSTRAP_PEERS) : index]:
            argv += ["--bootstrap", earlier]
        nodes.append(Child(name, argv, base / f"{name}.stderr"))
    for node in nodes:  # every process imports at the same time
        _expect_event(node, "loaded", START_TIMEOUT_S)
    for node in nodes:  # each node starts once the two it bootstraps to listen (_node_worker)
        node.send({"cmd": "start"})
        _expect_event(node, "ready", NODE_START_TIMEOUT_S)
    neighbours = [
        {
            peer_ids[other]
            for other in range(len(names))
            if other != index and abs(other - index) <= BOOTSTRAP_PEERS
        }
        for index in range(len(names))
    ]
    return neighbours


def _expect_event(child: Child, event: str, timeout_s: float) -> None:
    line = child.read_json(timeout_s)
    if line.get("event") != event:
        raise RuntimeError(f"{child.name}: expected {event!r}, got {line}")


def _wait_for_mesh(nodes: list[Child], neighbours: list[set[str]]) -> list[dict[str, Any]]:
    """Wait, bounded, until every node is connected to its bootstrap links (both ways), knows
    every connected peer to be subscribed, and its mesh for the topic is formed: at least D_lo
    peers, or all subscribed ones when fewer."""

    def ready(views: list[dict[str, Any]]) -> bool:
        return all(
            neighbours[index] <= set(view["peer_ids"])
            and view["topic_peers"] == view["peers"]
            and view["mesh"] >= max(1, min(view["mesh_low"], view["topic_peers"]))
            for index, view in enumerate(views)
        )

    deadline = time.monotonic() + MESH_TIMEOUT_S
    while True:
        views = [node.request({"cmd": "mesh"}) for node in nodes]
        if ready(views):
            time.sleep(MESH_SETTLE_S)
            views = [node.request({"cmd": "mesh"}) for node in nodes]
            if ready(views):
                return views
        if time.monotonic() > deadline:
            missing = {
                node.name: len(neighbours[index] - set(view["peer_ids"]))
                for index, (node, view) in enumerate(zip(nodes, views, strict=True))
            }
            details = "; ".join(
                f"{node.name}: {view['peers']} peers, {missing[node.name]} links missing, "
                f"mesh {view['mesh']} of {view['topic_peers']}"
                for node, view in zip(nodes, views, strict=True)
            )
            for node in nodes:
                if missing[node.name]:
                    log(f"{node.name} stderr (last lines):\n{node.stderr_tail()}")
            raise TimeoutError(f"the mesh did not form within {MESH_TIMEOUT_S:g} s: {details}")
        time.sleep(POLL_S)


def _run_node_phase(
    nodes: list[Child],
    publishers: list[Child],
    command: dict[str, Any],
    drain_s: float,
    profile_dir: Path | None,
    profile_gil: bool = False,
) -> PhaseResult:
    phase = command["phase"]
    pids = {node.name: node.pid for node in nodes}
    counters_before = {node.name: node.request({"cmd": "stats"})["stream"] for node in nodes}
    relay = next((node for node in nodes if node not in publishers), publishers[0])
    targets = {
        f"{phase}-relay-{relay.name}": relay.pid,
        f"{phase}-publisher-{publishers[0].name}": publishers[0].pid,
    }
    start_at = time.time() + PUBLISH_LEAD_S
    for publisher in publishers:
        publisher.request({"cmd": "publish", "start_at": start_at, **command})
    time.sleep(max(0.0, start_at - time.time()))
    started = time.monotonic()
    with (
        cpu_meter(pids) as used,
        profiling(targets, profile_dir, min(command["seconds"], 10.0), profile_gil),
    ):
        _wait_for_delivery(nodes, publishers, phase, command["seconds"], drain_s)
    result = PhaseResult(phase, cpu_s=used, wall_s=time.monotonic() - started)
    final = {node.name: node.request({"cmd": "stats", "hist": True}) for node in nodes}
    for name, answer in final.items():
        mine = answer["phases"].get(phase)
        if mine is None:
            mine = {"received": 0, "received_self": 0, "first_recv": 0.0, "last_recv": 0.0}
        result.subscribers[name] = {**mine, "stream": answer["stream"], "pubsub": answer["pubsub"]}
        before = counters_before.get(name, {})
        result.batches_received += answer["stream"]["received_batches"] - before.get(
            "received_batches", 0
        )
        result.batched_indicators_received += answer["stream"]["received_indicators"] - before.get(
            "received_indicators", 0
        )
    for publisher in publishers:
        mine = final[publisher.name]["phases"].get(phase, {})
        result.published += mine.get("published", 0)
        result.publish_errors += mine.get("publish_error_count", 0)
        if mine.get("first_publish"):
            firsts = [result.first_publish, mine["first_publish"]]
            result.first_publish = min(t for t in firsts if t)
            result.last_publish = max(result.last_publish, mine["last_publish"])
        for error in mine.get("publish_errors", []):
            log(f"{publisher.name}: publish error: {error}")
    return result


def _wait_for_delivery(
    nodes: list[Child],
    publishers: list[Child],
    phase: str,
    seconds: float,
    drain_s: float,
) -> None:
    """Poll until every publisher is done and every node has everything published, or until
    nothing new arrived for ``STALL_S``, or ``seconds + drain_s`` passed."""
    deadline = time.monotonic() + seconds + drain_s
    last_total, last_change = -1, time.monotonic()
    while True:
        time.sleep(POLL_S)
        stats = {
            node.name: node.request({"cmd": "stats"})["phases"].get(phase, {}) for node in nodes
        }
        published = sum(stats[p.name].get("published", 0) for p in publishers)
        done = all(stats[p.name].get("publish_done") for p in publishers)
        received = [stats[node.name].get("received", 0) for node in nodes]
        total = sum(received) + published
        now = time.monotonic()
        if total != last_total:
            last_total, last_change = total, now
        if done and all(count >= published for count in received):
            return
        if done and now - last_change > STALL_S:
            log(f"{phase}: nothing new for {STALL_S:g} s; received {received} of {published}")
            return
        if now > deadline:
            log(f"{phase}: gave up after the drain time; received {received} of {published}")
            return


def run_threatmesh(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    nodes: list[Child] = []
    try:
        log(f"threatmesh: starting {args.nodes} node processes")
        neighbours = _start_nodes(args, base, nodes)
        mesh = _wait_for_mesh(nodes, neighbours)
        log(f"threatmesh: mesh formed (mesh sizes {[view['mesh'] for view in mesh]})")
        spread = sorted({round(i * args.nodes / args.publishers) for i in range(args.publishers)})
        publishers = [nodes[index] for index in spread]
        log(
            f"threatmesh (a) max: {args.publishers} x {args.indicators} indicators, "
            f"at most {args.seconds:g} s"
        )
        max_phase = _run_node_phase(
            nodes,
            publishers,
            {
                "cmd": "publish",
                "phase": PHASE_MAX,
                "seconds": args.seconds,
                "count": args.indicators,
                "rate": None,
                "concurrency": args.concurrency,
                "chunk": args.chunk,
            },
            args.drain_seconds,
            args.profile,
            args.profile_gil,
        )
        max_summary = max_phase.summary()
        rate = args.rate or max(10.0, max_summary["delivered_per_subscriber_min"] / 2)
        log(
            f"threatmesh (a): {max_summary['delivered_per_subscriber_min']}/s per subscriber; "
            f"(b) latency at {rate:.0f}/s for {args.seconds:g} s"
        )
        latency_phase = _run_node_phase(
            nodes,
            publishers,
            {
                "cmd": "publish",
                "phase": PHASE_LATENCY,
                "seconds": args.seconds,
                "count": int(rate * args.seconds * 2) + 1,
                "rate": rate / len(publishers),
                "concurrency": 0,
                "chunk": 0,
            },
            args.drain_seconds,
            args.profile,
            args.profile_gil,
        )
        latency_phase.target_rate = rate
        memory = {node.name: memory_kb(node.pid) for node in nodes}
        counters = {
            name: {"stream": sub["stream"], "pubsub": sub["pubsub"]}
            for name, sub in latency_phase.subscribers.items()
        }
        return {
            "nodes": args.nodes,
            "publishers": [node.name for node in publishers],
            "mesh": {
                node.name: {key: value for key, value in view.items() if key != "peer_ids"}
                for node, view in zip(nodes, mesh, strict=True)
            },
            "phases": {PHASE_MAX: max_summary, PHASE_LATENCY: latency_phase.summary()},
            "memory_kb": memory,
            "counters": counters,
        }
    finally:
        for node in nodes:
            node.stop()


# Redis ------------------------------------------------------------------------------------


def find_redis_server() -> str | None:
    """``redis-server``'s path; installs Debian's package if missing and we may (root + apt)."""
    found = shutil.which("redis-server")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    log("redis-server is missing: apt-get install -y redis-server")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
        try:
            subprocess.run(argv, env=environment, capture_output=True, timeout=300, check=True)
        except (subprocess.SubprocessError, OSError) as error:
            log(f"{' '.join(argv)} failed: {error}")
            return None
    return shutil.which("redis-server")


@contextlib.contextmanager
def redis_server(binary: str, base: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    import redis

    port = free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--logfile",
        str(base / "redis.log"),
        "--client-output-buffer-limit",
        "pubsub 0 0 0",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as error:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_file = base / "redis.log"
                    raise RuntimeError(f"redis-server did not start (see {log_file})") from error
                time.sleep(0.05)
        yield port, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _run_redis_phase(
    args: argparse.Namespace,
    base: Path,
    port: int,
    server_pid: int,
    subscribers: list[Child],
    phase: str,
    rate: float | None,
    count: int,
) -> PhaseResult:
    import redis

    publishers = []
    pids = {"redis-server": server_pid, **{sub.name: sub.pid for sub in subscribers}}
    result = PhaseResult(phase, target_rate=rate)
    try:
        for index in range(args.publishers):
            name = f"{phase}-pub-{index}"
            argv = [
                sys.executable,
                str(BENCH_DIR / "_redis_worker.py"),
                "pub",
                "--port",
                str(port),
                "--name",
                name,
                "--phase",
                phase,
                "--channel",
                REDIS_CHANNEL,
                "--pipeline",
                str(args.pipeline),
            ]
            publishers.append(Child(name, argv, base / f"redis-{name}.stderr"))
        for publisher in publishers:
            publisher.read_json(START_TIMEOUT_S)
        pids.update({publisher.name: publisher.pid for publisher in publishers})
        start_at = time.time() + PUBLISH_LEAD_S
        for publisher in publishers:
            publisher.send(
                {
                    "start_at": start_at,
                    "seconds": args.seconds,
                    "count": count,
                    "rate": rate / args.publishers if rate else None,
                }
            )
        time.sleep(max(0.0, start_at - time.time()))
        started = time.monotonic()
        with cpu_meter(pids) as used:
            for publisher in publishers:
                done = publisher.read_json(PUBLISH_LEAD_S + args.seconds + 30)
                result.published += done["published"]
                firsts = [t for t in (result.first_publish, done["first_publish"]) if t]
                result.first_publish = min(firsts) if firsts else 0.0
                result.last_publish = max(result.last_publish, done["last_publish"])
            # Every PUBLISH above has been answered, so this END is queued after all of them.
            redis.Redis(host="127.0.0.1", port=port).publish(REDIS_CHANNEL, f"END {phase}")
            for subscriber in subscribers:
                try:
                    answer = subscriber.read_json(args.drain_seconds)
                except TimeoutError:
                    log(f"redis {phase}: {subscriber.name} did not finish within the drain time")
                    answer = {"received": 0, "first_recv": 0.0, "last_recv": 0.0}
                result.subscribers[subscriber.name] = answer
        result.cpu_s = used
        result.wall_s = time.monotonic() - started
        return result
    finally:
        for publisher in publishers:
            publisher.stop()


def run_redis(args: argparse.Namespace, base: Path, latency_rate: float | None) -> dict[str, Any]:
    import redis

    binary = find_redis_server()
    if binary is None:
        message = (
            "redis-server is not installed and could not be installed "
            "(apt-get install redis-server, as root); Redis half skipped"
        )
        log(message)
        return {"skipped": message}
    subscribers: list[Child] = []
    with redis_server(binary, base) as (port, server):
        try:
            log(f"redis: redis-server on 127.0.0.1:{port}, {args.nodes} subscriber processes")
            for index in range(args.nodes):
                name = f"sub-{index}"
                argv = [
                    sys.executable,
                    str(BENCH_DIR / "_redis_worker.py"),
                    "sub",
                    "--port",
                    str(port),
                    "--channel",
                    REDIS_CHANNEL,
                ]
                subscribers.append(Child(name, argv, base / f"redis-{name}.stderr"))
            for subscriber in subscribers:
                subscriber.read_json(START_TIMEOUT_S)
            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 10
            while client.pubsub_numsub(REDIS_CHANNEL)[0][1] < args.nodes:
                if time.monotonic() > deadline:
                    raise TimeoutError("the Redis subscribers did not all subscribe in 10 s")
                time.sleep(0.05)
            log(f"redis (a) max: {args.publishers} x {args.indicators}, pipelined {args.pipeline}")
            max_phase = _run_redis_phase(
                args, base, port, server.pid, subscribers, PHASE_MAX, None, args.indicators
            )
            max_summary = max_phase.summary()
            rate = latency_rate or max(10.0, max_summary["delivered_per_subscriber_min"] / 2)
            log(
                f"redis (a): {max_summary['delivered_per_subscriber_min']}/s per subscriber; "
                f"(b) latency at {rate:.0f}/s"
            )
            latency_phase = _run_redis_phase(
                args,
                base,
                port,
                server.pid,
                subscribers,
                PHASE_LATENCY,
                rate,
                int(rate * args.seconds * 2) + 1,
            )
            memory = {"redis-server": memory_kb(server.pid)}
            memory.update({sub.name: memory_kb(sub.pid) for sub in subscribers})
            client.publish(REDIS_CHANNEL, "END all")
            return {
                "server": binary,
                "port": port,
                "phases": {PHASE_MAX: max_summary, PHASE_LATENCY: latency_phase.summary()},
                "memory_kb": memory,
            }
        finally:
            for subscriber in subscribers:
                subscriber.stop()


# Report -----------------------------------------------------------------------------------


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    mx, lat = ours["phases"][PHASE_MAX], ours["phases"][PHASE_LATENCY]
    rmx, rlat = theirs["phases"][PHASE_MAX], theirs["phases"][PHASE_LATENCY]
    return {
        "throughput_per_subscriber_min": ratio(
            mx["delivered_per_subscriber_min"], rmx["delivered_per_subscriber_min"]
        ),
        "throughput_aggregate": ratio(mx["delivered_aggregate"], rmx["delivered_aggregate"]),
        "latency_p50_at_rate": ratio(lat["latency_ms_p50"], rlat["latency_ms_p50"]),
        "latency_p99_at_rate": ratio(lat["latency_ms_p99"], rlat["latency_ms_p99"]),
    }


def _mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}"


def print_table(report: dict[str, Any]) -> None:
    rows = [
        ("delivered/s per subscriber, min", "delivered_per_subscriber_min", "{:,}"),
        ("delivered/s per subscriber, max", "delivered_per_subscriber_max", "{:,}"),
        ("deliveries/s, all subscribers", "delivered_aggregate", "{:,}"),
        ("published", "published", "{:,}"),
        ("indicators per batch (received)", "indicators_per_batch", "{}"),
        ("publish rate /s", "publish_rate", "{:,}"),
        ("target rate /s", "target_rate", "{:,.0f}"),
        ("first publish -> last delivery s", "seconds_first_publish_to_last_delivery", "{}"),
        ("latency p50 ms", "latency_ms_p50", "{:.1f}"),
        ("latency p99 ms", "latency_ms_p99", "{:.1f}"),
        ("latency max ms", "latency_ms_max", "{:.1f}"),
        ("loss (all subscribers)", "loss_total", "{:,}"),
        ("publish errors", "publish_errors", "{:,}"),
        ("CPU s (all processes)", "cpu_s_total", "{}"),
        ("cores busy (of {cores})", "cpu_cores_busy", "{}"),
        ("other load on the machine, cores", "other_load_cores", "{}"),
    ]
    systems = [name for name in ("threatmesh", "redis") if "phases" in report.get(name, {})]
    columns = [(system, phase) for system in systems for phase in (PHASE_MAX, PHASE_LATENCY)]
    header = [
        "",
        *[
            f"{system} {'(a) max' if phase == PHASE_MAX else '(b) paced'}"
            for system, phase in columns
        ],
    ]
    table = [header]
    for label, key, fmt in rows:
        line = [label.format(cores=os.cpu_count())]
        for system, phase in columns:
            value = report[system]["phases"][phase].get(key)
            line.append("-" if value is None else fmt.format(value))
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print()
    for row in table:
        print(
            "  ".join(
                cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )
    for system in systems:
        memory = report[system]["memory_kb"]
        print(
            f"\nRSS {system} (MiB, now/peak): "
            + ", ".join(
                f"{name} {_mib(m.get('VmRSS'))}/{_mib(m.get('VmHWM'))}"
                for name, m in memory.items()
            )
        )
    if "counters" in report.get("threatmesh", {}):
        drops = {}
        for name, counters in report["threatmesh"]["counters"].items():
            nonzero = {
                key: value
                for group in counters.values()
                for key, value in group.items()
                if value
                and key
                not in (
                    "published_indicators",
                    "published_batches",
                    "received_indicators",
                    "received_batches",
                    "subscribers",
                )
            }
            if nonzero:
                drops[name] = nonzero
        print(f"\nthreatmesh counters (non-zero drops/duplicates): {drops or 'none'}")
    if "skipped" in report.get("redis", {}):
        print(f"\nRedis: {report['redis']['skipped']}")
    if report.get("ratio"):
        print(
            "\nthreatmesh / Redis: "
            + ", ".join(f"{key} {value}" for key, value in report["ratio"].items())
        )
    print()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"bench: stopped by signal {signum}")  # runs every finally: children stop


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10, help="nodes (and Redis subscribers)")
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument(
        "--indicators", type=int, default=40_000, help="indicators per publisher in phase (a)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="phase (b) rate, indicators/s in total (default: half of (a))",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=15.0,
        help="phase (a) publishing cap and phase (b) duration",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=60.0,
        help="how long a phase may take to deliver after publishing ends",
    )
    parser.add_argument("--chunk", type=int, default=500, help="indicators per publish call")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="publish calls in flight per publisher in phase (a)",
    )
    parser.add_argument("--pipeline", type=int, default=100, help="Redis PUBLISHes per pipeline")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-threatmesh", action="store_true")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write py-spy profiles of (a) and (b) to this directory",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="profile only the thread holding the GIL (Python CPU time, no waits)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.nodes < 2 or not 1 <= args.publishers <= args.nodes:
        parser.error("need --nodes >= 2 and 1 <= --publishers <= --nodes")
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "settings": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        },
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="threatmesh-bench-") as temporary:
        base = Path(temporary)
        latency_rate = args.rate
        if not args.no_threatmesh:
            report["threatmesh"] = run_threatmesh(args, base)
            latency_rate = (
                latency_rate or report["threatmesh"]["phases"][PHASE_LATENCY]["target_rate"]
            )
        if not args.no_redis:
            report["redis"] = run_redis(args, base, latency_rate)
    if "phases" in report.get("threatmesh", {}) and "phases" in report.get("redis", {}):
        report["ratio"] = ratios(report["threatmesh"], report["redis"])
    report["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(report, indent=None))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
