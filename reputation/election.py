"""Supernode election: a pure, deterministic function of (announcements, local trust, now).

Every node runs ``elect`` on the same inputs, and the crux is that nodes whose own
observations differ slightly still compute the same set. So the election reads only what every
node shares: the announcements all nodes hear on the control topic (this node's own included,
which is how its own observations take part: as one voter among the others), the local trust
configuration (identical across nodes in a community that agrees on it), and ``now`` only to
tell who is still alive. A claim a peer makes about itself is never scored.

Theory of operation:

1. Liveness. A peer is *live* while it was last heard at most ``stale_after_intervals``
   announce intervals ago (default 2), where "last heard" is the later of our own receipt of
   its announcement and what the others report: each view carries ``heard_ago_ms``, so a
   witness's announcement received at r says "heard at r - heard_ago_ms"; the lower median of
   those reports (a witness with no view of the peer reports "never") counts. So a node that
   lost a peer's announcement or two still finds it live, as the others do, while a peer that
   died is stale everywhere 2 intervals after its last announcement. (Witnesses: the
   announcers we heard ourselves within that time, chosen as voters are below.)
   The *voters* are the live announcers trusted at GREEN or more, when there are at least
   ``min_trusted_voters`` (3) of them; otherwise every live announcer (an open swarm, where
   an honest majority is assumed). Nobody votes on itself.
   Our own trust level, which our trust store usually does not hold, is taken to be the
   highest level we give anyone: in a community that trusts all its members, each member
   then counts itself as the others count it.
2. For each candidate (every announcer heard, stale ones included so it shows why they lost):
   - reputation: the lower median of the voters' ``PeerView.reputation_permille`` for it (a
     voter with no view of it counts 0);
   - record: the lower median of the voters' ``PeerView.heard_for_s`` (how long each heard
     its current session without a gap), missing views counting 0. An inflated self-reported
     uptime counts for nothing, and a minority of liars cannot move a median;
   - verifiers: how many voters list it in ``reachable_verified`` (they dialled it back);
   - votes: how many voters list it in ``supernodes``. More than half of the voters make it an
     *incumbent*: the previous set is learnt from the swarm, not from this node's memory, so
     a node that restarted, or briefly disagreed, converges on the same incumbents.
3. Eligible when all hold (each failure is one reason, in words):
   live; verified reachable (verifiers >= ``min_verifiers`` (2, or all
   other voters if fewer) and >= ``reachability_quorum_percent`` (50) % of the other voters);
   record >= ``min_record_s`` (60 s) when trusted at GREEN or more, else
   ``min_record_untrusted_s`` (300 s); reputation >= ``min_reputation_permille`` (50).
4. Score (permille, integers so every node computes the same bits): 60 % reputation, rounded
   down to ``reputation_step_permille`` (100), plus 40 % stability, the share of
   ``stability_steps_s`` (1 min, 5 min, 15 min, 1 h, 4 h, 1 day) the record has passed. Rank:
   score, then SHA-256 of the peer ID bytes (a tie-break nobody can choose cheaply).
   The score is coarse on purpose: it is a step function whose steps are far apart in time,
   so two nodes that evaluate a few seconds apart (and so read medians of slightly different
   announcements) rank the same way, and most healthy candidates tie and are ordered by the
   hash. A finer score (say, the record in whole intervals) reorders close challengers every
   interval, and nodes that fill a free seat a few seconds apart then pick different ones.
5. Seats: ``seats(number of live announcers, config.seats)``. Eligible incumbents take seats
   first (best first); free seats go to the best challengers; then the best remaining
   challenger replaces the weakest seated incumbent only if its score is higher by at least
   ``margin_permille`` (100), and so on down. No flapping: an equal newcomer never unseats
   a sitting supernode.

What the election does not do: adopt its own result. ``reputation/seats.py``'s
``SeatTracker`` adopts a loss after a jittered delay; the service announces what it adopted.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from threatmesh.reputation.announcements import Announcement, peer_id_bytes
from threatmesh.reputation.errors import ElectionConfigError
from threatmesh.reputation.observations import TLP_CLEAR, TLP_GREEN
from threatmesh.reputation.seats import DEFAULT_MAX_SEATS, seats

WEIGHT_REPUTATION_TENTHS = 6
WEIGHT_STABILITY_TENTHS = 4


@dataclass(frozen=True)
class ElectionConfig:
    """The election's parameters; every node of a swarm must use the same ones."""

    announce_interval_ms: int = 10_000
    seats: int | None = 3  # None: about sqrt(live announcers), at most max_seats
    max_seats: int = DEFAULT_MAX_SEATS
    stale_after_intervals: int = 2
    min_record_s: int = 60  # for a candidate trusted at GREEN or more
    min_record_untrusted_s: int = 300
    # The record steps that stability counts: 1 min, 5 min, 15 min, 1 h, 4 h, 1 day.
    stability_steps_s: tuple[int, ...] = (60, 300, 900, 3600, 14_400, 86_400)
    min_reputation_permille: int = 50
    reputation_step_permille: int = 100
    margin_permille: int = 100
    reachability_quorum_percent: int = 50
    min_verifiers: int = 2
    min_trusted_voters: int = 3

    def __post_init__(self) -> None:
        problems = []
        if self.announce_interval_ms < 1:
            problems.append("announce_interval_ms must be at least 1")
        if self.seats is not None and self.seats < 1:
            problems.append("seats must be at least 1 (or None for automatic)")
        if self.max_seats < 1 or self.stale_after_intervals < 1:
            problems.append("max_seats and stale_after_intervals must be at least 1")
        if not 0 <= self.min_record_s <= self.min_record_untrusted_s:
            problems.append("need 0 <= min_record_s <= min_record_untrusted_s")
        if not self.stability_steps_s or list(self.stability_steps_s) != sorted(
            set(self.stability_steps_s)
        ):
            problems.append("stability_steps_s must be a non-empty rising sequence")
        if not 1 <= self.reputation_step_permille <= 1000:
            problems.append("reputation_step_permille must be 1..1000")
        if not 0 <= self.reachability_quorum_percent <= 100:
            problems.append("reachability_quorum_percent must be 0..100")
        if self.min_verifiers < 1 or self.min_trusted_voters < 1 or self.margin_permille < 0:
            problems.append("min_verifiers, min_trusted_voters >= 1 and margin_permille >= 0")
        if problems:
            raise ElectionConfigError("election config: " + "; ".join(problems))

    @property
    def stale_after_ms(self) -> int:
        return self.stale_after_intervals * self.announce_interval_ms


