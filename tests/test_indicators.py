"""The indicator model: values, records, checks of what peers send, batches."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains, urls

from threatmesh.pubsub.indicators import (
    ITYPE_BY_NAME,
    MAX_VALUE_CHARS,
    RECORD_FIELDS,
    TLP_BY_NAME,
    IndicatorError,
    canonical_value,
    detect_itype,
    indicator_from_record,
    indicator_to_record,
    iso_time,
    itype_name,
    parse_tlp,
    tlp_name,
    validate_batch,
    validate_indicator,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

NOW_MS = 1_750_000_000_000  # 2025-06-15T15:06:40Z
DAY_MS = 86_400_000
GREEN = pb.TLP_GREEN


def build(record: dict[str, Any], line: int | None = 7, **options: Any) -> pb.Indicator:
    options.setdefault("default_tlp", GREEN)
    options.setdefault("now_ms", NOW_MS)
    return indicator_from_record(record, line=line, **options)


def refused(record: dict[str, Any], field: str, *fragments: str) -> IndicatorError:
    with pytest.raises(IndicatorError) as caught:
        build(record, line=12)
    error = caught.value
    assert (error.field, error.line) == (field, 12), str(error)
    assert str(error).startswith(f"line 12: field {field!r}: ")
    for fragment in fragments:
        assert fragment in str(error)
    return error


# TLP and type names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tlp"),
    [
        ("clear", pb.TLP_CLEAR),
        ("CLEAR", pb.TLP_CLEAR),
        ("white", pb.TLP_CLEAR),
        ("TLP:WHITE", pb.TLP_CLEAR),
        ("green", pb.TLP_GREEN),
        ("tlp:green", pb.TLP_GREEN),
        ("amber", pb.TLP_AMBER),
        ("amber-strict", pb.TLP_AMBER_STRICT),
        ("amber+strict", pb.TLP_AMBER_STRICT),
        ("TLP:AMBER+STRICT", pb.TLP_AMBER_STRICT),
        ("tlp:red", pb.TLP_RED),
        (" Red ", pb.TLP_RED),
    ],
)
def test_parse_tlp(name: str, tlp: int) -> None:
    assert parse_tlp(name) == tlp


@pytest.mark.parametrize("name", ["", "amber strict", "tlp:", "purple", "unspecified", "3"])
def test_parse_tlp_refuses(name: str) -> None:
    with pytest.raises(IndicatorError) as caught:
        parse_tlp(name)
    assert caught.value.field == "tlp"
    assert caught.value.line is None
    assert "is not one of clear, green, amber, amber+strict, red" in str(caught.value)


def test_tlp_names_round_trip() -> None:
    assert list(TLP_BY_NAME) == ["clear", "green", "amber", "amber-strict", "red"]
    for name, tlp in TLP_BY_NAME.items():
        assert tlp_name(tlp) == name
        assert parse_tlp(name) == tlp
    for bad in (pb.TLP_UNSPECIFIED, 6, -1):
        with pytest.raises(IndicatorError, match="unknown TLP level"):
            tlp_name(bad)


def test_itype_names_round_trip() -> None:
    assert sorted(ITYPE_BY_NAME.values()) == list(range(1, 12))
    for name, itype in ITYPE_BY_NAME.items():
        assert itype_name(itype) == name
    with pytest.raises(IndicatorError) as caught:
        itype_name(pb.ITYPE_UNSPECIFIED)
    assert caught.value.field == "itype"


def test_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        TLP_BY_NAME["white"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        ITYPE_BY_NAME["domain"] = 4  # type: ignore[index]


# Detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "itype"),
    [
        ("1.2.3.4", pb.ITYPE_IPV4),
        (" 1.2.3.4 ", pb.ITYPE_IPV4),
        ("999.1.1.1", pb.ITYPE_IPV4),  # the shape; canonical_value refuses it
        ("2001:db8::1", pb.ITYPE_IPV6),
        ("::1", pb.ITYPE_IPV6),
        ("::ffff:1.2.3.4", pb.ITYPE_IPV6),
        ("10.0.0.0/8", pb.ITYPE_CIDR),
        ("2001:db8::/32", pb.ITYPE_CIDR),
        ("example.com", pb.ITYPE_FQDN),
        ("Bücher.de", pb.ITYPE_FQDN),
        ("http://example.com/x", pb.ITYPE_URL),
        ("HTTPS://example.com", pb.ITYPE_URL),
        ("gopher://example.com", pb.ITYPE_URL),  # the shape; canonical_value refuses it
        ("alice@example.com", pb.ITYPE_EMAIL),
        ("d41d8cd98f00b204e9800998ecf8427e", pb.ITYPE_MD5),
        ("DA39A3EE5E6B4B0D3255BFEF95601890AFD80709", pb.ITYPE_SHA1),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", pb.ITYPE_SHA256),
        ("cf83" * 32, pb.ITYPE_SHA512),
        ("AS13335", pb.ITYPE_ASN),
        ("as64512", pb.ITYPE_ASN),
    ],
)
def test_detect_itype(value: str, itype: int) -> None:
    assert detect_itype(value) == itype


@pytest.mark.parametrize("value", ["", "   ", "localhost", "13335", "abcdef", "a:b", "d41d8cd9"])
def test_detect_itype_refuses(value: str) -> None:
    with pytest.raises(IndicatorError) as caught:
        detect_itype(value)
    assert caught.value.field == "value"


# Canonical values ---------------------------------------------------------------------------

SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512 = (
    "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
    "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
)


@pytest.mark.parametrize(
    ("itype", "value", "canonical"),
    [
        (pb.ITYPE_IPV4, "1.2.3.4", "1.2.3.4"),
        (pb.ITYPE_IPV4, " 8.8.8.8\t", "8.8.8.8"),
        (pb.ITYPE_IPV4, "0.0.0.0", "0.0.0.0"),
        (pb.ITYPE_IPV6, "2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        (pb.ITYPE_IPV6, "2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),  # RFC 5952 4.2.3
        (pb.ITYPE_IPV6, "2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),  # no "::" for one
        (pb.ITYPE_IPV6, "::FFFF:1.2.3.4", "::ffff:1.2.3.4"),
        (pb.ITYPE_IPV6, "::ffff:102:304", "::ffff:1.2.3.4"),  # RFC 5952 5
        (pb.ITYPE_CIDR, "10.0.0.0/8", "10.0.0.0/8"),
        (pb.ITYPE_CIDR, "10.1.2.3/8", "10.0.0.0/8"),  # host bits normalised
        (pb.ITYPE_CIDR, "192.168.1.77/32", "192.168.1.77/32"),
        (pb.ITYPE_CIDR, "10.0.0.0/08", "10.0.0.0/8"),
        (pb.ITYPE_CIDR, "2001:DB8::1/32", "2001:db8::/32"),
        (pb.ITYPE_CIDR, "0.0.0.0/0", "0.0.0.0/0"),
        (pb.ITYPE_FQDN, "Example.COM", "example.com"),
        (pb.ITYPE_FQDN, "example.com.", "example.com"),
        (pb.ITYPE_FQDN, "Bücher.de", "xn--bcher-kva.de"),
        (pb.ITYPE_FQDN, "faß.de", "xn--fa-hia.de"),  # IDNA 2008, not 2003's "fass.de"
        (pb.ITYPE_FQDN, "XN--BCHER-KVA.DE", "xn--bcher-kva.de"),
        (pb.ITYPE_FQDN, "xn--i-7iq.ws", "xn--i-7iq.ws"),  # registered under IDNA 2003
        (pb.ITYPE_FQDN, "a-b.c0.example", "a-b.c0.example"),
        (pb.ITYPE_URL, "HTTP://Example.COM", "http://example.com/"),
        (pb.ITYPE_URL, "https://example.com:443/a", "https://example.com/a"),
        (pb.ITYPE_URL, "https://example.com:8443/a", "https://example.com:8443/a"),
        (pb.ITYPE_URL, "http://example.com?q=1", "http://example.com/?q=1"),
        (pb.ITYPE_URL, "http://Example.com/Path/?Q=A#Frag", "http://example.com/Path/?Q=A#Frag"),
        (pb.ITYPE_URL, "http://1.2.3.4:8080/x", "http://1.2.3.4:8080/x"),
        (pb.ITYPE_URL, "http://[2001:DB8::1]/", "http://[2001:db8::1]/"),
        (pb.ITYPE_URL, "http://[2001:DB8::1]:80/", "http://[2001:db8::1]/"),
        (pb.ITYPE_URL, "http://User:Pw@Example.com/", "http://User:Pw@example.com/"),
        (pb.ITYPE_URL, "http://a@b.com@evil.example/", "http://a@b.com@evil.example/"),
        (pb.ITYPE_URL, "http://bücher.de/ä", "http://xn--bcher-kva.de/ä"),
        (pb.ITYPE_URL, "ftp://files.example.com/x.exe", "ftp://files.example.com/x.exe"),
        (pb.ITYPE_URL, "wss://c2.example.net:443/ws", "wss://c2.example.net/ws"),
        (pb.ITYPE_URL, "http://example.com/a,b", "http://example.com/a,b"),
        (pb.ITYPE_EMAIL, "Alice.Smith@Example.COM", "Alice.Smith@example.com"),
        (pb.ITYPE_EMAIL, "a+tag@bücher.de", "a+tag@xn--bcher-kva.de"),
        (pb.ITYPE_MD5, "D41D8CD98F00B204E9800998ECF8427E", "d41d8cd98f00b204e9800998ecf8427e"),
        (pb.ITYPE_SHA1, "da39a3ee5e6b4b0d3255bfef95601890afd80709", None),
        (pb.ITYPE_SHA256, SHA256.upper(), SHA256),
        (pb.ITYPE_SHA512, SHA512, SHA512),
        (pb.ITYPE_ASN, "AS13335", "AS13335"),
        (pb.ITYPE_ASN, "as13335", "AS13335"),
        (pb.ITYPE_ASN, "13335", "AS13335"),
        (pb.ITYPE_ASN, "AS013335", "AS13335"),
        (pb.ITYPE_ASN, "AS1.10", "AS65546"),  # asdot, RFC 5396
        (pb.ITYPE_ASN, "AS4294967295", "AS4294967295"),
    ],
)
def test_canonical_value(itype: int, value: str, canonical: str | None) -> None:
    expected = value if canonical is None else canonical
    assert canonical_value(value, itype) == expected
    assert canonical_value(expected, itype) == expected


@pytest.mark.parametrize(
    ("itype", "value", "fragment"),
    [
        (pb.ITYPE_IPV4, "999.1.1.1", "is not a valid ipv4 address"),
        (pb.ITYPE_IPV4, "1.2.3", "is not a valid ipv4 address"),
        (pb.ITYPE_IPV4, "010.1.1.1", "leading zeros are ambiguous"),
        (pb.ITYPE_IPV4, "1.2.3.04", "leading zeros are ambiguous"),
        (pb.ITYPE_IPV4, "1.2.3.4/32", "is not a valid ipv4 address"),
        (pb.ITYPE_IPV4, "::1", "is not a valid ipv4 address"),
        (pb.ITYPE_IPV4, "1.2.3.4 5", "contains whitespace"),
        (pb.ITYPE_IPV6, "2001:db8::g", "is not a valid ipv6 address"),
        (pb.ITYPE_IPV6, "1:2:3:4:5:6:7:8:9", "is not a valid ipv6 address"),
        (pb.ITYPE_IPV6, "fe80::1%eth0", "zone index"),
        (pb.ITYPE_IPV6, "::ffff:01.2.3.4", "leading zeros"),
        (pb.ITYPE_IPV6, "1.2.3.4", "is not a valid ipv6 address"),
        (pb.ITYPE_CIDR, "10.0.0.0", "needs a /prefix"),
        (pb.ITYPE_CIDR, "10.0.0.0/33", "prefix length is too long"),
        (pb.ITYPE_CIDR, "10.0.0.0/255.0.0.0", "number of bits"),
        (pb.ITYPE_CIDR, "10.0.0.0/", "number of bits"),
        (pb.ITYPE_CIDR, "010.0.0.0/8", "leading zeros"),
        (pb.ITYPE_CIDR, "2001:db8::/129", "prefix length is too long"),
        (pb.ITYPE_CIDR, "example.com/8", "is not a valid cidr"),
        (pb.ITYPE_FQDN, "localhost", "at least two labels"),
        (pb.ITYPE_FQDN, "example..com", "empty label"),
        (pb.ITYPE_FQDN, ".example.com", "empty label"),
        (pb.ITYPE_FQDN, "-bad.example", "only letters, digits, inner hyphens"),
        (pb.ITYPE_FQDN, "bad-.example", "only letters, digits, inner hyphens"),
        (pb.ITYPE_FQDN, "under_score.example", "only letters, digits, inner hyphens"),
        (pb.ITYPE_FQDN, "a" * 64 + ".com", "longer than 63"),
        (pb.ITYPE_FQDN, ".".join(["a" * 63] * 4), "longer than 253"),
        (pb.ITYPE_FQDN, "1.2.3.4", "last label is all digits"),
        (pb.ITYPE_FQDN, "xn--zz-.com", "only letters, digits, inner hyphens"),
        (pb.ITYPE_FQDN, "xn--ab-.example", "only letters"),
        (pb.ITYPE_FQDN, "xn--a.example", "not valid punycode"),  # decodes to U+0080
        (pb.ITYPE_FQDN, "xn--zz.example", "not valid punycode"),
        (pb.ITYPE_FQDN, "xn--abc-.example", "only letters"),
        (pb.ITYPE_FQDN, "i\u2764.ws", "not a valid internationalised name"),
        (pb.ITYPE_URL, "example.com/path", "no scheme"),
        (pb.ITYPE_URL, "gopher://example.com/", "scheme must be one of"),
        (pb.ITYPE_URL, "javascript://x.com/", "scheme must be one of"),
        (pb.ITYPE_URL, "http:///path", "has no host"),
        (pb.ITYPE_URL, "http://localhost/", "its host"),
        (pb.ITYPE_URL, "http://999.1.1.1/", "its host: '999.1.1.1' is not a valid ipv4"),
        (pb.ITYPE_URL, "http://example.com:0/", "port"),
        (pb.ITYPE_URL, "http://example.com:99999/", "port"),
        (pb.ITYPE_URL, "http://example.com:http/", "port"),
        (pb.ITYPE_URL, "http://[2001:db8::1]x/", "after the IPv6 address"),
        (pb.ITYPE_URL, "http://example.com/a b", "contains whitespace"),
        (pb.ITYPE_URL, "http://exa\\mple.com/", "its host"),
        (pb.ITYPE_EMAIL, "alice", "expected local-part@domain"),
        (pb.ITYPE_EMAIL, "@example.com", "expected local-part@domain"),
        (pb.ITYPE_EMAIL, "alice@", "expected local-part@domain"),
        (pb.ITYPE_EMAIL, "alice@localhost", "its domain"),
        (pb.ITYPE_EMAIL, "a..b@example.com", "local part"),
        (pb.ITYPE_EMAIL, '"a b"@example.com', "contains whitespace"),
        (pb.ITYPE_EMAIL, "a" * 65 + "@example.com", "over 64"),
        (pb.ITYPE_MD5, "d41d8cd98f00b204e9800998ecf8427", "31 hex digits, not 32"),
        (pb.ITYPE_MD5, "z41d8cd98f00b204e9800998ecf8427e", "not hexadecimal"),
        (pb.ITYPE_SHA1, SHA256, "64 hex digits, not 40"),
        (pb.ITYPE_SHA256, SHA256 + "0", "65 hex digits, not 64"),
        (pb.ITYPE_SHA512, SHA256, "not 128"),
        (pb.ITYPE_ASN, "AS0", "from 1 to 4294967295"),
        (pb.ITYPE_ASN, "AS4294967296", "from 1 to 4294967295"),
        (pb.ITYPE_ASN, "ASN13335", "expected AS followed by a number"),
        (pb.ITYPE_ASN, "AS-1", "expected AS followed by a number"),
        (pb.ITYPE_ASN, "AS1.65536", "at most 65535"),
        (pb.ITYPE_ASN, "", "is empty"),
    ],
)
def test_canonical_value_refuses(itype: int, value: str, fragment: str) -> None:
    with pytest.raises(IndicatorError) as caught:
        canonical_value(value, itype)
    assert caught.value.field == "value"
    assert fragment in str(caught.value)


def test_the_message_names_field_and_value() -> None:
    error = refused({"value": "999.1.1.1"}, "value")
    assert str(error) == "line 12: field 'value': '999.1.1.1' is not a valid ipv4 address"
    assert error.reason == "field 'value': '999.1.1.1' is not a valid ipv4 address"
    assert isinstance(error, ValueError)


def test_canonical_value_is_bounded() -> None:
    long_url = "http://example.com/" + "a" * (MAX_VALUE_CHARS - len("http://example.com/"))
    assert canonical_value(long_url, pb.ITYPE_URL) == long_url
    with pytest.raises(IndicatorError, match="2049 characters long; at most 2048"):
        canonical_value(long_url + "a", pb.ITYPE_URL)
    # IDNA makes a name longer; the bound holds for the canonical form too.
    host = ".".join(["ü"] * 30) + ".example"
    growing = f"http://{host}/" + "a" * (MAX_VALUE_CHARS - len(host) - 8)
    assert len(growing) == MAX_VALUE_CHARS
    with pytest.raises(IndicatorError, match="in canonical form"):
        canonical_value(growing, pb.ITYPE_URL)


def test_errors_quote_values_cut_short() -> None:
    with pytest.raises(IndicatorError) as caught:
        canonical_value("x" * 500 + ".1", pb.ITYPE_FQDN)
    assert len(str(caught.value)) < 250
    with pytest.raises(IndicatorError) as caught:
        canonical_value("bad\x00host.example", pb.ITYPE_FQDN)
    assert "\\x00" in str(caught.value)  # shown, not printed raw


@pytest.mark.parametrize("value", ["a\ud800.example", "http://example.com/\ud800"])
def test_lone_surrogates_are_refused(value: str) -> None:
    itype = pb.ITYPE_URL if value.startswith("http") else pb.ITYPE_FQDN
    with pytest.raises(IndicatorError):
        canonical_value(value, itype)


def test_canonical_value_unknown_itype() -> None:
    for itype in (pb.ITYPE_UNSPECIFIED, 99):
        with pytest.raises(IndicatorError) as caught:
            canonical_value("1.2.3.4", itype)
        assert caught.value.field == "itype"


# Property tests: canonical_value is idempotent, on valid input and on any text.

HEX = "0123456789abcdefABCDEF"


@st.composite
def valid_values(draw: st.DrawFn) -> tuple[int, str]:
    itype = draw(st.sampled_from(sorted(ITYPE_BY_NAME.values())))
    if itype == pb.ITYPE_IPV4:
        return itype, str(draw(st.ip_addresses(v=4)))
    if itype == pb.ITYPE_IPV6:
        return itype, draw(st.ip_addresses(v=6)).exploded.upper()
    if itype == pb.ITYPE_CIDR:
        version = draw(st.sampled_from([4, 6]))
        address = draw(st.ip_addresses(v=version))
        prefix = draw(st.integers(0, 32 if version == 4 else 128))
        return itype, f"{address}/{prefix}"
    if itype == pb.ITYPE_FQDN:
        return itype, draw(domains())
    if itype == pb.ITYPE_URL:
        url = draw(urls())
        assume(len(url) <= MAX_VALUE_CHARS and "localhost" not in url.lower())
        return itype, url
    if itype == pb.ITYPE_EMAIL:
        return itype, draw(st.emails())
    if itype == pb.ITYPE_ASN:
        number = draw(st.integers(1, 2**32 - 1))
        prefix = draw(st.sampled_from(["AS", "as", "As", ""]))
        return itype, f"{prefix}{number}"
    digits = {pb.ITYPE_MD5: 32, pb.ITYPE_SHA1: 40, pb.ITYPE_SHA256: 64, pb.ITYPE_SHA512: 128}
    return itype, draw(st.text(HEX, min_size=digits[itype], max_size=digits[itype]))


@given(valid_values())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
def test_canonical_value_is_idempotent(item: tuple[int, str]) -> None:
    itype, value = item
    try:
        canonical = canonical_value(value, itype)
    except IndicatorError:
        # hypothesis' generators allow what we refuse on purpose: a single-label host in a
        # URL, an all-numeric top-level label, a quoted or non-ASCII local part.
        assume(False)
        raise
    assert canonical_value(canonical, itype) == canonical
    assert canonical == canonical.strip()


@given(valid_values())
@settings(max_examples=200, deadline=None)
def test_detected_itype_parses(item: tuple[int, str]) -> None:
    itype, value = item
    try:
        canonical = canonical_value(value, itype)
    except IndicatorError:
        assume(False)
        raise
    detected = detect_itype(canonical)
    if itype in (pb.ITYPE_FQDN, pb.ITYPE_EMAIL, pb.ITYPE_URL, pb.ITYPE_CIDR):
        assert detected == itype
    assert canonical_value(canonical, detected)  # whatever it is detected as, it parses


@given(st.text(max_size=300), st.sampled_from(sorted(ITYPE_BY_NAME.values())))
@settings(max_examples=500, deadline=None)
def test_canonical_value_on_any_text(text: str, itype: int) -> None:
    # Only ever IndicatorError, and anything accepted is a fixed point.
    try:
        canonical = canonical_value(text, itype)
    except IndicatorError as error:
        field = error.field
    else:
        assert canonical_value(canonical, itype) == canonical
        return
    assert field == "value"


@given(st.ip_addresses())
def test_ip_addresses_are_canonical_in_rfc_5952_form(address: Any) -> None:
    itype = pb.ITYPE_IPV4 if address.version == 4 else pb.ITYPE_IPV6
    canonical = canonical_value(address.exploded, itype)
    assert canonical == canonical.lower()
    if address.version == 6 and address.ipv4_mapped is None:
        assert canonical == address.compressed


# Records ------------------------------------------------------------------------------------


def test_a_minimal_record_gets_the_defaults() -> None:
    indicator = build({"value": " Example.COM. "}, default_provider="acme")
    assert indicator == pb.Indicator(
        value="example.com",
        itype=pb.ITYPE_FQDN,
        tlp=GREEN,
        confidence=50,
        provider="acme",
        first_seen_ms=NOW_MS,
        last_seen_ms=NOW_MS,
    )


def test_a_full_record() -> None:
    indicator = build(
        {
            "value": "HTTP://Evil.example/x",
            "itype": "URL",
            "tlp": "amber+strict",
            "confidence": 85,
            "tags": ["Phishing", "c2", "phishing", " "],
            "provider": " CERT-XY ",
            "first_seen": "2025-06-01T00:00:00Z",
            "last_seen": "2025-06-02T02:00:00+02:00",
            "expires": 1_780_000_000,
            "description": "Seen in a campaign.\nSecond line.",
            "references": ["https://cert.example/a", "https://cert.example/a"],
        }
    )
    assert indicator == pb.Indicator(
        value="http://evil.example/x",
        itype=pb.ITYPE_URL,
        tlp=pb.TLP_AMBER_STRICT,
        confidence=85,
        tags=["phishing", "c2"],
        provider="CERT-XY",
        first_seen_ms=1_748_736_000_000,
        last_seen_ms=1_748_822_400_000,
        expires_ms=1_780_000_000_000,
        description="Seen in a campaign.\nSecond line.",
        references=["https://cert.example/a"],
    )


def test_csv_style_strings() -> None:
    indicator = build(
        {
            "value": "1.2.3.4",
            "itype": "",
            "tlp": "",
            "confidence": "70",
            "tags": "Scanner, mirai,,SCANNER",
            "first_seen": "1748736000",
            "last_seen": "1748736000.5",
            "expires": "",
            "description": "",
            "references": "https://a.example/x,https://b.example/y, https://c.example/p,q\n"
            "https://d.example/",
        }
    )
    assert indicator.itype == pb.ITYPE_IPV4
    assert indicator.tlp == GREEN
    assert indicator.confidence == 70
    assert list(indicator.tags) == ["scanner", "mirai"]
    assert indicator.first_seen_ms == 1_748_736_000_000
    assert indicator.last_seen_ms == 1_748_736_000_500
    assert indicator.expires_ms == 0
    assert list(indicator.references) == [
        "https://a.example/x",
        "https://b.example/y",
        "https://c.example/p,q",
        "https://d.example/",
    ]


def test_json_null_is_not_given() -> None:
    indicator = build({"value": "1.2.3.4", "expires": None, "tags": None, "tlp": None})
    assert (indicator.expires_ms, list(indicator.tags), indicator.tlp) == (0, [], GREEN)


@pytest.mark.parametrize(
    ("times", "first", "last"),
    [
        ({}, NOW_MS, NOW_MS),
        ({"first_seen": "2025-06-01T00:00:00Z"}, 1_748_736_000_000, 1_748_736_000_000),
        ({"last_seen": "2025-06-01T00:00:00Z"}, 1_748_736_000_000, 1_748_736_000_000),
        (
            {"first_seen": "2025-06-01", "last_seen": "2025-06-02"},
            1_748_736_000_000,
            1_748_822_400_000,
        ),
        ({"first_seen": "2025-06-01T02:00:00+02:00"}, 1_748_736_000_000, 1_748_736_000_000),
        ({"first_seen": "2025-06-01T00:00:00.123456Z"}, 1_748_736_000_123, 1_748_736_000_123),
        ({"first_seen": 1_748_736_000}, 1_748_736_000_000, 1_748_736_000_000),
        ({"first_seen": 1_748_736_000.25}, 1_748_736_000_250, 1_748_736_000_250),
    ],
)
def test_times(times: dict[str, Any], first: int, last: int) -> None:
    indicator = build({"value": "1.2.3.4", **times})
    assert (indicator.first_seen_ms, indicator.last_seen_ms) == (first, last)


def test_time_bounds() -> None:
    build({"value": "1.2.3.4", "first_seen": "1990-01-01T00:00:00Z"})
    refused({"value": "1.2.3.4", "first_seen": "1989-12-31T23:59:59Z"}, "first_seen", "1990")
    build({"value": "1.2.3.4", "last_seen": iso_time(NOW_MS + DAY_MS)})
    refused(
        {
            "value": "1.2.3.4",
            "first_seen": "2025-06-01",
            "last_seen": iso_time(NOW_MS + DAY_MS + 1),
        },
        "last_seen",
        "more than a day in the future",
    )
    refused(
        {"value": "1.2.3.4", "first_seen": "2025-06-02", "last_seen": "2025-06-01"},
        "last_seen",
        "is before first_seen",
    )
    refused({"value": "1.2.3.4", "first_seen": "2025-06-02", "expires": "2025-06-02"}, "expires")
    refused({"value": "1.2.3.4", "first_seen": "2025-06-02", "expires": "2025-06-01"}, "expires")
    build({"value": "1.2.3.4", "expires": "2035-01-01"})
    refused({"value": "1.2.3.4", "expires": "2036-01-01"}, "expires", "ten years")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("yesterday", "is not an ISO 8601 time or epoch seconds"),
        ("2025-13-01", "is not an ISO 8601 time"),
        (1_748_736_000_000, "milliseconds?"),
        ("1748736000000", "milliseconds?"),
        (True, "got bool"),
        ([2025], "got list"),
        (float("nan"), "is not a time"),
        (float("inf"), "is not a time"),
        ("2" * 65, "too long for a time"),
    ],
)
def test_bad_times(raw: Any, fragment: str) -> None:
    refused({"value": "1.2.3.4", "first_seen": raw}, "first_seen", fragment)


def test_required_value() -> None:
    refused({}, "value", "is required")
    refused({"value": ""}, "value", "is required")
    refused({"value": 1234}, "value", "expected a string")


def test_unknown_fields_are_refused() -> None:
    refused({"value": "1.2.3.4", "confidance": 80}, "confidance", "did you mean 'confidence'?")
    refused({"value": "1.2.3.4", "Value": "x"}, "Value", "did you mean 'value'?")
    refused({"value": "1.2.3.4", "sightings": 3}, "sightings", "unknown field")
    refused({"value": "1.2.3.4", "zzz": None}, "zzz", "known: value, itype")


def test_given_itype_must_match_the_value() -> None:
    refused({"value": "1.2.3.4", "itype": "fqdn"}, "value", "last label is all digits")
    refused({"value": "1.2.3.4", "itype": "ip"}, "itype", "is not one of ipv4")
    refused({"value": "1.2.3.4", "itype": 1}, "itype", "expected a name")
    refused({"value": "no-dot"}, "value", "give its itype")
    assert build({"value": "13335", "itype": "asn"}).value == "AS13335"


@pytest.mark.parametrize(
    ("record", "field", "fragment"),
    [
        ({"tlp": "purple"}, "tlp", "is not one of"),
        ({"tlp": 3}, "tlp", "expected a string"),
        ({"confidence": 101}, "confidence", "is not from 0 to 100"),
        ({"confidence": -1}, "confidence", "is not from 0 to 100"),
        ({"confidence": 50.5}, "confidence", "whole number"),
        ({"confidence": True}, "confidence", "whole number"),
        ({"confidence": "high"}, "confidence", "whole number"),
        ({"confidence": "1000000000"}, "confidence", "whole number"),
        ({"tags": ["a"] * 1 + [f"t{n}" for n in range(32)]}, "tags", "more than 32 tags"),
        ({"tags": ["x" * 65]}, "tags", "longer than 64"),
        ({"tags": ["a,b"]}, "tags", "contains a comma"),
        ({"tags": ["a\tb"]}, "tags", "control character"),
        ({"tags": [3]}, "tags", "expected a string"),
        ({"tags": 3}, "tags", "expected a list"),
        ({"provider": "p" * 129}, "provider", "at most 128"),
        ({"provider": "a\nb"}, "provider", "control character"),
        ({"provider": 5}, "provider", "expected a string"),
        ({"description": "d" * 4097}, "description", "at most 4096"),
        ({"description": "bell\x07"}, "description", "control character"),
        ({"references": [f"https://r.example/{n}" for n in range(17)]}, "references", "16"),
        ({"references": ["https://r.example/" + "a" * 2040]}, "references", "longer than 2048"),
        ({"references": ["not-a-url"]}, "references", "no scheme"),
        ({"references": ["https://a.example/\x00"]}, "references", "unprintable"),
        ({"references": "https://ok.example/ mailto:x@y.z"}, "references", "no scheme"),
        ({"references": {"url": "https://x.example/"}}, "references", "expected a list"),
    ],
)
def test_field_errors(record: dict[str, Any], field: str, fragment: str) -> None:
    refused({"value": "1.2.3.4", **record}, field, fragment)


def test_bounds_are_inclusive() -> None:
    indicator = build(
        {
            "value": "1.2.3.4",
            "tags": [f"{n:02d}" + "x" * 62 for n in range(32)],
            "provider": "p" * 128,
            "description": "d" * 4096,
            "references": [f"https://r.example/{n}" for n in range(16)],
            "confidence": 100,
        }
    )
    validate_indicator(indicator, now_ms=NOW_MS)
    assert build({"value": "1.2.3.4", "confidence": 0}).confidence == 0


def test_default_tlp_must_be_a_level() -> None:
    with pytest.raises(IndicatorError) as caught:
        build({"value": "1.2.3.4"}, default_tlp=pb.TLP_UNSPECIFIED)
    assert caught.value.field == "tlp"
    assert build({"value": "1.2.3.4", "tlp": "red"}, default_tlp=0).tlp == pb.TLP_RED


def test_a_record_must_be_a_mapping() -> None:
    with pytest.raises(IndicatorError) as caught:
        build(["1.2.3.4"])  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.line) == ("record", 7)


def test_errors_without_a_line() -> None:
    with pytest.raises(IndicatorError) as caught:
        build({"value": "999.1.1.1"}, line=None)
    assert str(caught.value) == "field 'value': '999.1.1.1' is not a valid ipv4 address"
    assert caught.value.line is None


def test_errors_pickle() -> None:
    error = IndicatorError("tags", "too many", line=3)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.field, copy.problem, copy.line, str(copy)) == (
        "tags",
        "too many",
        3,
        "line 3: field 'tags': too many",
    )


# Records out and round trips ----------------------------------------------------------------


def test_indicator_to_record() -> None:
    indicator = build(
        {
            "value": "AS13335",
            "tags": ["cloud"],
            "first_seen": "2025-06-01T00:00:00.250Z",
            "expires": "2026-01-01T00:00:00Z",
            "references": ["https://bgp.example/AS13335"],
        }
    )
    record = indicator_to_record(indicator)
    assert record == {
        "value": "AS13335",
        "itype": "asn",
        "tlp": "green",
        "confidence": 50,
        "tags": ["cloud"],
        "provider": "",
        "first_seen": "2025-06-01T00:00:00.250Z",
        "last_seen": "2025-06-01T00:00:00.250Z",
        "expires": "2026-01-01T00:00:00Z",
        "description": "",
        "references": ["https://bgp.example/AS13335"],
    }
    assert list(record) == list(RECORD_FIELDS)
    assert indicator_to_record(build({"value": "1.2.3.4"}))["expires"] is None
    json.dumps(record)


TAG = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"], exclude_characters=","),
    min_size=1,
    max_size=64,
)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    itype, value = draw(valid_values())
    try:
        canonical_value(value, itype)
    except IndicatorError:
        assume(False)
    first = draw(st.integers(631_152_000_000, NOW_MS))
    last = draw(st.integers(first, NOW_MS + DAY_MS))
    record: dict[str, Any] = {
        "value": value,
        "itype": itype_name(itype),
        "tlp": draw(st.sampled_from(["clear", "green", "amber", "amber+strict", "TLP:RED"])),
        "confidence": draw(st.integers(0, 100)),
        "tags": draw(st.lists(TAG, max_size=5)),
        "provider": draw(st.text(st.characters(codec="utf-8", categories=["L", "N"]), max_size=20)),
        "first_seen": iso_time(first),
        "last_seen": last / 1000,
        "description": draw(
            st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=50)
        ),
        # A reference ending in "," is excluded: written into one CSV cell, a trailing comma
        # reads back as a separator (a known ambiguity of string lists, see formats.to_csv).
        "references": draw(
            st.lists(
                st.just("https://ref.example/") | urls().filter(lambda url: not url.endswith(",")),
                max_size=3,
            )
        ),
    }
    if draw(st.booleans()):
        record["expires"] = iso_time(draw(st.integers(first + 1, NOW_MS + 3000 * DAY_MS)))
    return record


@given(records())
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
def test_records_round_trip_and_pass_the_peer_checks(record: dict[str, Any]) -> None:
    try:
        indicator = build(record)
    except IndicatorError as error:
        # Tags that are blank once stripped, or reference URLs we refuse, are fine to skip.
        assume(error.field in ("tags", "references"))
        return
    validate_indicator(indicator, now_ms=NOW_MS)
    again = build(indicator_to_record(indicator), default_tlp=pb.TLP_RED)
    assert again == indicator
    assert indicator_to_record(again) == indicator_to_record(indicator)
    json.dumps(indicator_to_record(indicator))


# Indicators from peers ----------------------------------------------------------------------


def peer_indicator(**fields: Any) -> pb.Indicator:
    indicator = pb.Indicator(
        value="example.com",
        itype=pb.ITYPE_FQDN,
        tlp=GREEN,
        confidence=60,
        tags=["c2"],
        provider="acme",
        first_seen_ms=NOW_MS - DAY_MS,
        last_seen_ms=NOW_MS,
        references=["https://ref.example/x"],
    )
    for name, value in fields.items():
        if name in ("tags", "references"):
            del getattr(indicator, name)[:]
            getattr(indicator, name).extend(value)
        else:
            setattr(indicator, name, value)
    return indicator


def test_a_good_peer_indicator_passes() -> None:
    validate_indicator(peer_indicator(), now_ms=NOW_MS)


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"value": "Example.com"}, "value", "not in canonical form (that is 'example.com')"),
        ({"value": "example.com."}, "value", "not in canonical form"),
        ({"value": " example.com"}, "value", "not in canonical form"),
        ({"value": "bücher.de"}, "value", "that is 'xn--bcher-kva.de'"),
        ({"value": "10.1.2.3/8", "itype": pb.ITYPE_CIDR}, "value", "that is '10.0.0.0/8'"),
        ({"value": "2001:DB8::1", "itype": pb.ITYPE_IPV6}, "value", "that is '2001:db8::1'"),
        ({"value": "as13335", "itype": pb.ITYPE_ASN}, "value", "that is 'AS13335'"),
        ({"value": "http://x.example", "itype": pb.ITYPE_URL}, "value", "canonical form"),
        ({"value": "999.1.1.1", "itype": pb.ITYPE_IPV4}, "value", "not a valid ipv4"),
        ({"value": ""}, "value", "is empty"),
        ({"itype": pb.ITYPE_UNSPECIFIED}, "itype", "is not set"),
        ({"itype": 42}, "itype", "unknown indicator type 42"),
        ({"tlp": pb.TLP_UNSPECIFIED}, "tlp", "is not set"),
        ({"tlp": 9}, "tlp", "unknown TLP level 9"),
        ({"confidence": 101}, "confidence", "not from 0 to 100"),
        ({"tags": ["C2"]}, "tags", "not in canonical form"),
        ({"tags": [" c2"]}, "tags", "not in canonical form"),
        ({"tags": [""]}, "tags", "not in canonical form"),
        ({"tags": ["c2", "c2"]}, "tags", "appears twice"),
        ({"tags": [str(n) for n in range(33)]}, "tags", "more than 32"),
        ({"tags": ["x" * 65]}, "tags", "longer than 64"),
        ({"provider": " acme"}, "provider", "surrounding spaces"),
        ({"provider": "p" * 129}, "provider", "at most 128"),
        ({"description": "d" * 4097}, "description", "at most 4096"),
        ({"references": ["HTTPS://ref.example/x"]}, "references", "not in canonical form"),
        ({"references": ["https://r.example/"] * 2}, "references", "appears twice"),
        ({"references": [f"https://r.example/{n}" for n in range(17)]}, "references", "16"),
        ({"first_seen_ms": 0}, "first_seen", "before 1990"),
        ({"last_seen_ms": NOW_MS + 2 * DAY_MS}, "last_seen", "more than a day"),
        ({"last_seen_ms": NOW_MS - 2 * DAY_MS}, "last_seen", "before first_seen"),
        ({"expires_ms": NOW_MS - DAY_MS}, "expires", "not after first_seen"),
        ({"expires_ms": -5}, "expires", "not after first_seen"),
        ({"last_seen_ms": 2**62}, "last_seen", "ms is more than a day"),
    ],
)
def test_peer_indicators_are_not_normalised(
    fields: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(IndicatorError) as caught:
        validate_indicator(peer_indicator(**fields), now_ms=NOW_MS)
    assert (caught.value.field, caught.value.line) == (field, None)
    assert fragment in str(caught.value)


# Batches ------------------------------------------------------------------------------------


def batch(*indicators: pb.Indicator, tlp: int = GREEN, seq: int = 1) -> pb.Batch:
    return pb.Batch(seq=seq, sent_ms=NOW_MS, tlp=tlp, indicators=indicators or [peer_indicator()])


def test_a_good_batch_passes() -> None:
    validate_batch(
        batch(peer_indicator(), peer_indicator(value="b.example")), topic_tlp=GREEN, now_ms=NOW_MS
    )


@pytest.mark.parametrize(
    ("message", "field", "fragment"),
    [
        (batch(seq=0), "seq", "is 0"),
        (batch(tlp=pb.TLP_CLEAR), "tlp", "the batch is clear but the topic is green"),
        (batch(tlp=pb.TLP_UNSPECIFIED), "tlp", "the batch is unknown level 0"),
        (pb.Batch(seq=1, tlp=GREEN), "indicators", "empty"),
        (
            batch(peer_indicator(), peer_indicator(tlp=pb.TLP_CLEAR)),
            "tlp",
            "indicator 2 of the batch is clear but the batch is green",
        ),
        (
            batch(peer_indicator(), peer_indicator(), peer_indicator(value="Bad.example")),
            "value",
            "indicator 3 of the batch: 'Bad.example' is not in canonical form",
        ),
    ],
)
def test_bad_batches(message: pb.Batch, field: str, fragment: str) -> None:
    with pytest.raises(IndicatorError) as caught:
        validate_batch(message, topic_tlp=GREEN, now_ms=NOW_MS)
    assert (caught.value.field, caught.value.line) == (field, None)
    assert fragment in str(caught.value)


def test_batch_size_is_bounded() -> None:
    three = batch(peer_indicator(), peer_indicator(), peer_indicator())
    validate_batch(three, topic_tlp=GREEN, now_ms=NOW_MS, max_indicators=3)
    with pytest.raises(IndicatorError) as caught:
        validate_batch(three, topic_tlp=GREEN, now_ms=NOW_MS, max_indicators=2)
    assert caught.value.field == "indicators"
    assert "3 indicators; at most 2" in str(caught.value)


def test_a_red_batch_on_the_red_topic() -> None:
    red = peer_indicator(tlp=pb.TLP_RED)
    validate_batch(batch(red, tlp=pb.TLP_RED), topic_tlp=pb.TLP_RED, now_ms=NOW_MS)
    with pytest.raises(IndicatorError, match="the batch is red but the topic is green"):
        validate_batch(batch(red, tlp=pb.TLP_RED), topic_tlp=GREEN, now_ms=NOW_MS)
