"""The store's batch log: every batch's signed pubsub message, kept for catch-up.

``threatmesh.node.store`` merges indicators into one row per (itype, value); catch-up
(``threatmesh.node.sync``) needs the batches themselves, as their origin signed them, so that
an asker can check them like live ones. This module owns that table; the store calls it inside
its own transactions (``add_batch`` writes the log row together with the indicators).

Rules:

- One row per (origin, seq), written once (a second copy changes nothing).
- Sealed batches are logged sealed, as they travelled: this node may not be able to read
  them, and it serves them only to their recipients (``sync_policy.may_give``).
- Bounded: rows older than the retention are swept, and then the oldest rows until the log
  is under its byte cap (``history_retention_days``, ``history_max_mb`` in the config).
- A seq this node learnt it will never get (withheld by every server: a batch for others) is
  recorded in the origin's sequence, not here: there is nothing to serve.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

LOG_SCHEMA = """
-- Each batch's signed pubsub message (libp2p rpc.proto Message), for catch-up (node/sync.py).
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


@dataclass(frozen=True)
class LoggedBatch:
    """One batch as the log keeps it: the origin's signed pubsub message."""

    seq: int
    tlp: int
    message: bytes  # a serialized libp2p pubsub ``Message``, as signed by the origin


# Rows deleted per statement when sweeping (keeps each write transaction short).
SWEEP_CHUNK = 5_000


def log_batch(
    connection: sqlite3.Connection,
    origin_id: int,
    seq: int,
    tlp: int,
    received_ms: int,
    message: bytes,
) -> None:
    connection.execute(
        "INSERT OR IGNORE INTO batch_log (origin_id, seq, tlp, received_ms, message)"
        " VALUES (?, ?, ?, ?, ?)",
        (origin_id, seq, tlp, received_ms, message),
    )


def read_range(
    connection: sqlite3.Connection, origin_id: int, first: int, last: int, limit: int
) -> list[LoggedBatch]:
    """The logged batches of an origin with ``first <= seq <= last``, seq order, at most
    ``limit``."""
    rows = connection.execute(
        "SELECT seq, tlp, message FROM batch_log"
        " WHERE origin_id = ? AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
        (origin_id, first, last, limit),
    ).fetchall()
    return [LoggedBatch(seq, tlp, bytes(message)) for seq, tlp, message in rows]


def heads(connection: sqlite3.Connection, limit: int) -> list[tuple[str, int]]:
    """(origin peer ID, highest logged seq), the most recently heard origins first."""
    rows = connection.execute(
        "SELECT o.peer_id, max(l.seq), max(l.received_ms) AS last_ms"
        " FROM batch_log l JOIN origins o ON o.id = l.origin_id"
        " GROUP BY l.origin_id ORDER BY last_ms DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [(str(peer_id), int(seq)) for peer_id, seq, _ in rows]


def sweep(connection: sqlite3.Connection, *, older_than_ms: int, max_bytes: int) -> int:
    """Delete rows received before ``older_than_ms``, then the oldest until the messages
    take at most ``max_bytes``; how many rows. The caller holds a write transaction."""
    removed = connection.execute(
        "DELETE FROM batch_log WHERE received_ms < ?", (older_than_ms,)
    ).rowcount
    (total,) = connection.execute(
        "SELECT coalesce(sum(length(message)), 0) FROM batch_log"
    ).fetchone()
    while total > max_bytes:
        rows = connection.execute(
            "SELECT origin_id, seq, length(message) FROM batch_log ORDER BY received_ms LIMIT ?",
            (SWEEP_CHUNK,),
        ).fetchall()
        if not rows:
            break
        dropped = 0
        doomed: list[tuple[int, int]] = []
        for origin_id, seq, size in rows:
            if total - dropped <= max_bytes:
                break
            doomed.append((origin_id, seq))
            dropped += size
        connection.executemany("DELETE FROM batch_log WHERE origin_id = ? AND seq = ?", doomed)
        removed += len(doomed)
        total -= dropped
    return removed


def log_bytes(connection: sqlite3.Connection) -> tuple[int, int]:
    """(rows, bytes of messages) in the log."""
    rows, size = connection.execute(
        "SELECT count(*), coalesce(sum(length(message)), 0) FROM batch_log"
    ).fetchone()
    return int(rows), int(size)
