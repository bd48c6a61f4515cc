"""The node's store (threatmesh.node.store): merging, idempotency, queries, paging, expiry,
origin sequence tracking, persistence, refusal of files that are not stores, crash safety."""

from __future__ import annotations

import hashlib
import os
import random
import re
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from kit import dump

import threatmesh.node.store as store_module
import threatmesh.node.store_read as store_read
from threatmesh.node.store import (
    MAX_TAGS,
    STORE_FILE_NAME,
    Report,
    Store,
    StoredIndicator,
    StoreError,
    merge_batch,
    merge_reports,
)
from threatmesh.node.store_schema import APPLICATION_ID
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

CLEAR, GREEN, AMBER, AMBER_STRICT, RED = 1, 2, 3, 4, 5
FQDN, URL, SHA256 = 4, 5, 9
PEER_A = "16Uiu2HAmAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PEER_B = "16Uiu2HAmBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
PEER_C = "16Uiu2HAmCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"


def indicator(value: str = "evil.example", itype: int = FQDN, **fields: object) -> pb.Indicator:
    defaults: dict[str, object] = {
        "tlp": 0,
        "confidence": 50,
        "first_seen_ms": 1_000,
        "last_seen_ms": 2_000,
    }
    return pb.Indicator(value=value, itype=itype, **{**defaults, **fields})  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / STORE_FILE_NAME) as opened:
        yield opened


def add(
    store: Store,
    *indicators: pb.Indicator,
    origin: str = PEER_A,
    seq: int = 1,
    tlp: int = CLEAR,
) -> store_module.AddResult:
    return store.add_batch(
        origin=origin, seq=seq, tlp=tlp, indicators=list(indicators), received_ms=99
    )


def only(store: Store) -> StoredIndicator:
    (row,) = store.query()
    return row


def values(rows: list[StoredIndicator]) -> list[str]:
    return [row.indicator.value for row in rows]


# Merging -----------------------------------------------------------------------------------------


def test_merge_takes_min_first_seen_max_last_seen_max_confidence_and_unions(store: Store) -> None:
    first = indicator(
        confidence=40,
        first_seen_ms=1_000,
        last_seen_ms=5_000,
        tags=["botnet", "c2"],
        references=["https://a.example/1"],
        provider="feed-a",
    )
    second = indicator(
        confidence=80,
        first_seen_ms=500,
        last_seen_ms=3_000,
        tags=["c2", "emotet"],
        references=["https://b.example/2"],
        provider="feed-b",
    )
    assert add(store, first, origin=PEER_A) == store_module.AddResult(False, inserted=1, merged=0)
    assert add(store, second, origin=PEER_B) == store_module.AddResult(False, inserted=0, merged=1)

    row = only(store)
    assert row.indicator.first_seen_ms == 500
    assert row.indicator.last_seen_ms == 5_000
    assert row.indicator.confidence == 80
    assert list(row.indicator.tags) == ["botnet", "c2", "emotet"]
    assert list(row.indicator.references) == ["https://a.example/1", "https://b.example/2"]
    assert row.providers == ("feed-a", "feed-b")
    assert row.indicator.provider == "feed-a"
    assert row.origins == (PEER_A, PEER_B)
    assert row.sightings == 2
    assert store.count() == 1


def test_unknown_first_seen_never_wins(store: Store) -> None:
    add(store, indicator(first_seen_ms=0), seq=1)
    add(store, indicator(first_seen_ms=700), seq=2)
    add(store, indicator(first_seen_ms=0), seq=3)
    assert only(store).indicator.first_seen_ms == 700


def test_expiry_is_the_latest_and_never_beats_any_time(store: Store) -> None:
    add(store, indicator(expires_ms=9_000), seq=1)
    add(store, indicator(expires_ms=7_000), seq=2)
    assert only(store).indicator.expires_ms == 9_000
    add(store, indicator(expires_ms=0), seq=3)
    add(store, indicator(expires_ms=10_000), seq=4)
    assert only(store).indicator.expires_ms == 0


def test_description_is_the_latest_seen_non_empty_one(store: Store) -> None:
    add(store, indicator(description="old text", last_seen_ms=1_000), seq=1)
    add(store, indicator(description="new text", last_seen_ms=3_000), seq=2)
    assert only(store).indicator.description == "new text"
    # An empty description, or a replayed older report, does not overwrite it.
    add(store, indicator(description="", last_seen_ms=9_000), seq=3)
    add(store, indicator(description="replayed", last_seen_ms=2_000), seq=4)
    assert only(store).indicator.description == "new text"


