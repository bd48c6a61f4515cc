"""The store's file: its schema, and how a path is opened (and refused) as a threatmesh store.

``threatmesh.node.store`` owns what goes in and out; this module owns the file itself.

Rules:

- A threatmesh store is an SQLite file whose header carries ``APPLICATION_ID`` and whose
  ``schema_version`` table names ``threatmesh`` and a schema version. Anything else is refused
  with ``StoreError`` naming the file, and is not modified: the checks run before the journal
  mode is switched or a table is created. Only a file with no tables at all (a new, or empty,
  file) becomes a store.
- A store written by a newer threatmesh (a higher schema version) is refused, never
  downgraded. Migrations from older versions go in ``_migrate`` (version 1 is the first); one
  runs in the transaction that checks the file, so a store is migrated whole or not at all
  (version 2 -> 3 measured 1.2 s for 100,000 indicators).
- At open, ``PRAGMA quick_check`` looks for corruption. It is bounded twice: it reports at most
  ``QUICK_CHECK_MAX_ERRORS`` problems, and it is interrupted after a time budget (a very large
  store is opened without a complete check, and a warning is logged, rather than stall the
  node's start; corruption the check did not reach surfaces later as ``StoreError``).
- Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode the default
  (``NORMAL``) syncs only at checkpoints, so a power loss can roll back the last commits even
  though they were reported done; ``FULL`` syncs the WAL at every commit, so a batch that
  ``Store.add_batch`` returned for (and that the node then acknowledged to its publisher or
  forwarded) is on disk. The cost is one fsync per batch, which batching amortises.
- ``busy_timeout``: other processes (a CLI reading the store while the node runs) may hold a
  lock for a moment; a statement waits up to ``BUSY_TIMEOUT_MS`` for it rather than fail.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from threatmesh.node.errors import NodeError
from threatmesh.node.logs import get_logger
from threatmesh.node.store_log import LOG_SCHEMA
from threatmesh.node.store_merge import MEMBER_SEPARATOR, value_hash

log = get_logger("threatmesh.store")

# Written in the SQLite header (offset 68) so `file` and other tools can tell our stores apart.
APPLICATION_ID = 0x544D5348  # "TMSH"
APPLICATION_NAME = "threatmesh"
SCHEMA_VERSION = 3  # 2: the batch log (store_log.py); 3: sets in the indicator row

# How long a statement waits for another connection's lock before failing.
BUSY_TIMEOUT_MS = 5_000
# Checkpoint (copy the WAL into the database file) once the WAL holds this many pages, about
# 40 MiB. SQLite's default, 1,000, checkpoints every batch or two: indicator values are
# random keys, so each batch dirties hundreds of index pages, and every checkpoint rewrites
# and fsyncs them. Ten times fewer checkpoints write a page changed by many batches once;
# measured 9-17k -> 16-24k new indicators/s (batches of 500). Cost: a bigger WAL to scan.
WAL_AUTOCHECKPOINT_PAGES = 10_000
# The WAL file is truncated back to this size after a checkpoint (bounds disk use).
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# Page cache of the connection, an upper bound (it fills as pages are read). SQLite's default,
# 2 MiB, holds a fraction of the two indexes every indicator lands in at a random place
# (``indicators_by_value``, ``indicators_by_last_seen``): a batch of 2,000 touches about as
# many of their pages, and each miss is a read from the file. 64 MiB holds a whole store of
# about 180,000 indicators (~370 bytes each with indexes, 520 in schema version 2), and the
# indexes of a larger one; measured on a store of 50,000 (version 2): 9 -> 5 us of CPU per
# upserted row.
CACHE_SIZE_KIB = 64 * 1024
# quick_check at open: at most this many problems reported, and at most this long.
QUICK_CHECK_MAX_ERRORS = 8
DEFAULT_QUICK_CHECK_BUDGET_S = 10.0

SCHEMA = """
CREATE TABLE schema_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),  -- exactly one row
    application TEXT NOT NULL,
    version INTEGER NOT NULL
);

