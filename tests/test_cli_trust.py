"""``threatmesh trust add|remove|list``: edits of <home>/trust.json, run in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from kit import assert_one_line_error as _assert_one_line_error
from kit import run_main as _run

from threatmesh.identity import TLP_AMBER, TLP_GREEN, TrustStore, generate_identity

ALICE = generate_identity().peer_id.to_base58()
BOB = generate_identity().peer_id.to_base58()


@pytest.fixture
def home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "home"
    assert _run(["init", "--home", str(path)], capsys)[0] == 0
    return path


def test_add_list_remove(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        ["trust", "add", ALICE, "amber", "--note", "CERT-X SOC", "--home", str(home)], capsys
    )
    assert code == 0
    assert out.strip() == f"trusted {ALICE} at amber"
    code, out, _ = _run(
        ["trust", "add", BOB, "TLP:GREEN", "--expires", "30d", "--home", str(home)], capsys
    )
    assert code == 0
    assert out.startswith(f"trusted {BOB} at green until 20")
    assert (home / "trust.json").stat().st_mode & 0o777 == 0o600

    code, out, _ = _run(["trust", "list", "--json", "--home", str(home)], capsys)
    assert code == 0
    records = {record["peer_id"]: record for record in json.loads(out)["trust"]}
    assert set(records) == {ALICE, BOB}
    assert set(records[ALICE]) == {"peer_id", "level", "note", "since", "expires"}
    assert records[ALICE]["level"] == "amber"
    assert records[ALICE]["note"] == "CERT-X SOC"
    assert records[ALICE]["expires"] is None
    assert records[ALICE]["since"].endswith("Z")
    assert records[BOB]["level"] == "green"
    assert records[BOB]["expires"].endswith("Z")

    code, out, _ = _run(["trust", "list", "--home", str(home)], capsys)
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split() == ["PEER", "ID", "LEVEL", "SINCE", "EXPIRES", "NOTE"]
    alice_row = next(row for row in rows if row.startswith(ALICE))
    assert alice_row.split()[1] == "amber"
    assert re.search(r"  never +CERT-X SOC$", alice_row)

    code, out, _ = _run(["trust", "remove", ALICE, "--home", str(home)], capsys)
    assert code == 0
    assert out.strip() == f"removed {ALICE}"
    assert TrustStore(home / "trust.json").load().level(BOB, 0) == TLP_GREEN
    assert TrustStore(home / "trust.json").load().get(ALICE) is None


def test_add_replaces_and_reports_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(["trust", "add", ALICE, "red", "--home", str(home)], capsys)
    code, out, _ = _run(
        ["trust", "add", ALICE, "amber+strict", "--json", "--home", str(home)], capsys
    )
    assert code == 0
    assert json.loads(out)["level"] == "amber-strict"
    entries = TrustStore(home / "trust.json").load().entries
    assert [(entry.peer_id, entry.level) for entry in entries] == [(ALICE, 4)]


def test_empty_list(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["trust", "list", "--home", str(home)], capsys)
    assert (code, out) == (0, "")
    assert "no trusted peers" in err
    code, out, _ = _run(["trust", "list", "--json", "--home", str(home)], capsys)
    assert json.loads(out) == {"trust": []}


def test_expired_entries_are_marked(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    TrustStore(home / "trust.json").add(ALICE, TLP_AMBER, "", 2_000, now_ms=1_000)
    code, out, _ = _run(["trust", "list", "--home", str(home)], capsys)
    assert code == 0
    assert "1970-01-01T00:00:02Z (expired)" in out


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["add", "not-a-peer", "green"], ["not-a-peer", "not a peer ID"]),
        (["add", ALICE, "purple"], ["LEVEL", "purple"]),
        (["add", ALICE, "clear"], ["grants nothing", "remove"]),
        (["add", ALICE, "green", "--expires", "soon"], ["--expires", "30d"]),
        (["add", ALICE, "green", "--expires", "0d"], ["--expires"]),
        (["add", ALICE, "green", "--expires", "999999999w"], ["--expires", "9999"]),
        (["add", ALICE, "green", "--note", "a\nb"], ["note", "one line"]),
        (["remove", BOB], [BOB, "not in", "trust.json"]),
    ],
    ids=["peer-id", "level", "clear", "duration", "zero", "far", "note", "absent"],
)
def test_user_mistakes_are_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    code, out, err = _run(["trust", *argv, "--home", str(home)], capsys)
    assert code == 2
    assert out == ""
    _assert_one_line_error(err, *needles)
    assert not (home / "trust.json").exists()


def test_corrupt_trust_file(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (home / "trust.json").write_text('{"version": 1, "trust": [{"peer_id": "x"}]}')
    for argv in (["list"], ["add", ALICE, "green"], ["remove", ALICE]):
        code, _, err = _run(["trust", *argv, "--home", str(home)], capsys)
        assert code == 2
        _assert_one_line_error(err, str(home / "trust.json"), "entry 1")


def test_missing_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["trust", "list", "--home", str(tmp_path / "nope")], capsys)
    assert code == 2
    _assert_one_line_error(err, str(tmp_path / "nope"), "threatmesh init")