def test_tlp_keeps_least_and_most_restrictive_levels(store: Store) -> None:
    add(store, indicator(), origin=PEER_A, tlp=AMBER)
    row = only(store)
    assert (row.indicator.tlp, row.max_tlp) == (AMBER, AMBER)
    add(store, indicator(), origin=PEER_B, tlp=GREEN)
    add(store, indicator(), origin=PEER_C, tlp=RED)
    row = only(store)
    assert (row.indicator.tlp, row.max_tlp) == (GREEN, RED)


def test_report_level_is_the_stricter_of_indicator_and_batch(store: Store) -> None:
    add(store, indicator("marked-red.example", tlp=RED), tlp=GREEN)
    add(store, indicator("marked-clear.example", tlp=CLEAR), tlp=AMBER, seq=2)
    add(store, indicator("unmarked.example", tlp=0), tlp=AMBER_STRICT, seq=3)
    levels = {row.indicator.value: row.indicator.tlp for row in store.query()}
    assert levels == {
        "marked-red.example": RED,
        "marked-clear.example": AMBER,
        "unmarked.example": AMBER_STRICT,
    }


def test_sightings_count_distinct_batches(store: Store) -> None:
    twice = [indicator(tags=["a"]), indicator(tags=["b"])]
    assert add(store, *twice, seq=1).inserted == 1  # named twice in one batch: one sighting
    assert only(store).sightings == 1
    assert list(only(store).indicator.tags) == ["a", "b"]
    add(store, indicator(), seq=2)
    add(store, indicator(), seq=2)  # the same batch again
    add(store, indicator(), origin=PEER_B, seq=2)  # same seq, another origin: another batch
    assert only(store).sightings == 3
    assert only(store).origins == (PEER_A, PEER_B)


def test_same_value_with_another_itype_is_another_indicator(store: Store) -> None:
    add(store, indicator("deadbeef", itype=SHA256), indicator("deadbeef", itype=URL))
    assert store.count() == 2


def test_tags_and_references_keep_the_smallest_members_in_any_order(tmp_path: Path) -> None:
    tags = [f"tag-{number:03d}" for number in range(100)]
    smallest = sorted(tags)[:MAX_TAGS]
    with Store.open(tmp_path / "one.sqlite3") as one, Store.open(tmp_path / "two.sqlite3") as two:
        add(one, indicator(tags=tags, references=tags))  # all in one report
        for seq, tag in enumerate(reversed(tags), start=1):  # one tag per batch, largest first
            add(two, indicator(tags=[tag], references=[tag]), seq=seq)
        for opened in (one, two):
            row = only(opened)
            assert list(row.indicator.tags) == smallest
            assert list(row.indicator.references) == smallest


def test_origins_and_providers_are_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_ORIGINS", 2)
    for origin in (PEER_C, PEER_B, PEER_A):
        add(store, indicator(provider=f"feed-{origin[-1]}"), origin=origin)
    row = only(store)
    assert row.origins == (PEER_A, PEER_B)
    assert row.sightings == 3
    assert row.providers == ("feed-A", "feed-B", "feed-C")  # under MAX_PROVIDERS


def test_merge_reports_matches_the_rules() -> None:
    a = Report.of(indicator(confidence=10, tags=["x"], description="a", last_seen_ms=5), GREEN)
    b = Report.of(indicator(confidence=90, tags=["y"], description="b", last_seen_ms=4), AMBER)
    merged = merge_reports(a, b)
    assert merged == merge_reports(b, a)
    assert (merged.tlp, merged.max_tlp, merged.confidence) == (GREEN, AMBER, 90)
    assert merged.tags == frozenset({"x", "y"})
    assert merged.description == "a"
    assert merge_batch([indicator(), indicator()], CLEAR).keys() == {(FQDN, "evil.example")}


# Idempotency and arguments -----------------------------------------------------------------------


