"""What this node observed of one peer, and the reputation that earns it.

An ``Observation`` holds only what *this* node saw for itself: how long it has heard the
peer's current session, the peer's GossipSub score, the valid first deliveries and invalid
messages it got from it, the false-positive sightings reported against the indicators it
originated, the trust level this node gives it and the vouches for it from peers this node
trusts. ``reputation(observation, now_ms)`` turns that into one number in ``[0, 1]``; this node
announces it (as permille, ``PeerView.reputation_permille``) and supernode election takes the
median of what the voters announce (``reputation/election.py``).

Rules (h11's style: the whole policy is here, no I/O, no clock read, ``now_ms`` passed in):

- Positive evidence is a weighted sum of saturating terms, each ``x / (x + half)`` with its
  own ``half`` (the amount that earns half of the term's weight), so no amount of one input is
  worth more than its weight (``WEIGHTS`` sum to 1):
  observed uptime, valid first deliveries, a positive GossipSub score, trust above CLEAR
  (CLEAR 0, GREEN 1/4, AMBER 1/2, AMBER+STRICT 3/4, RED 1), vouches.
- Negative evidence divides: ``penalty = 1 / (1 + invalid / 5 + false positives / 3 +
  max(0, -gossip score) / 20)``. Five invalid messages halve a reputation; so do three false
  positives.
- ``reputation = (STRANGER + (1 - STRANGER) * positive) * penalty``: a peer with no record at
  all starts at ``STRANGER`` (0.1), so a penalty lowers even a newcomer's reputation.
- Hence reputation is bounded in ``[0, 1]`` and monotone in each input: more uptime, first
  deliveries, trust, vouches or GossipSub score never lower it; more invalid messages or false
  positives never raise it (tests/test_reputation_properties.py checks both with hypothesis).
- Counts are what the caller keeps (totals over its own retention window); decay, if any, is
  the caller's, as GossipSub's own counters decay in py-libp2p's ``PeerScorer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.reputation.errors import ObservationError

# TLP levels as on the wire (pb.Tlp): CLEAR is what anyone gets, RED the most trust.
TLP_CLEAR = int(pb.TLP_CLEAR)
TLP_GREEN = int(pb.TLP_GREEN)
TLP_RED = int(pb.TLP_RED)

STRANGER = 0.1  # the reputation of a peer with no record and no penalty

# Weights of the positive terms; they sum to 1.
WEIGHT_UPTIME = 0.30
WEIGHT_FIRST_DELIVERIES = 0.20
WEIGHT_GOSSIP_SCORE = 0.15
WEIGHT_TRUST = 0.25
WEIGHT_VOUCHES = 0.10

# Half-saturation points: the amount that earns half of a term's weight.
HALF_UPTIME_S = 3600.0  # one hour of observed uptime
HALF_FIRST_DELIVERIES = 50.0
HALF_GOSSIP_SCORE = 20.0  # pubsub/libp2p_gossipsub.py: +1 per first delivery, capped at 100
HALF_VOUCHES = 2.0

# Divisors of the penalty terms: this many of each halves a reputation.
INVALID_MESSAGES_PER_HALVING = 5.0
FALSE_POSITIVES_PER_HALVING = 3.0
NEGATIVE_GOSSIP_SCORE_PER_HALVING = 20.0  # -20 is GossipSub's gossip threshold here


@dataclass(frozen=True)
class Observation:
    """What this node observed of one peer. Counts are non-negative; levels are pb.Tlp ints."""

    heard_since_ms: int | None = None  # since when we hear its current session; None: never
    gossip_score: float = 0.0  # PeerScorer.score(peer, topics) of py-libp2p, as is
    first_deliveries: int = 0  # valid messages it was first to deliver to us
    invalid_messages: int = 0  # messages from it our validators rejected
    false_positives: int = 0  # false-positive sightings against indicators it originated
    trust_level: int = TLP_CLEAR  # the effective TLP level we trust it at (trust + vouches)
    vouches: int = 0  # distinct peers we trust at GREEN or more that vouch for it

    def __post_init__(self) -> None:
        if not math.isfinite(self.gossip_score):
            raise ObservationError(f"gossip_score must be a finite number, not {self.gossip_score}")
        for name in ("first_deliveries", "invalid_messages", "false_positives", "vouches"):
            if getattr(self, name) < 0:
                raise ObservationError(f"{name} must not be negative, not {getattr(self, name)}")
        if not 0 <= self.trust_level <= TLP_RED:
            raise ObservationError(f"trust_level must be a TLP level 0..{TLP_RED}")

    def uptime_s(self, now_ms: int) -> float:
        """How long we have heard the peer's current session, at ``now_ms`` (0 if never, and
        0 rather than negative if the clock went back)."""
        if self.heard_since_ms is None:
            return 0.0
        return max(0, now_ms - self.heard_since_ms) / 1000.0


def _saturating(amount: float, half: float) -> float:
    """``amount / (amount + half)``: 0 at 0, 1/2 at ``half``, below 1 for any finite amount.

    Written as ``1 - half / (amount + half)`` so that it stays monotone in floating point too:
    each step rounds monotonically, whereas ``amount / (amount + half)`` moves both operands.
    """
    if amount <= 0.0:
        return 0.0
    return 1.0 - half / (amount + half)


def _trust_fraction(level: int) -> float:
    """CLEAR (or unknown) 0, GREEN 1/4, AMBER 1/2, AMBER+STRICT 3/4, RED 1."""
    return max(0, level - TLP_CLEAR) / (TLP_RED - TLP_CLEAR)


def positive_evidence(observation: Observation, now_ms: int) -> float:
    """The weighted sum of the positive terms, in ``[0, 1]``."""
    total = (
        WEIGHT_UPTIME * _saturating(observation.uptime_s(now_ms), HALF_UPTIME_S)
        + WEIGHT_FIRST_DELIVERIES * _saturating(observation.first_deliveries, HALF_FIRST_DELIVERIES)
        + WEIGHT_GOSSIP_SCORE * _saturating(observation.gossip_score, HALF_GOSSIP_SCORE)
        + WEIGHT_TRUST * _trust_fraction(observation.trust_level)
        + WEIGHT_VOUCHES * _saturating(observation.vouches, HALF_VOUCHES)
    )
    return min(1.0, total)


def penalty(observation: Observation) -> float:
    """The factor negative evidence leaves, in ``(0, 1]``: 1 for a clean record."""
    load = (
        observation.invalid_messages / INVALID_MESSAGES_PER_HALVING
        + observation.false_positives / FALSE_POSITIVES_PER_HALVING
        + max(0.0, -observation.gossip_score) / NEGATIVE_GOSSIP_SCORE_PER_HALVING
    )
    return 1.0 / (1.0 + load)


def reputation(observation: Observation, now_ms: int) -> float:
    """The reputation ``observation`` earns at ``now_ms``, in ``[0, 1]`` (module rules)."""
    base = STRANGER + (1.0 - STRANGER) * positive_evidence(observation, now_ms)
    return min(1.0, max(0.0, base * penalty(observation)))


def to_permille(value: float) -> int:
    """``value`` in ``[0, 1]`` as the wire's 0..1000 (clamped, rounded half to even)."""
    return round(min(1.0, max(0.0, value)) * 1000)
