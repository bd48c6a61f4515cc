from __future__ import annotations

import json
import logging

import pytest

from threatmesh.node.logs import Libp2pNoiseFilter, configure_logging, get_logger


def _record(name: str, message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, (), None)


@pytest.mark.parametrize(
    "message",
    [
        "Failed to read DHT message from stream: ",
        "MultiselectClient handshake: read failed: fail to read from multiselect communicator",
        "Failed to open stream to peer 16Uiu2HAm...:",
    ],
)
def test_known_libp2p_noise_is_dropped(message: str) -> None:
    assert not Libp2pNoiseFilter().filter(_record("libp2p.kad_dht.kad_dht", message))


def test_other_messages_pass() -> None:
    assert Libp2pNoiseFilter().filter(_record("libp2p.network.swarm", "listener failed"))


@pytest.fixture
def restore_logging():  # type: ignore[no-untyped-def]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libp2p = logging.getLogger("libp2p")
    libp2p_level, libp2p_propagate = libp2p.level, libp2p.propagate
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    libp2p.setLevel(libp2p_level)
    libp2p.propagate = libp2p_propagate


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_and_libp2p_filtered(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    get_logger("threatmesh.test").info("node started", peer_id="16Uiu2")
    logging.getLogger("libp2p.kad_dht.kad_dht").warning("Failed to read DHT message from stream: ")
    logging.getLogger("libp2p.network.swarm").info("chatty info from py-libp2p")
    logging.getLogger("libp2p.network.swarm").warning("a real libp2p warning")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    events = [line["event"] for line in lines]
    assert events == ["node started", "a real libp2p warning"]
    assert lines[0]["peer_id"] == "16Uiu2"
    assert lines[0]["level"] == "info"
    assert "timestamp" in lines[0]


@pytest.mark.usefixtures("restore_logging")
def test_text_logs_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=False)
    get_logger("threatmesh.test").info("node started", peer_id="16Uiu2")
    err = capsys.readouterr().err
    assert "node started" in err
    assert "peer_id=16Uiu2" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])
