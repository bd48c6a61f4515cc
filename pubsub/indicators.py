"""The indicator model: building indicators from user records, and validating them.

Owns the rules of DESIGN.md, "Indicators". Two ways in, one set of checks:
- ``indicator_from_record(record, line=..., now_ms=...)`` builds a ``pb.Indicator`` from what a
  user wrote (a JSON object, a CSV row): it normalises (canonical value, lower-case tags,
  times to epoch ms UTC, defaults) and then checks. A record with a field we do not know is
  refused, so a typo (``confidance``) never falls back to a default unnoticed.
- ``validate_indicator(indicator, now_ms=...)`` checks what a peer sent. It normalises
  nothing: a value, tag or reference not already canonical is refused, so every node stores
  and hashes the same bytes. Whatever ``indicator_from_record`` returns passes it.
- ``validate_batch`` adds the batch rules: TLP equal to the topic's (DESIGN.md, "Wire
  protocol"), a sequence number, a bounded number of indicators. Every node runs it on every
  batch it receives, so it reads the batch into one column per field (``indicator_columns``)
  and checks each column at once (``_all_pass``, with the ``all_*`` checks of
  ``indicator_fields`` and ``indicator_values``): the same answer as ``validate_indicator`` on
  each, several times sooner. Only a batch that fails there is gone through one indicator at a
  time, to name the first invalid one (tests/test_validate_fast_path.py: the same decisions).

The value's rules live in ``indicator_values``, the other fields' in ``indicator_fields``:
value 2048 characters, 32 tags of 64, provider 128, description 4096, 16 references of 2048;
times from 1990 to a day ahead of ``now_ms``, ``last_seen >= first_seen``, ``expires`` after
``first_seen``. Every failure is an ``IndicatorError`` that names the field and, for user
input, the line. Pure: no I/O, and the clock is ``now_ms``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from threatmesh.pubsub.indicator_columns import read_columns
from threatmesh.pubsub.indicator_fields import (
    MAX_REFERENCES,
    MAX_TAGS,
    all_descriptions_pass,
    all_providers_pass,
    all_references_pass,
    all_tags_pass,
    all_times_pass,
    canonical_reference,
    check_description,
    check_provider,
    check_tag,
    check_times,
    confidence_from_input,
    iso_time,
    references_from_input,
    string_field,
    tags_from_input,
    time_ms,
)
from threatmesh.pubsub.indicator_values import (
    ITYPE_BY_NAME,
    MAX_VALUE_CHARS,
    IndicatorError,
    all_canonical,
    canonical_value,
    detect_itype,
    is_canonical,
    itype_name,
    parse_itype,
    shown,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

__all__ = [
    "DEFAULT_CONFIDENCE",
    "ITYPE_BY_NAME",
    "MAX_VALUE_CHARS",
    "RECORD_FIELDS",
    "TLP_BY_NAME",
    "IndicatorError",
    "canonical_value",
    "detect_itype",
    "indicator_from_record",
    "indicator_to_record",
    "iso_time",
    "itype_name",
    "parse_itype",
    "parse_tlp",
    "tlp_name",
    "unknown_field_error",
    "validate_batch",
    "validate_indicator",
]

# The fields of a record (JSON object, CSV header), in the order records are written.
RECORD_FIELDS = (
    "value",
    "itype",
    "tlp",
    "confidence",
    "tags",
    "provider",
    "first_seen",
    "last_seen",
    "expires",
    "description",
    "references",
)
DEFAULT_CONFIDENCE = 50
DEFAULT_MAX_BATCH_INDICATORS = 10_000

# TLP 2.0 (https://www.first.org/tlp/) levels by the names used in topics, the CLI and JSON.
TLP_BY_NAME: Mapping[str, int] = MappingProxyType(
    {
        "clear": pb.TLP_CLEAR,
        "green": pb.TLP_GREEN,
        "amber": pb.TLP_AMBER,
        "amber-strict": pb.TLP_AMBER_STRICT,
        "red": pb.TLP_RED,
    }
)
_NAME_BY_TLP = {tlp: name for name, tlp in TLP_BY_NAME.items()}
_KNOWN_ITYPES = frozenset(ITYPE_BY_NAME.values())


def tlp_name(tlp: int) -> str:
    """The name of a TLP level (``"amber-strict"``); IndicatorError (field "tlp") if unknown."""
    try:
        return _NAME_BY_TLP[tlp]
    except KeyError:
        raise IndicatorError("tlp", f"unknown TLP level {tlp}") from None


def parse_tlp(name: str) -> int:
    """A TLP level from its name: ``amber-strict``, ``amber+strict``, ``TLP:AMBER+STRICT``, ...

    Case-insensitive. ``white`` is taken as ``clear`` (TLP 2.0 renamed it). IndicatorError
    (field "tlp") otherwise.
    """
    if not isinstance(name, str):
        raise IndicatorError("tlp", f"expected a name like 'green', got {type(name).__name__}")
    key = name.strip().lower().removeprefix("tlp:").strip().replace("+", "-")
    tlp = TLP_BY_NAME.get("clear" if key == "white" else key)
    if tlp is None:
        raise IndicatorError(
            "tlp", f"{shown(name)} is not one of clear, green, amber, amber+strict, red"
        )
    return tlp


# Records in ---------------------------------------------------------------------------------


def _absent(raw: object) -> bool:
    """None and empty strings (an empty CSV cell, JSON null) mean "not given"."""
    return raw is None or (isinstance(raw, str) and not raw.strip())


def unknown_field_error(name: str) -> IndicatorError:
    """The error for a field (or CSV column) that is not one of ``RECORD_FIELDS``."""
    close = difflib.get_close_matches(name.lower(), RECORD_FIELDS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(RECORD_FIELDS)
    return IndicatorError(name, f"unknown field ({hint})")


def _check_known_fields(record: Mapping[Any, Any]) -> None:
    for key in record:
        if not (isinstance(key, str) and key in RECORD_FIELDS):
            raise unknown_field_error(str(key))


def indicator_from_record(
    record: Mapping[str, Any],
    *,
    line: int | None,
    default_tlp: int,
    now_ms: int,
    default_provider: str = "",
) -> pb.Indicator:
    """One indicator from a user's record (a JSON object or CSV row), normalised and checked.

    Fields are ``RECORD_FIELDS``; ``value`` is required, the others optional (None or "" is
    "not given"): ``itype`` is detected from the value, ``tlp`` is ``default_tlp``,
    ``confidence`` 50, ``provider`` ``default_provider``. A missing ``first_seen`` or
    ``last_seen`` is the other one when given (a record that says only when it was first
    seen does not claim it was seen again), else ``now_ms``. IndicatorError names the field
    and ``line``.
    """
    try:
        return _indicator_from_record(record, default_tlp, now_ms, default_provider)
    except IndicatorError as error:
        raise error.at_line(line) from None


def _indicator_from_record(
    record: Mapping[str, Any], default_tlp: int, now_ms: int, default_provider: str
) -> pb.Indicator:
    if not isinstance(record, Mapping):
        raise IndicatorError("record", f"expected an object, got {type(record).__name__}")
    _check_known_fields(record)
    given = {key: raw for key, raw in record.items() if not _absent(raw)}
    if "value" not in given:
        raise IndicatorError("value", "is required")
    raw_value = string_field("value", given["value"])
    itype = parse_itype(given["itype"]) if "itype" in given else detect_itype(raw_value)
    value = canonical_value(raw_value, itype)
    if "tlp" in given:
        tlp = parse_tlp(string_field("tlp", given["tlp"]))
    else:
        tlp_name(default_tlp)  # refuse an unknown default
        tlp = default_tlp
    first_seen_ms = time_ms("first_seen", given["first_seen"]) if "first_seen" in given else None
    last_seen_ms = time_ms("last_seen", given["last_seen"]) if "last_seen" in given else None
    if first_seen_ms is None:
        first_seen_ms = now_ms if last_seen_ms is None else last_seen_ms
    if last_seen_ms is None:
        last_seen_ms = first_seen_ms
    provider = string_field("provider", given.get("provider", default_provider)).strip()
    check_provider(provider)
    description = string_field("description", given.get("description", ""))
    check_description(description)
    indicator = pb.Indicator(
        value=value,
        itype=pb.IndicatorType.ValueType(itype),
        tlp=pb.Tlp.ValueType(tlp),
        confidence=confidence_from_input(given.get("confidence", DEFAULT_CONFIDENCE)),
        tags=tags_from_input(given.get("tags", [])),
        provider=provider,
        first_seen_ms=first_seen_ms,
        last_seen_ms=last_seen_ms,
        expires_ms=time_ms("expires", given["expires"]) if "expires" in given else 0,
        description=description,
        references=references_from_input(given.get("references", [])),
    )
    check_times(indicator, now_ms)
    return indicator


# Indicators from peers ----------------------------------------------------------------------


def validate_indicator(indicator: pb.Indicator, *, now_ms: int) -> None:
    """Check an indicator a peer sent; IndicatorError (line None) names the first bad field.

    The same checks as for records, but nothing is normalised: value, tags and references
    must already be in canonical form, and itype and tlp must be set.
    """
    itype = indicator.itype  # each field read once: every read builds a new Python object
    if itype == pb.ITYPE_UNSPECIFIED:
        raise IndicatorError("itype", "is not set")
    itype_name(itype)
    if indicator.tlp == pb.TLP_UNSPECIFIED:
        raise IndicatorError("tlp", "is not set")
    tlp_name(indicator.tlp)
    value = indicator.value
    if not is_canonical(value, itype):
        canonical = canonical_value(value, itype)  # raises if invalid
        raise IndicatorError(
            "value", f"{shown(value)} is not in canonical form (that is {shown(canonical)})"
        )
    if indicator.confidence > 100:
        raise IndicatorError("confidence", f"{indicator.confidence} is not from 0 to 100")
    _check_tags(indicator.tags[:])
    provider = indicator.provider
    if provider != provider.strip():
        raise IndicatorError("provider", f"{shown(provider)} has surrounding spaces")
    check_provider(provider)
    check_description(indicator.description)
    references = indicator.references
    if references:
        _check_references(references[:])
    check_times(indicator, now_ms)


def _check_tags(tags: list[str]) -> None:
    """IndicatorError for the first problem of ``tags``, if any."""
    if len(tags) > MAX_TAGS:
        raise IndicatorError("tags", f"more than {MAX_TAGS} tags")
    for index, tag in enumerate(tags):
        check_tag(tag)
        if tag != tag.strip().lower() or not tag:
            raise IndicatorError("tags", f"{shown(tag)} is not in canonical form (lower case)")
        if tag in tags[:index]:
            raise IndicatorError("tags", f"{shown(tag)} appears twice")


def _check_references(references: list[str]) -> None:
    """IndicatorError for the first problem of ``references``, if any."""
    if len(references) > MAX_REFERENCES:
        raise IndicatorError("references", f"more than {MAX_REFERENCES} references")
    for index, reference in enumerate(references):
        canonical = canonical_reference(reference)
        if canonical != reference:
            raise IndicatorError(
                "references",
                f"{shown(reference)} is not in canonical form (that is {shown(canonical)})",
            )
        if reference in references[:index]:
            raise IndicatorError("references", f"{shown(reference)} appears twice")


def validate_batch(
    batch: pb.Batch,
    *,
    topic_tlp: int,
    now_ms: int,
    max_indicators: int = DEFAULT_MAX_BATCH_INDICATORS,
) -> None:
    """Check a batch received on the topic of ``topic_tlp``; IndicatorError if invalid.

    Field "seq" when 0, "tlp" when the batch's or any indicator's TLP is not the topic's,
    "indicators" when empty or over ``max_indicators``; otherwise the first invalid
    indicator's field, with its position (1-based) in the message.
    """
    if batch.seq == 0:
        raise IndicatorError("seq", "is 0; sequence numbers start at 1")
    if batch.tlp != topic_tlp:
        raise IndicatorError(
            "tlp", f"the batch is {_tlp_text(batch.tlp)} but the topic is {_tlp_text(topic_tlp)}"
        )
    if not batch.indicators:
        raise IndicatorError("indicators", "the batch is empty")
    if len(batch.indicators) > max_indicators:
        raise IndicatorError(
            "indicators", f"{len(batch.indicators)} indicators; at most {max_indicators}"
        )
    if _all_pass(batch, now_ms):
        return
    # Some indicator fails: find the first, and say why.
    for position, indicator in enumerate(batch.indicators, start=1):
        if indicator.tlp != batch.tlp:
            raise IndicatorError(
                "tlp",
                f"indicator {position} of the batch is {_tlp_text(indicator.tlp)} but the "
                f"batch is {_tlp_text(batch.tlp)}",
            )
        try:
            validate_indicator(indicator, now_ms=now_ms)
        except IndicatorError as error:
            raise IndicatorError(
                error.field, f"indicator {position} of the batch: {error.problem}"
            ) from None


def _all_pass(batch: pb.Batch, now_ms: int) -> bool:
    """Whether every indicator has the batch's level and passes ``validate_indicator``.

    The same answer as checking them one by one, several times sooner: the batch is read into
    one column per field (``indicator_columns``), and each column checked in bulk
    (``indicator_fields.all_*_pass``, ``indicator_values.all_canonical``), rather than a dozen
    Python calls per indicator. False also when the batch cannot be read into columns (then
    it is invalid, or has a numeric field sent length-delimited); a batch that is False here
    goes through the checks one by one, which decide, and name the error.
    """
    batch_tlp = batch.tlp
    if batch_tlp not in _NAME_BY_TLP:  # also catches TLP_UNSPECIFIED
        return False
    if not batch.indicators:
        return True
    columns = read_columns(batch)
    if columns is None:
        return False
    if columns.tlps.count(batch_tlp) != columns.count:
        return False
    if not _KNOWN_ITYPES.issuperset(columns.itypes):
        return False
    if max(columns.confidences, default=0) > 100:
        return False
    return (
        all_tags_pass(columns.tag_lists)
        and all_providers_pass(columns.providers)
        and all_descriptions_pass(columns.descriptions)
        and all_references_pass(columns.reference_lists)
        and all_times_pass(columns.first_seen_ms, columns.last_seen_ms, columns.expires_ms, now_ms)
        and _all_values_canonical(columns.values, columns.itypes)
    )


def _all_values_canonical(values: list[str], itypes: list[int]) -> bool:
    """Whether every value is canonical for its itype (``all_canonical`` per itype)."""
    if itypes.count(itypes[0]) == len(itypes):
        return all_canonical(values, itypes[0])
    values_by_itype: dict[int, list[str]] = {itype: [] for itype in set(itypes)}
    for itype, value in zip(itypes, values, strict=True):
        values_by_itype[itype].append(value)
    return all(all_canonical(group, itype) for itype, group in values_by_itype.items())


def _tlp_text(tlp: int) -> str:
    return _NAME_BY_TLP.get(tlp, f"unknown level {tlp}")


# Records out --------------------------------------------------------------------------------


def indicator_to_record(indicator: pb.Indicator) -> dict[str, Any]:
    """A JSON-ready record of ``indicator``, the inverse of ``indicator_from_record``.

    Times are ISO 8601 UTC strings ending in "Z"; ``expires`` is None when it does not.
    """
    return {
        "value": indicator.value,
        "itype": itype_name(indicator.itype),
        "tlp": tlp_name(indicator.tlp),
        "confidence": indicator.confidence,
        "tags": list(indicator.tags),
        "provider": indicator.provider,
        "first_seen": iso_time(indicator.first_seen_ms),
        "last_seen": iso_time(indicator.last_seen_ms),
        "expires": iso_time(indicator.expires_ms) if indicator.expires_ms else None,
        "description": indicator.description,
        "references": list(indicator.references),
    }
