"""The trust store (identity/trust.py): file format, edits, polling, and effective_level."""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st

from threatmesh.identity import (
    TLP_AMBER,
    TLP_AMBER_STRICT,
    TLP_CLEAR,
    TLP_GREEN,
    TLP_LEVEL_NAMES,
    TLP_RED,
    KeyType,
    TrustBook,
    TrustEntry,
    TrustError,
    TrustStore,
    effective_level,
    generate_identity,
    parse_peer_id,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.topics import TLP_LEVELS

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000


def _peers(count: int) -> list[str]:
    return [generate_identity().peer_id.to_base58() for _ in range(count)]


ALICE, BOB, CAROL, DAVE, ERIN = _peers(5)
# A peer ID of a key too large to inline (RSA): the SHA-256 multihash of it.
RSA_STYLE_PEER = base58.b58encode(b"\x12\x20" + bytes(range(32))).decode()

_mtimes = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)


def _rewrite(path: Path, text: str) -> None:
    """Edit the file in place, as an editor might, with an mtime distinct from any before:
    the stamp must differ however fast the test runs."""
    path.write_text(text, encoding="utf-8")
    mtime_ns = next(_mtimes)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _document(*entries: dict[str, object]) -> str:
    return json.dumps({"version": 1, "trust": list(entries)})


# Levels and peer IDs --------------------------------------------------------------------------


def test_levels_equal_the_wire_and_the_topic_names() -> None:
    assert (TLP_CLEAR, TLP_GREEN, TLP_AMBER, TLP_AMBER_STRICT, TLP_RED) == (
        pb.TLP_CLEAR,
        pb.TLP_GREEN,
        pb.TLP_AMBER,
        pb.TLP_AMBER_STRICT,
        pb.TLP_RED,
    )
    assert tuple(TLP_LEVEL_NAMES.items()) == TLP_LEVELS