-- Origin peers: who published batches, and how far their sequence is known without gaps.
-- Every seq <= highest_contiguous has been stored; seqs above it are in origin_batches_ahead.
CREATE TABLE origins (
    id INTEGER PRIMARY KEY,
    peer_id TEXT NOT NULL UNIQUE,
    highest_contiguous INTEGER NOT NULL,
    highest_seen INTEGER NOT NULL,
    batches INTEGER NOT NULL,
    last_received_ms INTEGER NOT NULL
);

-- Batches stored above their origin's contiguous prefix (the prefix is one number, so this
-- table holds only what is needed to find gaps: it shrinks as gaps are filled).
CREATE TABLE origin_batches_ahead (
    origin_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (origin_id, seq)
) WITHOUT ROWID;
"""

# One row per (itype, value): the merged view of every report of that indicator (the rules:
# store_merge). Everything about an indicator is in its row, so storing a new one writes the
# row and its entries in two indexes (three if it expires), nothing else. Version 2 kept the
# sets in four tables and looked rows up by a UNIQUE (itype, value) index: eleven B-trees per
# new indicator.
#
# - Sets in the row (``*_list``): store_merge.ReportRow's text, origins as ids into
#   ``origins``. Each is bounded (store_merge.MAX_*), so a row stays small.
# - ``value_hash`` (store_merge.value_hash) is how a row is found: its index entries are a
#   tenth of the size of (itype, value) ones. Indicator values are random keys, so each batch
#   lands in pages all over such an index, and every page it changes is written to the WAL at
#   commit: on ``bench/store_validate.py``'s indicators an index on (itype, value) added 430
#   pages per batch of 2,000 (2.4 us of CPU per indicator at insert, 1.8 at commit), one on
#   value_hash 90 (0.7 and 0.4). Values of one hash are told apart by comparing them;
#   ``Store`` holds the write lock from its lookup to its insert, so no other writer adds the
#   same (itype, value) in between.
# - ``indicators_by_last_seen`` serves query()'s order (last_seen_ms DESC, value, itype): the
#   index gives the first key and SQLite sorts rows of one last_seen_ms by the rest. With the
#   value in it, it would cost what the (itype, value) index above does; without, storing
#   took 40% less CPU per new indicator (bench/store_validate.py --repeat 0: 11.5 -> 7.0 us),
#   and paging inside a long run of one last_seen_ms reads keys ahead (store_read.Pages).
# - A tag filter reads rows in that order and looks for the tag in ``tag_list`` (store_read).
INDICATORS_SCHEMA = """
CREATE TABLE indicators (
    id INTEGER PRIMARY KEY,
    value_hash INTEGER NOT NULL,           -- value_hash(value)
    itype INTEGER NOT NULL,
    value TEXT NOT NULL,
    tlp INTEGER NOT NULL,                  -- least restrictive level seen: widest audience
    max_tlp INTEGER NOT NULL,              -- most restrictive level seen
    confidence INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,        -- 0: unknown
    last_seen_ms INTEGER NOT NULL,         -- 0: unknown
    expires_ms INTEGER NOT NULL,           -- 0: never
    description TEXT NOT NULL,
    description_seen_ms INTEGER NOT NULL,  -- last_seen_ms of the report it came from
    sightings INTEGER NOT NULL,            -- distinct (origin, seq) batches that carried it
    tag_list TEXT NOT NULL,                -- store_merge.encode_members text
    reference_list TEXT NOT NULL,
    provider_list TEXT NOT NULL,
    origin_list TEXT NOT NULL              -- ids into origins, as encode_members text
);
CREATE INDEX indicators_by_value ON indicators (value_hash);
CREATE INDEX indicators_by_last_seen ON indicators (last_seen_ms DESC);
CREATE INDEX indicators_by_expiry ON indicators (expires_ms) WHERE expires_ms != 0;
"""

# Version 2's indicator tables, replaced by INDICATORS_SCHEMA in the migration to version 3.
_V2_SET_TABLES = (
    ("indicator_tags", "tag", "tag_list"),
    ("indicator_references", "reference", "reference_list"),
    ("indicator_providers", "provider", "provider_list"),
    ("indicator_origins", "origin_id", "origin_list"),
)


class StoreError(NodeError):
    """The store file is not a threatmesh store, is newer, corrupt, or an operation failed."""


def open_store_connection(
    path: Path, *, quick_check_budget_s: float = DEFAULT_QUICK_CHECK_BUDGET_S
) -> sqlite3.Connection:
    """A connection to the store at ``path``, created if the file is new or empty.

    The connection is in autocommit mode (``isolation_level=None``: the store issues BEGIN and
    COMMIT itself) and may be used from any thread (the store serialises calls with a lock).
    Raises ``StoreError`` naming ``path`` when it cannot be a store.
    """
    try:
        connection = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as error:
        raise StoreError(f"{path}: cannot open the store: {error}") from error
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        created = _create_or_verify(connection, path)
        if not created:
            _quick_check(connection, path, quick_check_budget_s)
        _configure(connection, path)
    except sqlite3.OperationalError as error:  # locked, I/O error, read-only, disk full, ...
        connection.close()
        raise StoreError(f"{path}: cannot open the store: {error}") from error
    except sqlite3.DatabaseError as error:  # not a database, or malformed
        connection.close()
        if error.sqlite_errorname == "SQLITE_CORRUPT":
            raise StoreError(
                f"{path}: the store is corrupt ({error}); move it aside to start with an empty "
                "store"
            ) from error
        raise StoreError(
            f"{path}: not a threatmesh store, or its header is corrupt ({error}); choose another "
            "file or move it aside"
        ) from error
    except BaseException:
        connection.close()
        raise
    return connection


def _create_or_verify(connection: sqlite3.Connection, path: Path) -> bool:
    """Create the schema in an empty file, else check it is ours; True if it was created.

    Runs in one write transaction, so two processes opening a new file at once cannot both
    create the schema.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        tables = {
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        } - {"sqlite_sequence", "sqlite_stat1"}
        (application_id,) = connection.execute("PRAGMA application_id").fetchone()
        if not tables and application_id == 0:
            for statement in _statements(SCHEMA + INDICATORS_SCHEMA + LOG_SCHEMA):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_version (id, application, version) VALUES (1, ?, ?)",
                (APPLICATION_NAME, SCHEMA_VERSION),
            )
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute("COMMIT")
            return True
        version = _read_version(connection, path, tables, application_id)
        if version < SCHEMA_VERSION:
            _migrate(connection, path, version)
        connection.execute("COMMIT")
        return False
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")


