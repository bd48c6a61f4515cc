"""Indicator files in and out: JSON lines, CSV, STIX 2.1 bundles, plain lists.

In: ``parse_indicators(text, fmt, ...)`` reads every record of the text and returns the good
ones as indicators and the bad ones as ``Rejected(line, reason)``: one bad record never stops
the others (DESIGN.md, "Indicators"). Each reason names the field at fault. Lines are 1-based
as an editor shows them; in a STIX bundle the "line" is the object's position in ``objects``.

- ``jsonl``: one JSON object per line, fields as in ``indicators.RECORD_FIELDS``. Blank lines
  and lines starting with ``#`` are skipped. A key given twice in one object is refused
  (parsers disagree on which one wins; for ``tlp`` that matters).
- ``csv``: a header row naming the columns (fields as in JSON, any order and case, ``value``
  required), then one row per indicator. Empty cells are "not given". ``tags`` are separated
  by commas, ``references`` by whitespace (as ``to_csv`` writes them). Blank rows are skipped,
  and so are rows starting with ``#`` before the header (after it, an email address may start
  with ``#``). The line is where the row starts.
- ``lines``: a plain list, one value per line, its type detected (``detect_itype``). Only the
  text up to the first whitespace is the value; the rest of the line is a comment
  (``1.2.3.4  scanner``), as are lines starting with ``#``. A comma is NOT a separator: URLs
  may contain commas, so ``value,anything`` is refused with a reason rather than cut, and
  such files should be read as ``csv``.
- ``stix``: a STIX bundle, see ``threatmesh.pubsub.stix``.

A problem with the whole text (a CSV header naming an unknown column or no ``value``, a STIX
text that is not a bundle) is one ``Rejected`` (at the header's line; for STIX at line 1) and
no indicators, rather than an exception: callers report all rejections the same way.
Bounded: at most ``max_records`` records are read (one more ``Rejected`` says where reading
stopped), and a JSON line longer than ``MAX_LINE_CHARS`` is refused unparsed.

Out: ``to_jsonl`` and ``to_csv`` yield one record each, without line terminator (a CSV
record whose description has a newline is quoted and spans lines); ``to_stix_bundle`` returns
a bundle. Whatever these write, ``parse_indicators`` reads back to the same indicators.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from threatmesh.pubsub.indicator_values import shown
from threatmesh.pubsub.indicators import (
    RECORD_FIELDS,
    IndicatorError,
    indicator_from_record,
    indicator_to_record,
    unknown_field_error,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.stix import stix_records, to_stix_bundle

__all__ = [
    "FORMATS",
    "MAX_LINE_CHARS",
    "ParseResult",
    "Rejected",
    "parse_indicators",
    "to_csv",
    "to_jsonl",
    "to_stix_bundle",
]

FORMATS = ("jsonl", "csv", "stix", "lines")
# A record with every field at its bound is about 45,000 characters; JSON escapes can make
# that several times longer.
MAX_LINE_CHARS = 262_144
DEFAULT_MAX_RECORDS = 1_000_000

# What the readers yield: (line, record) or (line, reason it was refused).
_Item = tuple[int, Mapping[str, Any] | str]


@dataclass(frozen=True)
class Rejected:
    """A record that was refused: its 1-based line and why (naming the field at fault)."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ParseResult:
    indicators: list[pb.Indicator] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    lines: list[int] = field(default_factory=list, compare=False)  # line of each indicator


def parse_indicators(
    text: str,
    fmt: str,
    *,
    default_tlp: int,
    now_ms: int,
    default_provider: str = "",
    max_records: int = DEFAULT_MAX_RECORDS,
) -> ParseResult:
    """The indicators of ``text`` in format ``fmt`` (one of ``FORMATS``), and the rejections.

    ``default_tlp`` and ``default_provider`` apply to records that name none. IndicatorError
    (field "format") for an unknown format; every problem with the text is a ``Rejected``.
    """
    reader = _READERS.get(fmt)
    if reader is None:
        raise IndicatorError("format", f"{shown(fmt)} is not one of {', '.join(FORMATS)}")
    result = ParseResult()
    text = text.removeprefix("\ufeff")  # a byte order mark, as spreadsheets write
    for count, (line, item) in enumerate(reader(text), start=1):
        if count > max_records:
            result.rejected.append(
                Rejected(line, f"more than {max_records} records; stopped reading here")
            )
            break
        if isinstance(item, str):
            result.rejected.append(Rejected(line, item))
            continue
        try:
            indicator = indicator_from_record(
                item,
                line=line,
                default_tlp=default_tlp,
                now_ms=now_ms,
                default_provider=default_provider,
            )
        except IndicatorError as error:
            result.rejected.append(Rejected(line, error.reason))
        else:
            result.indicators.append(indicator)
            result.lines.append(line)
    return result


