"""node/sync_policy.py: what a sync server gives, and what an asker asks for."""

from __future__ import annotations

import pytest
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from threatmesh.identity import generate_identity
from threatmesh.node.store_log import LoggedBatch
from threatmesh.node.sync_policy import (
    MAX_RANGE_SEQS,
    MAX_RANGES_PER_ROUND,
    MAX_SEQS_PER_ROUND,
    PAGE_MAX_MESSAGES,
    SyncRequestError,
    check_range,
    gap_sources,
    may_give,
    page,
    ranges_to_fetch,
    retry_delay_s,
)
from threatmesh.pubsub.gating import Audience
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.seal import seal
from threatmesh.pubsub.topics import tlp_topic

SWARM = "s"


def _id() -> ID:
    return generate_identity().peer_id


def _logged(seq: int, tlp: int, data: bytes = b"batch") -> LoggedBatch:
    message = rpc_pb2.Message(data=data, topicIDs=[tlp_topic(SWARM, tlp)], from_id=b"o")
    return LoggedBatch(seq, tlp, message.SerializeToString())


def _sealed_for(seq: int, tlp: int, recipients: list[ID]) -> LoggedBatch:
    sealed = seal(b"inner", tlp=tlp, origin=_id(), recipients=recipients)
    return _logged(seq, tlp, sealed.SerializeToString())


def test_a_range_is_checked_before_any_work() -> None:
    origin = _id()
    assert check_range(pb.SyncRange(origin=origin.to_bytes(), from_seq=3, to_seq=9)) == (
        origin,
        3,
        9,
    )
    bad = [
        pb.SyncRange(from_seq=1, to_seq=2),  # no origin
        pb.SyncRange(origin=origin.to_bytes(), from_seq=0, to_seq=2),
        pb.SyncRange(origin=origin.to_bytes(), from_seq=5, to_seq=4),
        pb.SyncRange(origin=origin.to_bytes(), from_seq=1, to_seq=MAX_RANGE_SEQS + 1),
    ]
    for request in bad:
        with pytest.raises(SyncRequestError):
            check_range(request)


def test_the_server_gives_only_what_it_would_send_live() -> None:
    me, green_peer, red_peer, stranger = _id(), _id(), _id(), _id()
    audience = Audience.for_swarm(SWARM, {green_peer: pb.TLP_GREEN, red_peer: pb.TLP_RED}, me)
    clear, green = _logged(1, pb.TLP_CLEAR), _logged(2, pb.TLP_GREEN)
    red_for_red_peer = _sealed_for(3, pb.TLP_RED, [red_peer])
    red_for_others = _sealed_for(4, pb.TLP_RED, [green_peer])
    assert may_give(clear, stranger, audience, SWARM)
    assert not may_give(green, stranger, audience, SWARM)
    assert may_give(green, green_peer, audience, SWARM)
    assert not may_give(red_for_red_peer, green_peer, audience, SWARM)  # not trusted at RED
    assert may_give(red_for_red_peer, red_peer, audience, SWARM)
    # Trusted at RED by the server, but the origin did not seal it for red_peer.
    assert not may_give(red_for_others, red_peer, audience, SWARM)
    assert not may_give(_logged(5, pb.TLP_RED, b"\xff not sealed"), red_peer, audience, SWARM)


def test_a_page_lists_what_it_withholds_and_where_to_go_on() -> None:
    me, stranger = _id(), _id()
    audience = Audience.for_swarm(SWARM, {}, me)
    batches = [_logged(seq, pb.TLP_GREEN if seq % 3 == 0 else pb.TLP_CLEAR) for seq in range(1, 8)]
    answer = page(batches, stranger, audience, SWARM)
    assert len(answer.messages) == 5
    assert list(answer.withheld) == [3, 6]
    assert answer.next_seq == 0  # fewer than a page: done

    many = [_logged(seq, pb.TLP_CLEAR) for seq in range(10, 10 + PAGE_MAX_MESSAGES + 1)]
    answer = page(many, stranger, audience, SWARM)
    assert len(answer.messages) == PAGE_MAX_MESSAGES
    assert answer.next_seq == 10 + PAGE_MAX_MESSAGES


def test_a_page_is_bounded_in_bytes() -> None:
    me, stranger = _id(), _id()
    audience = Audience.for_swarm(SWARM, {}, me)
    big = [_logged(seq, pb.TLP_CLEAR, b"x" * 600_000) for seq in range(1, 10)]
    answer = page(big, stranger, audience, SWARM)
    assert 1 <= len(answer.messages) < 9
    assert answer.next_seq == len(answer.messages) + 1


@pytest.mark.parametrize(
    ("missing", "highest", "theirs", "expected"),
    [
        ([], 0, 0, []),
        ([], 10, 10, []),
        ([], 10, 15, [(11, 15)]),
        ([3, 4, 5, 8], 10, 10, [(3, 5), (8, 8)]),
        ([3, 4, 5, 8], 10, 4, [(3, 4)]),  # they have less: ask only what they hold
        ([3, 9], 10, 12, [(3, 3), (9, 9), (11, 12)]),
        ([], 0, 5, [(1, 5)]),
    ],
)
def test_ranges_to_fetch(
    missing: list[int], highest: int, theirs: int, expected: list[tuple[int, int]]
) -> None:
    wanted = ranges_to_fetch(missing=missing, highest_stored=highest, their_highest=theirs)
    assert wanted == expected


def test_ranges_to_fetch_is_bounded() -> None:
    wide = ranges_to_fetch(missing=[], highest_stored=0, their_highest=10**12)
    assert wide == [(1, MAX_SEQS_PER_ROUND)]
    scattered = list(range(2, 4 * MAX_RANGES_PER_ROUND, 2))
    many = ranges_to_fetch(missing=scattered, highest_stored=10**6, their_highest=10**6)
    assert len(many) == MAX_RANGES_PER_ROUND
    assert sum(last - first + 1 for first, last in many) <= MAX_SEQS_PER_ROUND


def test_gap_sources_ask_the_origin_then_supernodes_then_a_few_others() -> None:
    origin, super1, super2, a, b, c, d = (_id() for _ in range(7))
    connected = [a, super2, b, origin, c, d]
    assert gap_sources(origin, connected, [super1, super2])[:2] == [origin, super2]
    assert len(gap_sources(origin, connected, [super1, super2])) == 2 + 3
    assert gap_sources(origin, [a, b], [super1]) == [a, b]  # neither origin nor supernodes


def test_catch_up_retries_double_and_stop() -> None:
    delays = [retry_delay_s(failures, first_s=2.0, retries=4) for failures in range(0, 7)]
    assert delays == [None, 2.0, 4.0, 8.0, 16.0, None, None]
