"""Stores written by older threatmesh versions (threatmesh.node.store_schema._migrate): opened,
migrated in place, nothing lost, and merged into afterwards as if they had always been new."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from kit import dump

from threatmesh.node.store import STORE_FILE_NAME, Store, StoredIndicator
from threatmesh.node.store_schema import APPLICATION_ID, SCHEMA_VERSION
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

CLEAR, GREEN, AMBER = 1, 2, 3
FQDN, URL = 4, 5
PEER_A = "16Uiu2HAmAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PEER_B = "16Uiu2HAmBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
PEER_C = "16Uiu2HAmCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"

# The schema as versions 1 and 2 wrote it (a frozen copy: the store no longer has it).
SCHEMA_V1 = """
CREATE TABLE schema_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    application TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE indicators (
    id INTEGER PRIMARY KEY,
    itype INTEGER NOT NULL,
    value TEXT NOT NULL,
    tlp INTEGER NOT NULL,
    max_tlp INTEGER NOT NULL,
    confidence INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    description TEXT NOT NULL,
    description_seen_ms INTEGER NOT NULL,
    sightings INTEGER NOT NULL,
    UNIQUE (itype, value)
);
CREATE INDEX indicators_by_last_seen ON indicators (last_seen_ms DESC, value, itype);
CREATE INDEX indicators_by_expiry ON indicators (expires_ms) WHERE expires_ms != 0;
CREATE TABLE indicator_tags (
    indicator_id INTEGER NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (indicator_id, tag)
) WITHOUT ROWID;
CREATE INDEX indicator_tags_by_tag ON indicator_tags (tag, indicator_id);
CREATE TABLE indicator_references (
    indicator_id INTEGER NOT NULL,
    reference TEXT NOT NULL,
    PRIMARY KEY (indicator_id, reference)
) WITHOUT ROWID;
CREATE TABLE indicator_providers (
    indicator_id INTEGER NOT NULL,
    provider TEXT NOT NULL,
    PRIMARY KEY (indicator_id, provider)
) WITHOUT ROWID;
CREATE TABLE origins (
    id INTEGER PRIMARY KEY,
    peer_id TEXT NOT NULL UNIQUE,
    highest_contiguous INTEGER NOT NULL,
    highest_seen INTEGER NOT NULL,
    batches INTEGER NOT NULL,
    last_received_ms INTEGER NOT NULL
);
CREATE TABLE origin_batches_ahead (
    origin_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (origin_id, seq)
) WITHOUT ROWID;
CREATE TABLE indicator_origins (
    indicator_id INTEGER NOT NULL,
    origin_id INTEGER NOT NULL,
    PRIMARY KEY (indicator_id, origin_id)
) WITHOUT ROWID;
"""
SCHEMA_V2_LOG = """
CREATE TABLE batch_log (
    origin_id INTEGER NOT NULL REFERENCES origins (id),
    seq INTEGER NOT NULL,
    tlp INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    message BLOB NOT NULL,
    PRIMARY KEY (origin_id, seq)
);
CREATE INDEX batch_log_by_time ON batch_log (received_ms);
"""

# Two batches, and the rows versions 1 and 2 kept for them.
BATCH_A1 = [
    pb.Indicator(
        value="evil.example",
        itype=FQDN,
        confidence=40,
        tags=["botnet", "c2"],
        references=["https://a.example/1"],
        provider="feed-a",
        first_seen_ms=1_000,
        last_seen_ms=5_000,
        description="newer",
    ),
    pb.Indicator(
        value="https://x.example/p",
        itype=URL,
        confidence=10,
        first_seen_ms=2_000,
        last_seen_ms=2_500,
        expires_ms=9_000,
    ),
]
BATCH_B2 = [
    pb.Indicator(
        value="evil.example",
        itype=FQDN,
        tlp=AMBER,
        confidence=80,
        tags=["c2", "emotet"],
        provider="feed-b",
        first_seen_ms=500,
        last_seen_ms=3_000,
        description="older",
    )
]
OLD_ROWS: dict[str, list[tuple[object, ...]]] = {
    "origins": [(1, PEER_A, 1, 1, 1, 99), (2, PEER_B, 0, 2, 1, 99)],
    "origin_batches_ahead": [(2, 2, 99)],
    "indicators": [
        (1, FQDN, "evil.example", GREEN, AMBER, 80, 500, 5_000, 0, "newer", 5_000, 2),
        (2, URL, "https://x.example/p", GREEN, GREEN, 10, 2_000, 2_500, 9_000, "", 0, 1),
    ],
    "indicator_tags": [(1, "botnet"), (1, "c2"), (1, "emotet")],
    "indicator_references": [(1, "https://a.example/1")],
    "indicator_providers": [(1, "feed-a"), (1, "feed-b")],
    "indicator_origins": [(1, 1), (1, 2), (2, 1)],
}
MESSAGE_A1 = b"the signed pubsub message of batch 1 of PEER_A"


def write_old_store(path: Path, version: int, extra_tags: tuple[str, ...] = ()) -> None:
    """A store as threatmesh wrote it at schema ``version`` (1 or 2), holding BATCH_A1 of
    PEER_A and BATCH_B2 of PEER_B (and ``extra_tags`` on evil.example)."""
    connection = sqlite3.connect(path)
    connection.executescript(SCHEMA_V1 + (SCHEMA_V2_LOG if version >= 2 else ""))
    with connection:
        connection.execute("INSERT INTO schema_version VALUES (1, 'threatmesh', ?)", (version,))
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        for table, rows in OLD_ROWS.items():
            marks = ", ".join("?" * len(rows[0]))
            connection.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        connection.executemany(
            "INSERT INTO indicator_tags VALUES (1, ?)", [(tag,) for tag in extra_tags]
        )
        if version >= 2:
            connection.execute("INSERT INTO batch_log VALUES (1, 1, ?, 99, ?)", (GREEN, MESSAGE_A1))
    connection.close()


def fresh_store(path: Path) -> Store:
    """A new store that received the same two batches."""
    store = Store.open(path)
    store.add_batch(origin=PEER_A, seq=1, tlp=GREEN, indicators=BATCH_A1, received_ms=99)
    store.add_batch(origin=PEER_B, seq=2, tlp=GREEN, indicators=BATCH_B2, received_ms=99)
    return store


def schema_version(path: Path) -> int:
    connection = sqlite3.connect(path)
    (version,) = connection.execute("SELECT version FROM schema_version").fetchone()
    connection.close()
    return int(version)


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_store_is_migrated_and_keeps_every_indicator(tmp_path: Path, version: int) -> None:
    old_path = tmp_path / STORE_FILE_NAME
    write_old_store(old_path, version)
    with Store.open(old_path) as migrated, fresh_store(tmp_path / "fresh.sqlite3") as fresh:
        assert schema_version(old_path) == SCHEMA_VERSION
        assert dump(migrated) == dump(fresh)
        (evil,) = migrated.query(value="evil.example")
        assert list(evil.indicator.tags) == ["botnet", "c2", "emotet"]
        assert evil.origins == (PEER_A, PEER_B)
        assert [values(migrated.query(tag=tag)) for tag in ("c2", "c")] == [["evil.example"], []]
        assert migrated.max_levels([(FQDN, "evil.example")]) == {(FQDN, "evil.example"): AMBER}
        for peer in (PEER_A, PEER_B):
            assert migrated.origin_seqs(peer) == fresh.origin_seqs(peer)
        logged = migrated.log_range(PEER_A, 1, 1, limit=10)
        assert [batch.message for batch in logged] == ([MESSAGE_A1] if version == 2 else [])

        # Both keep merging alike: a known indicator from a third origin, and a new one.
        later = [
            pb.Indicator(value="evil.example", itype=FQDN, tags=["zeus"], last_seen_ms=6_000),
            pb.Indicator(value="new.example", itype=FQDN, tags=["c2"], last_seen_ms=1),
        ]
        for store in (migrated, fresh):
            result = store.add_batch(
                origin=PEER_C, seq=1, tlp=CLEAR, indicators=later, received_ms=100
            )
            assert (result.inserted, result.merged) == (1, 1)
        assert dump(migrated) == dump(fresh)
        assert migrated.query(value="evil.example")[0].sightings == 3
        assert migrated.sweep_expired(10_000) == fresh.sweep_expired(10_000) == 1
        assert dump(migrated) == dump(fresh)
    with Store.open(old_path) as reopened:  # migrated once; now opened as it is
        assert reopened.count() == 2
    connection = sqlite3.connect(old_path)
    assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    connection.close()
    assert not tables & {"indicator_tags", "indicator_origins", "indicators_v2"}


def test_a_member_that_is_empty_or_holds_the_separator_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE_NAME
    write_old_store(path, 2, extra_tags=("split\x1fme", ""))
    with Store.open(path) as migrated:
        (evil,) = migrated.query(value="evil.example")
        assert list(evil.indicator.tags) == ["botnet", "c2", "emotet"]


def values(rows: list[StoredIndicator]) -> list[str]:
    return [row.indicator.value for row in rows]