def test_same_batch_twice_changes_nothing(store: Store) -> None:
    batch = [indicator(f"host{number}.example", tags=["t"]) for number in range(5)]
    first = store.add_batch(origin=PEER_A, seq=7, tlp=GREEN, indicators=batch, received_ms=1)
    before = dump(store)
    again = store.add_batch(origin=PEER_A, seq=7, tlp=GREEN, indicators=batch, received_ms=2)
    assert first == store_module.AddResult(duplicate=False, inserted=5, merged=0, gap=True)
    assert again == store_module.AddResult(duplicate=True)
    assert dump(store) == before
    # Also once the seq is below the contiguous prefix (its row is pruned).
    for seq in range(1, 7):
        add(store, origin=PEER_A, seq=seq)
    assert store.origin_seqs(PEER_A) == (7, [])
    assert add(store, *batch, origin=PEER_A, seq=7).duplicate
    assert dump(store) == before


@pytest.mark.parametrize(
    ("origin", "seq", "tlp", "message"),
    [
        ("", 1, CLEAR, "origin"),
        (PEER_A, 0, CLEAR, "seq"),
        (PEER_A, 2**63, CLEAR, "seq"),
        (PEER_A, 1, 0, "tlp"),
        (PEER_A, 1, 6, "tlp"),
    ],
)
def test_arguments_no_batch_has_are_refused(
    store: Store, origin: str, seq: int, tlp: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.add_batch(origin=origin, seq=seq, tlp=tlp, indicators=[indicator()], received_ms=0)
    assert store.count() == 0
    assert store.origins() == []


def test_unknown_indicator_level_refuses_the_whole_batch(store: Store) -> None:
    with pytest.raises(ValueError, match=r"bad\.example.*tlp 9"):
        add(store, indicator("good.example"), indicator("bad.example", tlp=9))
    assert store.count() == 0
    assert store.origin_seqs(PEER_A) == (0, [])


# Queries -----------------------------------------------------------------------------------------


@pytest.fixture
def filled(store: Store) -> Store:
    add(
        store,
        indicator("a.example", last_seen_ms=300, tags=["phishing"]),
        indicator("b.example", last_seen_ms=100, tags=["malware"]),
        indicator("https://c.example/x", itype=URL, last_seen_ms=300, tags=["phishing"]),
        tlp=CLEAR,
        seq=1,
    )
    add(
        store,
        indicator("d.example", last_seen_ms=200, tags=["phishing", "malware"]),
        indicator("e.example", last_seen_ms=400),
        tlp=AMBER,
        seq=2,
    )
    return store


def test_query_orders_by_last_seen_then_value(filled: Store) -> None:
    assert values(filled.query()) == [
        "e.example",
        "a.example",
        "https://c.example/x",
        "d.example",
        "b.example",
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"itype": URL}, ["https://c.example/x"]),
        ({"value": "d.example"}, ["d.example"]),
        ({"value": "missing.example"}, []),
        ({"tag": "phishing"}, ["a.example", "https://c.example/x", "d.example"]),
        ({"tag": "nothing"}, []),
        ({"since_ms": 300}, ["e.example", "a.example", "https://c.example/x"]),
        ({"tlp": CLEAR}, ["a.example", "https://c.example/x", "b.example"]),
        (
            {"tlp": AMBER},
            ["e.example", "a.example", "https://c.example/x", "d.example", "b.example"],
        ),
        ({"limit": 2}, ["e.example", "a.example"]),
        ({"limit": 0}, []),
        ({"itype": FQDN, "tag": "phishing"}, ["a.example", "d.example"]),
        ({"tag": "malware", "tlp": CLEAR}, ["b.example"]),
        ({"tag": "phishing", "since_ms": 250, "tlp": CLEAR}, ["a.example", "https://c.example/x"]),
        ({"itype": FQDN, "value": "a.example", "tag": "phishing", "since_ms": 300}, ["a.example"]),
        ({"itype": URL, "value": "a.example"}, []),
        (
            {"since_ms": 0, "tlp": RED, "limit": 3},
            ["e.example", "a.example", "https://c.example/x"],
        ),
    ],
)
def test_query_filters(filled: Store, filters: dict[str, int | str], expected: list[str]) -> None:
    assert values(filled.query(**filters)) == expected  # type: ignore[arg-type]
    assert values(list(filled.iter_query(**filters, page_size=1))) == expected  # type: ignore[arg-type]


