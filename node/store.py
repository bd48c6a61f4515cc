"""The node's store: every indicator it received or published, merged per (itype, value).

SQLite in WAL mode at ``<home>/store.sqlite3``. The file, its checks and its durability
settings belong to ``store_schema``; the merge rules to ``store_merge`` (pure; read its
docstring for what a merged row holds); the read path to ``store_read``. This module is the
``Store`` itself and its write path.

Rules:
- ``Store`` is synchronous. The node calls it from a worker thread (``trio.to_thread``), so
  the connection may be used from any thread, and every public method holds one lock: calls
  are serialised, never interleaved.
- ``add_batch`` stores one batch in ONE transaction and returns only once it is committed and
  synced, so a batch it returned for survives a crash or a power loss. It is idempotent per
  (origin, seq): a batch already stored changes nothing and comes back ``duplicate``.
- Per origin the store keeps the highest contiguous seq (every seq up to it is stored) and the
  seqs stored above it, which is what ``origin_seqs`` reports gaps from. The rows above shrink
  away as gaps fill, so their number is bounded by how far out of order batches arrive.
- Errors: ``ValueError`` for arguments no valid batch or query has; ``StoreError`` (naming the
  file) for everything SQLite refuses, and for a closed store.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from threatmesh.node.store_log import LoggedBatch, log_batch, log_bytes, read_range
from threatmesh.node.store_log import heads as log_heads
from threatmesh.node.store_log import sweep as sweep_log
from threatmesh.node.store_merge import (
    MAX_ORIGINS,
    MAX_PROVIDERS,
    MAX_REFERENCES,
    MAX_TAGS,
    SCALAR_FIELDS,
    Report,
    check_batch,
    merge_batch,
    merge_reports,
)
from threatmesh.node.store_read import (
    PAGE_SIZE,
    Filter,
    Position,
    StoredIndicator,
    chunks,
    page_end,
    placeholders,
    read_page,
)
from threatmesh.node.store_schema import (
    DEFAULT_QUICK_CHECK_BUDGET_S,
    SET_TABLES,
    StoreError,
    open_store_connection,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

__all__ = [
    "MAX_ORIGINS",
    "MAX_PROVIDERS",
    "MAX_REFERENCES",
    "MAX_TAGS",
    "PAGE_SIZE",
    "STORE_FILE_NAME",
    "AddResult",
    "OriginSeqs",
    "Report",
    "Store",
    "StoreError",
    "StoredIndicator",
    "merge_batch",
    "merge_reports",
]

STORE_FILE_NAME = "store.sqlite3"
# Gaps reported by origin_seqs by default.
MAX_MISSING = 1_000
# Rows sampled per index when statistics are refreshed at close.
ANALYSIS_LIMIT_ROWS = 1_000


@dataclass(frozen=True)
class AddResult:
    """What ``add_batch`` did: nothing (``duplicate``), or how many rows it created/merged."""

    duplicate: bool
    inserted: int = 0
    merged: int = 0
    gap: bool = False  # stored above a hole in its origin's sequence (catch-up may fill it)


class OriginSeqs(NamedTuple):
    """Sequence state of one origin: every seq <= ``highest_contiguous`` is stored; ``missing``
    are the first (bounded) absent seqs between it and the highest seq stored."""

    highest_contiguous: int
    missing: list[int]


# The cross-batch merge; mirrors store_merge.merge_reports. In an UPDATE every right-hand side
# reads the row as it was, so the order of the assignments does not matter. Run with
# executemany, one row per statement: a multi-row VALUES upsert measured slower (17 vs 10 us
# per row), and so did RETURNING the row ids (18 us; ``_upsert`` selects them afterwards).
_UPSERT = """
INSERT INTO indicators (itype, value, tlp, max_tlp, confidence, first_seen_ms, last_seen_ms,
                        expires_ms, description, description_seen_ms, sightings)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
