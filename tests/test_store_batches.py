"""The store's write path on whole batches (threatmesh.node.store.add_batch): large batches,
created against merged rows, row ids near SQLite's largest, values of one hash, origin bounds
on rows whose place in the order moves."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import threatmesh.node.store as store_module
import threatmesh.node.store_merge as store_merge
import threatmesh.node.store_read as store_read
from threatmesh.node.store import STORE_FILE_NAME, AddResult, Store
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

CLEAR, GREEN = 1, 2
FQDN, URL = 4, 5
PEER_A = "16Uiu2HAmAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PEER_B = "16Uiu2HAmBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
PEER_C = "16Uiu2HAmCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"
# Once a table holds it, SQLite picks the ids of new rows at random
# (https://www.sqlite.org/autoinc.html).
SQLITE_MAX_ROW_ID = 2**63 - 1


def indicator(number: int, **fields: object) -> pb.Indicator:
    defaults: dict[str, object] = {
        "tags": ["bench", f"tag-{number % 7}"],
        "references": [f"https://ref.example/{number % 3}"],
        "provider": f"feed-{number % 2}",
        "first_seen_ms": 1_000,
        "last_seen_ms": 2_000 + number,
        "value": f"host-{number}.example",
        "itype": FQDN,
    }
    return pb.Indicator(**{**defaults, **fields})  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / STORE_FILE_NAME) as opened:
        yield opened


@pytest.mark.parametrize("count", [1, 255, 256, 257, 600])
def test_every_member_of_a_large_batch_is_stored(store: Store, count: int) -> None:
    batch = [indicator(number) for number in range(count)]
    result = store.add_batch(origin=PEER_A, seq=1, tlp=CLEAR, indicators=batch, received_ms=0)
    assert result == AddResult(duplicate=False, inserted=count, merged=0)
    rows = {row.indicator.value: row for row in store.query()}
    assert len(rows) == count
    for number, sent in enumerate(batch):
        row = rows[sent.value]
        assert list(row.indicator.tags) == sorted(sent.tags)
        assert list(row.indicator.references) == list(sent.references)
        assert row.providers == (sent.provider,)
        assert row.origins == (PEER_A,)
        assert row.indicator.last_seen_ms == 2_000 + number


def test_a_batch_creates_some_rows_and_merges_into_others(store: Store) -> None:
    first = [indicator(number) for number in range(300)]
    store.add_batch(origin=PEER_A, seq=1, tlp=CLEAR, indicators=first, received_ms=0)
    # 200 known (with one new tag each), 250 new; one new indicator named twice.
    second = [indicator(number, tags=["again"]) for number in range(100, 550)]
    second.append(indicator(549, tags=["twice"]))
    result = store.add_batch(origin=PEER_B, seq=1, tlp=GREEN, indicators=second, received_ms=0)
    assert result == AddResult(duplicate=False, inserted=250, merged=200)
    rows = {row.indicator.value: row for row in store.query()}
    assert len(rows) == 550
    assert list(rows["host-100.example"].indicator.tags) == ["again", "bench", "tag-2"]
    assert rows["host-100.example"].origins == (PEER_A, PEER_B)
    assert rows["host-100.example"].sightings == 2
    assert list(rows["host-549.example"].indicator.tags) == ["again", "twice"]
    assert rows["host-549.example"].sightings == 1
    assert rows["host-0.example"].origins == (PEER_A,)


def test_merged_sets_are_trimmed_in_a_large_batch(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_ORIGINS", 1)
    batch = [indicator(number) for number in range(300)]
    store.add_batch(origin=PEER_B, seq=1, tlp=CLEAR, indicators=batch, received_ms=0)
    store.add_batch(origin=PEER_A, seq=1, tlp=CLEAR, indicators=batch, received_ms=0)
    assert {row.origins for row in store.query()} == {(PEER_A,)}  # the smallest peer ID kept


def test_rows_with_ids_near_the_largest_are_created_and_merged(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    with Store.open(path) as opened:
        opened.add_batch(origin=PEER_A, seq=1, tlp=CLEAR, indicators=[indicator(0)], received_ms=0)
    # Move the row to the second largest id: SQLite then picks the ids of new rows at random.
    connection = sqlite3.connect(path)
    with connection:
        (row_id,) = connection.execute("SELECT id FROM indicators").fetchone()
        largest = SQLITE_MAX_ROW_ID - 1
        connection.execute("UPDATE indicators SET id = ? WHERE id = ?", (largest, row_id))
    connection.close()
    with Store.open(path) as opened:
        batch = [indicator(number) for number in range(5)]
        result = opened.add_batch(origin=PEER_B, seq=1, tlp=CLEAR, indicators=batch, received_ms=0)
        assert result == AddResult(duplicate=False, inserted=4, merged=1)
        rows = {row.indicator.value: row for row in opened.query()}
        assert rows["host-0.example"].origins == (PEER_A, PEER_B)
        assert rows["host-4.example"].origins == (PEER_B,)
        assert list(rows["host-4.example"].indicator.tags) == ["bench", "tag-4"]


def test_values_of_one_hash_are_two_indicators(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store finds rows by value_hash; values that share one share an index key and must
    # still be two rows. No two are known for the real (64-bit) hash, so every value gets one.
    for module in (store_module, store_merge, store_read):
        monkeypatch.setattr(module, "value_hash", lambda value: 7)
    first, second = "c50963c80102.example", "d3f504638284.example"
    batch = [indicator(0, value=first, tags=["one"]), indicator(0, value=second, tags=["two"])]
    result = store.add_batch(origin=PEER_A, seq=1, tlp=CLEAR, indicators=batch, received_ms=0)
    assert result == AddResult(duplicate=False, inserted=2, merged=0)
    # One of them again, from another origin: it merges into its own row only.
    again = [indicator(0, value=second, tags=["again"])]
    result = store.add_batch(origin=PEER_B, seq=1, tlp=GREEN, indicators=again, received_ms=0)
    assert result == AddResult(duplicate=False, inserted=0, merged=1)
    rows = {row.indicator.value: row for row in store.query()}
    assert (list(rows[first].indicator.tags), rows[first].sightings) == (["one"], 1)
    assert (list(rows[second].indicator.tags), rows[second].sightings) == (["again", "two"], 2)
    assert rows[second].origins == (PEER_A, PEER_B)
    assert [row.indicator.value for row in store.query(value=second)] == [second]
    assert store.max_levels([(FQDN, first), (FQDN, second), (URL, first)]) == {
        (FQDN, first): CLEAR,
        (FQDN, second): GREEN,
    }


def test_origins_are_bounded_on_rows_that_move_in_the_order(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_ORIGINS", 2)
    batch = [indicator(number) for number in range(3)]
    for origin in (PEER_C, PEER_B):
        store.add_batch(origin=origin, seq=1, tlp=CLEAR, indicators=batch, received_ms=0)
    # Seen later, and from a third origin: the rows move in last_seen order and keep the two
    # smallest peer IDs.
    later = [indicator(number, last_seen_ms=9_000 + number) for number in range(2)]
    later.append(indicator(2))  # not later: stays in place
    result = store.add_batch(origin=PEER_A, seq=1, tlp=CLEAR, indicators=later, received_ms=0)
    assert result == AddResult(duplicate=False, inserted=0, merged=3)
    rows = store.query()
    assert [row.indicator.value for row in rows] == [
        "host-1.example",
        "host-0.example",
        "host-2.example",
    ]
    assert {row.origins for row in rows} == {(PEER_A, PEER_B)}
    assert {row.sightings for row in rows} == {3}
