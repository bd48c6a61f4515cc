"""The fields of an indicator other than its value: how each is read and bounded.

Functions for the two ways in (see ``threatmesh.pubsub.indicators``), and for batches:
- ``*_from_input`` and ``time_ms`` read what a user wrote, in the shapes JSON and CSV give
  (a list or a comma-separated string of tags; ISO 8601 text or epoch seconds), and return
  the normalised field: tags lower case and deduplicated in order, references canonical URLs,
  times epoch milliseconds UTC (a time without offset is UTC).
- ``check_*`` check a field as it is in a ``pb.Indicator``, normalising nothing; they are run
  on records after normalisation too, so both ways share one set of bounds.
- ``all_*_pass`` answer the same questions for one field of every indicator of a batch at
  once (``validate_batch``); see "Whole batches" below.

Bounds are the constants below; times must lie between 1990 and a day ahead of ``now_ms``
(the clock skew we allow), ``last_seen >= first_seen``, and ``expires`` (0: never) after
``first_seen`` and at most ten years ahead. Tags may not contain commas, because CSV joins
them with commas. Pure; every failure is an ``IndicatorError`` naming the field.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from threatmesh.pubsub.indicator_values import (
    IndicatorError,
    all_canonical,
    canonical_value,
    shown,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_PROVIDER_CHARS = 128
MAX_DESCRIPTION_CHARS = 4096
MAX_REFERENCES = 16
MAX_REFERENCE_CHARS = 2048
MAX_TIME_TEXT_CHARS = 64
MIN_TIME_MS = 631_152_000_000  # 1990-01-01T00:00:00Z
MAX_CLOCK_SKEW_MS = 24 * 3600 * 1000  # times may be this far ahead of our clock
MAX_EXPIRES_AHEAD_MS = 3653 * 24 * 3600 * 1000  # ten years; "never" is no expires at all


# Times --------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_EPOCH_SECONDS_TEXT = re.compile(r"-?\d{1,16}(?:\.\d{1,9})?", re.ASCII)
_MAX_EPOCH_SECONDS = 10**11  # year 5138: a larger number is almost surely milliseconds


def iso_time(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC: ``2024-05-01T12:00:00Z`` or ``...00.250Z``."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    fraction = f".{ms % 1000:03d}" if ms % 1000 else ""
    return f"{moment:%Y-%m-%dT%H:%M:%S}{fraction}Z"


def described_time(ms: int) -> str:
    """``iso_time(ms)`` for an error message, also for a time out of datetime's range."""
    try:
        return iso_time(ms)
    except OverflowError:
        return f"{ms} ms"