# Readers ------------------------------------------------------------------------------------


def _numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    # Split at "\n" only: str.splitlines also splits at U+2028 and others, which JSON strings
    # may contain raw, and line numbers would then differ from an editor's.
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise IndicatorError(key, "appears twice in the record")
        record[key] = value
    return record


def _refuse_constant(name: str) -> NoReturn:
    raise IndicatorError("record", f"{name} is not a JSON value")


def _jsonl_records(text: str) -> Iterator[_Item]:
    for number, line in _numbered_lines(text):
        if len(line) > MAX_LINE_CHARS:
            yield number, f"the line is {len(line)} characters long; at most {MAX_LINE_CHARS}"
            continue
        try:
            record = json.loads(
                line, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_constant
            )
        except json.JSONDecodeError as error:
            yield number, f"not valid JSON: {error.msg} at column {error.colno}"
        except IndicatorError as error:
            yield number, error.reason
        except RecursionError:
            yield number, "not valid JSON: nested too deeply"
        else:
            if isinstance(record, dict):
                yield number, record
            else:
                yield number, f"expected a JSON object, got {type(record).__name__}"


def _csv_header(row: list[str]) -> list[str]:
    """The column names of a header row; IndicatorError naming the column if bad."""
    names = [cell.strip().lower() for cell in row]
    for name in names:
        if name not in RECORD_FIELDS:
            if "value" not in names:
                raise IndicatorError(
                    "value",
                    "no header row naming the columns (value, itype, tlp, ...) before the data",
                )
            raise unknown_field_error(name)
        if names.count(name) > 1:
            raise IndicatorError(name, "column appears twice in the header")
    if "value" not in names:
        raise IndicatorError("value", "the header has no value column")
    return names


def _csv_records(text: str) -> Iterator[_Item]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    end_of_previous = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield end_of_previous + 1, f"not valid CSV: {error}"
            if reader.line_num == end_of_previous:  # no progress: it would fail again
                return
            end_of_previous = reader.line_num
            continue
        line, end_of_previous = end_of_previous + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None and row[0].lstrip().startswith("#"):
            continue  # a comment before the header; after it, "#" may start a value (email)
        if header is None:
            try:
                header = _csv_header(row)
            except IndicatorError as error:
                yield line, error.reason
                return
            continue
        if len(row) > len(header):
            yield line, f"the row has {len(row)} cells but the header names {len(header)}"
            continue
        yield line, dict(zip(header, row, strict=False))


def _plain_list_records(text: str) -> Iterator[_Item]:
    for number, line in _numbered_lines(text):
        yield number, {"value": line.split(maxsplit=1)[0]}


_READERS: Mapping[str, Callable[[str], Iterator[_Item]]] = {
    "jsonl": _jsonl_records,
    "csv": _csv_records,
    "stix": stix_records,
    "lines": _plain_list_records,
}


# Writers ------------------------------------------------------------------------------------


def to_jsonl(indicators: Iterable[pb.Indicator]) -> Iterator[str]:
    """One JSON object per indicator (``indicator_to_record``), without the newline."""
    for indicator in indicators:
        yield json.dumps(indicator_to_record(indicator), ensure_ascii=False)


def _csv_line(cells: Iterable[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


def to_csv(indicators: Iterable[pb.Indicator]) -> Iterator[str]:
    """The header, then one CSV record per indicator, each without the line terminator.

    Tags are joined by commas (a tag cannot contain one), references by spaces (a URL cannot
    contain one); ``expires`` is empty when the indicator does not expire. One ambiguity
    remains: a reference that ends in "," reads back without it (the comma is taken for a
    separator).
    """
    yield _csv_line(RECORD_FIELDS)
    for indicator in indicators:
        record = indicator_to_record(indicator)
        record["tags"] = ",".join(record["tags"])
        record["references"] = " ".join(record["references"])
        record["expires"] = record["expires"] or ""
        yield _csv_line(record[name] for name in RECORD_FIELDS)