def test_tag_filter_matches_whole_tags_only(store: Store) -> None:
    add(
        store,
        indicator("a.example", tags=["c2", "emotet"]),
        indicator("b.example", tags=["c"]),
        indicator("c.example", tags=["xc2", "c2x"]),
    )
    for tag, expected in [
        ("c2", ["a.example"]),
        ("emotet", ["a.example"]),
        ("c", ["b.example"]),
        ("xc2", ["c.example"]),
        ("mote", []),
        ("", []),
        ("c2\x1femotet", []),  # two tags with the separator between: not a tag
    ]:
        assert sorted(values(store.query(tag=tag))) == expected, tag


def test_query_visibility_uses_the_least_restrictive_level(filled: Store) -> None:
    add(filled, indicator("e.example", last_seen_ms=400), tlp=CLEAR, origin=PEER_B)
    (row,) = filled.query(value="e.example", tlp=CLEAR)
    assert (row.indicator.tlp, row.max_tlp) == (CLEAR, AMBER)


def test_paging_walks_ties_in_last_seen_without_repeats_or_gaps(store: Store) -> None:
    # 1,234 indicators: 617 values, each as two itypes, over 3 last_seen values. Most pages
    # start inside a tie of last_seen_ms, some between the two itypes of one value.
    batch = [
        indicator(f"host{number:05d}", itype=itype, last_seen_ms=number % 3)
        for number in range(617)
        for itype in (URL, FQDN)
    ]
    add(store, *batch)
    everything = store.query()
    assert len(everything) == store.count() == 1_234
    keys = [
        (-row.indicator.last_seen_ms, row.indicator.value, row.indicator.itype)
        for row in everything
    ]
    assert keys == sorted(keys)
    for page_size in (1, 7, 500):
        paged = list(store.iter_query(page_size=page_size))
        assert [row.indicator.value for row in paged] == values(everything)
    assert values(list(store.iter_query(limit=501, page_size=50))) == values(everything)[:501]
    assert values(store.query(limit=777)) == values(everything)[:777]


@pytest.mark.parametrize("keys_ahead", [1, 5, 600])
def test_paging_reads_keys_ahead_inside_long_runs_of_one_last_seen(
    store: Store, monkeypatch: pytest.MonkeyPatch, keys_ahead: int
) -> None:
    monkeypatch.setattr(store_read, "RUN_KEYS_AHEAD", keys_ahead)
    batch = [
        indicator(f"host{number:03d}", itype=itype, last_seen_ms=number % 2, tlp=CLEAR + number % 3)
        for number in range(150)
        for itype in (URL, FQDN)
    ]
    add(store, *batch, tlp=CLEAR)
    for filters in ({}, {"itype": URL}, {"tlp": GREEN}, {"since_ms": 1}):
        expected = sorted(
            (
                (-item.last_seen_ms, item.value, item.itype)
                for item in batch
                if filters.get("itype", item.itype) == item.itype
                and max(item.tlp, CLEAR) <= filters.get("tlp", RED)
                and item.last_seen_ms >= filters.get("since_ms", 0)
            ),
        )
        for page_size in (1, 7, 500):
            rows = list(store.iter_query(**filters, page_size=page_size))  # type: ignore[arg-type]
            keys = [
                (-row.indicator.last_seen_ms, row.indicator.value, row.indicator.itype)
                for row in rows
            ]
            assert keys == expected, (filters, page_size)
        assert len(store.query(**filters)) == len(expected)  # type: ignore[arg-type]


def test_iter_query_inside_a_run_skips_rows_that_changed_or_went(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_read, "RUN_KEYS_AHEAD", 4)
    run = [
        indicator(f"host{number:02d}", last_seen_ms=100, expires_ms=50 if number == 7 else 0)
        for number in range(20)
    ]
    add(store, *run)
    pages = store.iter_query(page_size=3)
    # Page 1 is host00..02; page 2 reads host03..06 ahead and is host03..05.
    seen = [next(pages).indicator.value for _ in range(6)]
    add(store, indicator("host06", last_seen_ms=200), seq=2)  # read ahead, then moved out
    assert store.sweep_expired(60) == 1  # host07 goes
    add(store, indicator("host05a", last_seen_ms=100), seq=3)  # before the last key read ahead
    add(store, indicator("host06a", last_seen_ms=100), seq=4)  # after it
    seen += [row.indicator.value for row in pages]
    expected = [f"host{number:02d}" for number in range(20) if number not in (6, 7)]
    assert seen == [*expected[:6], "host06a", *expected[6:]]