def time_ms(field: str, raw: object) -> int:
    """An ISO 8601 time (without offset: UTC) or epoch seconds, as epoch milliseconds."""
    seconds: Decimal | None = None
    if isinstance(raw, bool):
        pass
    elif isinstance(raw, int | float):
        try:
            seconds = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(raw)
        except InvalidOperation:
            seconds = None
        if seconds is None or not seconds.is_finite():
            raise IndicatorError(field, f"{raw!r} is not a time")
    elif isinstance(raw, str):
        text = raw.strip()
        if len(text) > MAX_TIME_TEXT_CHARS:
            raise IndicatorError(field, f"{shown(text)} is too long for a time")
        if _EPOCH_SECONDS_TEXT.fullmatch(text):
            seconds = Decimal(text)
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise IndicatorError(
                    field, f"{shown(text)} is not an ISO 8601 time or epoch seconds"
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return (moment - _EPOCH) // _ONE_MS
    if seconds is None:
        raise IndicatorError(
            field, f"expected an ISO 8601 time or epoch seconds, got {type(raw).__name__}"
        )
    if abs(seconds) >= _MAX_EPOCH_SECONDS:
        raise IndicatorError(field, f"{raw!r} is too large for epoch seconds (milliseconds?)")
    return int((seconds * 1000).to_integral_value(rounding=ROUND_FLOOR))


def check_times(indicator: pb.Indicator, now_ms: int) -> None:
    """The time rules of the module docstring, in the order first_seen, last_seen, expires."""
    for field, ms in (
        ("first_seen", indicator.first_seen_ms),
        ("last_seen", indicator.last_seen_ms),
    ):
        if ms < MIN_TIME_MS:
            raise IndicatorError(field, f"{described_time(ms)} is before 1990")
        if ms > now_ms + MAX_CLOCK_SKEW_MS:
            raise IndicatorError(
                field,
                f"{described_time(ms)} is more than a day in the future (now is "
                f"{described_time(now_ms)})",
            )
    if indicator.last_seen_ms < indicator.first_seen_ms:
        raise IndicatorError(
            "last_seen",
            f"{described_time(indicator.last_seen_ms)} is before first_seen "
            f"{described_time(indicator.first_seen_ms)}",
        )
    expires_ms = indicator.expires_ms
    if expires_ms != 0:
        if expires_ms <= indicator.first_seen_ms:
            raise IndicatorError(
                "expires",
                f"{described_time(expires_ms)} is not after first_seen "
                f"{described_time(indicator.first_seen_ms)}",
            )
        if expires_ms > now_ms + MAX_EXPIRES_AHEAD_MS:
            raise IndicatorError(
                "expires", f"{described_time(expires_ms)} is more than ten years ahead"
            )


# Text fields --------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_EXCEPT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# References in one string: split at whitespace, at a comma followed by whitespace or the
# end, or at a comma followed by a new URL's scheme. A comma inside a URL ("/a,b") stays.
_REFERENCE_SEPARATOR = re.compile(
    r"\s+|,(?=\s|$)|,(?=[a-z][a-z0-9+.-]*://)", re.ASCII | re.IGNORECASE
)


def string_field(field: str, raw: object) -> str:
    """``raw`` if it is a string; IndicatorError naming ``field`` otherwise."""
    if not isinstance(raw, str):
        raise IndicatorError(field, f"expected a string, got {type(raw).__name__}")
    return raw


def check_tag(tag: str) -> None:
    """One tag's bounds (not its case: see ``tags_from_input``)."""
    if len(tag) > MAX_TAG_CHARS:
        raise IndicatorError("tags", f"{shown(tag)} is longer than {MAX_TAG_CHARS} characters")
    if _CONTROL.search(tag):
        raise IndicatorError("tags", f"{shown(tag)} contains a control character")
    if "," in tag:  # CSV writes tags joined by commas
        raise IndicatorError("tags", f"{shown(tag)} contains a comma")


def tags_from_input(raw: object) -> list[str]:
    """Tags from a list of strings or a comma-separated string: lower case, deduplicated."""
    if isinstance(raw, str):
        pieces: Sequence[object] = raw.split(",")
    elif isinstance(raw, list | tuple):
        pieces = raw
    else:
        raise IndicatorError("tags", f"expected a list of strings, got {type(raw).__name__}")
    tags: list[str] = []
    for piece in pieces:
        tag = string_field("tags", piece).strip().lower()
        if not tag:
            continue
        check_tag(tag)
        if tag not in tags:
            tags.append(tag)
            if len(tags) > MAX_TAGS:
                raise IndicatorError("tags", f"more than {MAX_TAGS} tags")
    return tags


def canonical_reference(reference: str) -> str:
    """A reference as a canonical URL (``canonical_value`` of a url); field "references"."""
    if len(reference) > MAX_REFERENCE_CHARS:
        raise IndicatorError(
            "references", f"{shown(reference)} is longer than {MAX_REFERENCE_CHARS} characters"
        )
    try:
        return canonical_value(reference, pb.ITYPE_URL)
    except IndicatorError as error:
        raise IndicatorError("references", error.problem) from None


def references_from_input(raw: object) -> list[str]:
    """URLs from a list or a whitespace/comma separated string: canonical, deduplicated."""
    if isinstance(raw, str):
        pieces: Sequence[object] = _REFERENCE_SEPARATOR.split(raw)
    elif isinstance(raw, list | tuple):
        pieces = raw
    else:
        raise IndicatorError("references", f"expected a list of URLs, got {type(raw).__name__}")
    references: list[str] = []
    for piece in pieces:
        text = string_field("references", piece).strip()
        if not text:
            continue
        reference = canonical_reference(text)
        if reference not in references:
            references.append(reference)
            if len(references) > MAX_REFERENCES:
                raise IndicatorError("references", f"more than {MAX_REFERENCES} references")
    return references


def check_provider(provider: str) -> None:
    """At most ``MAX_PROVIDER_CHARS``, one line."""
    if len(provider) > MAX_PROVIDER_CHARS:
        raise IndicatorError(
            "provider", f"is {len(provider)} characters long; at most {MAX_PROVIDER_CHARS}"
        )
    if _CONTROL.search(provider):
        raise IndicatorError("provider", f"{shown(provider)} contains a control character")


def check_description(description: str) -> None:
    """At most ``MAX_DESCRIPTION_CHARS``; tabs and line breaks but no other control characters."""
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise IndicatorError(
            "description",
            f"is {len(description)} characters long; at most {MAX_DESCRIPTION_CHARS}",
        )
    if _CONTROL_EXCEPT_LINES.search(description):
        raise IndicatorError("description", "contains a control character")


def confidence_from_input(raw: object) -> int:
    """A whole number from 0 to 100, or its decimal digits (a CSV cell)."""
    if isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit():
        raw = int(raw.strip()) if len(raw.strip()) <= 6 else raw
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise IndicatorError(
            "confidence", f"expected a whole number from 0 to 100, got {shown(raw)}"
        )
    if not 0 <= raw <= 100:
        raise IndicatorError("confidence", f"{raw} is not from 0 to 100")
    return raw


# Whole batches ------------------------------------------------------------------------------
# ``validate_batch`` checks each field over a whole batch at once, one column of values per
# field (``indicator_columns``). Each function here answers exactly what the per-indicator
# checks above (and ``validate_indicator``'s canonical-form checks) answer for every element,
# True when all pass, without a Python call per element: counts, lengths and bounds with
# map/min/max; characters over the column joined (joining adds none, so a forbidden one found
# is in some element). ASCII text, the common case, is checked by deleting its allowed bytes
# (bytes.translate): what is left is forbidden. Other text goes to the regular expressions
# above. Tags and references come as one string per indicator (``_elements``), providers and
# lists repeat over a batch: each distinct one is checked once.

_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))  # for ASCII, "not _CONTROL"
_DESCRIPTION_ASCII = _PRINTABLE_ASCII + b"\t\n\r"  # for ASCII, "not _CONTROL_EXCEPT_LINES"
# Printable, no space (strip() changes nothing), no upper case (lower() changes nothing), no
# comma: an ASCII tag of these is canonical.
_CANONICAL_TAG_ASCII = bytes(
    byte for byte in range(0x21, 0x7F) if byte != ord(",") and not ord("A") <= byte <= ord("Z")
)


