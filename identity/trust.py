"""The trust store: which peers this node trusts, up to which TLP level.

Owns ``<home>/trust.json`` and the pure rule (``effective_level``) that turns explicit trust
and vouches into the level a peer may receive (DESIGN.md, "Trust and sensitivity").

Rules:
- Trust is local. An entry says: peer P may receive indicators up to TLP level L, until an
  optional expiry. A peer without a live entry is at CLEAR, which needs no trust.
- GREEN may also be earned by vouches (``effective_level``); AMBER, AMBER+STRICT and RED only
  ever come from an explicit entry.
- The file is JSON, edited by ``threatmesh trust`` (or by hand) whether or not the node runs;
  a running node polls it with ``TrustStore.reload_if_changed``, which costs one stat when
  nothing changed.
- A file that does not parse is refused whole, with the file and the problem named: a typo
  must never silently drop or grant trust. A running node keeps the trust it had, and is told
  once per change of the file, not at every poll.
- Writes go to a temporary file in the same directory that then replaces the old one, so a
  reader never sees half a file; an edit holds an advisory lock (``trust.json.lock``) so two
  concurrent edits cannot lose one. The file is created with mode 0600: it holds no secret,
  but it is the list of whom this node shares AMBER and RED with, which is nobody else's
  business; the home is 0700 anyway, so 0644 would gain nothing. A hand-made file with wider
  rights is still read.
- Bounded: 4 MiB, 10,000 entries, notes of 256 characters.

The TLP levels and their names live in ``levels``, the peer ID check in ``keys``, and the
reading, locking and atomic replacing of the file in ``private_files`` (``own_vouches`` uses
them too). The time bound ``MAX_TIME_MS`` is defined here and shared with ``vouches``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from threatmesh.identity.keys import parse_peer_id
from threatmesh.identity.levels import (
    TLP_CLEAR,
    TLP_GREEN,
    TLP_LEVEL_NAMES,
    level_from_name,
    level_name,
)
from threatmesh.identity.private_files import (
    MISSING_FILE_STAMP,
    FileStamp,
    edit_lock,
    file_stamp,
    read_bounded_file,
    write_json_atomically,
)

TRUST_FILE_NAME = "trust.json"
TRUST_FILE_VERSION = 1

MAX_TRUST_FILE_BYTES = 4 * 1024 * 1024
MAX_TRUST_ENTRIES = 10_000
MAX_NOTE_CHARS = 256
# Times are epoch milliseconds from 1970 to the end of year 9999 (what ISO 8601 can show).
MAX_TIME_MS = 253_402_300_799_999


class TrustError(Exception):
    """The trust file, or an edit of it, is not valid; the message names the file or peer."""


# The trust book -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustEntry:
    """Peer ``peer_id`` may receive indicators up to ``level`` from ``since_ms`` until
    ``expires_ms`` (exclusive; None: no expiry). ``note`` is for humans."""

    peer_id: str
    level: int
    note: str
    since_ms: int
    expires_ms: int | None

    def is_live(self, now_ms: int) -> bool:
        return self.expires_ms is None or now_ms < self.expires_ms


class TrustBook:
    """An immutable snapshot of the trust file: at most one entry per peer ID."""

    __slots__ = ("_by_peer",)

    def __init__(self, entries: Iterable[TrustEntry] = ()) -> None:
        by_peer: dict[str, TrustEntry] = {}
        for entry in entries:
            if entry.peer_id in by_peer:
                raise ValueError(f"two trust entries for {entry.peer_id}")
            by_peer[entry.peer_id] = entry
        self._by_peer: Mapping[str, TrustEntry] = MappingProxyType(by_peer)

    @property
    def entries(self) -> tuple[TrustEntry, ...]:
        """Every entry, expired ones too, ordered by peer ID."""
        return tuple(self._by_peer[peer_id] for peer_id in sorted(self._by_peer))

    def get(self, peer_id: str) -> TrustEntry | None:
        """The entry of ``peer_id``, live or expired, or None."""
        return self._by_peer.get(peer_id)

    def level(self, peer_id: str, now_ms: int) -> int:
        """The level ``peer_id`` is trusted at explicitly: CLEAR when absent or expired."""
        entry = self._by_peer.get(peer_id)
        if entry is None or not entry.is_live(now_ms):
            return TLP_CLEAR
        return entry.level

    def peers_at_or_above(self, level: int, now_ms: int) -> frozenset[str]:
        """The peers with a live entry at ``level`` or higher."""
        return frozenset(
            entry.peer_id
            for entry in self._by_peer.values()
            if entry.level >= level and entry.is_live(now_ms)
        )

    def with_entry(self, entry: TrustEntry) -> TrustBook:
        """A copy with ``entry`` added, replacing the peer's entry if it had one."""
        return TrustBook(
            [*(e for e in self._by_peer.values() if e.peer_id != entry.peer_id), entry]
        )

    def without(self, peer_id: str) -> TrustBook:
        return TrustBook(e for e in self._by_peer.values() if e.peer_id != peer_id)

    def __len__(self) -> int:
        return len(self._by_peer)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrustBook):
            return NotImplemented
        return dict(self._by_peer) == dict(other._by_peer)

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"TrustBook({len(self)} entries)"