def test_iter_query_reads_one_page_at_a_time(store: Store) -> None:
    add(store, *(indicator(f"host{number}.example") for number in range(10)))
    pages = store.iter_query(page_size=4)
    first = next(pages)
    # The lock is free between pages: a write goes through mid-iteration.
    add(store, indicator("late.example", last_seen_ms=1), seq=2)
    assert [first, *pages][-1].indicator.value == "late.example"


def test_iter_query_page_size_is_bounded(store: Store) -> None:
    with pytest.raises(ValueError, match="page_size"):
        list(store.iter_query(page_size=0))
    with pytest.raises(ValueError, match="page_size"):
        list(store.iter_query(page_size=store_module.PAGE_SIZE + 1))


def test_query_values_are_parameters_not_sql(filled: Store) -> None:
    hostile = "x' OR '1'='1"
    assert filled.query(value=hostile) == []
    assert filled.query(tag=hostile) == []
    add(filled, indicator(hostile, tags=[hostile]), seq=3)
    assert values(filled.query(tag=hostile)) == [hostile]


# Expiry ------------------------------------------------------------------------------------------


def test_sweep_deletes_only_expired_rows_and_their_sets(store: Store) -> None:
    add(
        store,
        indicator("expired.example", expires_ms=1_000, tags=["gone"], provider="p"),
        indicator("expires-now.example", expires_ms=5_000),
        indicator("later.example", expires_ms=9_000),
        indicator("never.example", expires_ms=0),
    )
    assert store.sweep_expired(5_000) == 1
    assert sorted(values(store.query())) == [
        "expires-now.example",
        "later.example",
        "never.example",
    ]
    assert store.query(tag="gone") == []
    assert store.sweep_expired(5_000) == 0
    # Seen again after the sweep, it starts from scratch.
    add(store, indicator("expired.example", expires_ms=20_000), seq=2)
    (row,) = store.query(value="expired.example")
    assert (row.sightings, list(row.indicator.tags), row.providers) == (1, [], ())


def test_sweep_is_bounded_per_call(store: Store) -> None:
    add(store, *(indicator(f"host{number}.example", expires_ms=10) for number in range(1_200)))
    assert store.sweep_expired(11, batch_limit=700) == 700
    assert store.sweep_expired(11, batch_limit=700) == 500
    assert store.sweep_expired(11, batch_limit=700) == 0
    assert store.count() == 0
    with pytest.raises(ValueError, match="batch_limit"):
        store.sweep_expired(11, batch_limit=0)


# Origins and sequence numbers --------------------------------------------------------------------


def test_origin_seqs_track_the_contiguous_prefix_and_gaps(store: Store) -> None:
    assert store.origin_seqs(PEER_A) == (0, [])
    for seq in (1, 2, 5, 7):
        add(store, origin=PEER_A, seq=seq)
    assert store.origin_seqs(PEER_A) == (2, [3, 4, 6])
    assert store.last_seq(PEER_A) == 7  # where a publisher resumes its own sequence
    assert store.last_seq(PEER_B) == 0
    add(store, origin=PEER_A, seq=4)
    assert store.origin_seqs(PEER_A) == (2, [3, 6])
    add(store, origin=PEER_A, seq=3)
    assert store.origin_seqs(PEER_A) == (5, [6])
    add(store, origin=PEER_A, seq=6)
    assert store.origin_seqs(PEER_A) == (7, [])
    add(store, origin=PEER_B, seq=3)
    assert store.origin_seqs(PEER_B) == (0, [1, 2])
    assert store.origins() == [PEER_A, PEER_B]


def test_missing_seqs_are_bounded(store: Store) -> None:
    add(store, origin=PEER_A, seq=1)
    add(store, origin=PEER_A, seq=2**62)  # a huge jump is not materialised
    add(store, origin=PEER_A, seq=2**62 + 2)
    highest, missing = store.origin_seqs(PEER_A, max_missing=5)
    assert (highest, missing) == (1, [2, 3, 4, 5, 6])
    assert len(store.origin_seqs(PEER_A).missing) == store_module.MAX_MISSING
    assert store.origin_seqs(PEER_A, max_missing=0) == (1, [])