def _ascii_within(text: str, allowed: bytes) -> bool:
    """Whether ``text`` is ASCII made of ``allowed`` bytes only."""
    return text.isascii() and not text.encode("ascii").translate(None, allowed)


def _elements(lists: Sequence[str], max_elements: int) -> list[str] | None:
    """The elements of ``lists`` (of each distinct list), or None when a list has more than
    ``max_elements``, an empty one, or one twice.

    A list is one string, its elements each followed by a line break (``"c2\\nmalware\\n"``,
    ``""`` for none), as ``indicator_columns`` reads them. A batch repeats a few lists over many
    indicators, so each distinct one is looked at once.
    """
    distinct = set(lists)
    text = "".join(distinct)
    if text.startswith("\n") or "\n\n" in text:  # an empty element
        return None
    counts = list(map(str.count, distinct, itertools.repeat("\n")))
    most = max(counts, default=0)
    if most > max_elements:
        return None
    if most > 1:
        # "a\nb\n".split("\n") is ["a", "b", ""]: one more distinct string than the list has
        # elements, unless one is there twice.
        pieces = map(str.split, distinct, itertools.repeat("\n"))
        if list(map(len, map(set, pieces))) != [count + 1 for count in counts]:
            return None
    return text.split("\n")[:-1]


def all_tags_pass(tag_lists: Sequence[str]) -> bool:
    """Whether every list of tags passes ``validate_indicator``: at most MAX_TAGS, none twice,
    each within ``check_tag``'s bounds and canonical (not empty, stripped, lower case).

    A list is one string, its tags each followed by a line break (``_elements``).
    """
    tags = _elements(tag_lists, MAX_TAGS)
    if tags is None:
        return False
    if not tags:
        return True
    if max(map(len, tags)) > MAX_TAG_CHARS:
        return False
    joined = "".join(tags)
    if _ascii_within(joined, _CANONICAL_TAG_ASCII):
        return True
    if "," in joined or _CONTROL.search(joined):
        return False
    return [tag.strip().lower() for tag in tags] == tags