def _read_version(
    connection: sqlite3.Connection, path: Path, tables: set[str], application_id: int
) -> int:
    if application_id != APPLICATION_ID or "schema_version" not in tables:
        raise StoreError(
            f"{path}: not a threatmesh store (an SQLite database of another application); "
            "choose another file or move it aside"
        )
    row = connection.execute("SELECT application, version FROM schema_version").fetchone()
    if row is None or row[0] != APPLICATION_NAME or not isinstance(row[1], int):
        raise StoreError(f"{path}: not a threatmesh store (its schema_version table is wrong)")
    version: int = row[1]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: written by a newer threatmesh (store schema version {version}; this "
            f"version reads up to {SCHEMA_VERSION}); upgrade threatmesh to open it"
        )
    if version < 1:
        raise StoreError(f"{path}: unknown store schema version {version}")
    return version


def _migrate(connection: sqlite3.Connection, path: Path, version: int) -> None:
    """Bring a store from ``version`` up to SCHEMA_VERSION, in the caller's transaction."""
    if version == 1:  # 1 -> 2: the batch log; batches stored before it cannot be served
        for statement in _statements(LOG_SCHEMA):
            connection.execute(statement)
        version = 2
    if version == 2:  # 2 -> 3: sets in the indicator row, rows found by value_hash
        _sets_into_rows(connection)
        version = 3
    if version != SCHEMA_VERSION:
        raise StoreError(f"{path}: no migration from store schema version {version}")
    connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    log.info("store migrated", path=str(path), version=SCHEMA_VERSION)


