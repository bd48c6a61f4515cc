"""Test kit: named in-process nodes on 127.0.0.1, and real `threatmesh run` processes.

In-process::

    async def test_x(swarm):            # the fixture from conftest.py
        a = await swarm.start("a")
        b = await swarm.start("b", bootstrap=(swarm.addr("a"),))

Every node listens on an ephemeral TCP port of 127.0.0.1 and has its own home under the
test's tmp_path; all of them stop when the test ends (their nursery is cancelled).

Processes: ``NodeProcess.start(home, *flags)`` runs ``python -m threatmesh run`` and waits,
bounded, until its API answers; ``stop()`` sends SIGTERM and waits, bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo

from threatmesh.node.config import NodeConfig
from threatmesh.node.home import Home
from threatmesh.node.node import Node
from threatmesh.node.store import Store
from threatmesh.transports.libp2p_host import connect

LOOPBACK_TCP = "/ip4/127.0.0.1/tcp/0"


class Swarm:
    """Named in-process nodes sharing one nursery."""

    def __init__(self, base: Path, nursery: trio.Nursery) -> None:
        self._base = base
        self._nursery = nursery
        self.nodes: dict[str, Node] = {}
        self._scopes: dict[str, trio.CancelScope] = {}

    async def start(
        self, name: str, *, prepare: Callable[[Node], None] | None = None, **overrides: Any
    ) -> Node:
        """Start node ``name`` with config ``overrides``; ``prepare`` sees it before it runs."""
        home = Home(self._base / name)
        home.init()
        # No mDNS: in-process test nodes must not beacon on the machine's interfaces (other
        # test runs would find them); discovery tests turn it on explicitly.
        base = NodeConfig(listen=(LOOPBACK_TCP,), bootstrap_backoff_cap_s=1.0, mdns=False)
        node = Node(base.with_overrides(**overrides), home)
        if prepare is not None:
            prepare(node)
        scope = trio.CancelScope()

        async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await node.run(task_status=task_status)

        with trio.fail_after(10):
            await self._nursery.start(run)
        self.nodes[name] = node
        self._scopes[name] = scope
        return node

    def stop(self, name: str) -> Node:
        """Stop node ``name`` at once (its services are cancelled; its sockets close)."""
        self._scopes.pop(name).cancel()
        return self.nodes.pop(name)

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def addr(self, name: str) -> str:
        """The first full multiaddr of node ``name`` (TCP on 127.0.0.1)."""
        return self.nodes[name].addrs[0]

    def peer_info(self, name: str) -> PeerInfo:
        node = self.nodes[name]
        return PeerInfo(node.peer_id, node.host.get_transport_addrs())

    async def connect(self, dialer: str, listener: str) -> None:
        await connect(self.nodes[dialer].host, self.peer_info(listener), timeout_s=5)


async def wait_until(predicate: Any, timeout_s: float = 10.0, poll_s: float = 0.02) -> None:
    """Wait, bounded, until ``predicate()`` is true.

    Only for state py-libp2p gives no event for (its connection table); our own services
    expose events, and tests of them wait on those.
    """
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - no event exists for py-libp2p's table
            await trio.sleep(poll_s)


# Processes ------------------------------------------------------------------------------


def run_cli(
    *args: str, timeout_s: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "threatmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )


@dataclass
class NodeProcess:
    home: Path
    process: subprocess.Popen[str]
    stderr_path: Path
    api_url: str = ""
    stdout_lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, home: Path, *flags: str, timeout_s: float = 30.0) -> NodeProcess:
        node = cls.launch(home, *flags)
        node._wait_ready(timeout_s)
        return node

    @classmethod
    def launch(cls, home: Path, *flags: str) -> NodeProcess:
        """Start ``threatmesh run`` without waiting; ``wait_ready`` then waits, bounded."""
        # stderr (the log) goes to a file beside the home, so a test can wait for a line.
        stderr_path = home.parent / f"{home.name}.stderr"
        with stderr_path.open("w") as stderr_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "threatmesh",
                    "run",
                    "--home",
                    str(home),
                    "--api",
                    "127.0.0.1:0",
                    "--no-mdns",
                    *flags,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                text=True,
            )
        return cls(home, process, stderr_path)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        addr_file = self.home / "api.addr"
        while not addr_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"threatmesh run exited early: {self.stderr_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError("threatmesh run did not start in time")
            time.sleep(0.05)
        self.api_url = addr_file.read_text().strip()
        expected = len(self.status()["addrs"])
        assert self.process.stdout is not None
        while len(self.stdout_lines) < expected:  # run prints its addresses right after
            line = self.process.stdout.readline()
            if not line:
                break
            self.stdout_lines.append(line.strip())

    def status(self) -> dict[str, Any]:
        return self.get("/v1/status")

    def get(self, path: str) -> dict[str, Any]:
        """GET ``path`` of the node's local API (JSON)."""
        token = (self.home / "api.token").read_text().strip()
        response = httpx.get(
            self.api_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def wait_for_peers(self, count: int, timeout_s: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            peers: list[str] = self.status()["peers"]
            if len(peers) >= count or time.monotonic() > deadline:
                return peers
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> tuple[int, float]:
        """Send ``sig``; return (exit code, seconds until exit)."""
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text()

    def wait_for_log(self, text: str, timeout_s: float = 10.0) -> None:
        """Wait, bounded, until the node's log contains ``text``."""
        deadline = time.monotonic() + timeout_s
        while text not in self.stderr_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in the log within {timeout_s} s")
            time.sleep(0.05)


def json_line(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


# The CLI in-process -------------------------------------------------------------------------


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``threatmesh argv`` in this process: (exit code, stdout, stderr)."""
    from threatmesh.node.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    """``err`` is one ``threatmesh: error: ...`` line, without a traceback, naming ``needles``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("threatmesh: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def dump(store: Store) -> list[tuple[bytes, int, int, tuple[str, ...], tuple[str, ...]]]:
    """Everything a store's query returns, comparable with ==."""
    return [
        (
            row.indicator.SerializeToString(deterministic=True),
            row.max_tlp,
            row.sightings,
            row.providers,
            row.origins,
        )
        for row in store.query()
    ]
