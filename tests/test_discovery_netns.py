"""mDNS across a real interface: two network namespaces joined by a veth pair, one node
process in each, no bootstrap address anywhere. They must find each other by the LAN beacon
alone; a third process of another swarm, beside one of them, must stay unknown to both.

The test makes its own namespaces and veth pair on a private /30 of its own (10.213.0.0/30),
so nothing leaves them, and removes them in ``finally`` (deleting a namespace deletes its
end of the veth, and with it the pair). It needs root and the ``ip`` tool, and skips with
the reason otherwise.

``threatmesh run`` has no ``--mdns`` flag yet, so each process runs ``RUNNER`` below: a host
and a ``Discovery`` with mDNS on the veth address, printing one JSON line per event.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.netns

SUBNET_A, SUBNET_B = "10.213.0.1", "10.213.0.2"
PREFIX = 30
FIND_TIMEOUT_S = 30.0
PROCESS_LIFETIME_S = 90  # the runner exits by itself after this, whatever happens

RUNNER = r"""
import json, sys, trio
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from pathlib import Path
from threatmesh.discovery import Discovery, DiscoverySettings, PeerJoined
from threatmesh.identity import generate_identity
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.libp2p_host import HostSettings, build_host, running

ip, swarm, home, lifetime_s = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])

def say(**fields):
    print(json.dumps(fields), flush=True)

async def main():
    settings = HostSettings(listen_addrs=(parse_listen_addr(f"/ip4/{ip}/tcp/0"),))
    host = build_host(generate_identity(), settings)
    discovery = Discovery(
        host,
        DiscoverySettings(mdns=True, mdns_interfaces=(ip,), rendezvous_interval_s=2.0),
        swarm=swarm, psk=None, peer_cache_path=home / "peers.json",
    )
    with trio.move_on_after(lifetime_s):
        async with running(host, settings.listen_addrs), trio.open_nursery() as nursery:
            events = discovery.events()
            await nursery.start(discovery.run)
            say(event="started", peer_id=host.get_id().to_base58(),
                addrs=[str(a) for a in host.get_transport_addrs()])
            async for event in events:
                if isinstance(event, PeerJoined):
                    say(event="joined", peer_id=event.peer_id)

trio.run(main)
"""


@dataclass
class _Node:
    name: str
    process: subprocess.Popen[str]
    lines: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def start_reading(self) -> None:
        def read() -> None:
            assert self.process.stdout is not None
            try:
                for line in self.process.stdout:
                    try:
                        self.lines.put(json.loads(line))
                    except ValueError:
                        continue
            except (OSError, ValueError):  # the pipe was closed under us at teardown
                return

        threading.Thread(target=read, name=f"read-{self.name}", daemon=True).start()

    def wait_for(self, deadline: float, **match: str) -> dict[str, Any]:
        """The first line (seen before or arriving before ``deadline``) with ``match``."""
        while True:
            for line in self.seen:
                if all(line.get(key) == value for key, value in match.items()):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {match} in time; saw {self.seen}")
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue

    def drain(self) -> None:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def _skip_reason() -> str:
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    return ""


@pytest.fixture
def lan() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: (namespace A, namespace B)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    ns_a, ns_b = f"tm-mdns-{tag}-a", f"tm-mdns-{tag}-b"
    veth_a, veth_b = f"tmv{tag}a", f"tmv{tag}b"  # interface names are at most 15 bytes
    created: list[str] = []
    try:
        try:
            for namespace in (ns_a, ns_b):
                _ip("netns", "add", namespace)
                created.append(namespace)
        except subprocess.CalledProcessError as error:
            pytest.skip(f"cannot create network namespaces here: {error.stderr.strip()}")
        _ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        for namespace, veth, address in ((ns_a, veth_a, SUBNET_A), (ns_b, veth_b, SUBNET_B)):
            _ip("link", "set", veth, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/{PREFIX}", "dev", veth)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "link", "set", veth, "up")
        yield ns_a, ns_b
    finally:
        for namespace in created:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", veth_a], capture_output=True, timeout=10)


def test_mdns_finds_peers_across_a_veth_pair_and_only_of_its_swarm(
    lan: tuple[str, str], tmp_path: Path
) -> None:
    ns_a, ns_b = lan
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    ours, theirs = f"lan-{secrets.token_hex(3)}", f"lan-{secrets.token_hex(3)}"
    nodes: list[_Node] = []

    def spawn(name: str, namespace: str, ip: str, swarm: str) -> _Node:
        home = tmp_path / name
        home.mkdir()
        argv = [sys.executable, str(runner), ip, swarm, str(home), str(PROCESS_LIFETIME_S)]
        with (tmp_path / f"{name}.stderr").open("w") as stderr:
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *argv],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        node = _Node(name, process)
        node.start_reading()
        nodes.append(node)
        return node

    try:
        a = spawn("a", ns_a, SUBNET_A, ours)
        b = spawn("b", ns_b, SUBNET_B, ours)
        stranger = spawn("stranger", ns_b, SUBNET_B, theirs)
        deadline = time.monotonic() + FIND_TIMEOUT_S
        a_id = a.wait_for(deadline, event="started")["peer_id"]
        b_id = b.wait_for(deadline, event="started")["peer_id"]
        stranger_id = stranger.wait_for(deadline, event="started")["peer_id"]
        a.wait_for(deadline, event="joined", peer_id=b_id)
        b.wait_for(deadline, event="joined", peer_id=a_id)
        for node in nodes:
            node.drain()
        joined = {
            (node.name, line["peer_id"])
            for node in nodes
            for line in node.seen
            if line["event"] == "joined"
        }
        assert ("a", stranger_id) not in joined
        assert ("b", stranger_id) not in joined
        assert not any(name == "stranger" for name, _ in joined)
    finally:
        for node in nodes:
            node.process.terminate()
        for node in nodes:
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=10)
            if node.process.stdout is not None:
                node.process.stdout.close()
