"""The CLI's one-line errors and exit codes, run in-process (``main(argv)``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kit import assert_one_line_error as _assert_one_line_error
from kit import run_main as _run

from threatmesh.transports.swarm_key import load_swarm_key


def test_init_then_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    code, out, _ = _run(["init", "--home", str(home)], capsys)
    assert code == 0
    peer_id = out.strip()
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (home / "api.token").stat().st_mode & 0o777 == 0o600
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "config.toml").exists()
    code, out, _ = _run(["id", "--home", str(home), "--json"], capsys)
    assert code == 0
    assert json.loads(out) == {"peer_id": peer_id}
    # init again keeps the identity
    code, out, _ = _run(["init", "--home", str(home), "--json"], capsys)
    assert json.loads(out)["peer_id"] == peer_id
    assert json.loads(out)["created"] is False


def test_home_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THREATMESH_HOME", str(tmp_path / "env-home"))
    code, out, _ = _run(["init"], capsys)
    assert code == 0
    assert (tmp_path / "env-home" / "identity.key").exists()
    assert _run(["id"], capsys)[1] == out


def test_ed25519_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["init", "--home", str(tmp_path / "h"), "--key-type", "ed25519"], capsys)
    assert code == 0
    assert out.startswith("12D3KooW")


def test_id_of_missing_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["id", "--home", str(tmp_path / "nope")], capsys)
    assert code == 2
    _assert_one_line_error(err, str(tmp_path / "nope"), "threatmesh init")


def test_key_too_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(["init", "--home", str(tmp_path)], capsys)
    os.chmod(tmp_path / "identity.key", 0o644)
    code, _, err = _run(["id", "--home", str(tmp_path)], capsys)
    assert code == 2
    _assert_one_line_error(err, "identity.key", "too open", "chmod 600")


def test_corrupt_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(["init", "--home", str(tmp_path)], capsys)
    (tmp_path / "identity.key").write_bytes(b"not a key")
    code, _, err = _run(["id", "--home", str(tmp_path)], capsys)
    assert code == 2
    _assert_one_line_error(err, "identity.key", "corrupt")


@pytest.mark.parametrize(
    ("config", "needles"),
    [
        ("listen = ['/ip4/127.0.0.1/udp/9']", ["'listen'", "unsupported transport"]),
        ("colour = 'blue'", ["unknown key 'colour'"]),
        ("max_connections = 'many'", ["'max_connections'", "an integer"]),
    ],
)
def test_run_with_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, needles: list[str]
) -> None:
    _run(["init", "--home", str(tmp_path)], capsys)
    (tmp_path / "config.toml").write_text(config + "\n")
    code, _, err = _run(["run", "--home", str(tmp_path)], capsys)
    assert code == 2
    _assert_one_line_error(err, "config.toml", *needles)


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--listen", "/ip4/1.2.3/tcp/1"], ["'listen'", "not a valid multiaddr"]),
        (["--bootstrap", "/ip4/127.0.0.1/tcp/1"], ["'bootstrap'", "/p2p/<peer id>"]),
        (["--api", "0.0.0.0:1"], ["'api'", "loopback"]),
        (["--swarm", "Bad Name"], ["'swarm'"]),
        (["--psk", "/nonexistent/swarm.key"], ["/nonexistent/swarm.key"]),
        (["--bogus"], ["--bogus"]),
    ],
)
def test_run_with_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], needles: list[str]
) -> None:
    code, _, err = _run(["run", "--home", str(tmp_path / "h"), *flags], capsys)
    assert code == 2
    _assert_one_line_error(err, *needles)


def test_run_with_quic_and_psk_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "swarm.key"
    assert _run(["swarm-key", "--out", str(key)], capsys)[0] == 0
    code, _, err = _run(
        [
            "run",
            "--home",
            str(tmp_path / "h"),
            "--psk",
            str(key),
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ],
        capsys,
    )
    assert code == 2
    _assert_one_line_error(err, "QUIC", "private swarm")


def test_swarm_key_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "swarm.key"
    code, out, _ = _run(["swarm-key", "--out", str(key)], capsys)
    assert code == 0
    assert out.strip() == str(key)
    assert key.stat().st_mode & 0o777 == 0o600
    lines = key.read_bytes().split(b"\n")
    assert lines[:2] == [b"/key/swarm/psk/1.0.0/", b"/base16/"]
    assert len(lines[2]) == 64
    assert len(load_swarm_key(key)) == 32
    code, _, err = _run(["swarm-key", "--out", str(key)], capsys)  # never overwrite silently
    assert code == 2
    _assert_one_line_error(err, str(key))


def test_status_without_a_running_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(["init", "--home", str(tmp_path)], capsys)
    code, _, err = _run(["status", "--home", str(tmp_path)], capsys)
    assert code == 1
    _assert_one_line_error(err, "no running node")


def test_status_when_the_node_died(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(["init", "--home", str(tmp_path)], capsys)
    (tmp_path / "api.addr").write_text("http://127.0.0.1:1\n")  # left behind by a crash
    code, _, err = _run(["status", "--home", str(tmp_path)], capsys)
    assert code == 1
    _assert_one_line_error(err, "does not answer")


def test_home_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = _run(["init", "--home", str(tmp_path / "file")], capsys)
    assert code == 2
    _assert_one_line_error(err, "not a directory")
