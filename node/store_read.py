"""The store's read path: query filters, keyset paging, and building the merged views.

Rules:
- Results are ordered by ``last_seen_ms`` descending, then ``value``, then ``itype`` (a total
  order, so paging neither repeats nor skips rows of an unchanged store).
- Paging is keyset paging (no OFFSET): a page starts after the (last_seen_ms, value, itype) of
  the previous page's last row, so page N costs what page 1 costs. Pages hold at most
  ``PAGE_SIZE`` rows, which also bounds every ``IN (...)`` list (well under SQLite's limit).
- Filters are parameterised SQL; only constant fragments of this module are formatted in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from threatmesh.node.store_schema import SET_TABLES
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
    "id, itype, value, tlp, max_tlp, confidence, first_seen_ms, last_seen_ms, expires_ms, "
    "description, sightings"
)
_ORDER = "ORDER BY last_seen_ms DESC, value, itype"

# After a page ending at (last_seen_ms, value, itype): the rest is "same last_seen, later
# (value, itype)" then "earlier last_seen". Two index range scans; an OR would make SQLite sort.
_AFTER_SAME = "last_seen_ms = ? AND (value, itype) > (?, ?)"
_AFTER_OLDER = "last_seen_ms < ?"


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
            where.append("value = ?")
            params.append(value)
        if since_ms is not None:
            where.append("last_seen_ms >= ?")
            params.append(since_ms)
        if tlp is not None:
            where.append("tlp <= ?")
            params.append(tlp)
        if tag is not None:
            where.append("id IN (SELECT indicator_id FROM indicator_tags WHERE tag = ?)")
            params.append(tag)
        return cls(tuple(where), tuple(params))

    def select(self, extra: str | None, order: str) -> str:
        """The page query: the filter's parameters, then ``extra``'s, then the limit."""
        where = [*self.where, extra] if extra else list(self.where)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return f"SELECT {_COLUMNS} FROM indicators {clause} {order} LIMIT ?"


def page_end(stored: StoredIndicator) -> Position:
    """Where a page that ends with ``stored`` ends."""
    indicator = stored.indicator
    return (indicator.last_seen_ms, indicator.value, indicator.itype)


def read_page(
    connection: sqlite3.Connection,
    found: Filter,
    after: Position | None,
    size: int,
) -> list[StoredIndicator]:
    """Up to ``size`` matching rows after position ``after`` (None: from the newest)."""
    params = found.params
    if after is None:
        rows = connection.execute(found.select(None, _ORDER), (*params, size)).fetchall()
    else:
        last_seen_ms, value, itype = after
        rows = connection.execute(
            found.select(_AFTER_SAME, "ORDER BY value, itype"),
            (*params, last_seen_ms, value, itype, size),
        ).fetchall()
        if len(rows) < size:
            rows += connection.execute(
                found.select(_AFTER_OLDER, _ORDER), (*params, last_seen_ms, size - len(rows))
            ).fetchall()
    return _load(connection, rows)


def _load(connection: sqlite3.Connection, rows: list[Any]) -> list[StoredIndicator]:
    """Build the merged views of ``rows`` (at most one page), with their sets."""
    ids = [row[0] for row in rows]
    marks = placeholders(len(ids))
    members: dict[str, dict[int, list[str]]] = {}
    for table, column in SET_TABLES:
        found: dict[int, list[str]] = {}
        for row_id, member in connection.execute(
            f"SELECT indicator_id, {column} FROM {table} WHERE indicator_id IN ({marks})"
            f" ORDER BY indicator_id, {column}",
            ids,
        ):
            found.setdefault(row_id, []).append(member)
        members[table] = found
    origins: dict[int, list[str]] = {}
    for row_id, peer_id in connection.execute(
        "SELECT member.indicator_id, origins.peer_id FROM indicator_origins AS member"
        f" JOIN origins ON origins.id = member.origin_id WHERE member.indicator_id IN ({marks})"
        " ORDER BY member.indicator_id, origins.peer_id",
        ids,
    ):
        origins.setdefault(row_id, []).append(peer_id)
    results: list[StoredIndicator] = []
    for row in rows:
        (row_id, itype, value, tlp, max_tlp, confidence, first, last, expires, text, sightings) = (
            row
        )
        providers = tuple(members["indicator_providers"].get(row_id, ()))
        indicator = pb.Indicator(
            value=value,
            itype=itype,
            tlp=tlp,
            confidence=confidence,
            tags=members["indicator_tags"].get(row_id, ()),
            # One provider field on the wire; the smallest name stands for them all here.
            provider=providers[0] if providers else "",
            first_seen_ms=first,
            last_seen_ms=last,
            expires_ms=expires,
            description=text,
            references=members["indicator_references"].get(row_id, ()),
        )
        results.append(
            StoredIndicator(
                indicator=indicator,
                max_tlp=max_tlp,
                sightings=sightings,
                providers=providers,
                origins=tuple(origins.get(row_id, ())),
            )
        )
    return results
