"""The fast path of batch validation never accepts what the full validator refuses.

``validate_batch`` first asks ``_all_pass`` (the batch read into columns by
``indicator_columns.read_columns``, each column checked in bulk); only when that says no does it
check the indicators one by one, with ``validate_indicator``, to name the error. Here batches of
indicators of every type, valid and then mutated (one field at a time, or on the wire: unknown
fields, a numeric field sent length-delimited in place of a missing one, bytes changed), are
checked both ways:

- sound: whenever the fast path accepts a batch, every indicator has the batch's TLP and passes
  the full validator (and its value is exactly what ``canonical_value`` makes of it);
- exact: it accepts every such batch too, unless an indicator carries a numeric field with the
  length-delimited wire type (then it leaves the batch to the one-by-one checks);
- ``validate_batch`` accepts and refuses the same batches as the one-by-one checks, with the
  same error;
- ``read_columns`` reads what reading each indicator's fields reads.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains, urls

from threatmesh.pubsub import indicators as indicators_module
from threatmesh.pubsub.indicator_columns import read_columns
from threatmesh.pubsub.indicators import (
    ITYPE_BY_NAME,
    IndicatorError,
    canonical_value,
    indicator_from_record,
    validate_batch,
    validate_indicator,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

NOW_MS = 1_767_225_600_000  # 2026-01-01
DAY_MS = 86_400_000
GREEN = pb.TLP_GREEN
NUMERIC_FIELDS = {"itype": 2, "tlp": 3, "confidence": 4, "first_seen_ms": 7, "last_seen_ms": 8}
NUMERIC_FIELDS["expires_ms"] = 9
LENGTH_DELIMITED = 2


# Full validation, one indicator at a time -----------------------------------------------------


def full_error(indicator: pb.Indicator, batch_tlp: int) -> str | None:
    """What the one-by-one path of validate_batch says of ``indicator``, None if it passes;
    the value is also checked against canonical_value itself, no shortcut."""
    if indicator.tlp != batch_tlp:
        return "tlp"
    try:
        validate_indicator(indicator, now_ms=NOW_MS)
    except IndicatorError as error:
        return error.message
    assert canonical_value(indicator.value, indicator.itype) == indicator.value
    return None


def has_length_delimited_numbers(indicator: pb.Indicator) -> bool:
    unknown = UnknownFieldSet(indicator)
    return any(
        unknown[index].wire_type == LENGTH_DELIMITED
        and unknown[index].field_number in NUMERIC_FIELDS.values()
        for index in range(len(unknown))
    )


def one_by_one(batch: pb.Batch) -> str | None:
    """validate_batch's answer (its error, None to accept) without the fast path."""
    tlp_text = indicators_module._tlp_text
    for position, indicator in enumerate(batch.indicators, start=1):
        if indicator.tlp != batch.tlp:
            return (
                f"field 'tlp': indicator {position} of the batch is {tlp_text(indicator.tlp)} "
                f"but the batch is {tlp_text(batch.tlp)}"
            )
        try:
            validate_indicator(indicator, now_ms=NOW_MS)
        except IndicatorError as error:
            return f"field {error.field!r}: indicator {position} of the batch: {error.problem}"
    return None


def validate_batch_says(batch: pb.Batch) -> str | None:
    try:
        validate_batch(batch, topic_tlp=batch.tlp, now_ms=NOW_MS)
    except IndicatorError as error:
        return error.message
    return None


# Valid indicators of every type ---------------------------------------------------------------


def canonical_or(example: str, itype: int) -> Any:
    """The canonical form of a generated value, or ``example`` when it is refused (a
    generator's odd case: an all-numeric top-level domain, a port 0, ...)."""

    def canonical(raw: str) -> str:
        try:
            return canonical_value(raw, itype)
        except IndicatorError:
            return example

    return canonical


