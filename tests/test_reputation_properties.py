"""reputation/observations.py: ``reputation`` is bounded and moves the right way per input.

Hypothesis checks, for any observation: the result is in [0, 1]; raising uptime, first
deliveries, GossipSub score, trust or vouches never lowers it; raising invalid messages or
false positives never raises it; and within ranges where no term saturates, each move is
strict. Examples are bounded (``max_examples``) and every test has a deadline.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.reputation import Observation, ObservationError, reputation, to_permille
from threatmesh.reputation.observations import STRANGER

NOW_MS = 1_760_000_000_000
YEAR_MS = 365 * 24 * 3600 * 1000
BOUNDED = settings(max_examples=200, deadline=timedelta(milliseconds=500))

counts = st.integers(min_value=0, max_value=10**9)
observations = st.builds(
    Observation,
    heard_since_ms=st.none() | st.integers(min_value=NOW_MS - 10 * YEAR_MS, max_value=NOW_MS),
    gossip_score=st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
    first_deliveries=counts,
    invalid_messages=counts,
    false_positives=counts,
    trust_level=st.integers(min_value=0, max_value=pb.TLP_RED),
    vouches=counts,
)
RISING = ("first_deliveries", "vouches", "trust_level", "gossip_score")
FALLING = ("invalid_messages", "false_positives")


def _raised(observation: Observation, name: str, amount: float) -> Observation:
    value = getattr(observation, name) + amount
    if name == "trust_level":
        value = min(pb.TLP_RED, value)
    return dataclasses.replace(observation, **{name: value})


@BOUNDED
@given(observations, st.integers(min_value=NOW_MS - YEAR_MS, max_value=NOW_MS + 10 * YEAR_MS))
def test_reputation_is_bounded(observation: Observation, now_ms: int) -> None:
    value = reputation(observation, now_ms)
    assert 0.0 <= value <= 1.0
    assert 0 <= to_permille(value) <= 1000


@BOUNDED
@given(observations, st.sampled_from(RISING), st.integers(min_value=0, max_value=10**6))
def test_more_of_a_good_thing_never_lowers_it(
    observation: Observation, name: str, amount: int
) -> None:
    raised = _raised(observation, name, amount)
    assert reputation(raised, NOW_MS) >= reputation(observation, NOW_MS)


@BOUNDED
@given(observations, st.sampled_from(FALLING), st.integers(min_value=0, max_value=10**6))
def test_more_of_a_bad_thing_never_raises_it(
    observation: Observation, name: str, amount: int
) -> None:
    raised = _raised(observation, name, amount)
    assert reputation(raised, NOW_MS) <= reputation(observation, NOW_MS)


@BOUNDED
@given(observations, st.integers(min_value=0, max_value=10 * YEAR_MS))
def test_longer_observed_uptime_never_lowers_it(observation: Observation, later_ms: int) -> None:
    # The same observation looked at later, or a session heard since earlier.
    assert reputation(observation, NOW_MS + later_ms) >= reputation(observation, NOW_MS)
    if observation.heard_since_ms is not None:
        earlier = dataclasses.replace(
            observation, heard_since_ms=observation.heard_since_ms - later_ms
        )
        assert reputation(earlier, NOW_MS) >= reputation(observation, NOW_MS)


# Strict moves, where nothing saturates: counts up to 1000, scores up to +-1000, a day up.
modest = st.builds(
    Observation,
    heard_since_ms=st.integers(min_value=NOW_MS - 24 * 3600 * 1000, max_value=NOW_MS),
    gossip_score=st.floats(min_value=-1000, max_value=1000, allow_nan=False),
    first_deliveries=st.integers(min_value=0, max_value=1000),
    invalid_messages=st.integers(min_value=0, max_value=1000),
    false_positives=st.integers(min_value=0, max_value=1000),
    trust_level=st.integers(min_value=pb.TLP_CLEAR, max_value=pb.TLP_AMBER_STRICT),
    vouches=st.integers(min_value=0, max_value=1000),
)


@BOUNDED
@given(modest, st.sampled_from(RISING + FALLING))
def test_each_input_moves_it_strictly_the_right_way(observation: Observation, name: str) -> None:
    before = reputation(observation, NOW_MS)
    after = reputation(_raised(observation, name, 1), NOW_MS)
    assert (after > before) if name in RISING else (after < before)


@BOUNDED
@given(modest)
def test_an_hour_more_uptime_raises_it_strictly(observation: Observation) -> None:
    assert reputation(observation, NOW_MS + 3_600_000) > reputation(observation, NOW_MS)


def test_a_stranger_starts_low_and_a_trusted_old_hand_scores_high() -> None:
    stranger = Observation(heard_since_ms=NOW_MS)
    assert reputation(stranger, NOW_MS) == pytest.approx(STRANGER)
    old_hand = Observation(
        heard_since_ms=NOW_MS - 7 * 24 * 3600 * 1000,
        gossip_score=100,
        first_deliveries=10_000,
        trust_level=pb.TLP_RED,
        vouches=10,
    )
    assert reputation(old_hand, NOW_MS) > 0.95


def test_five_invalid_messages_halve_a_reputation() -> None:
    clean = Observation(heard_since_ms=NOW_MS - 3_600_000, trust_level=pb.TLP_GREEN)
    dirty = dataclasses.replace(clean, invalid_messages=5)
    assert reputation(dirty, NOW_MS) == pytest.approx(reputation(clean, NOW_MS) / 2)


def test_a_clock_that_went_back_counts_no_uptime() -> None:
    observation = Observation(heard_since_ms=NOW_MS + 5000)
    assert observation.uptime_s(NOW_MS) == 0
    assert reputation(observation, NOW_MS) == pytest.approx(STRANGER)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"gossip_score": float("nan")}, "gossip_score"),
        ({"gossip_score": float("inf")}, "gossip_score"),
        ({"first_deliveries": -1}, "first_deliveries"),
        ({"invalid_messages": -1}, "invalid_messages"),
        ({"false_positives": -1}, "false_positives"),
        ({"vouches": -1}, "vouches"),
        ({"trust_level": 6}, "trust_level"),
    ],
)
def test_impossible_figures_are_refused_by_name(changes: dict[str, float], field: str) -> None:
    with pytest.raises(ObservationError, match=field):
        Observation(**changes)  # type: ignore[arg-type]


def test_to_permille_clamps_and_rounds() -> None:
    assert [to_permille(v) for v in (-1.0, 0.0, 0.0004, 0.5, 0.9996, 2.0)] == [
        0,
        0,
        0,
        500,
        1000,
        1000,
    ]
