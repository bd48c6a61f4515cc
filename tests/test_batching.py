from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from threatmesh.pubsub.batching import Batcher, BatchLimits
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.topics import (
    TopicError,
    all_tlp_topics,
    control_topic,
    parse_tlp_topic,
    tlp_topic,
)


def _indicator(number: int, tlp: int = pb.TLP_CLEAR) -> pb.Indicator:
    return pb.Indicator(value=f"10.0.{number // 256}.{number % 256}", itype=pb.ITYPE_IPV4, tlp=tlp)


def test_batch_closes_at_count() -> None:
    batcher = Batcher(BatchLimits(max_indicators=3, window_s=1.0))
    assert batcher.add([_indicator(1), _indicator(2)], pb.TLP_CLEAR, now=0.0, wall_ms=5) == []
    [batch] = batcher.add([_indicator(3)], pb.TLP_CLEAR, now=0.0, wall_ms=7)
    assert [i.value for i in batch.indicators] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert (batch.seq, batch.tlp, batch.sent_ms) == (1, pb.TLP_CLEAR, 7)
    assert batcher.pending() == 0


def test_batch_closes_at_bytes() -> None:
    one = _indicator(1).ByteSize() + 4
    batcher = Batcher(BatchLimits(max_bytes=one * 2, window_s=1.0))
    closed = batcher.add([_indicator(n) for n in range(5)], pb.TLP_CLEAR, now=0.0, wall_ms=0)
    assert [len(batch.indicators) for batch in closed] == [2, 2]
    assert all(batch.ByteSize() <= one * 2 + 16 for batch in closed)
    assert batcher.pending() == 1


def test_batch_closes_after_the_window() -> None:
    batcher = Batcher(BatchLimits(window_s=0.05))
    batcher.add([_indicator(1)], pb.TLP_GREEN, now=10.0, wall_ms=0)
    assert batcher.next_deadline() == pytest.approx(10.05)
    assert batcher.due(now=10.04, wall_ms=0) == []
    [batch] = batcher.due(now=10.05, wall_ms=99)
    assert batch.tlp == pb.TLP_GREEN
    assert batcher.next_deadline() is None


def test_levels_never_share_a_batch() -> None:
    batcher = Batcher(BatchLimits())
    batcher.add([_indicator(1, pb.TLP_CLEAR)], pb.TLP_CLEAR, now=0.0, wall_ms=0)
    batcher.add([_indicator(2, pb.TLP_RED)], pb.TLP_RED, now=0.0, wall_ms=0)
    closed = batcher.flush(wall_ms=0)
    assert sorted(batch.tlp for batch in closed) == [pb.TLP_CLEAR, pb.TLP_RED]
    assert sorted(batch.seq for batch in closed) == [1, 2]


def test_sequence_continues_from_last_seq() -> None:
    batcher = Batcher(BatchLimits(max_indicators=1), last_seq=41)
    closed = batcher.add([_indicator(1), _indicator(2)], pb.TLP_CLEAR, now=0.0, wall_ms=0)
    assert [batch.seq for batch in closed] == [42, 43]


@given(
    counts=st.lists(st.integers(min_value=0, max_value=50), max_size=20),
    max_indicators=st.integers(min_value=1, max_value=20),
)
def test_nothing_is_lost_or_duplicated(counts: list[int], max_indicators: int) -> None:
    batcher = Batcher(BatchLimits(max_indicators=max_indicators))
    sent: list[str] = []
    batches: list[pb.Batch] = []
    number = 0
    for step, count in enumerate(counts):
        group = []
        for _ in range(count):
            group.append(_indicator(number))
            sent.append(group[-1].value)
            number += 1
        batches += batcher.add(group, pb.TLP_CLEAR, now=step * 0.01, wall_ms=0)
        batches += batcher.due(now=step * 0.01, wall_ms=0)
    batches += batcher.flush(wall_ms=0)
    assert [i.value for batch in batches for i in batch.indicators] == sent
    assert [batch.seq for batch in batches] == list(range(1, len(batches) + 1))
    assert all(1 <= len(batch.indicators) <= max_indicators for batch in batches)


def test_topic_names() -> None:
    assert tlp_topic("public", pb.TLP_AMBER_STRICT) == "/threatmesh/public/tlp/amber-strict/1"
    assert control_topic("acme") == "/threatmesh/acme/control/1"
    topics = all_tlp_topics("s")
    assert len(topics) == 5
    for topic, tlp in topics.items():
        parsed = parse_tlp_topic(topic)
        assert (parsed.swarm, parsed.tlp) == ("s", tlp)


@pytest.mark.parametrize(
    "topic",
    ["/threatmesh/s/tlp/purple/1", "/threatmesh/s/tlp/red/2", "/ipfs/s/tlp/red/1", "x", ""],
)
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_tlp_topic(topic)


def test_a_steady_stream_is_paced_by_the_interval_and_a_quiet_one_is_not() -> None:
    batcher = Batcher(BatchLimits(window_s=0.05, min_interval_s=0.15))
    batcher.add([_indicator(1)], pb.TLP_CLEAR, now=0.0, wall_ms=0)
    [first] = batcher.due(now=0.05, wall_ms=0)  # the first waits for its window only
    batcher.add([_indicator(2)], pb.TLP_CLEAR, now=0.06, wall_ms=0)
    batcher.add([_indicator(3)], pb.TLP_CLEAR, now=0.12, wall_ms=0)
    assert batcher.next_deadline() == pytest.approx(0.20)  # 0.05 + the interval
    assert batcher.due(now=0.19, wall_ms=0) == []
    [second] = batcher.due(now=0.20, wall_ms=0)
    assert [len(batch.indicators) for batch in (first, second)] == [1, 2]
    # After a quiet spell the window alone applies again.
    batcher.add([_indicator(4)], pb.TLP_CLEAR, now=5.0, wall_ms=0)
    assert batcher.next_deadline() == pytest.approx(5.05)
    # Each level has its own interval.
    batcher.add([_indicator(5, pb.TLP_RED)], pb.TLP_RED, now=5.0, wall_ms=0)
    assert {batch.tlp for batch in batcher.due(now=5.05, wall_ms=0)} == {
        pb.TLP_CLEAR,
        pb.TLP_RED,
    }


def test_full_batches_leave_at_once_whatever_the_interval() -> None:
    batcher = Batcher(BatchLimits(max_indicators=2, window_s=0.05, min_interval_s=10.0))
    closed = batcher.add([_indicator(n) for n in range(6)], pb.TLP_CLEAR, now=0.0, wall_ms=0)
    assert [len(batch.indicators) for batch in closed] == [2, 2, 2]