def effective_level(
    peer_id: str, *, trust: TrustBook, vouchers: Iterable[str], required: int, now_ms: int
) -> int:
    """The highest TLP level ``peer_id`` may receive: its explicit level, raised to GREEN when
    at least ``required`` distinct peers that this node trusts *explicitly* at GREEN or
    higher vouch for it.

    Vouches count only from explicitly trusted vouchers, never from peers that are themselves
    GREEN by vouches: otherwise one trusted friend's vouch would make a sybil a voucher whose
    vouches make more sybils vouchers, and ``required`` would protect nothing. Vouches never
    give more than GREEN, whatever level they name (DESIGN.md: AMBER and RED are only ever
    given explicitly). A peer's vouch for itself does not count. ``vouchers`` are the peers
    whose verified, unexpired, unrevoked vouches name ``peer_id`` (``VouchBook.vouchers_for``).
    """
    if required < 1:
        raise ValueError(f"required vouches must be at least 1, got {required}")
    explicit = trust.level(peer_id, now_ms)
    if explicit >= TLP_GREEN:
        return explicit
    counted = {
        voucher
        for voucher in vouchers
        if voucher != peer_id and trust.level(voucher, now_ms) >= TLP_GREEN
    }
    return TLP_GREEN if len(counted) >= required else explicit


# The file -----------------------------------------------------------------------------------

_TOP_KEYS = frozenset({"version", "trust"})
_ENTRY_KEYS = frozenset({"peer_id", "level", "note", "since_ms", "expires_ms"})
_REQUIRED_ENTRY_KEYS = frozenset({"peer_id", "level"})


def parse_trust_json(
    data: bytes, *, source: str, max_entries: int = MAX_TRUST_ENTRIES
) -> TrustBook:
    """The book in the trust file's bytes; TrustError naming ``source`` and the problem.

    The format (written by ``trust_json``)::

        {"version": 1,
         "trust": [{"peer_id": "16Uiu2...", "level": "amber", "note": "CERT-X SOC",
                    "since_ms": 1767225600000, "expires_ms": null}, ...]}

    ``peer_id`` and ``level`` are required; ``note`` defaults to "", ``since_ms`` to 0 and
    ``expires_ms`` to null (no expiry), so a hand-written entry can be short. An unknown key,
    a duplicate peer or a bad value refuses the whole file.
    """
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise TrustError(f"{source}: not UTF-8 text") from None
    except (ValueError, RecursionError) as error:
        raise TrustError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise TrustError(f"{source}: expected a JSON object with 'version' and 'trust'")
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise TrustError(f"{source}: unknown key {unknown[0]!r} (expected 'version', 'trust')")
    if document.get("version") != TRUST_FILE_VERSION or isinstance(document.get("version"), bool):
        raise TrustError(
            f"{source}: 'version' must be {TRUST_FILE_VERSION}, got {document.get('version')!r}"
        )
    raw_entries = document.get("trust", [])
    if not isinstance(raw_entries, list):
        raise TrustError(f"{source}: 'trust' must be a list of entries")
    if len(raw_entries) > max_entries:
        raise TrustError(f"{source}: {len(raw_entries)} entries, at most {max_entries}")
    entries: dict[str, TrustEntry] = {}
    for index, raw in enumerate(raw_entries, start=1):
        entry = _entry_from_json(raw, f"{source}: entry {index}")
        if entry.peer_id in entries:
            raise TrustError(f"{source}: entry {index}: {entry.peer_id} is listed twice")
        entries[entry.peer_id] = entry
    return TrustBook(entries.values())