def test_filling_a_gap_walks_past_many_stored_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PAGE_SIZE", 3)  # the walk reads the seqs ahead in pages
    for seq in (*range(2, 12), 13, 14):
        add(store, origin=PEER_A, seq=seq)
    assert store.origin_seqs(PEER_A) == (0, [1, 12])
    add(store, origin=PEER_A, seq=1)
    assert store.origin_seqs(PEER_A) == (11, [12])
    add(store, origin=PEER_A, seq=12)
    assert store.origin_seqs(PEER_A) == (14, [])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_origin_seqs_property(tmp_path_factory: pytest.TempPathFactory, seqs: list[int]) -> None:
    path = tmp_path_factory.mktemp("seqs") / STORE_FILE_NAME
    with Store.open(path) as opened:
        seen: set[int] = set()
        for seq in seqs:
            result = add(opened, origin=PEER_A, seq=seq)
            assert result.duplicate == (seq in seen)
            seen.add(seq)
        contiguous = 0
        while contiguous + 1 in seen:
            contiguous += 1
        expected_missing = sorted(set(range(contiguous + 1, max(seen, default=0))) - seen)
        assert opened.origin_seqs(PEER_A, max_missing=4) == (contiguous, expected_missing[:4])


# Persistence and threads -------------------------------------------------------------------------


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    with Store.open(path) as first:
        add(first, indicator(tags=["kept"]), origin=PEER_A, seq=1, tlp=AMBER)
        add(first, indicator(), origin=PEER_B, seq=3, tlp=GREEN)
        before = dump(first)
    with Store.open(path) as second:
        assert dump(second) == before
        assert second.origin_seqs(PEER_A) == (1, [])
        assert second.origin_seqs(PEER_B) == (0, [1, 2])
        assert add(second, indicator(), origin=PEER_A, seq=1).duplicate
        (journal_mode,) = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()
        assert journal_mode == "wal"


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    opened = Store.open(path)
    opened.close()
    opened.close()  # twice is fine
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))}: the store is closed"):
        opened.count()


async def test_store_works_from_worker_threads(store: Store) -> None:
    async def publish(origin: str) -> None:
        for seq in range(1, 11):
            batch = [indicator(f"{origin[-1]}{seq}-{number}.example") for number in range(20)]
            await trio.to_thread.run_sync(
                partial(
                    store.add_batch,
                    origin=origin,
                    seq=seq,
                    tlp=CLEAR,
                    indicators=batch,
                    received_ms=0,
                )
            )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for origin in (PEER_A, PEER_B, PEER_C):
                nursery.start_soon(publish, origin)
    assert await trio.to_thread.run_sync(store.count) == 3 * 10 * 20
    for origin in (PEER_A, PEER_B, PEER_C):
        assert store.origin_seqs(origin) == (10, [])


def test_concurrent_threads_are_serialised(store: Store) -> None:
    errors: list[BaseException] = []

    def writer(origin: str) -> None:
        try:
            for seq in range(1, 21):
                add(store, indicator(f"shared{seq % 5}.example"), origin=origin, seq=seq)
                store.query(limit=5)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(origin,)) for origin in (PEER_A, PEER_B)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert store.count() == 5
    assert sum(row.sightings for row in store.query()) == 40


# Refusing files that are not stores --------------------------------------------------------------


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    path.touch()
    with Store.open(path) as opened:
        assert opened.count() == 0
    (application_id,) = sqlite3.connect(path).execute("PRAGMA application_id").fetchone()
    assert application_id == APPLICATION_ID


def test_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    path.write_text("these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(
        StoreError,
        match=rf"^{re.escape(str(path))}: not a threatmesh store, or its header is corrupt",
    ):
        Store.open(path)
    assert path.read_bytes() == before


def test_refuses_another_applications_database_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE contacts (name TEXT)")
    other.commit()
    other.close()
    before = path.read_bytes()
    with pytest.raises(
        StoreError, match=rf"^{re.escape(str(path))}: not a threatmesh store \(an SQLite database"
    ):
        Store.open(path)
    assert path.read_bytes() == before  # not switched to WAL, no table added
    assert not Path(f"{path}-wal").exists()


def test_refuses_a_store_from_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    Store.open(path).close()
    newer = sqlite3.connect(path)
    newer.execute("UPDATE schema_version SET version = 99")
    newer.commit()
    newer.close()
    with pytest.raises(
        StoreError, match=rf"^{re.escape(str(path))}: written by a newer threatmesh .*version 99"
    ):
        Store.open(path)


