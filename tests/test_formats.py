"""Indicator files in and out: JSON lines, CSV, plain lists, STIX 2.1 bundles."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stix2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_indicators import DAY_MS, NOW_MS, records

from threatmesh.pubsub.formats import (
    FORMATS,
    MAX_LINE_CHARS,
    ParseResult,
    Rejected,
    parse_indicators,
    to_csv,
    to_jsonl,
    to_stix_bundle,
)
from threatmesh.pubsub.indicators import (
    IndicatorError,
    indicator_from_record,
    indicator_to_record,
    tlp_name,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.stix import TLP1_MARKING_IDS, TLP2_MARKING_IDS, pattern_value, stix_pattern

GREEN = pb.TLP_GREEN
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def parse(text: str, fmt: str, **options: Any) -> ParseResult:
    options.setdefault("default_tlp", GREEN)
    options.setdefault("now_ms", NOW_MS)
    return parse_indicators(text, fmt, **options)


def values(result: ParseResult) -> list[str]:
    return [indicator.value for indicator in result.indicators]


def rejected_lines(result: ParseResult) -> dict[int, str]:
    return {rejection.line: rejection.reason for rejection in result.rejected}


def test_formats() -> None:
    assert FORMATS == ("jsonl", "csv", "stix", "lines")


def test_unknown_format() -> None:
    with pytest.raises(IndicatorError) as caught:
        parse("1.2.3.4", "xml")
    assert caught.value.field == "format"
    assert "is not one of jsonl, csv, stix, lines" in str(caught.value)


def test_rejected_reads_as_one_line() -> None:
    assert str(Rejected(3, "field 'tlp': bad")) == "line 3: field 'tlp': bad"


# JSON lines ---------------------------------------------------------------------------------

MIXED_JSONL = "\n".join(
    [
        "# indicators from the lab",  # 1
        '{"value": "1.2.3.4", "tags": ["Scanner"]}',  # 2
        '{"value": "999.1.1.1"}',  # 3
        "",  # 4
        '{"value": "example.com", "confidance": 80}',  # 5
        "not json at all",  # 6
        '{"value": "evil.example", "tlp": "red", "tlp": "clear"}',  # 7
        '{"value": "AS13335", "tlp": "amber+strict", "provider": "bgp team"}',  # 8
        '["1.2.3.4"]',  # 9
        '{"value": "b.example", "first_seen": NaN}',  # 10
        '   {"value": "' + SHA256.upper() + '"}  ',  # 11
        '{"value": "c.example", "confidence": 101}',  # 12
        '{"value": "d.example", "last_seen": "2030-01-01T00:00:00Z"}',  # 13
        '{"tags": ["x"]}',  # 14
        '{"value": "http://e.example", "references": "https://ref.example/a https://ref.example/b"}',
    ]
)


def test_jsonl_good_records_go_through_and_bad_ones_each_get_line_and_reason() -> None:
    result = parse(MIXED_JSONL, "jsonl", default_provider="lab")
    assert values(result) == ["1.2.3.4", "AS13335", SHA256, "http://e.example/"]
    assert [indicator.provider for indicator in result.indicators] == [
        "lab",
        "bgp team",
        "lab",
        "lab",
    ]
    assert result.indicators[1].tlp == pb.TLP_AMBER_STRICT
    assert list(result.indicators[0].tags) == ["scanner"]
    assert list(result.indicators[3].references) == [
        "https://ref.example/a",
        "https://ref.example/b",
    ]
    assert rejected_lines(result) == {
        3: "field 'value': '999.1.1.1' is not a valid ipv4 address",
        5: "field 'confidance': unknown field (did you mean 'confidence'?)",
        6: "not valid JSON: Expecting value at column 1",
        7: "field 'tlp': appears twice in the record",
        9: "expected a JSON object, got list",
        10: "field 'record': NaN is not a JSON value",
        12: "field 'confidence': 101 is not from 0 to 100",
        13: "field 'first_seen': 2030-01-01T00:00:00Z is more than a day in the future "
        "(now is 2025-06-15T15:06:40Z)",
        14: "field 'value': is required",
    }


def test_jsonl_line_numbers_follow_the_file() -> None:
    text = '\r\n{"value": "1.2.3.4"}\r\n#x\r\n{"value": "a..b"}\r\n'
    result = parse(text, "jsonl")
    assert values(result) == ["1.2.3.4"]
    assert list(rejected_lines(result)) == [4]
    # U+2028 is a line separator to str.splitlines but not to JSON lines.
    result = parse('{"value": "1.2.3.4", "description": "a\u2028b"}\n{"value": "x"}', "jsonl")
    assert result.indicators[0].description == "a\u2028b"
    assert list(rejected_lines(result)) == [2]


def test_jsonl_bounds() -> None:
    long_line = '{"value": "1.2.3.4", "description": "' + "d" * MAX_LINE_CHARS + '"}'
    deep = "[" * 100_000 + "]" * 100_000
    result = parse(f"{long_line}\n{deep}\n" + '{"value": "5.6.7.8"}', "jsonl")
    assert values(result) == ["5.6.7.8"]
    reasons = rejected_lines(result)
    assert "characters long; at most 262144" in reasons[1]
    assert reasons[2].startswith("not valid JSON")


def test_jsonl_round_trip() -> None:
    result = parse(MIXED_JSONL, "jsonl")
    lines = list(to_jsonl(result.indicators))
    assert len(lines) == len(result.indicators)
    assert all("\n" not in line for line in lines)
    assert [json.loads(line) for line in lines] == [
        indicator_to_record(indicator) for indicator in result.indicators
    ]
    again = parse("\n".join(lines), "jsonl", default_tlp=pb.TLP_RED)
    assert again == ParseResult(result.indicators, [])


def test_jsonl_keeps_non_ascii_readable_and_multiline_text_on_one_line() -> None:
    indicator = parse('{"value": "bücher.de", "description": "ä\\nb"}', "jsonl").indicators[0]
    (line,) = to_jsonl([indicator])
    assert '"description": "ä\\nb"' in line
    assert parse(line, "jsonl").indicators == [indicator]


# CSV ----------------------------------------------------------------------------------------


def test_csv_columns_in_any_order_with_empty_cells() -> None:
    text = (
        "TLP, Value ,tags,confidence,expires,references\n"
        'red,1.2.3.4,"scanner, Mirai",90,,https://a.example/x https://b.example/y\n'
        ",example.com,,,2026-01-01,\n"
    )
    result = parse(text, "csv")
    assert result.rejected == []
    first, second = result.indicators
    assert (first.value, first.tlp, first.confidence) == ("1.2.3.4", pb.TLP_RED, 90)
    assert list(first.tags) == ["scanner", "mirai"]
    assert list(first.references) == ["https://a.example/x", "https://b.example/y"]
    assert (second.tlp, second.confidence, second.expires_ms) == (GREEN, 50, 1_767_225_600_000)


def test_csv_good_records_go_through_and_bad_ones_each_get_line_and_reason() -> None:
    text = "\n".join(
        [
            "# exported from the wiki",  # 1
            "value,itype,description,confidence",  # 2
            "1.2.3.4,ipv4,,",  # 3
            "1.2.3.999,ipv4,,",  # 4
            '5.6.7.8,,"two',  # 5
            'lines",80',  # 6
            "example.com,md5,,",  # 7
            "",  # 8
            "a.example,,,high",  # 9
            "b.example,,,1,extra",  # 10
            'c.example,,"unclosed"x,1',  # 11
            "d.example",  # 12
        ]
    )
    result = parse(text, "csv")
    assert values(result) == ["1.2.3.4", "5.6.7.8", "d.example"]
    assert result.indicators[1].description == "two\nlines"
    assert rejected_lines(result) == {
        4: "field 'value': '1.2.3.999' is not a valid ipv4 address",
        7: "field 'value': 'example.com' is not a valid md5 hash: not hexadecimal",
        9: "field 'confidence': expected a whole number from 0 to 100, got 'high'",
        10: "the row has 5 cells but the header names 4",
        11: "not valid CSV: ',' expected after '\"'",
    }


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("value,confidance", "field 'confidance': unknown field (did you mean 'confidence'?)"),
        ("value,colour", "field 'colour': unknown field (known: value, itype, tlp, confidence,"),
        ("value,tags,value", "field 'value': column appears twice in the header"),
        ("itype,tlp", "field 'value': the header has no value column"),
        ("1.2.3.4,4", "field 'value': no header row naming the columns"),
    ],
)
def test_csv_header_problems_refuse_the_whole_file(header: str, reason: str) -> None:
    result = parse(f"\n# comment\n{header}\n1.2.3.4,4\n5.6.7.8,5\n", "csv")
    assert result.indicators == []
    assert len(result.rejected) == 1
    assert result.rejected[0].line == 3
    assert result.rejected[0].reason.startswith(reason)


def test_csv_byte_order_mark_and_crlf() -> None:
    result = parse("\ufeffvalue,tags\r\n1.2.3.4,a\r\n\r\n5.6.7.8,b\r\n", "csv")
    assert values(result) == ["1.2.3.4", "5.6.7.8"]
    assert parse("", "csv") == ParseResult()


def test_csv_round_trip_with_commas_quotes_and_newlines() -> None:
    indicator = indicator_from_record(
        {
            "value": 'http://evil.example/a,b?q="x"',
            "tags": ["apt 28", "c2"],
            "description": 'He said "no", twice.\nThen left.',
            "references": ["https://ref.example/p,q", "https://ref.example/r"],
            "expires": "2026-01-01T00:00:00.5Z",
            "provider": "cert, inc",
        },
        line=None,
        default_tlp=pb.TLP_AMBER,
        now_ms=NOW_MS,
    )
    lines = list(to_csv([indicator]))
    assert lines[0] == (
        "value,itype,tlp,confidence,tags,provider,first_seen,last_seen,expires,description,"
        "references"
    )
    assert not lines[1].endswith("\n")
    again = parse("\n".join(lines), "csv", default_tlp=pb.TLP_CLEAR)
    assert again == ParseResult([indicator], [])


# Plain lists --------------------------------------------------------------------------------


def test_plain_list() -> None:
    text = "\n".join(
        [
            "# blocklist",  # 1
            "1.2.3.4",  # 2
            "EXAMPLE.com    # seen in phishing",  # 3
            "",  # 4
            "2001:db8::1\tscanner",  # 5
            "10.0.0.0/8",  # 6
            "http://evil.example/a,b",  # 7
            "1.2.3.4,ignored",  # 8
            "localhost",  # 9
            SHA256,  # 10
            "alice@example.com",  # 11
            "AS13335",  # 12
            "999.1.1.1",  # 13
        ]
    )
    result = parse(text, "lines", default_tlp=pb.TLP_CLEAR, default_provider="blocklist")
    assert [(tlp_name(i.tlp), i.value, i.provider) for i in result.indicators] == [
        ("clear", "1.2.3.4", "blocklist"),
        ("clear", "example.com", "blocklist"),
        ("clear", "2001:db8::1", "blocklist"),
        ("clear", "10.0.0.0/8", "blocklist"),
        ("clear", "http://evil.example/a,b", "blocklist"),
        ("clear", SHA256, "blocklist"),
        ("clear", "alice@example.com", "blocklist"),
        ("clear", "AS13335", "blocklist"),
    ]
    assert [indicator.itype for indicator in result.indicators] == [
        pb.ITYPE_IPV4,
        pb.ITYPE_FQDN,
        pb.ITYPE_IPV6,
        pb.ITYPE_CIDR,
        pb.ITYPE_URL,
        pb.ITYPE_SHA256,
        pb.ITYPE_EMAIL,
        pb.ITYPE_ASN,
    ]
    reasons = rejected_lines(result)
    assert list(reasons) == [8, 9, 13]
    assert reasons[8].startswith("field 'value': '1.2.3.4,ignored' is not a valid fqdn")
    assert reasons[9] == (
        "field 'value': cannot tell what kind of indicator 'localhost' is; give its itype"
    )
    assert reasons[13] == "field 'value': '999.1.1.1' is not a valid ipv4 address"


# Bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "lines", "csv"])
def test_max_records(fmt: str) -> None:
    ips = [f"10.0.0.{n}" for n in range(1, 6)]
    if fmt == "jsonl":
        text = "\n".join(json.dumps({"value": ip}) for ip in ips)
    elif fmt == "csv":
        text = "\n".join(["value", *ips])
    else:
        text = "\n".join(ips)
    result = parse(text, fmt, max_records=3)
    assert values(result) == ips[:3]
    fourth = 5 if fmt == "csv" else 4
    assert result.rejected == [Rejected(fourth, "more than 3 records; stopped reading here")]
    assert parse(text, fmt, max_records=5).rejected == []


def test_rejections_count_as_records() -> None:
    result = parse("x\n" * 10, "lines", max_records=4)
    assert len(result.rejected) == 5
    assert result.rejected[-1].reason.startswith("more than 4 records")


# STIX ---------------------------------------------------------------------------------------

TLP2_AMBER_OBJECT = {
    "type": "marking-definition",
    "spec_version": "2.1",
    "id": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "created": "2022-10-01T00:00:00.000Z",
    "name": "TLP:AMBER",
    "extensions": {
        "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {
            "extension_type": "property-extension",
            "tlp_2_0": "amber",
        }
    },
}
CUSTOM_TLP_ID = "marking-definition--0d9f5b7e-8e0a-4f0e-9a55-3c1f3e0b6f11"
IDENTITY_ID = "identity--7b1c6a3c-6a43-4a52-8e1b-3f6a6f0d3b21"
TLP1_GREEN = "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"
TLP1_WHITE = "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"
TLP2_RED = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"


def stix_indicator(number: int, pattern: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--00000000-0000-4000-8000-{number:012d}",
        "created": "2025-06-01T00:00:00.000Z",
        "modified": "2025-06-03T00:00:00.000Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2025-06-02T00:00:00Z",
        **properties,
    }


BUNDLE_OBJECTS: list[Any] = [
    TLP2_AMBER_OBJECT,  # 1
    {  # 2
        "type": "identity",
        "spec_version": "2.1",
        "id": IDENTITY_ID,
        "created": "2024-01-01T00:00:00.000Z",
        "modified": "2024-01-01T00:00:00.000Z",
        "name": "CERT-XY",
        "identity_class": "organization",
    },
    stix_indicator(  # 3
        3,
        "[ipv4-addr:value = '198.51.100.7']",
        object_marking_refs=[TLP2_AMBER_OBJECT["id"]],
        created_by_ref=IDENTITY_ID,
        labels=["C2", "cobalt-strike"],
        confidence=85,
        description="Beacon server.",
        valid_until="2025-07-01T00:00:00Z",
        external_references=[
            {"source_name": "report", "url": "https://cert.example/r/1"},
            {"source_name": "capec", "external_id": "CAPEC-98"},
        ],
    ),
    stix_indicator(4, "[domain-name:value = 'Evil.Example']", object_marking_refs=[TLP1_GREEN]),
    stix_indicator(5, "[url:value = 'http://evil.example/it\\'s\\\\here']"),
    stix_indicator(6, f"[file:hashes.'SHA-256' = '{SHA256.upper()}']"),
    stix_indicator(7, "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']"),
    stix_indicator(8, "[file:hashes.'SHA-1' = 'da39a3ee5e6b4b0d3255bfef95601890afd80709']"),
    stix_indicator(9, "[file:hashes.'SHA-512' = '" + "ab" * 64 + "']"),
    stix_indicator(10, "[email-addr:value = 'Phish@Evil.Example']"),
    stix_indicator(11, "[autonomous-system:number = 64512]"),
    stix_indicator(12, "[ipv6-addr:value = '2001:DB8::7']"),
    stix_indicator(13, "[ipv4-addr:value = '203.0.113.0/24']"),
    stix_indicator(14, "[ipv6-addr:value ISSUBSET '2001:db8::/48']"),
    stix_indicator(
        15, "[ipv4-addr:value = '192.0.2.1']", object_marking_refs=[TLP1_WHITE, TLP2_RED]
    ),
    {  # 16
        "type": "malware",
        "spec_version": "2.1",
        "id": "malware--31b940d4-6f7f-459a-80ea-9c1f17b58abc",
        "created": "2025-06-01T00:00:00.000Z",
        "modified": "2025-06-01T00:00:00.000Z",
        "name": "x",
        "is_family": True,
    },
    stix_indicator(17, "[ipv4-addr:value = '1.1.1.1' OR ipv4-addr:value = '1.0.0.1']"),
    stix_indicator(18, "[ipv4-addr:value = '1.1.1.1'] AND [domain-name:value = 'a.example']"),
    stix_indicator(19, "rule x { condition: true }", pattern_type="yara"),
    stix_indicator(20, "[ipv4-addr:value = '1.1.1.1']", revoked=True),
    {key: value for key, value in stix_indicator(21, "").items() if key != "pattern"},
    stix_indicator(22, "[file:hashes.'SHA3-256' = '" + SHA256 + "']"),
    stix_indicator(23, "[process:name = 'evil.exe']"),
    stix_indicator(24, "[ipv4-addr:value = '999.1.1.1']"),
    {  # 25
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": CUSTOM_TLP_ID,
        "created": "2022-10-01T00:00:00.000Z",
        "name": "our TLP:RED",
        "extensions": {
            "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {
                "extension_type": "property-extension",
                "tlp_2_0": "red",
            }
        },
    },
    stix_indicator(26, "[domain-name:value = 'red.example']", object_marking_refs=[CUSTOM_TLP_ID]),
    "not an object",  # 27
    stix_indicator(28, "[ipv4-addr:value NOT = '1.1.1.1']"),
    stix_indicator(29, "[ipv4-addr:value = '1.1.1.1'] WITHIN 5 SECONDS"),
    stix_indicator(30, "[ipv4-addr:value = '1.1.1.2']", confidence=150),
    stix_indicator(31, "[domain-name:value = 'c.example']", valid_from="2030-01-01T00:00:00Z"),
    stix_indicator(32, "[domain-name:value LIKE '%.example']"),
    stix_indicator(33, "[domain-name:value = 'd.example']", id="indicator--nope"),
]


def test_stix_bundle_maps_simple_patterns_and_refuses_the_rest() -> None:
    bundle = {"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d"}
    text = json.dumps({**bundle, "objects": BUNDLE_OBJECTS})
    result = parse(text, "stix", default_provider="feed")
    mapped = [(i.itype, i.value, tlp_name(i.tlp), i.provider) for i in result.indicators]
    assert mapped == [
        (pb.ITYPE_IPV4, "198.51.100.7", "amber", "CERT-XY"),
        (pb.ITYPE_FQDN, "evil.example", "green", "feed"),
        (pb.ITYPE_URL, "http://evil.example/it's\\here", "green", "feed"),
        (pb.ITYPE_SHA256, SHA256, "green", "feed"),
        (pb.ITYPE_MD5, "d41d8cd98f00b204e9800998ecf8427e", "green", "feed"),
        (pb.ITYPE_SHA1, "da39a3ee5e6b4b0d3255bfef95601890afd80709", "green", "feed"),
        (pb.ITYPE_SHA512, "ab" * 64, "green", "feed"),
        (pb.ITYPE_EMAIL, "Phish@evil.example", "green", "feed"),
        (pb.ITYPE_ASN, "AS64512", "green", "feed"),
        (pb.ITYPE_IPV6, "2001:db8::7", "green", "feed"),
        (pb.ITYPE_CIDR, "203.0.113.0/24", "green", "feed"),
        (pb.ITYPE_CIDR, "2001:db8::/48", "green", "feed"),
        (pb.ITYPE_IPV4, "192.0.2.1", "red", "feed"),  # WHITE and RED: the stricter one
        (pb.ITYPE_FQDN, "red.example", "red", "feed"),  # a TLP 2.0 marking of the bundle
    ]
    first = result.indicators[0]
    assert first == pb.Indicator(
        value="198.51.100.7",
        itype=pb.ITYPE_IPV4,
        tlp=pb.TLP_AMBER,
        confidence=85,
        tags=["c2", "cobalt-strike"],
        provider="CERT-XY",
        first_seen_ms=1_748_822_400_000,  # valid_from
        last_seen_ms=1_748_908_800_000,  # modified
        expires_ms=1_751_328_000_000,  # valid_until
        description="Beacon server.",
        references=["https://cert.example/r/1"],
    )
    assert result.indicators[1].confidence == 50  # none given
    reasons = rejected_lines(result)
    assert sorted(reasons) == [17, 18, 19, 20, 21, 22, 23, 24, 27, 28, 29, 30, 31, 32, 33]
    assert reasons[17].startswith("field 'pattern': only [object:property = 'value']")
    assert reasons[18] == "field 'pattern': only one observation [...] maps to one indicator"
    assert reasons[19] == "field 'pattern_type': 'yara' patterns are not mapped"
    assert reasons[20] == "field 'revoked': the indicator is revoked"
    assert reasons[21].startswith("field 'pattern': not valid STIX: No values for required")
    assert reasons[22].startswith("field 'pattern': hash 'SHA3-256' is not one of MD5")
    assert reasons[23] == ("field 'pattern': process:name is not a property we map to an indicator")
    assert reasons[24] == "field 'value': '999.1.1.1' is not a valid ipv4 address"
    assert reasons[27] == "not a STIX object (not a JSON object)"
    assert reasons[28].startswith("field 'pattern': only [object:property = 'value']")
    assert reasons[29] == "field 'pattern': only one observation [...] maps to one indicator"
    assert reasons[30] == "field 'confidence': 150 is not from 0 to 100"
    assert reasons[31].startswith("field 'first_seen': 2030-01-01T00:00:00Z is more than a day")
    assert reasons[32].startswith("field 'pattern': only [object:property = 'value']")
    assert reasons[33].startswith("field 'id': not valid STIX")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1.2.3.4\n5.6.7.8", "not a STIX bundle: not valid JSON (Extra data at line 1, column 4)"),
        ("", "not a STIX bundle: not valid JSON (Expecting value at line 1, column 1)"),
        ("[]", "not a STIX bundle: the top-level object must have type 'bundle'"),
        (json.dumps(BUNDLE_OBJECTS[2]), "not a STIX bundle: the top-level object must have"),
        ('{"type": "bundle", "objects": {}}', "not a STIX bundle: 'objects' must be a list"),
        ("[" * 100_000, "not a STIX bundle: JSON nested too deeply"),
    ],
)
def test_stix_text_that_is_not_a_bundle(text: str, reason: str) -> None:
    result = parse(text, "stix")
    assert result.indicators == []
    assert len(result.rejected) == 1
    assert result.rejected[0].line == 1
    assert result.rejected[0].reason.startswith(reason)


def test_an_empty_bundle_has_no_indicators() -> None:
    assert parse('{"type": "bundle", "id": "bundle--x"}', "stix") == ParseResult()


def test_a_stix_2_0_indicator() -> None:
    indicator = {
        "type": "indicator",
        "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
        "created": "2025-06-01T00:00:00.000Z",
        "modified": "2025-06-01T00:00:00.000Z",
        "labels": ["malicious-activity"],
        "pattern": "[domain-name:value = 'old.example']",
        "valid_from": "2025-06-01T00:00:00Z",
        "object_marking_refs": ["marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"],
    }
    bundle = {"type": "bundle", "spec_version": "2.0", "id": "bundle--x", "objects": [indicator]}
    (mapped,) = parse(json.dumps(bundle), "stix").indicators
    assert (mapped.value, mapped.tlp, list(mapped.tags)) == (
        "old.example",
        pb.TLP_RED,
        ["malicious-activity"],
    )


def test_tlp_marking_ids() -> None:
    assert {tlp_name(tlp) for tlp in TLP2_MARKING_IDS} == {
        "clear",
        "green",
        "amber",
        "amber-strict",
        "red",
    }
    # The TLP 1.0 ids are the ones the stix2 library itself defines.
    assert {
        stix2.v21.TLP_WHITE.id: pb.TLP_CLEAR,
        stix2.v21.TLP_GREEN.id: pb.TLP_GREEN,
        stix2.v21.TLP_AMBER.id: pb.TLP_AMBER,
        stix2.v21.TLP_RED.id: pb.TLP_RED,
    } == TLP1_MARKING_IDS


@pytest.mark.parametrize(
    ("itype", "value"),
    [
        (pb.ITYPE_IPV4, "1.2.3.4"),
        (pb.ITYPE_IPV6, "2001:db8::1"),
        (pb.ITYPE_CIDR, "10.0.0.0/8"),
        (pb.ITYPE_CIDR, "2001:db8::/32"),
        (pb.ITYPE_FQDN, "example.com"),
        (pb.ITYPE_URL, "http://x.example/it's\\a'"),
        (pb.ITYPE_EMAIL, "o'brien@example.com"),
        (pb.ITYPE_MD5, "d41d8cd98f00b204e9800998ecf8427e"),
        (pb.ITYPE_SHA1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        (pb.ITYPE_SHA256, SHA256),
        (pb.ITYPE_SHA512, "ab" * 64),
        (pb.ITYPE_ASN, "AS13335"),
    ],
)
def test_stix_patterns_round_trip(itype: int, value: str) -> None:
    assert pattern_value(stix_pattern(itype, value)) == (itype, value)


def all_levels() -> list[pb.Indicator]:
    indicators = []
    for number, tlp in enumerate(
        [pb.TLP_CLEAR, pb.TLP_GREEN, pb.TLP_AMBER, pb.TLP_AMBER_STRICT, pb.TLP_RED]
    ):
        record = {
            "value": f"10.0.0.{number}",
            "tlp": tlp_name(tlp),
            "provider": "cert" if number % 2 else "",
            "tags": ["a", "b"] if number else [],
            "description": "x" if number == 1 else "",
            "references": ["https://ref.example/1"] if number == 2 else [],
            "first_seen": "2025-06-01T00:00:00.125Z",
            "last_seen": "2025-06-02T00:00:00Z",
            "expires": "2025-08-01T00:00:00Z" if number == 3 else None,
            "confidence": 20 * number,
        }
        indicators.append(
            indicator_from_record(record, line=None, default_tlp=GREEN, now_ms=NOW_MS)
        )
    return indicators


def test_to_stix_bundle_writes_valid_stix_with_tlp_2_markings() -> None:
    indicators = all_levels()
    text = to_stix_bundle(indicators)
    bundle = stix2.parse(text, allow_custom=False)  # valid STIX 2.1, nothing custom
    by_type: dict[str, list[Any]] = {}
    for item in bundle.objects:
        by_type.setdefault(item.type, []).append(item)
    assert sorted(by_type) == ["identity", "indicator", "marking-definition"]
    markings = {item.id: item for item in by_type["marking-definition"]}
    assert set(markings) == set(TLP2_MARKING_IDS.values())
    extension = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
    assert markings[TLP2_MARKING_IDS[pb.TLP_AMBER_STRICT]].name == "TLP:AMBER+STRICT"
    assert markings[TLP2_MARKING_IDS[pb.TLP_AMBER_STRICT]].extensions[extension]["tlp_2_0"] == (
        "amber+strict"
    )
    (identity,) = by_type["identity"]
    assert identity.name == "cert"
    for indicator, stix_object in zip(indicators, by_type["indicator"], strict=True):
        assert stix_object.object_marking_refs == [TLP2_MARKING_IDS[indicator.tlp]]
        assert stix_object.get("created_by_ref") == (identity.id if indicator.provider else None)
    assert parse(text, "stix", default_tlp=pb.TLP_RED) == ParseResult(indicators, [])


def test_to_stix_bundle_is_deterministic() -> None:
    indicators = all_levels()
    text = to_stix_bundle(indicators)
    assert to_stix_bundle(indicators) == text
    assert to_stix_bundle(indicators[:2]) != text
    # One indicator is one object id across exports; a later version has a newer `modified`.
    newer = pb.Indicator()
    newer.CopyFrom(indicators[0])
    newer.last_seen_ms += DAY_MS
    old_object = json.loads(to_stix_bundle([indicators[0]]))["objects"][-1]
    new_object = json.loads(to_stix_bundle([newer]))["objects"][-1]
    assert old_object["id"] == new_object["id"]
    assert new_object["modified"] > old_object["modified"]


def test_to_stix_bundle_of_nothing() -> None:
    text = to_stix_bundle([])
    assert json.loads(text)["type"] == "bundle"
    assert parse(text, "stix") == ParseResult()


def test_to_stix_bundle_refuses_an_unknown_level() -> None:
    with pytest.raises(IndicatorError) as caught:
        to_stix_bundle([pb.Indicator(value="1.2.3.4", itype=pb.ITYPE_IPV4)])
    assert caught.value.field == "tlp"


# Round trips through every format -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "stix"])
def test_every_format_round_trips_the_mixed_file(fmt: str) -> None:
    indicators = parse(MIXED_JSONL, "jsonl").indicators + all_levels()
    if fmt == "stix":
        text = to_stix_bundle(indicators)
    else:
        text = "\n".join(to_jsonl(indicators) if fmt == "jsonl" else to_csv(indicators)) + "\n"
    assert parse(text, fmt, default_tlp=pb.TLP_RED) == ParseResult(indicators, [])


def _round_trip_property(fmt: str, indicators: list[pb.Indicator]) -> None:
    if fmt == "stix":
        text = to_stix_bundle(indicators)
    else:
        text = "\n".join(to_jsonl(indicators) if fmt == "jsonl" else to_csv(indicators))
    assert parse(text, fmt, default_tlp=pb.TLP_CLEAR) == ParseResult(indicators, [])


def _indicators(items: list[dict[str, Any]]) -> list[pb.Indicator]:
    built = []
    for record in items:
        try:
            built.append(indicator_from_record(record, line=None, default_tlp=GREEN, now_ms=NOW_MS))
        except IndicatorError:
            continue
    return built


@given(st.lists(records(), max_size=4), st.sampled_from(["jsonl", "csv"]))
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
def test_jsonl_and_csv_round_trip(items: list[dict[str, Any]], fmt: str) -> None:
    _round_trip_property(fmt, _indicators(items))


@given(st.lists(records(), max_size=3))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
def test_stix_round_trip(items: list[dict[str, Any]]) -> None:
    _round_trip_property("stix", _indicators(items))


# Robustness: whatever the text, parsing returns (never raises) ------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
STIX_KEYS = st.sampled_from(
    [
        *stix_indicator(0, "").keys(),
        "labels",
        "confidence",
        "object_marking_refs",
        "external_references",
        "created_by_ref",
        "valid_until",
        "revoked",
        "description",
        "extensions",
        "name",
    ]
)


@given(st.text(max_size=200), st.sampled_from(FORMATS))
@settings(max_examples=300, deadline=None)
def test_any_text_parses_without_raising(text: str, fmt: str) -> None:
    result = parse(text, fmt)
    assert all(rejection.line >= 1 and rejection.reason for rejection in result.rejected)


@given(st.dictionaries(STIX_KEYS, JSON_VALUES, max_size=4))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_malformed_stix_objects_are_rejected_one_by_one(overrides: dict[str, Any]) -> None:
    # The stix2 library raises assorted errors on malformed objects; each must become a
    # rejection of that object, and the good indicator after it must still go through.
    broken = {**stix_indicator(1, "[ipv4-addr:value = '1.2.3.4']"), **overrides}
    objects = [
        {**broken, "type": "identity"},
        {**broken, "type": "marking-definition"},
        broken,
        stix_indicator(2, "[ipv4-addr:value = '5.6.7.8']"),
    ]
    result = parse(json.dumps({"type": "bundle", "id": "bundle--x", "objects": objects}), "stix")
    assert result.indicators[-1].value == "5.6.7.8"
    assert {rejection.line for rejection in result.rejected} <= {3}


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        ({"pattern": ""}, "field 'pattern': is empty"),
        ({"spec_version": "2.2"}, "field 'spec_version': '2.2' is not 2.0 or 2.1"),
        ({"spec_version": ["2.1"]}, "field 'spec_version': \"['2.1']\" is not 2.0 or 2.1"),
        ({"valid_from": "soon"}, "field 'valid_from': not valid STIX"),
    ],
)
def test_malformed_stix_indicators(properties: dict[str, Any], reason: str) -> None:
    objects = [{**stix_indicator(1, "[ipv4-addr:value = '1.2.3.4']"), **properties}]
    result = parse(json.dumps({"type": "bundle", "id": "bundle--x", "objects": objects}), "stix")
    assert result.indicators == []
    assert [rejection.line for rejection in result.rejected] == [1]
    assert result.rejected[0].reason.startswith(reason)


def test_csv_comments_only_before_the_header() -> None:
    # After the header a cell starting with "#" is data: an email address may.
    text = "# preamble\nvalue,itype\n#ops@example.com,email\n# not a comment,\n"
    result = parse(text, "csv")
    assert values(result) == ["#ops@example.com"]
    assert list(rejected_lines(result)) == [4]
    assert parse("\n".join(to_csv(result.indicators)), "csv").indicators == result.indicators