@dataclass(frozen=True)
class Candidate:
    """One announcer as the election saw it. ``reasons`` say, in words, why it is (not) in."""

    peer_id: str
    score_permille: int
    eligible: bool
    reasons: tuple[str, ...]
    incumbent: bool = False
    seated: bool = False
    trusted: bool = False
    reputation_permille: int = 0  # the voters' median view
    record_s: int = 0  # the voters' median attested uptime
    verifiers: int = 0
    votes: int = 0
    other_voters: int = 0

    @property
    def score(self) -> float:
        return self.score_permille / 1000

    def to_json(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "score": self.score,
            "eligible": self.eligible,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Election:
    """The result: the supernodes in rank order, and every candidate with its reasons."""

    supernodes: tuple[str, ...]
    candidates: tuple[Candidate, ...]  # seated first, then eligible, then the rest; by rank
    seats: int
    voters: tuple[str, ...]
    # When the result can change with no new announcement (the next one to go stale); the
    # service runs elect again then. None when nothing is live.
    recheck_at_ms: int | None

    @property
    def supernode_set(self) -> frozenset[str]:
        return frozenset(self.supernodes)

    def to_json(self) -> dict[str, Any]:
        """``{"supernodes": [peer ids], "candidates": [{peer_id, score, eligible, reasons}]}``."""
        return {
            "supernodes": list(self.supernodes),
            "candidates": [candidate.to_json() for candidate in self.candidates],
        }


def elect(
    announcements: Iterable[Announcement],
    trust: Mapping[str, int],
    now_ms: int,
    *,
    our_peer_id: str,
    config: ElectionConfig | None = None,
) -> Election:
    """The supernode set at ``now_ms`` (module rules).

    ``announcements``: the latest announcement of each peer heard, this node's own included
    (``AnnouncementBook.latest()``); if a sender appears twice the later one counts.
    ``trust``: the effective TLP level (pb.Tlp int) this node gives each peer; absent is CLEAR.
    """
    config = config or ElectionConfig()
    stale_ms = config.stale_after_ms
    latest = _latest_per_sender(announcements)
    levels = _Levels(trust, our_peer_id)
    heard = {p: a for p, a in latest.items() if a.age_ms(now_ms) <= stale_ms}
    witnesses = _voters(heard, levels, config)
    last_heard_ms = {p: _last_heard_ms(p, a, heard, witnesses) for p, a in latest.items()}
    live = {p: a for p, a in latest.items() if now_ms - last_heard_ms[p] <= stale_ms}
    voters = _voters(live, levels, config)
    seat_count = seats(len(live), config.seats, cap=config.max_seats)
    assessed = [
        _assess(peer, latest[peer], last_heard_ms[peer], live, voters, levels, now_ms, config)
        for peer in sorted(latest)
    ]
    supernodes, reasons = _seat(assessed, seat_count, config)
    candidates = [
        dataclasses.replace(
            candidate,
            reasons=candidate.reasons + tuple(reasons.get(candidate.peer_id, ())),
            seated=candidate.peer_id in supernodes,
        )
        for candidate in assessed
    ]
    candidates.sort(key=lambda c: (not c.seated, not c.eligible, *_rank_key(c)))
    # Liveness changes only when an announcement we heard, or a peer, goes stale.
    recheck_at_ms = min(
        [a.received_ms + stale_ms + 1 for a in heard.values()]
        + [last_heard_ms[peer] + stale_ms + 1 for peer in live],
        default=None,
    )
    return Election(
        supernodes=tuple(supernodes),
        candidates=tuple(candidates),
        seats=seat_count,
        voters=voters,
        recheck_at_ms=recheck_at_ms,
    )


class _Levels:
    """The trust level of each peer, with our own filled in (module rule 1)."""

    def __init__(self, trust: Mapping[str, int], our_peer_id: str) -> None:
        self._trust = trust
        self._our_peer_id = our_peer_id
        self._ours = trust.get(our_peer_id, max(trust.values(), default=TLP_CLEAR))

    def level(self, peer: str) -> int:
        if peer == self._our_peer_id:
            return self._ours
        return self._trust.get(peer, TLP_CLEAR)

    def trusted(self, peer: str) -> bool:
        return self.level(peer) >= TLP_GREEN


def _voters(
    pool: Mapping[str, Announcement], levels: _Levels, config: ElectionConfig
) -> tuple[str, ...]:
    """Module rule 1: the trusted members of ``pool`` if there are enough, else all of it."""
    trusted = [peer for peer in sorted(pool) if levels.trusted(peer)]
    return tuple(trusted) if len(trusted) >= config.min_trusted_voters else tuple(sorted(pool))


def _last_heard_ms(
    peer: str,
    announcement: Announcement,
    heard: Mapping[str, Announcement],
    witnesses: Sequence[str],
) -> int:
    """Module rule 1: when ``peer`` was last heard, on our clock: our own receipt, or what the
    witnesses' views report (``received_ms - heard_ago_ms``) if their median is more recent.
    A witness with no view of ``peer`` reports "never"."""
    reports = []
    for witness in witnesses:
        if witness == peer:
            continue
        view = heard[witness].views_by_peer.get(peer)
        if view is not None:
            reports.append(heard[witness].received_ms - view.heard_ago_ms)
    n_witnesses = sum(1 for witness in witnesses if witness != peer)
    # The lower median of the ages is the ((n - 1) // 2)-th most recent report.
    rank = (n_witnesses - 1) // 2
    reports.sort(reverse=True)
    if n_witnesses == 0 or rank >= len(reports):
        return announcement.received_ms
    return max(announcement.received_ms, reports[rank])


def _latest_per_sender(announcements: Iterable[Announcement]) -> dict[str, Announcement]:
    latest: dict[str, Announcement] = {}
    for announcement in announcements:
        known = latest.get(announcement.sender)
        if known is None or (announcement.received_ms, announcement.seq) > (
            known.received_ms,
            known.seq,
        ):
            latest[announcement.sender] = announcement
    return latest


def _lower_median(values: Sequence[int]) -> int:
    if not values:
        return 0
    return sorted(values)[(len(values) - 1) // 2]


def _assess(
    peer: str,
    announcement: Announcement,
    last_heard_ms: int,
    live: Mapping[str, Announcement],
    voters: Sequence[str],
    levels: _Levels,
    now_ms: int,
    config: ElectionConfig,
) -> Candidate:
    others = [live[voter] for voter in voters if voter != peer]
    views = [other.views_by_peer.get(peer) for other in others]
    reputation_permille = _lower_median([v.reputation_permille if v else 0 for v in views])
    record_s = _lower_median([v.heard_for_s if v else 0 for v in views])
    verifiers = sum(peer in other.verified_set for other in others)
    votes = sum(peer in other.supernode_set for other in others)
    incumbent = 2 * votes > len(others)
    trusted = levels.trusted(peer)

    reasons: list[str] = []
    age_ms = max(0, now_ms - last_heard_ms)
    if age_ms > config.stale_after_ms:
        reasons.append(
            f"last heard {age_ms // 1000} s ago (stale after {config.stale_after_ms // 1000} s)"
        )
    needed = max(
        1,
        min(config.min_verifiers, len(others)),
        math.ceil(len(others) * config.reachability_quorum_percent / 100),
    )
    if verifiers < needed:
        reasons.append(
            f"not verified reachable: dialled back by {verifiers} of {len(others)} voters, "
            f"{needed} needed"
        )
    needed_record_s = config.min_record_s if trusted else config.min_record_untrusted_s
    if record_s < needed_record_s:
        text = f"up {record_s} s < {needed_record_s} s needed"
        text += f" (trusted: {config.min_record_s} s)" if not trusted else ""
        if announcement.uptime_s > record_s + config.announce_interval_ms // 1000:
            text += f"; claims {announcement.uptime_s} s"
        reasons.append(text)
    if reputation_permille < config.min_reputation_permille:
        reasons.append(
            f"reputation {reputation_permille / 1000:.3f} < "
            f"{config.min_reputation_permille / 1000:.3f} needed"
        )

    step = config.reputation_step_permille
    steps_passed = sum(record_s >= step_s for step_s in config.stability_steps_s)
    stability_permille = steps_passed * 1000 // len(config.stability_steps_s)
    score_permille = (
        WEIGHT_REPUTATION_TENTHS * (reputation_permille // step * step)
        + WEIGHT_STABILITY_TENTHS * stability_permille
    ) // 10
    return Candidate(
        peer_id=peer,
        score_permille=score_permille,
        eligible=not reasons,
        reasons=tuple(reasons),
        incumbent=incumbent,
        trusted=trusted,
        reputation_permille=reputation_permille,
        record_s=record_s,
        verifiers=verifiers,
        votes=votes,
        other_voters=len(others),
    )


@functools.lru_cache(maxsize=4096)
def _tiebreak(peer: str) -> bytes:
    """SHA-256 of the peer ID bytes: the same order on every node, chosen by nobody."""
    return hashlib.sha256(peer_id_bytes(peer)).digest()


def _rank_key(candidate: Candidate) -> tuple[int, bytes]:
    return (-candidate.score_permille, _tiebreak(candidate.peer_id))


def _seat(
    candidates: Sequence[Candidate], seat_count: int, config: ElectionConfig
) -> tuple[list[str], dict[str, list[str]]]:
    """Module rule 5: the seated peers in rank order, and the words for each decision."""
    eligible = sorted((c for c in candidates if c.eligible), key=_rank_key)
    incumbents = [c for c in eligible if c.incumbent]
    challengers = [c for c in eligible if not c.incumbent]
    reasons: dict[str, list[str]] = {c.peer_id: [] for c in eligible}
    margin = config.margin_permille

    seated = incumbents[:seat_count]
    for c in seated:
        reasons[c.peer_id].append(f"incumbent (named by {c.votes} of {c.other_voters} voters)")
    for c in incumbents[seat_count:]:
        reasons[c.peer_id].append(f"incumbent, but {seat_count} incumbents rank higher")
    free = seat_count - len(seated)
    for c in challengers[:free]:
        reasons[c.peer_id].append("elected to a free seat")
    waiting = challengers[free:]
    defenders = sorted(seated, key=_rank_key, reverse=True)  # weakest first
    seated = seated + challengers[:free]
    for challenger in waiting:
        weakest = defenders[0] if defenders else None
        if weakest is None or challenger.score_permille < weakest.score_permille + margin:
            if weakest is None:
                reasons[challenger.peer_id].append(f"not elected: ranked below {seat_count} seats")
            else:
                reasons[challenger.peer_id].append(
                    f"not elected: does not beat the weakest incumbent ({weakest.score:.3f}) "
                    f"by the margin {margin / 1000:.3f}"
                )
            continue
        defenders.pop(0)
        seated.remove(weakest)
        seated.append(challenger)
        lead = (challenger.score_permille - weakest.score_permille) / 1000
        reasons[challenger.peer_id].append(
            f"elected: beat incumbent {weakest.peer_id} by {lead:.3f}"
        )
        reasons[weakest.peer_id].append(f"unseated: {challenger.peer_id} beat it by {lead:.3f}")
    return [c.peer_id for c in sorted(seated, key=_rank_key)], reasons
