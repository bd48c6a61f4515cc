"""The node's store: every indicator it received or published, merged per (itype, value).

SQLite in WAL mode at ``<home>/store.sqlite3``. The file, its checks and its durability
settings belong to ``store_schema``; the merge rules to ``store_merge`` (pure; read its
docstring for what a merged row holds); the read path to ``store_read``. This module is the
``Store`` itself and its write path.

The write path, per batch: ``store_merge.report_rows`` turns the indicators into rows in the
stored form (each protobuf field read once); one query per PAGE_SIZE of them finds those
already stored, by ``value_hash``; the new ones are inserted, one statement each
(executemany); each stored one gets one UPDATE that merges the scalars in SQL and takes the
set unions made in Python. A new indicator writes its row and two index entries
(``store_schema.INDICATORS_SCHEMA``). On ``bench/store_validate.py`` (CPU per indicator,
medians) this took 21.4 -> 7.2 us for new indicators and 22.4 -> 9.8 with a quarter merged
into known ones, against schema version 2's write path (README of bench/).

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
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from threatmesh.node.store_log import LoggedBatch, log_batch, log_bytes, read_range
from threatmesh.node.store_log import heads as log_heads
from threatmesh.node.store_log import sweep as sweep_log
from threatmesh.node.store_merge import (
    MAX_ORIGINS,
    MAX_PROVIDERS,
    MAX_REFERENCES,
    MAX_TAGS,
    MEMBER_SEPARATOR,
    Report,
    ReportRow,
    check_batch,
    merge_batch,
    merge_reports,
    report_rows,
    union_members,
    value_hash,
)
from threatmesh.node.store_read import (
    PAGE_SIZE,
    Filter,
    Pages,
    StoredIndicator,
    chunks,
    placeholders,
)
from threatmesh.node.store_schema import (
    DEFAULT_QUICK_CHECK_BUDGET_S,
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


# New rows: each a ReportRow (store_merge's order), carried by one batch. The batch's origin id
# is formatted in, not bound: it is ours (an integer from ``origins``), and binding it would
# mean building a new tuple per row (measured: 4% of the instructions of a new row). One
# statement per row with executemany: a statement of many rows measured no cheaper.
_INSERT = """
INSERT INTO indicators (itype, value, tlp, max_tlp, confidence, first_seen_ms, last_seen_ms,
                        expires_ms, description, description_seen_ms, tag_list, reference_list,
                        provider_list, value_hash, origin_list, sightings)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{origin_id:d}', 1)
"""

# The merge into an existing row, the scalars by store_merge.merge_reports' rules (in an UPDATE
# every right-hand side reads the row as it was, so the order of the assignments does not
# matter). Parameters (_merge builds them): the report's tlp, max_tlp, confidence,
# first_seen_ms, description and description_seen_ms; the row's id; its merged tag,
# reference, provider and origin lists (unions made in Python, _merge: as SQL they measured
# slower); for _MERGE_MOVED the report's last_seen_ms and expires_ms. Two statements: SQLite
# rewrites the entries of every index whose column an UPDATE assigns, even to the value it
# had, and most merges change neither last_seen_ms nor expires_ms (measured: 10% more pages
# written at commit).
_MERGE_SET = """
    tlp = min(tlp, ?1),
    max_tlp = max(max_tlp, ?2),
    confidence = max(confidence, ?3),
    first_seen_ms = CASE
        WHEN first_seen_ms = 0 OR ?4 = 0 THEN first_seen_ms + ?4
        ELSE min(first_seen_ms, ?4) END,
    description = CASE
        WHEN ?5 != '' AND (?6, ?5) > (description_seen_ms, description) THEN ?5
        ELSE description END,
    description_seen_ms = CASE
        WHEN ?5 != '' AND (?6, ?5) > (description_seen_ms, description) THEN ?6
        ELSE description_seen_ms END,
    sightings = sightings + 1,
    tag_list = ?8,
    reference_list = ?9,
    provider_list = ?10,
    origin_list = ?11"""
_MERGE = f"UPDATE indicators SET {_MERGE_SET} WHERE id = ?7"
_ORIGINS_PARAMETER = 10  # ?11, 0-based
_MERGE_MOVED = f"""UPDATE indicators SET {_MERGE_SET},
    last_seen_ms = max(last_seen_ms, ?12),
    expires_ms = CASE WHEN expires_ms = 0 OR ?13 = 0 THEN 0 ELSE max(expires_ms, ?13) END
