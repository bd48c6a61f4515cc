"""The store's write path on whole batches (threatmesh.node.store.add_batch): batches larger
than one multi-row statement, created against merged rows, row ids near SQLite's largest."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import threatmesh.node.store as store_module
from threatmesh.node.store import STORE_FILE_NAME, AddResult, Store
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

CLEAR, GREEN = 1, 2
FQDN = 4
PEER_A = "16Uiu2HAmAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PEER_B = "16Uiu2HAmBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


def indicator(number: int, **fields: object) -> pb.Indicator:
    defaults: dict[str, object] = {
        "tags": ["bench", f"tag-{number % 7}"],
        "references": [f"https://ref.example/{number % 3}"],
        "provider": f"feed-{number % 2}",
        "first_seen_ms": 1_000,
        "last_seen_ms": 2_000 + number,
    }
    return pb.Indicator(value=f"host-{number}.example", itype=FQDN, **{**defaults, **fields})  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / STORE_FILE_NAME) as opened:
        yield opened


@given(st.integers(min_value=0, max_value=5_000))
def test_row_counts_cover_every_row_in_few_shapes(total: int) -> None:
    counts = list(store_module._row_counts(total))
    assert sum(counts) == total
    shapes = {store_module.MAX_ROWS_PER_STATEMENT >> shift for shift in range(9)}
    assert set(counts) <= shapes


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


def test_row_ids_near_the_largest_are_told_apart_by_sightings(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    with Store.open(path) as opened:
        opened.add_batch(origin=PEER_A, seq=1, tlp=CLEAR, indicators=[indicator(0)], received_ms=0)
    # Move the row to the second largest id: SQLite then picks the ids of new rows at random.
    connection = sqlite3.connect(path)
    with connection:
        (row_id,) = connection.execute("SELECT id FROM indicators").fetchone()
        largest = store_module.MAX_ROW_ID - 1
        connection.execute("UPDATE indicators SET id = ? WHERE id = ?", (largest, row_id))
        for table in ("indicator_tags", "indicator_references", "indicator_providers"):
            connection.execute(
                f"UPDATE {table} SET indicator_id = ? WHERE indicator_id = ?", (largest, row_id)
            )
        connection.execute(
            "UPDATE indicator_origins SET indicator_id = ? WHERE indicator_id = ?",
            (largest, row_id),
        )
    connection.close()
    with Store.open(path) as opened:
        batch = [indicator(number) for number in range(5)]
        result = opened.add_batch(origin=PEER_B, seq=1, tlp=CLEAR, indicators=batch, received_ms=0)
        assert result == AddResult(duplicate=False, inserted=4, merged=1)
        rows = {row.indicator.value: row for row in opened.query()}
        assert rows["host-0.example"].origins == (PEER_A, PEER_B)
        assert rows["host-4.example"].origins == (PEER_B,)
        assert list(rows["host-4.example"].indicator.tags) == ["bench", "tag-4"]