def trust_json(book: TrustBook) -> dict[str, Any]:
    """The JSON document of ``book``, entries ordered by peer ID, every key written."""
    return {
        "version": TRUST_FILE_VERSION,
        "trust": [
            {
                "peer_id": entry.peer_id,
                "level": level_name(entry.level),
                "note": entry.note,
                "since_ms": entry.since_ms,
                "expires_ms": entry.expires_ms,
            }
            for entry in book.entries
        ],
    }


def _entry_from_json(raw: object, where: str) -> TrustEntry:
    if not isinstance(raw, dict):
        raise TrustError(f"{where}: expected an object with 'peer_id' and 'level'")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise TrustError(
            f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(_ENTRY_KEYS))})"
        )
    missing = sorted(_REQUIRED_ENTRY_KEYS - set(raw))
    if missing:
        raise TrustError(f"{where}: {missing[0]!r} is missing")
    peer_id = raw["peer_id"]
    try:
        parse_peer_id(peer_id)
    except ValueError as error:
        raise TrustError(f"{where}: peer_id: {error}") from None
    where = f"{where} ({peer_id})"
    try:
        level = level_from_name(raw["level"])
    except ValueError as error:
        raise TrustError(f"{where}: level: {error}") from None
    entry = TrustEntry(
        peer_id=peer_id,
        level=level,
        note=raw.get("note", ""),
        since_ms=raw.get("since_ms", 0),
        expires_ms=raw.get("expires_ms"),
    )
    problem = _entry_problem(entry)
    if problem:
        raise TrustError(f"{where}: {problem}")
    return entry


def _entry_problem(entry: TrustEntry) -> str | None:
    """What is wrong with ``entry``'s note and times, or None."""
    if not isinstance(entry.note, str):
        return "note: must be a string"
    if len(entry.note) > MAX_NOTE_CHARS:
        return f"note: {len(entry.note)} characters, at most {MAX_NOTE_CHARS}"
    if not entry.note.isprintable():
        return "note: must be one line of printable characters"
    if not _is_time_ms(entry.since_ms):
        return f"since_ms: expected epoch milliseconds, got {entry.since_ms!r}"
    if entry.expires_ms is not None and not _is_time_ms(entry.expires_ms):
        return f"expires_ms: expected epoch milliseconds or null, got {entry.expires_ms!r}"
    return None