@pytest.mark.parametrize(
    ("damaged", "found_by"),
    [
        ("indicators_by_last_seen", r"quick_check: .*Page"),  # only the check at open reads it
        ("schema_version", "malformed"),  # read while telling whether the file is ours
    ],
)
def test_refuses_a_corrupt_store(tmp_path: Path, damaged: str, found_by: str) -> None:
    path = tmp_path / STORE_FILE_NAME
    with Store.open(path) as opened:
        for seq in range(1, 4):
            add(opened, *(indicator(f"{seq}-{n}.example", tags=["t"]) for n in range(300)), seq=seq)
    raw = sqlite3.connect(path)
    (page_size,) = raw.execute("PRAGMA page_size").fetchone()
    (root_page,) = raw.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = ?", (damaged,)
    ).fetchone()
    raw.close()
    with path.open("r+b") as file:  # overwrite the root page of one table or index
        file.seek(page_size * (root_page - 1))
        file.write(b"\xa5" * page_size)
    with pytest.raises(
        StoreError, match=rf"^{re.escape(str(path))}: the store is corrupt \(.*{found_by}"
    ):
        Store.open(path)


def test_refuses_a_path_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / STORE_FILE_NAME
    with pytest.raises(StoreError, match=rf"^{re.escape(str(path))}: cannot open the store"):
        Store.open(path)