WHERE id = ?7"""
# What _find reads of a stored row: what _merge needs beyond SQL (the sets, and whether the
# indexed columns change).
_STORED_COLUMNS = (
    "itype, value, id, last_seen_ms, expires_ms, tag_list, reference_list, provider_list,"
    " origin_list"
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
        reports = report_rows(indicators, tlp)
        with self._locked("store a batch") as connection, _transaction(connection):
            origin_id = _origin_id(connection, origin)
            recorded = _record_seq(connection, origin_id, seq, received_ms)
            if recorded is None:
                connection.execute("ROLLBACK")  # nothing was written; end it unchanged
                return AddResult(duplicate=True)
            stored = _find(connection, reports)
            inserted = _insert(connection, reports, stored, origin_id)
            _merge(connection, reports, stored, origin_id)
            if message is not None:
                log_batch(connection, origin_id, seq, tlp, received_ms, message)
        return AddResult(duplicate=False, inserted=inserted, merged=len(stored), gap=recorded)

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
                    deleted = connection.execute(
                        "DELETE FROM indicators WHERE id IN (SELECT id FROM indicators"
                        " WHERE expires_ms != 0 AND expires_ms < ? LIMIT ?)",
                        (now_ms, chunk),
                    ).rowcount
                removed += deleted
                if deleted < chunk:
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
        pages = Pages(Filter.of(itype=itype, value=value, tag=tag, since_ms=since_ms, tlp=tlp))
        results: list[StoredIndicator] = []
        with self._locked("query indicators") as connection, _transaction(connection, "BEGIN"):
            while limit is None or len(results) < limit:
                size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(results))
                found_page = pages.next(connection, size)
                results.extend(found_page)
                if len(found_page) < size:
                    break
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
        past the position already read is not seen again; see also ``store_read.Pages``).
        """
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{PAGE_SIZE}, got {page_size}")
        pages = Pages(Filter.of(itype=itype, value=value, tag=tag, since_ms=since_ms, tlp=tlp))
        produced = 0
        while limit is None or produced < limit:
            size = page_size if limit is None else min(page_size, limit - produced)
            with self._locked("query indicators") as connection:
                found_page = pages.next(connection, size)
            yield from found_page
            produced += len(found_page)
            if len(found_page) < size:
                return

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
        wanted = set(keys)
        hashes = sorted({value_hash(value) for _, value in wanted})
        found: dict[tuple[int, str], int] = {}
        with self._locked("read indicator levels") as connection:
            for chunk in chunks(hashes):
                for itype, value, max_tlp in connection.execute(
                    "SELECT itype, value, max_tlp FROM indicators"
                    f" WHERE value_hash IN ({placeholders(len(chunk))})",
                    chunk,
                ):
                    if (itype, value) in wanted:
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


def _find(
    connection: sqlite3.Connection, reports: dict[tuple[int, str], ReportRow]
) -> dict[tuple[int, str], tuple[Any, ...]]:
    """The stored rows (``_STORED_COLUMNS``) of those ``reports`` that have one, by key.

    One query per PAGE_SIZE hashes, answered from ``indicators_by_value``; a row is read only
    where a hash is in the store (mostly the report's own row: another value of the same hash
    is rare, and left out by its key).
    """
    stored: dict[tuple[int, str], tuple[Any, ...]] = {}
    hashes = [row[-1] for row in reports.values()]  # each row's value_hash
    for chunk in chunks(hashes):
        for row in connection.execute(
            f"SELECT {_STORED_COLUMNS} FROM indicators"
            f" WHERE value_hash IN ({placeholders(len(chunk))})",
            chunk,
        ):
            key = (row[0], row[1])
            if key in reports:
                stored[key] = row
    return stored


