"""The stored form of reports (threatmesh.node.store_merge): ``report_rows`` and
``union_members`` give what the plain rules (``merge_batch``, ``merge_reports``) give, and
``value_hash``, part of the file format, does not change."""

from __future__ import annotations

import hashlib

import hypothesis.strategies as st
import pytest
from hypothesis import given

from threatmesh.node.store_merge import (
    MAX_TAGS,
    MEMBER_SEPARATOR,
    decode_members,
    encode_members,
    merge_batch,
    report_row,
    report_rows,
    row_report,
    union_members,
    value_hash,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

CLEAR, RED = 1, 5
FQDN, URL = 4, 5

# More tags than MAX_TAGS, so that some reports are cut to their bound.
TAG_POOL = [f"tag-{number:03d}" for number in range(MAX_TAGS + 16)]

indicators = st.builds(
    pb.Indicator,
    value=st.sampled_from(["a.example", "b.example", "ü.example"]),
    itype=st.sampled_from([FQDN, URL]),
    tlp=st.integers(min_value=0, max_value=RED),
    confidence=st.integers(min_value=0, max_value=100),
    tags=st.one_of(
        st.lists(st.sampled_from(["t1", "t2", "t3", "ä"]), max_size=4),  # repeats too
        st.lists(st.sampled_from(TAG_POOL), min_size=MAX_TAGS - 2, max_size=MAX_TAGS + 8),
    ),
    references=st.lists(st.sampled_from(["https://r/2", "https://r/1"]), max_size=3),
    provider=st.sampled_from(["", "feed-a", "feed-b"]),
    first_seen_ms=st.sampled_from([0, 10, 20]),
    last_seen_ms=st.sampled_from([0, 40, 50]),
    expires_ms=st.sampled_from([0, 100, 200]),
    description=st.sampled_from(["", "x", "y"]),
)


@given(
    batch=st.lists(indicators, max_size=8),
    batch_tlp=st.integers(min_value=CLEAR, max_value=RED),
)
def test_report_rows_hold_what_merge_batch_says(batch: list[pb.Indicator], batch_tlp: int) -> None:
    rows = report_rows(batch, batch_tlp)
    assert {key: row_report(row) for key, row in rows.items()} == merge_batch(batch, batch_tlp)
    for row in rows.values():
        assert row[-1] == value_hash(row[1])
        for members in row[10:13]:
            assert members.split(MEMBER_SEPARATOR) == sorted(members.split(MEMBER_SEPARATOR))


@given(batch=st.lists(indicators, min_size=1, max_size=4))
def test_a_report_and_its_row_convert_both_ways(batch: list[pb.Indicator]) -> None:
    for report in merge_batch(batch, CLEAR).values():
        assert row_report(report_row(report)) == report


members = st.frozensets(st.sampled_from(TAG_POOL[:12]), max_size=8)


@given(a=members, b=members, bound=st.integers(min_value=8, max_value=12))
def test_union_members_is_the_union_cut_to_its_bound(
    a: frozenset[str], b: frozenset[str], bound: int
) -> None:
    union = union_members(encode_members(a), encode_members(b), bound)
    assert decode_members(union) == frozenset(sorted(a | b)[:bound])
    assert union == encode_members(decode_members(union))  # sorted, no repeats


def test_value_hash_is_a_64_bit_blake2b_of_the_utf8() -> None:
    # Part of the file format: stored rows keep the hashes they were written with.
    digest = hashlib.blake2b(b"evil.example", digest_size=8).digest()
    assert value_hash("evil.example") == int.from_bytes(digest, "big", signed=True)
    assert -(2**63) <= value_hash("ü") < 2**63
    # CRC-32 (linear) gave these two the same key; a publisher could make any number collide.
    assert value_hash("c50963c80102.example") != value_hash("d3f504638284.example")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tags": ["ok", f"split{MEMBER_SEPARATOR}me"]}, "tags"),
        ({"tags": [f"split{MEMBER_SEPARATOR}me"]}, "tags"),
        ({"tags": ["ok", ""]}, "tags"),
        ({"tags": [""]}, "tags"),
        ({"references": ["https://r/1", f"https://r/{MEMBER_SEPARATOR}"]}, "references"),
        ({"references": [""]}, "references"),
        ({"provider": f"feed{MEMBER_SEPARATOR}a"}, "provider"),
    ],
)
def test_a_member_the_stored_text_cannot_keep_is_refused(
    fields: dict[str, object], field: str
) -> None:
    indicator = pb.Indicator(value="a.example", itype=FQDN, **fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"a\.example.*member of {field} is empty or holds"):
        report_rows([indicator], CLEAR)