def test_quick_check_budget_does_not_block_opening(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    with Store.open(path) as opened:
        add(opened, indicator())
    with Store.open(path, quick_check_budget_s=0.0) as reopened:
        assert reopened.count() == 1


# Crash safety ------------------------------------------------------------------------------------

CRASH_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from threatmesh.node.store import Store
    from threatmesh.pubsub.proto import threatmesh_pb2 as pb

    store = Store.open(Path(sys.argv[1]))
    for seq in range(1, 100_001):  # bounded; the parent kills it long before the end
        batch = [
            pb.Indicator(value=f"{seq}-{number}.example", itype=4, tags=[f"seq-{seq}"])
            for number in range(50)
        ]
        store.add_batch(origin="crash-peer", seq=seq, tlp=1, indicators=batch, received_ms=0)
        print(seq, flush=True)
    """
)


def test_acknowledged_batches_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    acknowledged: list[int] = []
    output = b""
    deadline = time.monotonic() + 60
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            while len(acknowledged) < 40 and time.monotonic() < deadline:
                if not selector.select(timeout=1.0):
                    continue
                chunk = os.read(child.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
                *lines, output = output.split(b"\n")
                acknowledged += [int(line) for line in lines]
        assert len(acknowledged) >= 40, child.stderr.read() if child.poll() is not None else ""
        child.send_signal(signal.SIGKILL)  # mid-way: it is writing batch 41 or later
    finally:
        child.kill()
        remaining, _ = child.communicate(timeout=30)
    # Whatever it printed before dying was acknowledged too.
    acknowledged += [int(line) for line in (output + remaining).split(b"\n")[:-1]]
    assert child.returncode == -signal.SIGKILL
    assert acknowledged == list(range(1, len(acknowledged) + 1))

    with Store.open(path) as reopened:
        highest, missing = reopened.origin_seqs("crash-peer")
        assert highest >= acknowledged[-1]
        assert missing == []
        for seq in acknowledged:
            assert len(reopened.query(tag=f"seq-{seq}")) == 50
        assert reopened.count() == 50 * highest  # nothing half-written either
    checker = sqlite3.connect(path)
    assert checker.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    checker.close()


# Order independence (hypothesis) -----------------------------------------------------------------

reports = st.builds(
    indicator,
    value=st.sampled_from(["a.example", "b.example", "c.example"]),
    itype=st.sampled_from([FQDN, URL]),
    tlp=st.integers(min_value=0, max_value=RED),
    confidence=st.integers(min_value=0, max_value=100),
    tags=st.lists(st.sampled_from(["t1", "t2", "t3", "t4"]), max_size=3),
    references=st.lists(st.sampled_from(["https://r/1", "https://r/2"]), max_size=2),
    provider=st.sampled_from(["", "feed-a", "feed-b"]),
    first_seen_ms=st.sampled_from([0, 10, 20, 30]),
    last_seen_ms=st.sampled_from([0, 40, 50, 60]),
    expires_ms=st.sampled_from([0, 100, 200]),
    description=st.sampled_from(["", "x", "y", "z"]),
)
batches = st.lists(
    st.tuples(
        st.sampled_from([PEER_A, PEER_B]),
        st.integers(min_value=1, max_value=4),
        st.integers(min_value=CLEAR, max_value=RED),
        st.lists(reports, max_size=4),
    ),
    max_size=6,
    unique_by=lambda batch: (batch[0], batch[1]),  # one content per (origin, seq)
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, order=st.randoms(use_true_random=False))
def test_merge_is_order_independent_and_matches_merge_reports(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[tuple[str, int, int, list[pb.Indicator]]],
    order: random.Random,
) -> None:
    shuffled = list(batches)
    order.shuffle(shuffled)
    directory = tmp_path_factory.mktemp("order")
    dumps = []
    for name, sequence in (("in-order", batches), ("shuffled", shuffled + batches[:2])):
        with Store.open(directory / f"{name}.sqlite3") as opened:
            for origin, seq, tlp, items in sequence:  # the replays at the end are no-ops
                opened.add_batch(origin=origin, seq=seq, tlp=tlp, indicators=items, received_ms=0)
            dumps.append(dump(opened))
            merged_view = {
                (row.indicator.itype, row.indicator.value): row for row in opened.query()
            }
    assert dumps[0] == dumps[1]

    # The SQL merge across batches agrees with merge_reports folded over every report.
    expected: dict[tuple[int, str], Report] = {}
    carried_by: dict[tuple[int, str], set[tuple[str, int]]] = {}
    for origin, seq, tlp, items in batches:
        for key, report in merge_batch(items, tlp).items():
            expected[key] = report if key not in expected else merge_reports(expected[key], report)
            carried_by.setdefault(key, set()).add((origin, seq))
    assert merged_view.keys() == expected.keys()
    for key, report in expected.items():
        row = merged_view[key]
        stored = row.indicator
        assert (stored.tlp, row.max_tlp, stored.confidence) == (
            report.tlp,
            report.max_tlp,
            report.confidence,
        )
        assert (stored.first_seen_ms, stored.last_seen_ms, stored.expires_ms) == (
            report.first_seen_ms,
            report.last_seen_ms,
            report.expires_ms,
        )
        assert stored.description == report.description
        assert set(stored.tags) == report.tags
        assert set(stored.references) == report.references
        assert set(row.providers) == report.providers
        assert row.sightings == len(carried_by[key])
        assert set(row.origins) == {origin for origin, _ in carried_by[key]}


# Throughput (run by hand) ------------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("THREATMESH_BENCH"), reason="benchmark: set THREATMESH_BENCH=1 (and -s)"
)
def test_benchmark_add_batch_throughput(tmp_path: Path) -> None:
    batch_size = 500
    total = int(os.environ.get("THREATMESH_BENCH_INDICATORS", "100000"))

    def make(number: int) -> pb.Indicator:
        return pb.Indicator(
            value=hashlib.sha256(str(number).encode()).hexdigest(),
            itype=SHA256,
            confidence=60,
            tags=["malware", "emotet", f"campaign-{number % 50}"],
            provider="feed.example",
            first_seen_ms=1_700_000_000_000 + number,
            last_seen_ms=1_700_000_000_000 + number,
            expires_ms=1_800_000_000_000,
            description="dropper",
            references=["https://example.com/report/1"],
        )

    prepared = [
        [make(number) for number in range(start, start + batch_size)]
        for start in range(0, total, batch_size)
    ]
    with Store.open(tmp_path / STORE_FILE_NAME) as opened:
        for origin, label in ((PEER_A, "new rows"), (PEER_B, "merges into existing rows")):
            started, cpu_started = time.perf_counter(), time.process_time()
            for seq, batch in enumerate(prepared, start=1):
                opened.add_batch(origin=origin, seq=seq, tlp=GREEN, indicators=batch, received_ms=0)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started  # without the waits for fsync
            print(
                f"\n{label}: {total / elapsed:,.0f} indicators/s "
                f"({elapsed / len(prepared) * 1000:.1f} ms per batch of {batch_size}; "
                f"{total / cpu:,.0f}/s of CPU time)"
            )
        started = time.perf_counter()
        exported = sum(1 for _ in opened.iter_query())
        print(f"export: {exported / (time.perf_counter() - started):,.0f} indicators/s")