def all_providers_pass(providers: list[str]) -> bool:
    """Whether every provider passes ``validate_indicator``: no surrounding spaces, and
    ``check_provider``."""
    distinct = list(set(providers))  # a batch has a few providers, over many indicators
    if max(map(len, distinct), default=0) > MAX_PROVIDER_CHARS:
        return False
    if list(map(str.strip, distinct)) != distinct:
        return False
    joined = "".join(distinct)
    return _ascii_within(joined, _PRINTABLE_ASCII) or not _CONTROL.search(joined)


def all_descriptions_pass(descriptions: Sequence[str]) -> bool:
    """Whether ``check_description`` passes every one of ``descriptions``."""
    if max(map(len, descriptions), default=0) > MAX_DESCRIPTION_CHARS:
        return False
    joined = "".join(descriptions)
    return _ascii_within(joined, _DESCRIPTION_ASCII) or not _CONTROL_EXCEPT_LINES.search(joined)


def all_references_pass(reference_lists: Sequence[str]) -> bool:
    """Whether every list of references passes ``validate_indicator``: at most MAX_REFERENCES,
    none twice, each in canonical form (``canonical_reference`` returns it unchanged).

    A list is one string, its references each followed by a line break (``_elements``).
    """
    references = _elements(reference_lists, MAX_REFERENCES)
    if references is None:
        return False
    # Feeds repeat a few report URLs over many indicators: each distinct one is checked once.
    distinct = list(set(references))
    if max(map(len, distinct), default=0) > MAX_REFERENCE_CHARS:
        return False
    return all_canonical(distinct, pb.ITYPE_URL)


def all_times_pass(
    first_seen: Sequence[int], last_seen: Sequence[int], expires: Sequence[int], now_ms: int
) -> bool:
    """Whether ``check_times`` passes every (first_seen_ms, last_seen_ms, expires_ms)."""
    if not first_seen:
        return True
    if not all(map(operator.le, first_seen, last_seen)):
        return False
    # So each last_seen is at least its first_seen, and each first_seen at most its last_seen.
    if min(first_seen) < MIN_TIME_MS or max(last_seen) > now_ms + MAX_CLOCK_SKEW_MS:
        return False
    if not any(expires):  # 0: never expires
        return True
    latest_expires_ms = now_ms + MAX_EXPIRES_AHEAD_MS
    return all(
        expires_ms == 0 or first_ms < expires_ms <= latest_expires_ms
        for first_ms, expires_ms in zip(first_seen, expires, strict=True)
    )