def _is_time_ms(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TIME_MS


# The store ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustReload:
    """What ``TrustStore.reload_if_changed`` found: the book in force now and, when the
    changed file was refused, why (the book is then the previous one)."""

    book: TrustBook
    error: str | None = None


class TrustStore:
    """The trust file at ``path``: load it, edit it, and notice when someone else edited it.

    ``add`` and ``remove`` edit the file under a lock and leave this object's book alone, so
    a running node sees every edit, its own included, the same way: through
    ``reload_if_changed``.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_entries: int = MAX_TRUST_ENTRIES,
        max_file_bytes: int = MAX_TRUST_FILE_BYTES,
    ) -> None:
        self.path = path
        self.max_entries = max_entries
        self.max_file_bytes = max_file_bytes
        self._book = TrustBook()
        self._stamp: FileStamp | None = None  # None: not read yet

    @property
    def book(self) -> TrustBook:
        """The book last loaded (empty before the first load)."""
        return self._book

    def load(self) -> TrustBook:
        """Read the file (missing: empty book), keep it as ``book`` and return it.

        TrustError, naming the file and the problem, when it is corrupt.
        """
        self._book, self._stamp = self._read()
        return self._book

    def reload_if_changed(self) -> TrustReload | None:
        """Read the file again if it changed since the last read; cheap (one stat) if not.

        Returns None when unchanged. A changed file that is refused does not raise: the node
        keeps the trust it had (dropping all trust for a typo would cut off every partner;
        granting some would be worse), the reload carries the previous book and the error for
        the node to log, and the bad version is remembered so the error comes once, not at
        every poll, until the file changes again.
        """
        seen = file_stamp(self.path)
        if seen == self._stamp:
            return None
        try:
            book, stamp = self._read()
        except TrustError as error:
            # The stamp from before the read: if the file changed again meanwhile, the next
            # poll sees a new stamp and reads it, rather than skipping it.
            self._stamp = seen
            return TrustReload(book=self._book, error=str(error))
        self._book, self._stamp = book, stamp
        return TrustReload(book=book)

    def add(
        self,
        peer_id: str,
        level: int,
        note: str = "",
        expires_ms: int | None = None,
        *,
        now_ms: int,
    ) -> TrustEntry:
        """Trust ``peer_id`` up to ``level`` from now, replacing its entry if it has one.

        TrustError for a bad peer ID, level, note or expiry, for a full store, and for a
        trust file that is already corrupt (it is never overwritten: fix it first).
        """
        try:
            parse_peer_id(peer_id)
        except ValueError as error:
            raise TrustError(str(error)) from None
        if level not in TLP_LEVEL_NAMES:
            raise TrustError(f"unknown TLP level {level!r}")
        if level == TLP_CLEAR:
            raise TrustError(
                f"{peer_id}: trust at clear grants nothing (every peer may receive CLEAR); "
                "to take trust away, remove the peer"
            )
        entry = TrustEntry(peer_id, level, note, now_ms, expires_ms)
        problem = _entry_problem(entry)
        if problem:
            raise TrustError(f"{peer_id}: {problem}")
        if expires_ms is not None and expires_ms <= now_ms:
            raise TrustError(f"{peer_id}: the expiry is not in the future")
        with edit_lock(self.path, what="trust file", error=TrustError):
            book, _ = self._read()
            if book.get(peer_id) is None and len(book) >= self.max_entries:
                raise TrustError(
                    f"{self.path}: already {len(book)} entries, at most {self.max_entries}"
                )
            self._write(book.with_entry(entry))
        return entry

    def remove(self, peer_id: str) -> bool:
        """Remove the entry of ``peer_id``; False if it had none."""
        try:
            parse_peer_id(peer_id)
        except ValueError as error:
            raise TrustError(str(error)) from None
        with edit_lock(self.path, what="trust file", error=TrustError):
            book, _ = self._read()
            if book.get(peer_id) is None:
                return False
            self._write(book.without(peer_id))
        return True

    def _read(self) -> tuple[TrustBook, FileStamp]:
        read = read_bounded_file(
            self.path, what="trust file", max_bytes=self.max_file_bytes, error=TrustError
        )
        if read is None:
            return TrustBook(), MISSING_FILE_STAMP
        data, stamp = read
        return parse_trust_json(data, source=str(self.path), max_entries=self.max_entries), stamp

    def _write(self, book: TrustBook) -> None:
        document = trust_json(book)
        size = len(json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8"))
        if size >= self.max_file_bytes:
            raise TrustError(
                f"{self.path}: the trust file would be {size} bytes, at most {self.max_file_bytes}"
            )
        write_json_atomically(self.path, document, what="trust file", error=TrustError)
