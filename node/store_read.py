"""The store's read path: query filters, keyset paging, and building the merged views.

Rules:
- Results are ordered by ``last_seen_ms`` descending, then ``value``, then ``itype`` (a total
  order, so paging neither repeats nor skips rows of an unchanged store).
- Paging is keyset paging (no OFFSET): a page starts after the (last_seen_ms, value, itype) of
  the previous page's last row, so page N costs what page 1 costs (inside a long run of one
  last_seen_ms, with keys read ahead: ``Pages``). Pages hold at most ``PAGE_SIZE`` rows,
  which also bounds every ``IN (...)`` list (well under SQLite's limit).
- Filters are parameterised SQL; only constant fragments of this module are formatted in.
- A row carries its sets (``store_schema.INDICATORS_SCHEMA``); a page reads its origins' peer
  IDs in one more query.

What the indexes make cheap, and what not (measured on a store of 100,000 indicators):
- the order, ``--since`` and ``--value`` (by ``value_hash``) use an index; reading all
  100,000 in pages takes 1.0 s, or 1.2 s when they share one last_seen_ms (``Pages``);
- ``--itype`` and ``--tlp`` are checked on rows read in order, as before;
- ``--tag`` is too: the tag is looked for in each row's ``tag_list``. A page of a frequent tag
  costs what any page does (4 ms); a tag on few rows reads the whole store (30 ms).
  Version 2 kept an index of tags (0.1 ms there), at two more B-trees per tag of every new
  indicator; the node stores every indicator and queries rarely.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from threatmesh.node.store_merge import MEMBER_SEPARATOR, decode_members, value_hash
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

# Rows per query page, and ids per `IN (...)` list.
PAGE_SIZE = 500

Position = tuple[int, str, int]  # (last_seen_ms, value, itype) of the last row read


@dataclass(frozen=True)
class StoredIndicator:
    """One merged row: ``indicator.tlp`` is the least restrictive level seen."""

    indicator: pb.Indicator
    max_tlp: int
    sightings: int
    providers: tuple[str, ...]
    origins: tuple[str, ...]


_COLUMNS = (
    "itype, value, tlp, max_tlp, confidence, first_seen_ms, last_seen_ms, expires_ms, "
    "description, sightings, tag_list, reference_list, provider_list, origin_list"
)
_ORDER = "ORDER BY last_seen_ms DESC, value, itype"

# After a page ending at (last_seen_ms, value, itype): the rest is "same last_seen, later
# (value, itype)" then "earlier last_seen". Two index range scans; an OR would make SQLite sort.
_AFTER_SAME = "last_seen_ms = ? AND (value, itype) > (?, ?)"
_AFTER_OLDER = "last_seen_ms < ?"
# Keys (value, itype) read at once inside a run of rows of one last_seen_ms (see Pages): a
# few MB at most. A bulk import without times makes such runs (one parse is one run, up to
# formats.DEFAULT_MAX_RECORDS rows): walking a run of n rows then reads it n / 25,000 times.
RUN_KEYS_AHEAD = 25_000


def placeholders(count: int) -> str:
    """``?, ?, ...``: the placeholders of an ``IN (...)`` list."""
    return ", ".join("?" * count)


_Item = TypeVar("_Item")


def chunks(items: Sequence[_Item], size: int = PAGE_SIZE) -> Iterator[Sequence[_Item]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class Filter:
    """The WHERE clause of a query, and its parameters."""

    where: tuple[str, ...]
    params: tuple[object, ...]

    @classmethod
    def of(
        cls,
        *,
        itype: int | None,
        value: str | None,
        tag: str | None,
        since_ms: int | None,
        tlp: int | None,
    ) -> Filter:
        where: list[str] = []
        params: list[object] = []
        if itype is not None:
            where.append("itype = ?")
            params.append(itype)
        if value is not None:
            where.append("value_hash = ? AND value = ?")
            params += (value_hash(value), value)
        if since_ms is not None:
            where.append("last_seen_ms >= ?")
            params.append(since_ms)
        if tlp is not None:
            where.append("tlp <= ?")
            params.append(tlp)
        if tag is not None and MEMBER_SEPARATOR in tag:
            where.append("0")  # no stored tag holds it (store_merge.report_rows)
        elif tag is not None:  # a member of tag_list: between separators, or at an end
            where.append("instr(char(31) || tag_list || char(31), ?) > 0")
            params.append(f"{MEMBER_SEPARATOR}{tag}{MEMBER_SEPARATOR}")
        return cls(tuple(where), tuple(params))

    def select(self, extra: str | None, order: str, columns: str = _COLUMNS) -> str:
        """The page query: the filter's parameters, then ``extra``'s, then the limit."""
        return f"SELECT {columns} FROM indicators {self.clause(extra)} {order} LIMIT ?"

    def clause(self, extra: str | None) -> str:
        """``WHERE`` the filter's conditions and ``extra`` (its parameters come after)."""
        where = [*self.where, extra] if extra else list(self.where)
        return f"WHERE {' AND '.join(where)}" if where else ""


def page_end(stored: StoredIndicator) -> Position:
    """Where a page that ends with ``stored`` ends."""
    indicator = stored.indicator
    return (indicator.last_seen_ms, indicator.value, indicator.itype)