def _insert(
    connection: sqlite3.Connection,
    reports: dict[tuple[int, str], ReportRow],
    stored: dict[tuple[int, str], tuple[Any, ...]],
    origin_id: int,
) -> int:
    """Create the rows of the ``reports`` not ``stored``, carried by ``origin_id``'s batch;
    how many. Their sets are bounded already (``report_rows``), and one origin is within
    MAX_ORIGINS."""
    new_rows = (
        [row for key, row in reports.items() if key not in stored] if stored else reports.values()
    )
    connection.executemany(_INSERT.format(origin_id=origin_id), new_rows)
    return len(new_rows)


def _merge(
    connection: sqlite3.Connection,
    reports: dict[tuple[int, str], ReportRow],
    stored: dict[tuple[int, str], tuple[Any, ...]],
    origin_id: int,
) -> None:
    """Merge ``reports`` into their ``stored`` rows: one more sighting each, the unions of
    their sets, and ``origin_id`` among their origins (the MAX_ORIGINS smallest peer IDs are
    kept)."""
    origin = str(origin_id)
    separator = MEMBER_SEPARATOR
    unchanged: list[tuple[object, ...]] = []  # last_seen_ms and expires_ms stay as they were
    moved: list[tuple[object, ...]] = []
    over_bound: list[tuple[list[tuple[object, ...]], int]] = []  # (list, position)
    for key, stored_row in stored.items():
        _, _, row_id, last_seen_ms, expires_ms, tags, references, providers, origins = stored_row
        (
            _,
            _,
            tlp,
            max_tlp,
            confidence,
            first_seen_ms,
            report_last_seen_ms,
            report_expires_ms,
            description,
            description_seen_ms,
            report_tags,
            report_references,
            report_providers,
            _,
        ) = reports[key]
        if report_tags != tags:
            tags = union_members(tags, report_tags, MAX_TAGS)
        if report_references != references:
            references = union_members(references, report_references, MAX_REFERENCES)
        if report_providers != providers:
            providers = union_members(providers, report_providers, MAX_PROVIDERS)
        # Ids in arrival order (readers sort). Not a substring: certainly not a member.
        if origin not in origins or origin not in origins.split(separator):
            origins = f"{origins}{separator}{origin}"
        # Only the parameters the statement reads: binding one costs more than picking it.
        parameters: tuple[object, ...] = (
            tlp,
            max_tlp,
            confidence,
            first_seen_ms,
            description,
            description_seen_ms,
            row_id,
            tags,
            references,
            providers,
            origins,
        )
        into = unchanged
        if report_last_seen_ms > last_seen_ms or (
            expires_ms != 0 and (report_expires_ms == 0 or report_expires_ms > expires_ms)
        ):
            into = moved
            parameters += (report_last_seen_ms, report_expires_ms)
        if origins.count(separator) >= MAX_ORIGINS:
            over_bound.append((into, len(into)))
        into.append(parameters)
    if over_bound:
        _trim_origins(connection, over_bound)
    connection.executemany(_MERGE, unchanged)
    connection.executemany(_MERGE_MOVED, moved)


def _trim_origins(
    connection: sqlite3.Connection, over_bound: list[tuple[list[tuple[object, ...]], int]]
) -> None:
    """Cut the origins of the merge parameters at ``over_bound`` to their MAX_ORIGINS
    smallest peer IDs (origin ids are in no useful order)."""
    ids = {
        int(origin_id)
        for into, position in over_bound
        for origin_id in str(into[position][_ORIGINS_PARAMETER]).split(MEMBER_SEPARATOR)
    }
    peer_ids: dict[str, str] = {}
    for chunk in chunks(sorted(ids)):
        for origin_id, peer_id in connection.execute(
            f"SELECT id, peer_id FROM origins WHERE id IN ({placeholders(len(chunk))})", chunk
        ):
            peer_ids[str(origin_id)] = peer_id
    for into, position in over_bound:
        parameters = list(into[position])
        origins = str(parameters[_ORIGINS_PARAMETER]).split(MEMBER_SEPARATOR)
        kept = sorted(origins, key=peer_ids.__getitem__)[:MAX_ORIGINS]
        parameters[_ORIGINS_PARAMETER] = MEMBER_SEPARATOR.join(kept)
        into[position] = tuple(parameters)