def _sets_into_rows(connection: sqlite3.Connection) -> None:
    """Version 2 -> 3: copy every indicator into INDICATORS_SCHEMA's table, its sets gathered
    from version 2's set tables; then drop those. Ids are kept. A set member that is empty or
    holds store_merge.MEMBER_SEPARATOR (only an unvalidated caller could have stored one) is
    left out rather than lost or split in two. The indexes are built after the copy (sorting
    once costs less than inserting row by row). The pages the old tables free are reused by
    new rows (a VACUUM would give them back to the file system, but rewrites the whole
    file)."""
    connection.create_function("threatmesh_value_hash", 1, value_hash, deterministic=True)
    separator = f"char({ord(MEMBER_SEPARATOR)})"
    connection.execute("DROP INDEX indicators_by_last_seen")
    connection.execute("DROP INDEX indicators_by_expiry")
    connection.execute("ALTER TABLE indicators RENAME TO indicators_v2")
    create_table, *create_indexes = _statements(INDICATORS_SCHEMA)
    connection.execute(create_table)
    gathered = ", ".join(
        f"coalesce((SELECT group_concat({column}, {separator}) FROM ("
        f"SELECT {column} FROM {table} WHERE indicator_id = old.id"
        f" AND {column} != '' AND instr({column}, {separator}) = 0 ORDER BY {column})), '')"
        for table, column, _ in _V2_SET_TABLES
    )
    connection.execute(
        "INSERT INTO indicators (id, value_hash, itype, value, tlp, max_tlp, confidence,"
        " first_seen_ms, last_seen_ms, expires_ms, description, description_seen_ms,"
        f" sightings, {', '.join(list_column for _, _, list_column in _V2_SET_TABLES)})"
        " SELECT id, threatmesh_value_hash(value), itype, value, tlp, max_tlp, confidence,"
        " first_seen_ms, last_seen_ms, expires_ms, description, description_seen_ms,"
        f" sightings, {gathered} FROM indicators_v2 AS old ORDER BY id"
    )
    for statement in create_indexes:
        connection.execute(statement)
    for table, _, _ in _V2_SET_TABLES:
        connection.execute(f"DROP TABLE {table}")
    connection.execute("DROP TABLE indicators_v2")


def _quick_check(connection: sqlite3.Connection, path: Path, budget_s: float) -> None:
    # sqlite3.Connection.interrupt() is the one call documented as safe from another thread;
    # it aborts the running statement with OperationalError("interrupted").
    timer = threading.Timer(budget_s, connection.interrupt)
    timer.daemon = True
    timer.start()
    try:
        rows = connection.execute(f"PRAGMA quick_check({QUICK_CHECK_MAX_ERRORS})").fetchall()
    except sqlite3.OperationalError as error:
        if "interrupt" not in str(error):
            raise
        log.warning(
            "store quick_check not finished in its budget", file=str(path), budget_s=budget_s
        )
        return
    finally:
        timer.cancel()
    problems = [" ".join(str(problem).split()) for (problem,) in rows]
    if problems != ["ok"]:
        raise StoreError(
            f"{path}: the store is corrupt (quick_check: {'; '.join(problems)}); "
            "move it aside to start with an empty store"
        )


def _configure(connection: sqlite3.Connection, path: Path) -> None:
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: cannot use write-ahead logging here (journal mode {mode})")
    connection.execute("PRAGMA synchronous = FULL")
    # macOS: fsync does not flush the drive's cache, F_FULLFSYNC does. No effect elsewhere.
    connection.execute("PRAGMA fullfsync = ON")
    connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    connection.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
    connection.execute(f"PRAGMA cache_size = -{CACHE_SIZE_KIB}")  # negative: KiB, not pages


def _statements(script: str) -> list[str]:
    """The statements of a DDL script (no semicolons inside them), comments removed."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]
