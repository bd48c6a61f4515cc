"""Crash safety with real processes: SIGKILL a publisher in the middle of a burst.

Everything the node acknowledged to its client (a 200 answer to ``POST /v1/publish``) was
stored, with its signed message, before the answer: after the publisher is restarted every
subscriber gets all of it, by live delivery or by catch-up, and the store opens clean.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from kit import NodeProcess, run_cli

pytestmark = pytest.mark.process

LOOPBACK = ["--listen", "/ip4/127.0.0.1/tcp/0"]
BATCH = 25  # indicators per publish request
KILL_AFTER_ACKS = 20  # requests acknowledged before the SIGKILL
CONVERGE_TIMEOUT_S = 60.0


def _publish_until_killed(
    node: NodeProcess, acknowledged: list[str], stop: threading.Event
) -> None:
    token = (node.home / "api.token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    for request in range(10_000):  # bounded; ends when the node dies or the test says stop
        if stop.is_set():
            return
        values = [f"crash-{request}-{index}.example.net" for index in range(BATCH)]
        body = "\n".join(json.dumps({"value": value}) for value in values)
        try:
            response = httpx.post(
                f"{node.api_url}/v1/publish",
                params={"tlp": "clear"},
                content=body.encode(),
                headers=headers,
                timeout=10,
            )
        except httpx.HTTPError:
            return  # the node is gone: what was not answered was not acknowledged
        if response.status_code != 200:
            return
        acknowledged.extend(values)


def _missing(home: Path, values: list[str]) -> list[str]:
    result = run_cli("query", "--home", str(home), "--format", "jsonl", timeout_s=60)
    assert result.returncode == 0, result.stderr
    held = {json.loads(line)["value"] for line in result.stdout.splitlines() if line}
    return [value for value in values if value not in held]


def test_what_a_killed_publisher_acknowledged_reaches_every_subscriber(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    publisher = NodeProcess.start(tmp_path / "pub", *LOOPBACK)
    processes.append(publisher)
    subscribers = []
    for name in ("s1", "s2"):
        node = NodeProcess.start(
            tmp_path / name, *LOOPBACK, "--bootstrap", publisher.stdout_lines[0]
        )
        processes.append(node)
        subscribers.append(node)
    publisher.wait_for_peers(2)

    acknowledged: list[str] = []
    stop = threading.Event()
    worker = threading.Thread(target=_publish_until_killed, args=(publisher, acknowledged, stop))
    worker.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < KILL_AFTER_ACKS * BATCH:
        assert time.monotonic() < deadline, "the publisher did not acknowledge enough"
        assert worker.is_alive()
        time.sleep(0.01)
    publisher.kill()  # SIGKILL, mid-burst: the worker is still sending
    worker.join(timeout=15)
    stop.set()
    assert not worker.is_alive()
    snapshot = list(acknowledged)
    assert len(snapshot) >= KILL_AFTER_ACKS * BATCH

    # A killed node leaves its api.addr behind (the kit waits for a fresh one).
    (tmp_path / "pub" / "api.addr").unlink()
    restarted = NodeProcess.start(tmp_path / "pub", *LOOPBACK)  # same home: opens its store
    processes.append(restarted)
    assert _missing(tmp_path / "pub", snapshot) == []  # acknowledged means stored
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    for node in subscribers:
        while missing := _missing(node.home, snapshot):
            assert time.monotonic() < deadline, f"{node.home.name} misses {len(missing)}"
            time.sleep(0.5)
    # Status shows the catch-up work (served by the restarted publisher, fetched by the others).
    served = restarted.status()["sync"]["requests_served"]
    fetched = sum(node.status()["sync"]["batches_fetched"] for node in subscribers)
    print(f"acknowledged {len(snapshot)}; catch-up: {served} requests served, {fetched} fetched")