def hex_digits(count: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=count // 2, max_size=count // 2).map(bytes.hex)


RAW_VALUES: dict[str, st.SearchStrategy[str]] = {
    "ipv4": st.ip_addresses(v=4).map(str),
    "ipv6": st.ip_addresses(v=6).map(str),
    "cidr": st.builds("{}/{}".format, st.ip_addresses(v=4), st.integers(0, 32))
    | st.builds("{}/{}".format, st.ip_addresses(v=6), st.integers(0, 128)),
    "fqdn": domains(),
    "url": urls(),
    "email": st.emails(),
    "md5": hex_digits(32),
    "sha1": hex_digits(40),
    "sha256": hex_digits(64),
    "sha512": hex_digits(128),
    "asn": st.integers(1, 2**32 - 1).map("AS{}".format),
}
EXAMPLES = {
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "cidr": "10.0.0.0/8",
    "fqdn": "example.com",
    "url": "https://example.com/x",
    "email": "a@example.com",
    "md5": "d41d8cd98f00b204e9800998ecf8427e",
    "sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "sha512": "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
    "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    "asn": "AS13335",
}
assert set(RAW_VALUES) == set(EXAMPLES) == set(ITYPE_BY_NAME)

# Tags, references and texts near the rules' edges.
tags = st.sampled_from(["malware", "c2", "apt-28", "phishing", "tlp:test", "botnet", "café"])
references = st.sampled_from(
    ["https://ref.example/1", "https://ref.example/2", "http://192.0.2.7/r", "https://r.example/ä"]
)
tricky_characters = [*"aZ09-._/:@?#%[],; \t\r\x1f\x7f\x85\xa0\u2028é٣ß", "xn--", "İ"]
tricky_characters += ["\n", "\x00"] * 3  # they would blur the lists that read_columns makes


@st.composite
def valid_indicators(draw: st.DrawFn, itype_name: str) -> pb.Indicator:
    itype = ITYPE_BY_NAME[itype_name]
    value = draw(RAW_VALUES[itype_name].map(canonical_or(EXAMPLES[itype_name], itype)))
    first_seen_ms = draw(st.integers(NOW_MS - 400 * DAY_MS, NOW_MS))
    record: dict[str, Any] = {
        "value": value,
        "itype": itype_name,
        "confidence": draw(st.integers(0, 100)),
        "tags": draw(st.lists(tags, max_size=4)),
        "provider": draw(st.sampled_from(["", "feed-1", "Feed One"])),
        "first_seen": first_seen_ms / 1000,
        "last_seen": draw(st.integers(first_seen_ms, NOW_MS + DAY_MS)) / 1000,
        "description": draw(st.sampled_from(["", "seen\tin\r\nmail", "é" * 50, "d" * 4096])),
        "references": draw(st.lists(references, max_size=3)),
    }
    if draw(st.booleans()):
        record["expires"] = draw(st.integers(first_seen_ms + 1, NOW_MS + 3653 * DAY_MS)) / 1000
    return indicator_from_record(record, line=None, default_tlp=GREEN, now_ms=NOW_MS)


# Mutations ------------------------------------------------------------------------------------


@st.composite
def mutated_text(draw: st.DrawFn, text: str) -> str:
    """``text`` with one edit: a character changed in case, inserted, removed or replaced."""
    position = draw(st.integers(0, len(text)))
    edit = draw(st.sampled_from(["upper", "insert", "delete", "replace", "append", "prepend"]))
    piece = draw(st.sampled_from(tricky_characters))
    if edit == "upper":
        return text[:position] + text[position:].upper()
    if edit == "insert":
        return text[:position] + piece + text[position:]
    if edit == "delete":
        return text[:position] + text[position + 1 :]
    if edit == "replace":
        return text[:position] + piece + text[position + 1 :]
    return text + piece if edit == "append" else piece + text


FIELD_CHANGES = (
    *("value", "itype", "tlp", "confidence", "tags", "provider", "description", "references"),
    *("first_seen_ms", "last_seen_ms", "expires_ms"),
)
WIRE_CHANGES = ("stand-in", "unknown fields", "bytes")


@st.composite
def with_field_changed(draw: st.DrawFn, indicator: pb.Indicator, field: str) -> pb.Indicator:
    changed = pb.Indicator()
    changed.CopyFrom(indicator)
    if field in ("value", "provider", "description"):
        setattr(changed, field, draw(mutated_text(getattr(changed, field))))
    elif field == "itype":
        changed.itype = draw(st.sampled_from([0, 12, -1, *ITYPE_BY_NAME.values()]))
    elif field == "tlp":
        changed.tlp = draw(st.sampled_from([0, 6, -3, pb.TLP_CLEAR, pb.TLP_RED]))
    elif field == "confidence":
        changed.confidence = draw(st.sampled_from([0, 100, 101, 2**32 - 1]))
    elif field in ("tags", "references"):
        elements = getattr(changed, field)
        kind = draw(st.sampled_from(["edit", "edit", "twice", "many", "empty", "clear"]))
        if kind == "edit" and elements:
            index = draw(st.integers(0, len(elements) - 1))
            elements[index] = draw(mutated_text(elements[index]))
        elif kind == "twice" and elements:
            elements.append(elements[draw(st.integers(0, len(elements) - 1))])
        elif kind == "many":
            elements.extend(f"https://r.example/{number}" for number in range(33))
        elif kind == "empty":
            elements.insert(draw(st.integers(0, len(elements))), "")
        else:
            del elements[:]
    else:
        setattr(
            changed,
            field,
            draw(
                st.sampled_from(
                    [
                        *(0, -1, 631_151_999_999, 631_152_000_000, changed.first_seen_ms),
                        *(changed.last_seen_ms, NOW_MS + DAY_MS + 1, NOW_MS + 3653 * DAY_MS + 1),
                    ]
                )
            ),
        )
    return changed


def varint(number: int) -> bytes:
    number &= 2**64 - 1
    encoded = bytearray()
    while number >= 0x80:
        encoded.append(number & 0x7F | 0x80)
        number >>= 7
    encoded.append(number)
    return bytes(encoded)


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """One field as a newer or hostile sender may add it: any number, any wire type; among them
    a numeric field's number, length-delimited (read as packed values by a repeated field)."""
    number = draw(st.sampled_from([*NUMERIC_FIELDS.values(), 1, 5, 6, 10, 11, 12, 19, 2047]))
    wire_type = draw(st.sampled_from([0, 1, 2, 5]))
    key = varint(number << 3 | wire_type)
    if wire_type == 0:
        return key + varint(draw(st.integers(-(2**63), 2**64 - 1)))
    if wire_type == 1:
        return key + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    payload = b"".join(varint(value) for value in draw(st.lists(st.integers(0, 2**40), max_size=3)))
    return key + varint(len(payload)) + payload


@st.composite
def on_the_wire(draw: st.DrawFn, indicator: pb.Indicator, change: str) -> pb.Indicator:
    """``indicator`` changed in its encoding: a field dropped and sent again length-delimited
    ("stand-in"), unknown fields added, or bytes changed (when the result still parses)."""
    if change == "stand-in":  # the field is missing; packed values stand in for it
        name, number = draw(st.sampled_from(sorted(NUMERIC_FIELDS.items())))
        changed = pb.Indicator()
        changed.CopyFrom(indicator)
        kept = getattr(changed, name)
        changed.ClearField(name)
        payload = varint(kept)
        encoded = changed.SerializeToString() + varint(number << 3 | 2) + varint(len(payload))
        return pb.Indicator.FromString(encoded + payload)
    encoded = bytearray(indicator.SerializeToString())
    if change == "unknown fields":
        for _ in range(draw(st.integers(1, 3))):
            encoded += draw(unknown_fields())
    else:
        for _ in range(draw(st.integers(1, 3))):
            encoded[draw(st.integers(0, len(encoded) - 1))] = draw(st.integers(0, 255))
    try:
        return pb.Indicator.FromString(bytes(encoded))
    except DecodeError:
        return indicator


any_valid_indicator = st.sampled_from(sorted(ITYPE_BY_NAME)).flatmap(valid_indicators)


@st.composite
def batches(draw: st.DrawFn, change: str) -> pb.Batch:
    """1-4 valid indicators of any types, and one of them changed (``change``: a field's name,
    one of WIRE_CHANGES, or "none"). The batch's TLP is theirs (green), now and then another
    or none."""
    indicators = draw(st.lists(any_valid_indicator, min_size=1, max_size=4))
    index = draw(st.integers(0, len(indicators) - 1))
    if change in FIELD_CHANGES:
        indicators[index] = draw(with_field_changed(indicators[index], change))
    elif change in WIRE_CHANGES:
        indicators[index] = draw(on_the_wire(indicators[index], change))
    tlp = draw(st.sampled_from([GREEN] * 8 + [pb.TLP_RED, pb.TLP_UNSPECIFIED]))
    return pb.Batch(seq=1, sent_ms=NOW_MS, tlp=tlp, indicators=indicators)


# The properties -------------------------------------------------------------------------------

CHANGES = ("none", *FIELD_CHANGES, *WIRE_CHANGES)
EACH_CHANGE = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("change", CHANGES)
@EACH_CHANGE
@given(data=st.data())
def test_the_fast_path_accepts_exactly_the_valid_batches(change: str, data: st.DataObject) -> None:
    batch = data.draw(batches(change))
    fast = indicators_module._all_pass(batch, NOW_MS)
    each_valid = all(full_error(indicator, batch.tlp) is None for indicator in batch.indicators)
    if fast:
        assert each_valid  # never accepts what the full validator refuses
    if not any(map(has_length_delimited_numbers, batch.indicators)):
        assert fast == each_valid
    else:
        assert not fast


@pytest.mark.parametrize("change", CHANGES)
@EACH_CHANGE
@given(data=st.data())
def test_validate_batch_decides_as_the_one_by_one_checks(change: str, data: st.DataObject) -> None:
    batch = data.draw(batches(change))
    assert validate_batch_says(batch) == one_by_one(batch)


@st.composite
def valid_batches(draw: st.DrawFn) -> pb.Batch:
    indicators = draw(st.lists(any_valid_indicator, min_size=1, max_size=6))
    return pb.Batch(seq=1, tlp=GREEN, indicators=indicators)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CHANGES).flatmap(batches))