@pytest.mark.parametrize(
    "peer_id",
    [ALICE, generate_identity(KeyType.ED25519).peer_id.to_base58(), RSA_STYLE_PEER],
    ids=["secp256k1", "ed25519", "sha256"],
)
def test_valid_peer_ids(peer_id: str) -> None:
    assert parse_peer_id(peer_id).to_base58() == peer_id


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "non-empty"),
        ("0OIl", "not base58"),
        ("abc", "not a multihash"),
        (base58.b58encode(b"\x00\x05hello").decode(), "inlined key does not decode"),
        (base58.b58encode(b"\x12\x10" + bytes(16)).decode(), "not an identity or SHA-256"),
        (base58.b58encode(b"\x13\x20" + bytes(32)).decode(), "not an identity or SHA-256"),
        ("1" + ALICE, "not a multihash"),
    ],
    ids=["empty", "alphabet", "short", "bad-key", "short-sha", "other-hash", "leading-zero"],
)
def test_invalid_peer_ids(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_peer_id(text)


# The book -----------------------------------------------------------------------------------


def test_book_levels_and_expiry() -> None:
    book = TrustBook(
        [
            TrustEntry(ALICE, TLP_AMBER, "", NOW_MS, None),
            TrustEntry(BOB, TLP_GREEN, "", NOW_MS, NOW_MS + DAY_MS),
        ]
    )
    assert book.level(ALICE, NOW_MS) == TLP_AMBER
    assert book.level(BOB, NOW_MS + DAY_MS - 1) == TLP_GREEN
    assert book.level(BOB, NOW_MS + DAY_MS) == TLP_CLEAR  # the expiry is exclusive
    assert book.level(CAROL, NOW_MS) == TLP_CLEAR
    assert book.peers_at_or_above(TLP_GREEN, NOW_MS) == {ALICE, BOB}
    assert book.peers_at_or_above(TLP_AMBER, NOW_MS) == {ALICE}
    assert book.peers_at_or_above(TLP_GREEN, NOW_MS + DAY_MS) == {ALICE}
    assert [entry.peer_id for entry in book.entries] == sorted([ALICE, BOB])
    assert book.get(BOB) is not None  # an expired entry is still listed
    with pytest.raises(ValueError, match="two trust entries"):
        TrustBook([TrustEntry(ALICE, TLP_RED, "", 0, None)] * 2)


# The file -----------------------------------------------------------------------------------


def test_missing_file_is_an_empty_book(tmp_path: Path) -> None:
    assert len(TrustStore(tmp_path / "trust.json").load()) == 0


def test_add_then_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    store = TrustStore(path)
    added = store.add(ALICE, TLP_AMBER, "CERT-X SOC", None, now_ms=NOW_MS)
    store.add(BOB, TLP_GREEN, "", NOW_MS + DAY_MS, now_ms=NOW_MS)
    assert added == TrustEntry(ALICE, TLP_AMBER, "CERT-X SOC", NOW_MS, None)
    book = TrustStore(path).load()
    assert book.get(ALICE) == added
    assert book.get(BOB) == TrustEntry(BOB, TLP_GREEN, "", NOW_MS, NOW_MS + DAY_MS)
    assert path.stat().st_mode & 0o777 == 0o600
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert {entry["peer_id"]: entry["level"] for entry in document["trust"]} == {
        ALICE: "amber",
        BOB: "green",
    }
    assert [name for name in os.listdir(tmp_path) if name.endswith(".tmp")] == []


def test_add_replaces_the_entry(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.json")
    store.add(ALICE, TLP_RED, "old", now_ms=NOW_MS)
    store.add(ALICE, TLP_GREEN, "new", now_ms=NOW_MS + 1)
    book = store.load()
    assert book.entries == (TrustEntry(ALICE, TLP_GREEN, "new", NOW_MS + 1, None),)


def test_remove(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.json")
    store.add(ALICE, TLP_GREEN, now_ms=NOW_MS)
    assert store.remove(ALICE) is True
    assert store.remove(ALICE) is False
    assert len(store.load()) == 0
    with pytest.raises(TrustError, match="not a peer ID"):
        store.remove("nope")


def test_a_short_hand_written_entry_is_enough(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text(_document({"peer_id": ALICE, "level": "amber-strict"}))
    assert TrustStore(path).load().entries == (TrustEntry(ALICE, TLP_AMBER_STRICT, "", 0, None),)


@pytest.mark.parametrize(
    ("peer_id", "level", "note", "expires_ms", "problem"),
    [
        ("nope", TLP_GREEN, "", None, "not a peer ID"),
        (ALICE, TLP_CLEAR, "", None, "grants nothing"),
        (ALICE, 9, "", None, "unknown TLP level"),
        (ALICE, TLP_GREEN, "x" * 257, None, "at most 256"),
        (ALICE, TLP_GREEN, "two\nlines", None, "one line"),
        (ALICE, TLP_GREEN, "", NOW_MS, "not in the future"),
    ],
    ids=["peer-id", "clear", "level", "long-note", "newline", "past-expiry"],
)
def test_add_refuses(
    tmp_path: Path, peer_id: str, level: int, note: str, expires_ms: int | None, problem: str
) -> None:
    path = tmp_path / "trust.json"
    with pytest.raises(TrustError, match=problem):
        TrustStore(path).add(peer_id, level, note, expires_ms, now_ms=NOW_MS)
    assert not path.exists()


GOOD = {"peer_id": ALICE, "level": "green"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"version": 1, "trust": [], "extra": 1}', "unknown key 'extra'"),
        ('{"version": 2, "trust": []}', "'version' must be 1"),
        ('{"version": true, "trust": []}', "'version' must be 1"),
        ('{"version": 1, "trust": {}}', "'trust' must be a list"),
        (_document("x"), "entry 1: expected an object"),
        (_document({**GOOD, "levle": "red"}), "entry 1: unknown key 'levle'"),
        (_document({"peer_id": ALICE}), "entry 1: 'level' is missing"),
        (_document({**GOOD, "peer_id": "QmNotAPeer"}), "entry 1: peer_id: "),
        (_document({**GOOD, "peer_id": 7}), "entry 1: peer_id: "),
        (_document({**GOOD, "level": "purple"}), rf"entry 1 \({ALICE}\): level: 'purple'"),
        (_document({**GOOD, "level": 2}), "level: 2 is not one of"),
        (_document(GOOD, {**GOOD, "level": "red"}), "entry 2: .* is listed twice"),
        (_document({**GOOD, "since_ms": True}), "since_ms: expected epoch milliseconds"),
        (_document({**GOOD, "expires_ms": "2026"}), "expires_ms: expected epoch milliseconds"),
        (_document({**GOOD, "expires_ms": -1}), "expires_ms: expected epoch milliseconds"),
        (_document({**GOOD, "note": 5}), "note: must be a string"),
        ("[" * 100_000, "not valid JSON"),
    ],
    ids=[
        "json",
        "array",
        "top-key",
        "version",
        "version-bool",
        "trust-type",
        "entry-type",
        "entry-key",
        "missing-level",
        "peer-id",
        "peer-id-type",
        "level",
        "level-number",
        "duplicate",
        "since-bool",
        "expires-text",
        "expires-negative",
        "note-type",
        "deep",
    ],
)
def test_corrupt_file_is_refused_naming_file_and_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "trust.json"
    path.write_text(text)
    with pytest.raises(TrustError, match=problem) as error:
        TrustStore(path).load()
    assert str(error.value).startswith(f"{path}: ")
    assert "\n" not in str(error.value)


def test_non_utf8_directory_and_oversized_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(TrustError, match="not UTF-8"):
        TrustStore(path).load()
    path.write_text(" " * 2000 + _document())
    with pytest.raises(TrustError, match="too large"):
        TrustStore(path, max_file_bytes=1000).load()
    path.unlink()
    path.mkdir()
    with pytest.raises(TrustError, match="not a regular file"):
        TrustStore(path).load()


def test_a_corrupt_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text('{"version": 1, "trust": [oops]}')
    with pytest.raises(TrustError, match="not valid JSON"):
        TrustStore(path).add(ALICE, TLP_GREEN, now_ms=NOW_MS)
    with pytest.raises(TrustError, match="not valid JSON"):
        TrustStore(path).remove(ALICE)
    assert path.read_text() == '{"version": 1, "trust": [oops]}'


def test_entry_bound(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    store = TrustStore(path, max_entries=2)
    store.add(ALICE, TLP_GREEN, now_ms=NOW_MS)
    store.add(BOB, TLP_GREEN, now_ms=NOW_MS)
    with pytest.raises(TrustError, match="at most 2"):
        store.add(CAROL, TLP_GREEN, now_ms=NOW_MS)
    store.add(BOB, TLP_RED, now_ms=NOW_MS)  # replacing needs no room
    TrustStore(path).add(CAROL, TLP_GREEN, now_ms=NOW_MS)
    with pytest.raises(TrustError, match="3 entries, at most 2"):
        TrustStore(path, max_entries=2).load()


def test_file_size_bound_on_write(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.json", max_file_bytes=400)
    store.add(ALICE, TLP_GREEN, "x" * 100, now_ms=NOW_MS)
    with pytest.raises(TrustError, match="at most 400"):
        store.add(BOB, TLP_GREEN, "y" * 200, now_ms=NOW_MS)
    assert [entry.peer_id for entry in store.load().entries] == [ALICE]


def test_concurrent_edits_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    peers = _peers(24)
    failures: list[BaseException] = []

    def add_all(chunk: list[str]) -> None:
        try:
            for peer in chunk:
                TrustStore(path).add(peer, TLP_GREEN, now_ms=NOW_MS)
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    threads = [threading.Thread(target=add_all, args=(peers[i::3],)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert {entry.peer_id for entry in TrustStore(path).load().entries} == set(peers)


# Polling ------------------------------------------------------------------------------------


def test_reload_if_changed_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    node = TrustStore(path)  # what the running node holds
    first = node.reload_if_changed()  # never read: reads (no file: empty)
    assert first is not None
    assert len(first.book) == 0
    assert first.error is None
    assert node.reload_if_changed() is None

    TrustStore(path).add(ALICE, TLP_AMBER, now_ms=NOW_MS)  # the CLI, another process
    changed = node.reload_if_changed()
    assert changed is not None
    assert changed.error is None
    assert changed.book.level(ALICE, NOW_MS) == TLP_AMBER
    assert node.book is changed.book
    assert node.reload_if_changed() is None
    assert node.reload_if_changed() is None

    node.add(BOB, TLP_GREEN, now_ms=NOW_MS)  # its own edit is seen the same way
    assert node.book.level(BOB, NOW_MS) == TLP_CLEAR
    changed = node.reload_if_changed()
    assert changed is not None
    assert changed.book.level(BOB, NOW_MS) == TLP_GREEN


def test_a_file_that_becomes_corrupt_keeps_the_previous_book_and_says_so_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trust.json"
    TrustStore(path).add(ALICE, TLP_RED, now_ms=NOW_MS)
    node = TrustStore(path)
    good = node.load()

    _rewrite(path, path.read_text().replace('"red"', '"redd"'))
    failed = node.reload_if_changed()
    assert failed is not None
    assert failed.book is good
    assert failed.error is not None
    assert str(path) in failed.error
    assert "'redd'" in failed.error
    assert node.book is good
    assert node.reload_if_changed() is None  # not again at every poll

    _rewrite(path, path.read_text().replace('"redd"', '"green"'))
    fixed = node.reload_if_changed()
    assert fixed is not None
    assert fixed.error is None
    assert fixed.book.level(ALICE, NOW_MS) == TLP_GREEN


def test_a_deleted_file_is_no_trust(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    TrustStore(path).add(ALICE, TLP_RED, now_ms=NOW_MS)
    node = TrustStore(path)
    node.load()
    path.unlink()
    gone = node.reload_if_changed()
    assert gone is not None
    assert len(gone.book) == 0
    assert node.reload_if_changed() is None


# effective_level ----------------------------------------------------------------------------

BOOK = TrustBook(
    [
        TrustEntry(ALICE, TLP_GREEN, "", 0, None),
        TrustEntry(BOB, TLP_RED, "", 0, None),
        TrustEntry(CAROL, TLP_AMBER, "", 0, NOW_MS),  # expired
    ]
)


def _level(peer: str, vouchers: list[str], required: int = 2) -> int:
    return effective_level(peer, trust=BOOK, vouchers=vouchers, required=required, now_ms=NOW_MS)


def test_vouches_from_enough_explicitly_trusted_peers_make_green() -> None:
    assert _level(DAVE, []) == TLP_CLEAR
    assert _level(DAVE, [ALICE]) == TLP_CLEAR
    assert _level(DAVE, [ALICE, BOB]) == TLP_GREEN
    assert _level(DAVE, [ALICE, ALICE]) == TLP_CLEAR  # distinct vouchers
    assert _level(DAVE, [ALICE], required=1) == TLP_GREEN


def test_vouches_never_give_more_than_green() -> None:
    assert _level(DAVE, [BOB, ALICE]) == TLP_GREEN  # BOB is trusted at RED: still GREEN
    assert _level(BOB, []) == TLP_RED
    assert _level(BOB, [ALICE, ERIN]) == TLP_RED  # explicit trust above GREEN stays


def test_vouchers_count_only_when_trusted_explicitly() -> None:
    # ERIN is GREEN by ALICE's vouch, but ERIN's own vouch for DAVE does not count.
    assert _level(ERIN, [ALICE], required=1) == TLP_GREEN
    assert _level(DAVE, [ERIN], required=1) == TLP_CLEAR
    assert _level(DAVE, [ALICE, ERIN]) == TLP_CLEAR
    assert _level(DAVE, [CAROL], required=1) == TLP_CLEAR  # CAROL's trust expired
    assert _level(ALICE, [ALICE], required=1) == TLP_GREEN  # explicit, not by itself
    assert _level(DAVE, [DAVE], required=1) == TLP_CLEAR  # a vouch for oneself


def test_required_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _level(DAVE, [], required=0)


@given(
    explicit=st.sampled_from([None, *TLP_LEVEL_NAMES]),
    vouchers=st.lists(st.sampled_from([ALICE, BOB, CAROL, DAVE, ERIN]), max_size=6),
    required=st.integers(min_value=1, max_value=4),
)
def test_effective_level_is_between_explicit_and_green(
    explicit: int | None, vouchers: list[str], required: int
) -> None:
    subject = RSA_STYLE_PEER
    entries = [TrustEntry(ALICE, TLP_GREEN, "", 0, None), TrustEntry(BOB, TLP_RED, "", 0, None)]
    if explicit is not None:
        entries.append(TrustEntry(subject, explicit, "", 0, None))
    book = TrustBook(entries)
    level = effective_level(
        subject, trust=book, vouchers=vouchers, required=required, now_ms=NOW_MS
    )
    own = book.level(subject, NOW_MS)
    assert own <= level <= max(own, TLP_GREEN)
    counted = {voucher for voucher in vouchers if voucher in (ALICE, BOB)}
    assert (level > own) == (own < TLP_GREEN and len(counted) >= required)
