"""Batch validation in bulk (pubsub.indicators._all_pass, the columns it reads and the
``all_*`` checks it uses): exactly the answer of checking each indicator on its own, shown on
generated batches, and each shortcut (plain value forms, one match per column, ASCII byte sets,
hex in one pass, lists checked once per distinct list) against the rule it stands for.
Indicators of every type, mutated field by field and on the wire: test_validate_fast_path.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from threatmesh.pubsub import indicator_fields as fields_module
from threatmesh.pubsub import indicator_values as values_module
from threatmesh.pubsub import indicators as indicators_module
from threatmesh.pubsub.indicator_columns import read_columns
from threatmesh.pubsub.indicator_fields import (
    MAX_REFERENCES,
    MAX_TAGS,
    canonical_reference,
    check_description,
    check_provider,
    check_tag,
    check_times,
)
from threatmesh.pubsub.indicator_values import shown
from threatmesh.pubsub.indicators import (
    ITYPE_BY_NAME,
    IndicatorError,
    canonical_value,
    itype_name,
    tlp_name,
    validate_batch,
    validate_indicator,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

NOW_MS = 1_767_225_600_000  # 2026-01-01
DAY_MS = 24 * 3600 * 1000
GREEN = pb.TLP_GREEN


def parses_unchanged(value: str, itype: int) -> bool:
    try:
        return canonical_value(value, itype) == value
    except IndicatorError:
        return False


def reference_check(indicator: pb.Indicator) -> None:
    """validate_indicator as it was before the shortcuts (plain and simple): the oracle."""
    if indicator.itype == pb.ITYPE_UNSPECIFIED:
        raise IndicatorError("itype", "is not set")
    itype_name(indicator.itype)
    if indicator.tlp == pb.TLP_UNSPECIFIED:
        raise IndicatorError("tlp", "is not set")
    tlp_name(indicator.tlp)
    canonical = canonical_value(indicator.value, indicator.itype)
    if canonical != indicator.value:
        raise IndicatorError(
            "value",
            f"{shown(indicator.value)} is not in canonical form (that is {shown(canonical)})",
        )
    if indicator.confidence > 100:
        raise IndicatorError("confidence", f"{indicator.confidence} is not from 0 to 100")
    if len(indicator.tags) > MAX_TAGS:
        raise IndicatorError("tags", f"more than {MAX_TAGS} tags")
    for index, tag in enumerate(indicator.tags):
        check_tag(tag)
        if tag != tag.strip().lower() or not tag:
            raise IndicatorError("tags", f"{shown(tag)} is not in canonical form (lower case)")
        if tag in indicator.tags[:index]:
            raise IndicatorError("tags", f"{shown(tag)} appears twice")
    if indicator.provider != indicator.provider.strip():
        raise IndicatorError("provider", f"{shown(indicator.provider)} has surrounding spaces")
    check_provider(indicator.provider)
    check_description(indicator.description)
    if len(indicator.references) > MAX_REFERENCES:
        raise IndicatorError("references", f"more than {MAX_REFERENCES} references")
    for index, reference in enumerate(indicator.references):
        canonical = canonical_reference(reference)
        if canonical != reference:
            raise IndicatorError(
                "references",
                f"{shown(reference)} is not in canonical form (that is {shown(canonical)})",
            )
        if reference in indicator.references[:index]:
            raise IndicatorError("references", f"{shown(reference)} appears twice")
    check_times(indicator, NOW_MS)


def reference_error(indicator: pb.Indicator) -> str | None:
    try:
        reference_check(indicator)
    except IndicatorError as error:
        return error.message
    return None


def error_of(indicator: pb.Indicator) -> str | None:
    try:
        validate_indicator(indicator, now_ms=NOW_MS)
    except IndicatorError as error:
        return error.message
    return None


def each_passes(indicators: list[pb.Indicator], batch_tlp: int) -> bool:
    """The reference: the per-indicator checks of validate_batch."""
    return all(
        indicator.tlp == batch_tlp and reference_error(indicator) is None
        for indicator in indicators
    )


# Plain value forms ----------------------------------------------------------------------------

labels = st.from_regex(values_module._LABEL, fullmatch=True)
names = st.lists(labels, min_size=2, max_size=5).map(".".join)
# Text near the plain forms' edges: case, digits, dots, hyphens, separators, spaces, controls,
# non-ASCII letters and digits, "xn--".
edgy = st.lists(
    st.sampled_from([*"aZ09-._/:@?#%[] \t\n\x7f\x85\u00a0é٣", "xn--", "AS"]), max_size=30
).map("".join)


def urls_from(hosts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(
        "{}://{}{}".format,
        st.sampled_from(["http", "https", "ftp", "ws", "wss", "HTTP", "gopher"]),
        hosts,
        st.one_of(edgy, st.text(max_size=30)),
    )


plain_candidates: dict[int, st.SearchStrategy[str]] = {
    pb.ITYPE_IPV4: st.one_of(
        st.from_regex(values_module._PLAIN_IPV4_VALUE, fullmatch=True),
        st.ip_addresses(v=4).map(str),
        st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){2,4}", fullmatch=True),
        edgy,
    ),
    pb.ITYPE_FQDN: st.one_of(
        names,
        st.from_regex(values_module._PLAIN_NAME_VALUE, fullmatch=True),
        st.builds("{}.{}".format, names, st.from_regex(r"[0-9]{1,3}", fullmatch=True)),
        st.builds("{}{}".format, names, edgy),
        edgy,
    ),
    pb.ITYPE_URL: st.one_of(
        urls_from(st.one_of(names, st.ip_addresses(v=4).map(str), edgy)),
        st.from_regex(values_module._PLAIN_URL_VALUE, fullmatch=True),
        edgy,
    ),
    pb.ITYPE_EMAIL: st.one_of(
        st.builds(
            "{}@{}".format,
            st.from_regex(values_module._EMAIL_LOCAL, fullmatch=True),
            st.one_of(names, edgy),
        ),
        st.builds("{}@{}".format, edgy, names),
        edgy,
    ),
    pb.ITYPE_ASN: st.one_of(
        st.from_regex(r"(AS|as)?[0-9]{1,12}", fullmatch=True),
        st.integers(0, 2**33).map("AS{}".format),
        edgy,
    ),
}


@pytest.mark.parametrize("itype", sorted(plain_candidates))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_plain_value_is_canonical(itype: int, data: st.DataObject) -> None:
    value = data.draw(plain_candidates[itype])
    if values_module._PLAIN_FORMS[itype](value):
        assert canonical_value(value, itype) == value


column_itypes = sorted(values_module._PLAIN_COLUMNS)


@pytest.mark.parametrize("itype", column_itypes)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_column_is_plain_exactly_when_each_value_is(itype: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(plain_candidates[itype], min_size=1, max_size=4))
    each = all(map(values_module._PLAIN_FORMS[itype], values))
    assert values_module._all_plain(values, itype) == each


# Names that end a label in a hyphen or start one with xn--, or that hold a line break (the
# column's separator), as the value itself, a URL's host, an email's domain; beside plain ones.
@pytest.mark.parametrize("itype", column_itypes)
@pytest.mark.parametrize(
    "value",
    [
        form.format(name)
        for name in ("example.com", "a-.example", "xn--abc.example", "-a.example", "a.b\nc.d")
        for form in ("{}", "http://{}/", "a@{}", "1.2.3.4\n{}", "{}\n")
    ],
)
def test_a_column_at_the_edges(itype: int, value: str) -> None:
    plain = {
        pb.ITYPE_IPV4: "192.0.2.1",
        pb.ITYPE_FQDN: "example.com",
        pb.ITYPE_URL: "http://example.com/",
        pb.ITYPE_EMAIL: "a@example.com",
    }[itype]
    for values in ([value], [plain, value], [value, plain]):
        each = all(map(values_module._PLAIN_FORMS[itype], values))
        assert values_module._all_plain(values, itype) == each


@pytest.mark.parametrize(
    ("itype", "value"),
    [
        (pb.ITYPE_IPV4, "192.0.2.1"),
        (pb.ITYPE_IPV4, "0.0.0.0"),
        (pb.ITYPE_IPV4, "255.255.255.255"),
        (pb.ITYPE_FQDN, "example.com"),
        (pb.ITYPE_FQDN, "a-b.c0.example"),
        (pb.ITYPE_FQDN, "3com.123.example"),
        (pb.ITYPE_URL, "https://example.com/"),
        (pb.ITYPE_URL, "http://192.0.2.1/x?q=1#f"),
        (pb.ITYPE_URL, "wss://c2.example.net/ws/ä"),
        (pb.ITYPE_EMAIL, "Alice.Smith+x@example.com"),
        (pb.ITYPE_ASN, "AS13335"),
        (pb.ITYPE_ASN, "AS4294967295"),
    ],
)
def test_common_values_take_the_shortcut(itype: int, value: str) -> None:
    assert values_module._PLAIN_FORMS[itype](value)
    assert canonical_value(value, itype) == value


@pytest.mark.parametrize(
    ("itype", "value"),
    [
        (pb.ITYPE_IPV4, "01.2.3.4"),
        (pb.ITYPE_FQDN, "Example.com"),
        (pb.ITYPE_FQDN, "example.com."),
        (pb.ITYPE_FQDN, "example.123"),
        (pb.ITYPE_FQDN, "xn--bcher-kva.de"),  # canonical, but only canonical_value checks punycode
        (pb.ITYPE_FQDN, "a" * 64 + ".example"),
        (pb.ITYPE_FQDN, ("a" * 63 + ".") * 4 + "com"),  # over 253 characters
        (pb.ITYPE_URL, "https://example.com"),
        (pb.ITYPE_URL, "https://example.com:8443/"),
        (pb.ITYPE_URL, "https://user@example.com/"),
        (pb.ITYPE_URL, "https://example.com/a b"),
        (pb.ITYPE_URL, "https://example.com/a\u2028"),
        (pb.ITYPE_URL, "https://1.2.3.999/"),
        (pb.ITYPE_URL, "https://" + ("a" * 63 + ".") * 4 + "com/"),  # host over 253
        (pb.ITYPE_EMAIL, "a" * 65 + "@example.com"),
        (pb.ITYPE_ASN, "AS4294967296"),
        (pb.ITYPE_ASN, "AS013335"),
    ],
)
def test_other_values_are_left_to_canonical_value(itype: int, value: str) -> None:
    assert not values_module._PLAIN_FORMS[itype](value)


hash_digits = sorted(values_module.HASH_HEX_DIGITS.items())


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(hash_digits),
    data=st.data(),
)
def test_hex_in_one_pass_is_each_value_canonical(
    kind: tuple[int, int], data: st.DataObject
) -> None:
    itype, digits = kind
    near = st.text(
        st.sampled_from(list("0123456789abcdef") + list("AF g\t\n٣é")),
        min_size=digits - 1,
        max_size=digits + 1,
    )
    exact = st.text("0123456789abcdef", min_size=digits, max_size=digits)
    values = data.draw(st.lists(st.one_of(exact, exact, near), min_size=1, max_size=5))
    each = [parses_unchanged(value, itype) for value in values]
    assert [values_module.is_canonical(value, itype) for value in values] == each
    assert values_module.all_canonical(values, itype) == all(each)
    assert values_module._all_lower_hex(values, digits) == all(each)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_all_canonical_is_each_value_canonical(data: st.DataObject) -> None:
    itype = data.draw(st.sampled_from(sorted(ITYPE_BY_NAME.values())))
    candidates = plain_candidates.get(itype, edgy)
    values = data.draw(st.lists(candidates, min_size=1, max_size=4))
    each = [parses_unchanged(value, itype) for value in values]
    assert [values_module.is_canonical(value, itype) for value in values] == each
    assert values_module.all_canonical(values, itype) == all(each)


def test_url_path_characters_are_those_canonical_value_allows() -> None:
    # The path class of _PLAIN_URL_VALUE is the complement of _SPACE_OR_CONTROL; every
    # whitespace, control and surrogate code point lies below U+3100 or among the surrogates.
    for code_point in (*range(0x3100), *range(0xD700, 0xE100), 0x10FFFF):
        character = chr(code_point)
        refused = values_module._SPACE_OR_CONTROL.search(character) is not None
        url = f"http://example.com/{character}"
        taken = values_module._PLAIN_FORMS[pb.ITYPE_URL](url)
        assert taken != refused, hex(code_point)
        in_column = values_module._all_plain([url, "http://example.com/"], pb.ITYPE_URL)
        assert in_column == (taken and character != "\n"), hex(code_point)


# Text fields: the ASCII byte sets against the rules they stand for ----------------------------


@pytest.mark.parametrize("code_point", range(128))
def test_ascii_byte_sets_are_the_rules(code_point: int) -> None:
    character = chr(code_point)
    assert fields_module._ascii_within(character, fields_module._PRINTABLE_ASCII) == (
        fields_module._CONTROL.search(character) is None
    )
    assert fields_module._ascii_within(character, fields_module._DESCRIPTION_ASCII) == (
        fields_module._CONTROL_EXCEPT_LINES.search(character) is None
    )
    try:
        fields_module.check_tag(character)
        canonical_tag = character == character.strip().lower()
    except IndicatorError:
        canonical_tag = False
    assert fields_module._ascii_within(character, fields_module._CANONICAL_TAG_ASCII) == (
        canonical_tag
    )


# Each column check against validate_indicator on that one field ------------------------------

GOOD = pb.Indicator(
    value="example.com",
    itype=pb.ITYPE_FQDN,
    tlp=GREEN,
    first_seen_ms=NOW_MS - DAY_MS,
    last_seen_ms=NOW_MS,
)


def good_with(**fields: Any) -> pb.Indicator:
    indicator = pb.Indicator()
    indicator.CopyFrom(GOOD)
    for name, value in fields.items():
        if name in ("tags", "references"):
            getattr(indicator, name).extend(value)
        else:
            setattr(indicator, name, value)
    return indicator


def passes_with(**fields: Any) -> bool:
    return reference_error(good_with(**fields)) is None


def lists_pass(check: Any, field: str, lists: list[list[str]]) -> bool:
    """``check`` (all_tags_pass or all_references_pass) of the lists as read_columns reads them
    from indicators that have them; False where read_columns refuses (a line break or NUL)."""
    indicators = [good_with(**{field: elements}) for elements in lists]
    columns = read_columns(pb.Batch(seq=1, tlp=GREEN, indicators=indicators))
    if columns is None:
        elements = [element for elements in lists for element in elements]
        assert any("\n" in element or "\x00" in element for element in elements)
        return False
    return bool(check(columns.tag_lists if field == "tags" else columns.reference_lists))


# Text near each rule: case (ASCII and not, and characters whose lower case is longer), spaces
# (ASCII and not), controls, commas, line breaks.
tricky_texts = st.one_of(
    st.text(st.sampled_from([*"ab09-:,. AÉéßİ\t\r\n\x00\x1f\x7f\x85\xa0\u2028"]), max_size=5),
    st.sampled_from(["é,", "Émile", "é ", " é", "a\xa0", "ß", "İ", "ǅ", "x" * 64, "é" * 65]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(tricky_texts, max_size=3), min_size=1, max_size=3))
def test_tags_in_bulk(tag_lists: list[list[str]]) -> None:
    expected = all(passes_with(tags=tags) for tags in tag_lists)
    assert lists_pass(fields_module.all_tags_pass, "tags", tag_lists) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(tricky_texts, min_size=1, max_size=3))
def test_providers_and_descriptions_in_bulk(texts: list[str]) -> None:
    providers = all(passes_with(provider=text) for text in texts)
    assert fields_module.all_providers_pass(texts) == providers
    descriptions = all(passes_with(description=text) for text in texts)
    assert fields_module.all_descriptions_pass(texts) == descriptions


@pytest.mark.parametrize(
    "tag_lists",
    [
        [["é,"]],  # not ASCII, canonical but for the comma
        [["Émile"]],  # not ASCII, upper case
        [["é "]],
        [["a\xa0"]],  # a non-ASCII space at the end
        [["İ"]],  # lower() makes it two characters
        [["é"], ["é", "é"]],  # twice in one list (across lists is fine)
        [["é"] * 33],
        [[""]],
        [["x" * 64], ["x" * 65]],
        [["a", "b"], ["b", "a"], [], ["a"]],  # lists repeat: each distinct one checked once
        [["a", "b"], ["b", "a"], ["a", "a"]],
        [[f"t{number}" for number in range(32)], ["t1"]],
        [["t\n1"]],  # read_columns refuses a line break...
        [["t1\x00"]],  # ...and NUL, which would blur the lists
    ],
)
def test_tags_in_bulk_at_the_edges(tag_lists: list[list[str]]) -> None:
    expected = all(passes_with(tags=tags) for tags in tag_lists)
    assert lists_pass(fields_module.all_tags_pass, "tags", tag_lists) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(
            st.one_of(
                st.sampled_from(["https://ref.example/1", "https://ref.example/2", "x"]),
                urls_from(st.sampled_from(["ref.example", "Ref.example", "192.0.2.1"])),
            ),
            max_size=3,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_references_in_bulk(reference_lists: list[list[str]]) -> None:
    expected = all(passes_with(references=references) for references in reference_lists)
    assert lists_pass(fields_module.all_references_pass, "references", reference_lists) == expected


@pytest.mark.parametrize(
    "reference_lists",
    [
        [["https://ref.example/1"], ["https://ref.example/1", "https://ref.example/1"]],
        [[f"https://r.example/{number}" for number in range(17)]],
        [["https://ref.example/" + "r" * 2100]],
        [["https://ref.example"]],
    ],
)
def test_references_in_bulk_at_the_edges(reference_lists: list[list[str]]) -> None:
    expected = all(passes_with(references=references) for references in reference_lists)
    assert not expected
    assert not lists_pass(fields_module.all_references_pass, "references", reference_lists)


@pytest.mark.parametrize(
    ("first_seen_ms", "last_seen_ms", "expires_ms"),
    [
        (NOW_MS - DAY_MS, NOW_MS, NOW_MS + 3653 * DAY_MS),  # expires at the limit
        (NOW_MS - DAY_MS, NOW_MS, NOW_MS + 3653 * DAY_MS + 1),
        (NOW_MS - DAY_MS, NOW_MS, NOW_MS - DAY_MS),  # expires at first_seen
        (NOW_MS - DAY_MS, NOW_MS, NOW_MS - DAY_MS + 1),
        (NOW_MS - DAY_MS, NOW_MS, -1),
        (631_152_000_000, 631_152_000_000, 0),  # 1990
        (631_151_999_999, 631_152_000_000, 0),
        (NOW_MS, NOW_MS + DAY_MS, 0),  # a day ahead
        (NOW_MS, NOW_MS + DAY_MS + 1, 0),
        (NOW_MS, NOW_MS - 1, 0),
    ],
)
def test_times_in_bulk_at_the_edges(first_seen_ms: int, last_seen_ms: int, expires_ms: int) -> None:
    one = passes_with(first_seen_ms=first_seen_ms, last_seen_ms=last_seen_ms, expires_ms=expires_ms)
    good = (NOW_MS - DAY_MS, NOW_MS, 0)
    for firsts, lasts, expires in (
        ([first_seen_ms], [last_seen_ms], [expires_ms]),
        ([good[0], first_seen_ms], [good[1], last_seen_ms], [good[2], expires_ms]),
    ):
        assert fields_module.all_times_pass(firsts, lasts, expires, NOW_MS) == one


@pytest.mark.parametrize(
    "values",
    [
        ["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85 "],  # space at the end
        ["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8 5"],
        ["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8 5", "0" * 63 + "\t"],
        ["E3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
        ["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85٣"],
        ["0" * 64, "0" * 63],
    ],
)
def test_hex_in_one_pass_at_the_edges(values: list[str]) -> None:
    assert not all(parses_unchanged(value, pb.ITYPE_SHA256) for value in values)
    assert not values_module.all_canonical(values, pb.ITYPE_SHA256)


# Whole batches: the bulk answer is the per-indicator answer -----------------------------------

texts = st.one_of(
    st.text(st.sampled_from(list("abc-09:. ,ABé\t\n\x00\x7f\x85\u2028")), max_size=6),
    st.sampled_from(["", "malware", "c2", "Bench", " x", "x ", "é", "a" * 64, "a" * 65]),
)
indicator_values = st.one_of(
    st.sampled_from(
        [
            (pb.ITYPE_FQDN, "example.com"),
            (pb.ITYPE_FQDN, "Example.com"),
            (pb.ITYPE_FQDN, "xn--bcher-kva.de"),
            (pb.ITYPE_IPV4, "192.0.2.1"),
            (pb.ITYPE_IPV4, "192.0.2.01"),
            (pb.ITYPE_IPV6, "2001:db8::1"),
            (pb.ITYPE_IPV6, "2001:DB8::1"),
            (pb.ITYPE_CIDR, "10.0.0.0/8"),
            (pb.ITYPE_URL, "https://example.com/x"),
            (pb.ITYPE_URL, "https://example.com:443/x"),
            (pb.ITYPE_EMAIL, "a@example.com"),
            (pb.ITYPE_SHA256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            (pb.ITYPE_SHA256, "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"),
            (pb.ITYPE_MD5, "d41d8cd98f00b204e9800998ecf8427e"),
            (pb.ITYPE_ASN, "AS13335"),
            (pb.ITYPE_ASN, "as13335"),
            (pb.ITYPE_UNSPECIFIED, "example.com"),
            (42, "example.com"),
        ]
    ),
    st.tuples(st.sampled_from(sorted(ITYPE_BY_NAME.values())), edgy),
)
references = st.one_of(
    st.sampled_from(
        [
            "https://ref.example/1",
            "https://ref.example/2",
            "HTTPS://ref.example/1",
            "https://ref.example",
            "https://ref.example/" + "r" * 2100,
        ]
    ),
    urls_from(names),
)
times = st.sampled_from(
    [
        *(0, -5, 631_151_999_999, 631_152_000_000),  # around 1990
        *(NOW_MS - DAY_MS, NOW_MS, NOW_MS + DAY_MS, NOW_MS + DAY_MS + 1),  # the clock skew
        *(NOW_MS + 3653 * DAY_MS, NOW_MS + 3653 * DAY_MS + 1, 2**62),  # ten years ahead
    ]
)


@st.composite
def peer_indicators(draw: st.DrawFn, batch_tlp: int) -> pb.Indicator:
    """An indicator whose every field is usually valid and sometimes (one in eight) drawn
    from values near and past the rules' edges."""

    def field(usual: st.SearchStrategy[Any], edge: st.SearchStrategy[Any]) -> Any:
        return draw(edge if draw(st.integers(0, 7)) == 0 else usual)

    itype, value = field(
        st.sampled_from(
            [
                (
                    pb.ITYPE_SHA256,
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ),
                (pb.ITYPE_FQDN, "example.com"),
                (pb.ITYPE_URL, "https://example.com/x"),
            ]
        ),
        indicator_values,
    )
    first_seen_ms = field(st.just(NOW_MS - DAY_MS), times)
    return pb.Indicator(
        value=value,
        itype=itype,
        tlp=field(st.just(batch_tlp), st.integers(0, 6)),
        confidence=field(st.integers(0, 100), st.sampled_from([100, 101, 2**32 - 1])),
        tags=field(
            st.lists(
                st.sampled_from(["bench", "malware", "c2", "apt-28"]), max_size=4, unique=True
            ),
            st.one_of(
                st.lists(texts, max_size=3),
                st.just([f"t{number}" for number in range(32)]),
                st.just([f"t{number}" for number in range(33)]),
            ),
        ),
        provider=field(st.sampled_from(["", "feed-1", "Feed One"]), texts),
        description=field(st.sampled_from(["", "seen\tin\r\nmail", "d" * 4096]), texts),
        references=field(
            st.lists(
                st.sampled_from(["https://ref.example/1", "https://ref.example/2"]), unique=True
            ),
            st.one_of(
                st.lists(references, max_size=3),
                st.just([f"https://r.example/{number}" for number in range(17)]),
            ),
        ),
        first_seen_ms=first_seen_ms,
        last_seen_ms=field(st.just(first_seen_ms), times),
        expires_ms=field(st.sampled_from([0, NOW_MS + DAY_MS]), times),
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_batch_passes_in_bulk_exactly_when_each_indicator_passes(data: st.DataObject) -> None:
    batch_tlp = data.draw(st.sampled_from([GREEN] * 6 + [pb.TLP_RED, pb.TLP_UNSPECIFIED, 9]))
    indicators = data.draw(st.lists(peer_indicators(batch_tlp), min_size=1, max_size=4))
    batch = pb.Batch(seq=1, tlp=batch_tlp, indicators=indicators)
    assert indicators_module._all_pass(batch, NOW_MS) == each_passes(indicators, batch_tlp)
    for indicator in indicators:  # and validate_indicator names the same first problem
        assert error_of(indicator) == reference_error(indicator)


def test_the_error_is_that_of_the_first_failing_indicator() -> None:
    good = pb.Indicator(
        value="example.com",
        itype=pb.ITYPE_FQDN,
        tlp=GREEN,
        tags=["c2"],
        first_seen_ms=NOW_MS - DAY_MS,
        last_seen_ms=NOW_MS,
    )
    bad_tag = pb.Indicator()
    bad_tag.CopyFrom(good)
    bad_tag.tags.append("C2")
    bad_value = pb.Indicator()
    bad_value.CopyFrom(good)
    bad_value.value = "Example.com"
    batch = pb.Batch(seq=1, tlp=GREEN, indicators=[good, bad_tag, bad_value])
    with pytest.raises(IndicatorError, match=re.escape("indicator 2 of the batch: 'C2'")):
        validate_batch(batch, topic_tlp=GREEN, now_ms=NOW_MS)