def test_read_columns_reads_what_each_indicator_holds(batch: pb.Batch) -> None:
    columns = read_columns(batch)
    indicators = list(batch.indicators)
    if columns is None:  # only for the reasons it gives, each making the batch invalid
        return
    assert columns.count == len(indicators)
    for name in ("value", "itype", "tlp", "first_seen_ms", "last_seen_ms", "expires_ms"):
        column = getattr(columns, name if name.endswith("_ms") else f"{name}s")
        assert column == [getattr(indicator, name) for indicator in indicators], name
    assert columns.confidences == [i.confidence for i in indicators if i.confidence]
    assert columns.providers == [i.provider for i in indicators if i.provider]
    assert columns.descriptions == [i.description for i in indicators if i.description]
    assert columns.tag_lists == ["".join(f"{tag}\n" for tag in i.tags) for i in indicators]
    assert columns.reference_lists == [
        "".join(f"{reference}\n" for reference in i.references) for i in indicators
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_batches())
def test_read_columns_reads_every_valid_batch(batch: pb.Batch) -> None:
    assert read_columns(batch) is not None
    assert indicators_module._all_pass(batch, NOW_MS)


# The cases by name ----------------------------------------------------------------------------


def good(**fields: Any) -> pb.Indicator:
    defaults: dict[str, Any] = {
        "value": "example.com",
        "itype": pb.ITYPE_FQDN,
        "tlp": GREEN,
        "tags": ["c2"],
        "first_seen_ms": NOW_MS - DAY_MS,
        "last_seen_ms": NOW_MS,
    }
    return pb.Indicator(**(defaults | fields))