ON CONFLICT (itype, value) DO UPDATE SET
    tlp = min(tlp, excluded.tlp),
    max_tlp = max(max_tlp, excluded.max_tlp),
    confidence = max(confidence, excluded.confidence),
    first_seen_ms = CASE
        WHEN first_seen_ms = 0 OR excluded.first_seen_ms = 0
        THEN first_seen_ms + excluded.first_seen_ms
        ELSE min(first_seen_ms, excluded.first_seen_ms) END,
    last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
    expires_ms = CASE
        WHEN expires_ms = 0 OR excluded.expires_ms = 0 THEN 0
        ELSE max(expires_ms, excluded.expires_ms) END,
    description = CASE
        WHEN excluded.description != ''
         AND (excluded.description_seen_ms, excluded.description)
             > (description_seen_ms, description)
        THEN excluded.description ELSE description END,
    description_seen_ms = CASE
        WHEN excluded.description != ''
         AND (excluded.description_seen_ms, excluded.description)
             > (description_seen_ms, description)
        THEN excluded.description_seen_ms ELSE description_seen_ms END,
    sightings = sightings + 1
"""

# Rows per multi-row INSERT of set members. One statement of many rows costs about half of
# what executemany of one-row statements does (measured: 0.8 vs 1.6 us per member), and stays
# far under SQLite's limit on parameters.
MAX_ROWS_PER_STATEMENT = 256
# SQLite's largest rowid. Until a table holds it, a row created without an id gets the
# table's largest id + 1 (https://www.sqlite.org/autoinc.html); after, ids are random.
MAX_ROW_ID = 2**63 - 1

# (table, member column, bound) of the text sets, in SET_TABLES' order.
_BOUNDED_SETS = tuple(
    (table, column, bound)
    for (table, column), bound in zip(
        SET_TABLES, (MAX_TAGS, MAX_REFERENCES, MAX_PROVIDERS), strict=True
    )
)

# The store ---------------------------------------------------------------------------------------


class Store:
    """The node's indicator store. Open with ``Store.open(path)``; close, or use ``with``."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, path: Path, *, quick_check_budget_s: float = DEFAULT_QUICK_CHECK_BUDGET_S
    ) -> Store:
        """Open (or create) the store at ``path``; ``StoreError`` if it cannot be one."""
        return cls(open_store_connection(path, quick_check_budget_s=quick_check_budget_s), path)

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is None:
                return
            with contextlib.suppress(sqlite3.Error):  # only statistics; closing matters more
                # Refresh the planner's statistics where they went stale, sampling at most
                # ANALYSIS_LIMIT_ROWS per index so closing a big store stays quick.
                connection.execute(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT_ROWS}")
                connection.execute("PRAGMA optimize")
            connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Writing ------------------------------------------------------------------------------------

    def add_batch(
        self,
        *,
        origin: str,
        seq: int,
        tlp: int,
        indicators: Sequence[pb.Indicator],
        received_ms: int,
        message: bytes | None = None,
    ) -> AddResult:
        """Store batch ``seq`` of ``origin`` in one transaction; a no-op if already stored.

        ``message`` is the origin's signed pubsub message of the batch, kept in the batch log
        for catch-up (``store_log.py``). Returns after the commit is synced. ``ValueError``
        for arguments no valid batch has.
        """
        check_batch(origin, seq, tlp, len(indicators))
        reports = merge_batch(indicators, tlp)
        with self._locked("store a batch") as connection, _transaction(connection):
            origin_id = _origin_id(connection, origin)
            recorded = _record_seq(connection, origin_id, seq, received_ms)
            if recorded is None:
                connection.execute("ROLLBACK")  # nothing was written; end it unchanged
                return AddResult(duplicate=True)
            created, merged = _upsert(connection, reports)
            _add_members(connection, created, origin_id)
            grown = _add_members(connection, merged, origin_id)
            _trim_sets(connection, merged, grown)
            if message is not None:
                log_batch(connection, origin_id, seq, tlp, received_ms, message)
        return AddResult(duplicate=False, inserted=len(created), merged=len(merged), gap=recorded)

    def mark_withheld(self, origin: str, seqs: Sequence[int], received_ms: int) -> int:
        """Record ``seqs`` of ``origin`` as settled without content: batches that exist but
        are not for this node (every server withheld them). They no longer count as gaps.
        Returns how many were new."""
        if not origin:
            raise ValueError("origin must not be empty")
        settled = 0
        with self._locked("record withheld batches") as connection, _transaction(connection):
            origin_id = _origin_id(connection, origin)
            for seq in sorted(set(seqs)):
                if seq >= 1 and _record_seq(connection, origin_id, seq, received_ms) is not None:
                    settled += 1
        return settled

    def sweep_log(self, *, older_than_ms: int, max_bytes: int) -> int:
        """Remove logged batches received before ``older_than_ms``, then the oldest until the
        log holds at most ``max_bytes``; how many."""
        with self._locked("sweep the batch log") as connection, _transaction(connection):
            return sweep_log(connection, older_than_ms=older_than_ms, max_bytes=max_bytes)

    def sweep_expired(self, now_ms: int, *, batch_limit: int = 10_000) -> int:
        """Delete up to ``batch_limit`` indicators with ``0 != expires_ms < now_ms``; how many.

        Deletes in transactions of ``PAGE_SIZE`` rows, so no write lock is held long; a caller
        with more to sweep calls again while the result equals ``batch_limit``.
        """
        if batch_limit < 1:
            raise ValueError(f"batch_limit must be positive, got {batch_limit}")
        removed = 0
        with self._locked("sweep expired indicators") as connection:
            while removed < batch_limit:
                chunk = min(PAGE_SIZE, batch_limit - removed)
                with _transaction(connection):
                    ids = [
                        row[0]
                        for row in connection.execute(
                            "SELECT id FROM indicators WHERE expires_ms != 0 AND expires_ms < ?"
                            " LIMIT ?",
                            (now_ms, chunk),
                        )
                    ]
                    _delete_indicators(connection, ids)
                removed += len(ids)
                if len(ids) < chunk:
                    break
        return removed

    # Reading ------------------------------------------------------------------------------------

    def query(
        self,
        *,
        itype: int | None = None,
        value: str | None = None,
        tag: str | None = None,
        since_ms: int | None = None,
        tlp: int | None = None,
        limit: int | None = None,
    ) -> list[StoredIndicator]:
        """Merged indicators matching every given filter, newest ``last_seen_ms`` first.

        ``since_ms``: last_seen_ms >= since_ms; ``tlp``: visible at that level (least
        restrictive level <= tlp). One consistent snapshot; without ``limit`` the whole match
        is in memory, so big exports use ``iter_query``.
        """
        found = Filter.of(itype=itype, value=value, tag=tag, since_ms=since_ms, tlp=tlp)
        results: list[StoredIndicator] = []
        with self._locked("query indicators") as connection, _transaction(connection, "BEGIN"):
            after: Position | None = None
            while limit is None or len(results) < limit:
                size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(results))
                found_page = read_page(connection, found, after, size)
                results.extend(found_page)
                if len(found_page) < size:
                    break
                after = page_end(found_page[-1])
        return results

    def iter_query(
        self,
        *,
        itype: int | None = None,
        value: str | None = None,
        tag: str | None = None,
        since_ms: int | None = None,
        tlp: int | None = None,
        limit: int | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[StoredIndicator]:
        """Like ``query``, read ``page_size`` rows at a time (memory bounded by one page).

        Each page is read under the lock and the lock is released while the caller consumes
        it, so writes may land between pages: not a snapshot (a row whose last_seen_ms moves
        past the position already read is not seen again).
        """
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{PAGE_SIZE}, got {page_size}")
        found = Filter.of(itype=itype, value=value, tag=tag, since_ms=since_ms, tlp=tlp)
        after: Position | None = None
        produced = 0
        while limit is None or produced < limit:
            size = page_size if limit is None else min(page_size, limit - produced)
            with self._locked("query indicators") as connection:
                found_page = read_page(connection, found, after, size)
            yield from found_page
            produced += len(found_page)
            if len(found_page) < size:
                return
            after = page_end(found_page[-1])

    def count(self) -> int:
        """How many indicators (distinct (itype, value)) are stored."""
        with self._locked("count indicators") as connection:
            (total,) = connection.execute("SELECT count(*) FROM indicators").fetchone()
        return int(total)

    def origins(self) -> list[str]:
        """Peer IDs of every origin with a stored batch, sorted."""
        with self._locked("list origins") as connection:
            rows = connection.execute("SELECT peer_id FROM origins ORDER BY peer_id").fetchall()
        return [str(peer_id) for (peer_id,) in rows]

    def last_seq(self, origin: str) -> int:
        """The highest seq stored for ``origin`` (0 if none), gaps or not.

        A publisher resuming its own sequence continues from here, not from the contiguous
        prefix: a seq above a gap is taken, and reusing it would make peers drop the new batch
        as a duplicate.
        """
        with self._locked("read origin sequence numbers") as connection:
            row = connection.execute(
                "SELECT highest_seen FROM origins WHERE peer_id = ?", (origin,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def origin_seqs(self, origin: str, *, max_missing: int = MAX_MISSING) -> OriginSeqs:
        """``(highest_contiguous, missing)`` of ``origin``; ``(0, [])`` for an unknown one."""
        if max_missing < 0:
            raise ValueError(f"max_missing must be >= 0, got {max_missing}")
        with self._locked("read origin sequence numbers") as connection:
            row = connection.execute(
                "SELECT id, highest_contiguous FROM origins WHERE peer_id = ?", (origin,)
            ).fetchone()
            if row is None:
                return OriginSeqs(0, [])
            origin_id, highest_contiguous = row
            gaps = connection.execute(
                "SELECT previous + 1, seq - 1 FROM ("
                "  SELECT seq, lag(seq, 1, ?) OVER (ORDER BY seq) AS previous"
                "  FROM origin_batches_ahead WHERE origin_id = ?"
                ") WHERE seq > previous + 1 ORDER BY seq LIMIT ?",
                (highest_contiguous, origin_id, max_missing),
            ).fetchall()
        missing: list[int] = []
        for first, last in gaps:  # each gap is first..last inclusive; stop at max_missing
            room = max_missing - len(missing)
            missing.extend(range(first, min(last + 1, first + room)))
            if len(missing) >= max_missing:
                break
        return OriginSeqs(int(highest_contiguous), missing)

    def max_levels(self, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], int]:
        """The most restrictive TLP each stored (itype, value) of ``keys`` was seen at."""
        values_by_itype: dict[int, list[str]] = {}
        for itype, value in keys:
            values_by_itype.setdefault(itype, []).append(value)
        found: dict[tuple[int, str], int] = {}
        with self._locked("read indicator levels") as connection:
            for itype, values in values_by_itype.items():
                for chunk in chunks(sorted(set(values))):
                    for value, max_tlp in connection.execute(
                        "SELECT value, max_tlp FROM indicators"
                        f" WHERE itype = ? AND value IN ({placeholders(len(chunk))})",
                        (itype, *chunk),
                    ):
                        found[(itype, value)] = int(max_tlp)
        return found

    # The batch log (catch-up) -------------------------------------------------------------------

    def heads(self, *, limit: int) -> list[tuple[str, int]]:
        """(origin, highest logged seq) of up to ``limit`` origins, most recently heard first."""
        with self._locked("read the batch log") as connection:
            return log_heads(connection, limit)

    def log_range(self, origin: str, first: int, last: int, *, limit: int) -> list[LoggedBatch]:
        """``origin``'s logged batches with ``first <= seq <= last``, seq order, at most
        ``limit``; none for an unknown origin."""
        with self._locked("read the batch log") as connection:
            row = connection.execute(
                "SELECT id FROM origins WHERE peer_id = ?", (origin,)
            ).fetchone()
            if row is None:
                return []
            return read_range(connection, row[0], first, last, limit)

    def log_stats(self) -> tuple[int, int]:
        """(batches, bytes) in the batch log."""
        with self._locked("read the batch log") as connection:
            return log_bytes(connection)

    # Internals ----------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; SQLite errors become ``StoreError`` naming the file."""
        with self._lock:
            if self._connection is None:
                raise StoreError(f"{self.path}: the store is closed")
            try:
                yield self._connection
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: cannot {action}: {error}") from error


@contextmanager
def _transaction(connection: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """One transaction: committed if the body returns, rolled back if it raises.

    Writers take the write lock up front (IMMEDIATE), so what they read stays true until they
    commit. The body may end the transaction itself (a ROLLBACK of a no-op).
    """
    connection.execute(begin)
    try:
        yield
        if connection.in_transaction:
            connection.execute("COMMIT")
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")


def _origin_id(connection: sqlite3.Connection, origin: str) -> int:
    """The row id of ``origin``, created (with no seq stored) if new."""
    connection.execute(
        "INSERT OR IGNORE INTO origins (peer_id, highest_contiguous, highest_seen, batches,"
        " last_received_ms) VALUES (?, 0, 0, 0, 0)",
        (origin,),
    )
    (origin_id,) = connection.execute(
        "SELECT id FROM origins WHERE peer_id = ?", (origin,)
    ).fetchone()
    return int(origin_id)


def _record_seq(
    connection: sqlite3.Connection, origin_id: int, seq: int, received_ms: int
) -> bool | None:
    """Record that batch ``seq`` is stored: None if it already was, else whether it lies
    above a hole (a seq below it is missing)."""
    (highest_contiguous,) = connection.execute(
        "SELECT highest_contiguous FROM origins WHERE id = ?", (origin_id,)
    ).fetchone()
    if seq <= highest_contiguous:
        return None
    above_hole: bool = seq > highest_contiguous + 1
    if not above_hole:
        highest_contiguous = _contiguous_from(connection, origin_id, seq)
        connection.execute(
            "DELETE FROM origin_batches_ahead WHERE origin_id = ? AND seq <= ?",
            (origin_id, highest_contiguous),
        )
    else:
        added = connection.execute(
            "INSERT OR IGNORE INTO origin_batches_ahead (origin_id, seq, received_ms)"
            " VALUES (?, ?, ?)",
            (origin_id, seq, received_ms),
        )
        if added.rowcount == 0:
            return None
    connection.execute(
        "UPDATE origins SET highest_contiguous = ?, highest_seen = max(highest_seen, ?),"
        " batches = batches + 1, last_received_ms = max(last_received_ms, ?) WHERE id = ?",
        (highest_contiguous, seq, received_ms, origin_id),
    )
    return above_hole


def _contiguous_from(connection: sqlite3.Connection, origin_id: int, seq: int) -> int:
    """The end of the run seq, seq+1, ... made of ``seq`` and the batches stored ahead."""
    end = seq
    while True:
        ahead = connection.execute(
            "SELECT seq FROM origin_batches_ahead WHERE origin_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (origin_id, end, PAGE_SIZE),
        ).fetchall()
        for (next_seq,) in ahead:
            if next_seq != end + 1:
                return end
            end = next_seq
        if len(ahead) < PAGE_SIZE:
            return end


def _upsert(
    connection: sqlite3.Connection, reports: dict[tuple[int, str], Report]
) -> tuple[list[tuple[int, Report]], list[tuple[int, Report]]]:
    """Merge ``reports`` into their rows: (row id, report) of the rows created, and of those
    that existed before and were merged into.

    A created row gets the largest id + 1 (see ``MAX_ROW_ID``; we hold the write lock, so
    nobody else inserts meanwhile), so the created rows are those above the largest id before,
    and the ids come from the unique index alone: one query per itype and chunk that does not
    read the rows. Should ids ever come near ``MAX_ROW_ID``, ``sightings`` tells instead: 1
    for a created row, more for a merged one (every merge adds one).
    """
    (largest_id_before,) = connection.execute(
        "SELECT coalesce(max(id), 0) FROM indicators"
    ).fetchone()
    connection.executemany(_UPSERT, [report[:SCALAR_FIELDS] for report in reports.values()])
    by_sightings = largest_id_before >= MAX_ROW_ID - len(reports)
    columns = "id, value, sightings" if by_sightings else "id, value, 0"
    values_by_itype: dict[int, list[str]] = {}
    for itype, value in reports:
        values_by_itype.setdefault(itype, []).append(value)
    created: list[tuple[int, Report]] = []
    merged: list[tuple[int, Report]] = []
    for itype, values in values_by_itype.items():
        for chunk in chunks(values):
            for row_id, value, sightings in connection.execute(
                f"SELECT {columns} FROM indicators"
                f" WHERE itype = ? AND value IN ({placeholders(len(chunk))})",
                (itype, *chunk),
            ).fetchall():
                is_new = sightings == 1 if by_sightings else row_id > largest_id_before
                (created if is_new else merged).append((row_id, reports[(itype, value)]))
    return created, merged


def _add_members(
    connection: sqlite3.Connection, rows: list[tuple[int, Report]], origin_id: int
) -> tuple[bool, bool, bool, bool]:
    """Add the reports' tags, references, providers and the batch's origin to the sets of
    their rows. Whether each set table (``_BOUNDED_SETS``, then origins) gained a member."""
    tags: list[object] = []
    references: list[object] = []
    providers: list[object] = []
    origins: list[object] = []
    for row_id, report in rows:
        for tag in report.tags:
            tags += (row_id, tag)
        for reference in report.references:
            references += (row_id, reference)
        for provider in report.providers:
            providers += (row_id, provider)
        origins += (row_id, origin_id)
    tags_added, references_added, providers_added = (
        _insert_pairs(connection, table, column, flat)
        for (table, column, _), flat in zip(
            _BOUNDED_SETS, (tags, references, providers), strict=True
        )
    )
    origins_added = _insert_pairs(connection, "indicator_origins", "origin_id", origins)
    return (tags_added, references_added, providers_added, origins_added)


def _insert_pairs(
    connection: sqlite3.Connection, table: str, column: str, flat: list[object]
) -> bool:
    """INSERT OR IGNORE the rows ``flat`` (indicator id, member, indicator id, member, ...)
    into ``table``; whether any was new."""
    changes_before = connection.total_changes
    head = f"INSERT OR IGNORE INTO {table} (indicator_id, {column}) VALUES "
    start = 0
    for rows in _row_counts(len(flat) // 2):
        connection.execute(_multi_row(head, rows), flat[start : start + 2 * rows])
        start += 2 * rows
    return connection.total_changes != changes_before


def _row_counts(total: int) -> Iterator[int]:
    """The rows of each statement that inserts ``total`` rows: full statements, then powers of
    two. So a connection prepares at most nine shapes of a statement, which sqlite3's statement
    cache (keyed by the text) keeps, rather than one per batch size."""
    full, rest = divmod(total, MAX_ROWS_PER_STATEMENT)
    yield from (MAX_ROWS_PER_STATEMENT,) * full
    size = MAX_ROWS_PER_STATEMENT // 2
    while rest:
        if rest >= size:
            yield size
            rest -= size
        size //= 2


@functools.cache  # bounded: four tables x the nine sizes of _row_counts
def _multi_row(head: str, rows: int) -> str:
    """``head`` followed by ``rows`` rows of two parameters."""
    return head + ", ".join(("(?, ?)",) * rows)


def _trim_sets(
    connection: sqlite3.Connection,
    merged: list[tuple[int, Report]],
    grown: tuple[bool, bool, bool, bool],
) -> None:
    """Cut the sets of merged rows back to their bounds, keeping the smallest members (created
    rows are within them already: a report's sets are bounded). Only tables that gained a
    member (``grown``, from ``_add_members``) can have gone over."""
    for index, (table, column, bound) in enumerate(_BOUNDED_SETS):
        if not grown[index]:
            continue
        ids = [row_id for row_id, report in merged if report.sets()[index]]
        for row_id in _over_bound(connection, table, ids, bound):
            connection.execute(
                f"DELETE FROM {table} WHERE indicator_id = ? AND {column} IN ("
                f" SELECT {column} FROM {table} WHERE indicator_id = ?"
                f" ORDER BY {column} LIMIT -1 OFFSET ?)",
                (row_id, row_id, bound),
            )
    if not grown[3]:
        return
    merged_ids = [row_id for row_id, _ in merged]
    for row_id in _over_bound(connection, "indicator_origins", merged_ids, MAX_ORIGINS):
        connection.execute(
            "DELETE FROM indicator_origins WHERE indicator_id = ? AND origin_id IN ("
            " SELECT member.origin_id FROM indicator_origins AS member"
            " JOIN origins ON origins.id = member.origin_id WHERE member.indicator_id = ?"
            " ORDER BY origins.peer_id LIMIT -1 OFFSET ?)",
            (row_id, row_id, MAX_ORIGINS),
        )


def _over_bound(
    connection: sqlite3.Connection, table: str, ids: Sequence[int], bound: int
) -> list[int]:
    """Those of ``ids`` with more than ``bound`` members in ``table``."""
    over: list[int] = []
    for chunk in chunks(ids):
        over.extend(
            row_id
            for (row_id,) in connection.execute(
                f"SELECT indicator_id FROM {table}"
                f" WHERE indicator_id IN ({placeholders(len(chunk))})"
                " GROUP BY indicator_id HAVING count(*) > ?",
                (*chunk, bound),
            )
        )
    return over


def _delete_indicators(connection: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Delete rows and their sets (no foreign keys: explicit deletes cost less than cascades)."""
    for chunk in chunks(ids):
        marks = placeholders(len(chunk))
        for table in (*(table for table, _ in SET_TABLES), "indicator_origins"):
            connection.execute(f"DELETE FROM {table} WHERE indicator_id IN ({marks})", chunk)
        connection.execute(f"DELETE FROM indicators WHERE id IN ({marks})", chunk)