class Pages:
    """The pages of one query, in order, each starting where the previous one ended.

    ``indicators_by_last_seen`` holds last_seen_ms alone (``store_schema`` says why), so SQLite
    finds the next rows inside a run of one last_seen_ms only by reading the whole run. Inside
    a run, pages therefore take their rows from keys read ahead, RUN_KEYS_AHEAD at a time, and
    load each page's rows by key: walking a run of n rows reads it n / RUN_KEYS_AHEAD times,
    not n / page size times. Between pages of ``Store.iter_query`` (no snapshot) a row added
    to the run being read, before the last key read ahead, is not seen; one read ahead that
    then left the run or the filter, or went, is skipped.
    """

    def __init__(self, found: Filter) -> None:
        self._found = found
        self._after: Position | None = None  # where the last page ended
        self._run_keys: deque[tuple[str, int]] = deque()  # the next keys of that run, in order
        self._run_read_to: tuple[str, int] | None = None  # the last key read ahead in it
        self._run_complete = False  # every key of the run after the last page is in _run_keys

    def next(self, connection: sqlite3.Connection, size: int) -> list[StoredIndicator]:
        """The next ``size`` matching rows; fewer only at the end."""
        found = self._found
        if self._after is None:
            rows = connection.execute(found.select(None, _ORDER), (*found.params, size)).fetchall()
        else:
            rows = self._rest_of_run(connection, size)
            if len(rows) < size:
                rows += connection.execute(
                    found.select(_AFTER_OLDER, _ORDER),
                    (*found.params, self._after[0], size - len(rows)),
                ).fetchall()
        page = _load(connection, rows)
        if page:
            end = page_end(page[-1])
            if self._after is None or end[0] != self._after[0]:  # a new run
                self._run_keys.clear()
                self._run_read_to = None
                self._run_complete = False
            self._after = end
        return page

    def _rest_of_run(self, connection: sqlite3.Connection, size: int) -> list[Any]:
        """Up to ``size`` matching rows after the last page, in its run, in order."""
        assert self._after is not None
        last_seen_ms, value, itype = self._after
        found = self._found
        rows: list[Any] = []
        while len(rows) < size:
            if not self._run_keys:
                if self._run_complete:
                    break
                after_value, after_itype = self._run_read_to or (value, itype)
                keys = connection.execute(
                    found.select(_AFTER_SAME, "ORDER BY value, itype", "value, itype"),
                    (*found.params, last_seen_ms, after_value, after_itype, RUN_KEYS_AHEAD),
                ).fetchall()
                self._run_keys.extend(keys)
                self._run_complete = len(keys) < RUN_KEYS_AHEAD
                if not keys:
                    break
                self._run_read_to = keys[-1]
            wanted = [
                self._run_keys.popleft() for _ in range(min(size - len(rows), len(self._run_keys)))
            ]
            rows += _rows_of(connection, found, last_seen_ms, wanted)
        return rows


def _rows_of(
    connection: sqlite3.Connection,
    found: Filter,
    last_seen_ms: int,
    keys: list[tuple[str, int]],
) -> list[Any]:
    """The rows of ``keys`` (value, itype) in the run of ``last_seen_ms``, in the keys' order;
    a key whose row changed or went is left out."""
    hashes = sorted({value_hash(value) for value, _ in keys})
    by_key: dict[tuple[str, int], Any] = {}
    for chunk in chunks(hashes):
        extra = f"last_seen_ms = ? AND value_hash IN ({placeholders(len(chunk))})"
        for row in connection.execute(  # by key: SQLite would rather read the run by last_seen
            f"SELECT {_COLUMNS} FROM indicators INDEXED BY indicators_by_value"
            f" {found.clause(extra)}",
            (*found.params, last_seen_ms, *chunk),
        ):
            by_key[(row[1], row[0])] = row
    return [by_key[key] for key in keys if key in by_key]


def _load(connection: sqlite3.Connection, rows: list[Any]) -> list[StoredIndicator]:
    """Build the merged views of ``rows`` (at most one page)."""
    origin_ids = sorted({origin_id for row in rows for origin_id in decode_members(row[-1])})
    peer_ids: dict[str, str] = {}
    for chunk in chunks(origin_ids):
        for origin_id, peer_id in connection.execute(
            f"SELECT id, peer_id FROM origins WHERE id IN ({placeholders(len(chunk))})", chunk
        ):
            peer_ids[str(origin_id)] = peer_id
    results: list[StoredIndicator] = []
    for row in rows:
        (itype, value, tlp, max_tlp, confidence, first, last, expires, description, sightings) = (
            row[:10]
        )
        tags, references, providers = (sorted(decode_members(members)) for members in row[10:13])
        origins = sorted(peer_ids[origin_id] for origin_id in decode_members(row[13]))
        indicator = pb.Indicator(
            value=value,
            itype=itype,
            tlp=tlp,
            confidence=confidence,
            tags=tags,
            # One provider field on the wire; the smallest name stands for them all here.
            provider=providers[0] if providers else "",
            first_seen_ms=first,
            last_seen_ms=last,
            expires_ms=expires,
            description=description,
            references=references,
        )
        results.append(
            StoredIndicator(
                indicator=indicator,
                max_tlp=max_tlp,
                sightings=sightings,
                providers=tuple(providers),
                origins=tuple(origins),
            )
        )
    return results