def test_a_packed_field_cannot_stand_in_for_a_missing_one() -> None:
    # The second indicator has no TLP; a length-delimited field 3 holding the varint 3 would
    # read as its TLP in a repeated column.
    no_tlp = good()
    no_tlp.ClearField("tlp")
    sent = pb.Indicator.FromString(no_tlp.SerializeToString() + b"\x1a\x01" + varint(GREEN))
    batch = pb.Batch(seq=1, tlp=GREEN, indicators=[good(), sent])
    assert read_columns(batch) is None
    with pytest.raises(IndicatorError, match="indicator 2 of the batch is unknown level 0"):
        validate_batch(batch, topic_tlp=GREEN, now_ms=NOW_MS)


def test_fields_of_a_newer_schema_keep_the_fast_path() -> None:
    # A field this version does not know (number 12), in every indicator: skipped by both.
    newer = [
        pb.Indicator.FromString(good().SerializeToString() + b"\x60\x05" + b"\x6a\x01x")
        for _ in range(3)
    ]
    batch = pb.Batch(seq=1, tlp=GREEN, indicators=newer)
    assert indicators_module._all_pass(batch, NOW_MS)
    validate_batch(batch, topic_tlp=GREEN, now_ms=NOW_MS)


@pytest.mark.parametrize(
    "tags",
    [["c2", "c2\nx"], ["c2\x00"], ["\x00"], ["c2", "\n"]],
)
def test_a_tag_that_would_blur_the_lists_is_refused(tags: list[str]) -> None:
    batch = pb.Batch(seq=1, tlp=GREEN, indicators=[good(), good(), good()])
    batch.indicators[1].tags[:] = tags
    assert read_columns(batch) is None
    with pytest.raises(IndicatorError, match=r"indicator 2 of the batch: .*control character"):
        validate_batch(batch, topic_tlp=GREEN, now_ms=NOW_MS)


def test_some_indicators_expire() -> None:
    batch = pb.Batch(
        seq=1, tlp=GREEN, indicators=[good(), good(expires_ms=NOW_MS + DAY_MS), good()]
    )
    columns = read_columns(batch)
    assert columns is not None
    assert columns.expires_ms == [0, NOW_MS + DAY_MS, 0]
    batch.indicators[2].expires_ms = NOW_MS - 2 * DAY_MS  # before first_seen
    assert not indicators_module._all_pass(batch, NOW_MS)
    with pytest.raises(IndicatorError, match=r"indicator 3 of the batch: .* is not after"):
        validate_batch(batch, topic_tlp=GREEN, now_ms=NOW_MS)


def test_lists_repeated_over_a_batch() -> None:
    lists = [["c2", "x"], [], ["c2", "x"], ["x"], []]
    indicators = [good(tags=tags) for tags in lists]
    columns = read_columns(pb.Batch(seq=1, tlp=GREEN, indicators=indicators))
    assert columns is not None
    assert columns.tag_lists == ["c2\nx\n", "", "c2\nx\n", "x\n", ""]
    assert columns.reference_lists == [""] * 5
