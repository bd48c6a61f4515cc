"""Real `threatmesh run` processes: addresses, status, signals, private swarms."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kit import NodeProcess, json_line, run_cli

pytestmark = pytest.mark.process

LOOPBACK = ["--listen", "/ip4/127.0.0.1/tcp/0"]


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_prints_addresses_and_stops_on_signal(
    tmp_path: Path, processes: list[NodeProcess], sig: signal.Signals
) -> None:
    home = tmp_path / "a"
    node = NodeProcess.start(
        home, "--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"
    )
    processes.append(node)
    status = node.status()
    peer_id = status["peer_id"]
    assert len(node.stdout_lines) == 2
    assert node.stdout_lines == status["addrs"]
    assert any("/tcp/" in addr for addr in node.stdout_lines)
    assert any("/quic-v1/" in addr for addr in node.stdout_lines)
    for addr in node.stdout_lines:
        assert addr.startswith("/ip4/127.0.0.1/")
        assert addr.endswith(f"/p2p/{peer_id}")
    # `threatmesh status` talks to it through the API address and token in home
    result = run_cli("status", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    assert json_line(result.stdout)["peer_id"] == peer_id
    tcp_port = int(next(a for a in node.stdout_lines if "/tcp/" in a).split("/")[4])
    api_port = int(node.api_url.rsplit(":", 1)[1])

    code, seconds = node.stop(sig)
    assert code == 0, node.stderr_text()
    assert seconds < 5
    assert not (home / "api.addr").exists()
    assert _port_is_free(tcp_port)
    assert _port_is_free(api_port)
    assert "Traceback" not in node.stderr_text()


def test_peer_id_survives_restart(tmp_path: Path, processes: list[NodeProcess]) -> None:
    home = tmp_path / "a"
    first = NodeProcess.start(home, *LOOPBACK)
    processes.append(first)
    peer_id = first.status()["peer_id"]
    first.stop()
    second = NodeProcess.start(home, *LOOPBACK)
    processes.append(second)
    assert second.status()["peer_id"] == peer_id


def _swarm_key(path: Path) -> Path:
    result = run_cli("swarm-key", "--out", str(path))
    assert result.returncode == 0, result.stderr
    return path


def test_private_swarm_same_key_connects_other_key_does_not(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    key = _swarm_key(tmp_path / "swarm.key")
    other_key = _swarm_key(tmp_path / "other.key")
    seed = NodeProcess.start(tmp_path / "seed", *LOOPBACK, "--psk", str(key))
    processes.append(seed)
    seed_addr = seed.stdout_lines[0]

    member = NodeProcess.start(
        tmp_path / "member", *LOOPBACK, "--psk", str(key), "--bootstrap", seed_addr
    )
    processes.append(member)
    assert member.wait_for_peers(1) == [seed.status()["peer_id"]]

    # A wrong key and no key at all: one bootstrap attempt each, refused, never connected.
    (tmp_path / "outsider").mkdir(mode=0o700)
    (tmp_path / "outsider" / "config.toml").write_text("bootstrap_max_attempts = 1\n")
    (tmp_path / "stranger").mkdir(mode=0o700)
    (tmp_path / "stranger" / "config.toml").write_text("bootstrap_max_attempts = 1\n")
    outsider = NodeProcess.start(
        tmp_path / "outsider",
        *LOOPBACK,
        "--psk",
        str(other_key),
        "--bootstrap",
        seed_addr,
        "--log-json",
    )
    stranger = NodeProcess.start(tmp_path / "stranger", *LOOPBACK, "--bootstrap", seed_addr)
    processes.extend([outsider, stranger])
    for refused in (outsider, stranger):
        refused.wait_for_log("peer unreachable; giving up", timeout_s=10)
        assert refused.status()["peers"] == []
    assert seed.status()["peers"] == [member.status()["peer_id"]]
    # Every log line, py-libp2p's included, went through our JSON formatter.
    events = [json.loads(line) for line in outsider.stderr_text().splitlines()]
    [failure] = [event for event in events if event["event"] == "peer unreachable; giving up"]
    assert "swarm key" in failure["error"]


def test_publish_tail_query_through_the_cli(tmp_path: Path, processes: list[NodeProcess]) -> None:
    a = NodeProcess.start(tmp_path / "a", *LOOPBACK)
    processes.append(a)
    b = NodeProcess.start(tmp_path / "b", *LOOPBACK, "--bootstrap", a.stdout_lines[0])
    processes.append(b)
    assert b.wait_for_peers(1)
    # GREEN goes only to peers a trusts at GREEN: trust b through the CLI, live.
    b_id = b.stdout_lines[0].rsplit("/p2p/", 1)[1]
    trusted = run_cli("trust", "add", b_id, "green", "--home", str(tmp_path / "a"))
    assert trusted.returncode == 0, trusted.stderr
    deadline = time.monotonic() + 10
    while a.status()["sharing"]["effective_levels"].get(b_id) != 2:  # TLP_GREEN
        assert time.monotonic() < deadline, "a did not pick up the trust file"
        time.sleep(0.05)
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "threatmesh",
            "tail",
            "--home",
            str(tmp_path / "b"),
            "--count",
            "2",
            "--tlp",
            "green",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while b.status()["stream"]["subscribers"] < 1:
            assert time.monotonic() < deadline, "tail did not subscribe"
            time.sleep(0.05)
        source = tmp_path / "feed.jsonl"
        source.write_text(
            '{"value": "203.0.113.9", "tags": ["scanner"]}\n'
            '{"value": "bad..name"}\n'
            '{"value": "EVIL.example.COM", "confidence": 90}\n'
        )
        result = run_cli(
            "publish", "--home", str(tmp_path / "a"), "--tlp", "green", "--json", str(source)
        )
        assert result.returncode == 0, result.stderr
        report = json_line(result.stdout)
        assert report["accepted"] == 2
        assert [rejected["line"] for rejected in report["rejected"]] == [2]
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err
    received = [json.loads(line) for line in out.splitlines()]
    assert sorted(record["value"] for record in received) == ["203.0.113.9", "evil.example.com"]
    # query reads b's store directly (the node may or may not run)
    result = run_cli("query", "--home", str(tmp_path / "b"), "--value", "evil.example.com")
    assert result.returncode == 0, result.stderr
    [stored] = [json.loads(line) for line in result.stdout.splitlines()]
    assert stored["confidence"] == 90
    assert stored["tlp"] == "green"
    b.stop()
    result = run_cli("query", "--home", str(tmp_path / "b"), "--tag", "scanner", "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert "203.0.113.9" in result.stdout
    assert result.stdout.splitlines()[0].startswith("value,itype,tlp")
    result = run_cli("query", "--home", str(tmp_path / "b"), "--format", "stix")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert bundle["type"] == "bundle"
    patterns = [obj["pattern"] for obj in bundle["objects"] if obj["type"] == "indicator"]
    assert sorted(patterns) == [
        "[domain-name:value = 'evil.example.com']",
        "[ipv4-addr:value = '203.0.113.9']",
    ]


def test_vouch_and_revoke_through_the_cli(tmp_path: Path, processes: list[NodeProcess]) -> None:
    a = NodeProcess.start(tmp_path / "a", *LOOPBACK)
    processes.append(a)
    subject = run_cli("init", "--home", str(tmp_path / "s"), "--json")
    assert subject.returncode == 0, subject.stderr
    subject_id = json_line(subject.stdout)["peer_id"]
    home = ("--home", str(tmp_path / "a"))

    vouched = run_cli("vouch", subject_id, "--expires", "2d", "--json", *home)
    assert vouched.returncode == 0, vouched.stderr
    statement = json_line(vouched.stdout)
    assert statement["subject"] == subject_id
    assert statement["level"] == 2  # TLP_GREEN
    assert statement["expires_ms"] - statement["issued_ms"] == 2 * 24 * 3600 * 1000
    assert a.status()["sharing"]["own_vouches"] == 1

    revoked = run_cli("vouch", subject_id, "--revoke", *home)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout
    assert a.status()["sharing"]["own_vouches"] == 0
    assert a.status()["sharing"]["own_revocations"] == 1

    for bad in (["not-a-peer-id"], [subject_id, "purple"]):
        refused = run_cli("vouch", *bad, *home)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("threatmesh: error: ")
    own_id = a.stdout_lines[0].rsplit("/p2p/", 1)[1]
    itself = run_cli("vouch", own_id, *home)
    assert itself.returncode == 1  # the node refuses (HTTP 400), not the command line
    assert "itself" in itself.stderr


def test_demo_delivers_everything_to_the_community_and_clear_only_to_the_newcomer() -> None:
    result = run_cli("demo", "--nodes", "4", "--per-level", "2", "--json", timeout_s=90)
    assert result.returncode == 0, result.stderr
    summary = json_line(result.stdout)
    # 3 publishers (the default), all in the 3-node community; 2 per level, 5 levels.
    published = 3 * 2 * 5
    assert summary["published"] == published
    assert summary["expected_deliveries"] == published * 3 + 3 * 2
    assert summary["deliveries"] == summary["expected_deliveries"]
    assert summary["newcomer"] == "node-3"
    assert summary["leaks"] == 0
    assert summary["complete"] is True
