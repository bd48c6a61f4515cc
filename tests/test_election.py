"""reputation/election.py and reputation/seats.py, on hand-built announcements.

A ``community`` is a list of members that announce about each other: every member views every
other one (a reputation and how long it heard it), verified every other one by dial-back,
and names the same supernodes. Tests then change one thing and read the result and the
reasons. The last tests are hypothesis properties: every member computes the same set from the
same announcements, whatever the order and whoever computes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from collections.abc import Iterable, Mapping
from datetime import timedelta

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.reputation import (
    Announcement,
    Candidate,
    Election,
    ElectionConfig,
    ElectionConfigError,
    PeerView,
    SeatTracker,
    elect,
    reelection_delay_ms,
    seats,
)

NOW_MS = 1_760_000_000_000
CONFIG = ElectionConfig()  # 10 s interval, 3 seats, stale after 20 s


@functools.cache
def peer(name: str) -> str:
    return base58.b58encode(bytes([0x12, 0x20]) + hashlib.sha256(name.encode()).digest()).decode()


def by_hash(names: Iterable[str]) -> list[str]:
    """Names in the election's tie-break order."""
    return sorted(names, key=lambda n: hashlib.sha256(bytes(base58.b58decode(peer(n)))).digest())


MEMBERS = [f"m{index}" for index in range(6)]


def community(
    members: list[str] = MEMBERS,
    *,
    heard_for_s: int = 1000,
    permille: int = 300,
    supernodes: Iterable[str] = (),
    verified: bool = True,
) -> dict[str, Announcement]:
    named = tuple(peer(name) for name in supernodes)
    return {
        name: Announcement(
            sender=peer(name),
            received_ms=NOW_MS - 1000,
            sent_ms=NOW_MS - 1000,
            started_ms=NOW_MS - 3_600_000,
            seq=360,
            uptime_s=3600,
            addrs=(f"/dns4/{name}/tcp/4001",),
            views=tuple(
                PeerView(peer(other), permille, heard_for_s) for other in members if other != name
            ),
            reachable_verified=tuple(peer(o) for o in members if o != name) if verified else (),
            supernodes=named,
        )
        for name in members
    }


def trusting(members: Iterable[str], *, but: str | None = None) -> dict[str, int]:
    return {peer(name): pb.TLP_GREEN for name in members if name != but}


def change_views_of(
    announcements: dict[str, Announcement], subject: str, **view: int
) -> dict[str, Announcement]:
    """Every announcer's view of ``subject`` replaced by ``view``'s fields."""
    changed = {}
    for name, announcement in announcements.items():
        views = tuple(
            dataclasses.replace(v, **view) if v.peer_id == peer(subject) else v
            for v in announcement.views
        )
        changed[name] = dataclasses.replace(announcement, views=views)
    return changed


def run(
    announcements: Mapping[str, Announcement],
    trust: Mapping[str, int] | None = None,
    *,
    us: str = "m0",
    config: ElectionConfig = CONFIG,
    now_ms: int = NOW_MS,
) -> Election:
    trust = trusting(MEMBERS) if trust is None else trust
    return elect(announcements.values(), trust, now_ms, our_peer_id=peer(us), config=config)


def candidate(election: Election, name: str) -> Candidate:
    return next(c for c in election.candidates if c.peer_id == peer(name))


# Who is elected -------------------------------------------------------------------------------


def test_equals_are_ranked_by_the_hash_of_their_peer_id() -> None:
    election = run(community())
    assert election.supernodes == tuple(peer(n) for n in by_hash(MEMBERS)[:3])
    assert all(c.eligible for c in election.candidates)
    assert election.seats == 3
    assert election.voters == tuple(sorted(peer(n) for n in MEMBERS))


def test_every_member_computes_the_same_set_in_any_order() -> None:
    announcements = list(community().values())
    results = set()
    for index, name in enumerate(MEMBERS):
        random.Random(index).shuffle(announcements)
        # Each member's trust store names the others but not itself.
        trust = trusting(MEMBERS, but=name)
        results.add(elect(announcements, trust, NOW_MS, our_peer_id=peer(name)).supernodes)
    assert len(results) == 1


def test_incumbents_named_by_most_voters_keep_their_seats_against_equals() -> None:
    worst = by_hash(MEMBERS)[-3:]
    election = run(community(supernodes=worst))
    assert election.supernode_set == {peer(n) for n in worst}
    assert candidate(election, worst[0]).reasons == ("incumbent (named by 5 of 5 voters)",)
    best = by_hash(MEMBERS)[0]
    assert candidate(election, best).reasons == (
        "not elected: does not beat the weakest incumbent (0.380) by the margin 0.100",
    )


def test_half_the_voters_do_not_make_an_incumbent() -> None:
    worst = by_hash(MEMBERS)[-1]
    announcements = community()
    # m0..m2 name `worst`; for `worst` itself that is 3 of its 5 other voters unless it is
    # among them: pick namers so exactly half of 6 members name it, itself excluded.
    namers = [n for n in MEMBERS if n != worst][:3]
    for name in namers:
        announcements[name] = dataclasses.replace(announcements[name], supernodes=(peer(worst),))
    assert candidate(run(announcements), worst).incumbent  # 3 of 5: a majority
    announcements[namers[0]] = dataclasses.replace(announcements[namers[0]], supernodes=())
    assert not candidate(run(announcements), worst).incumbent  # 2 of 5


@pytest.mark.parametrize(
    ("challenger_record_s", "unseated"),
    [(400, False), (1000, True)],
    ids=["one step ahead keeps", "two steps ahead unseats"],
)
def test_a_challenger_needs_a_clear_margin(challenger_record_s: int, unseated: bool) -> None:
    # Incumbents have passed one stability step (60 s); the challengers more.
    order = by_hash(MEMBERS)
    incumbents = order[-3:]
    announcements = community(heard_for_s=challenger_record_s, supernodes=incumbents)
    for name in incumbents:
        announcements = change_views_of(announcements, name, heard_for_s=70)
    election = run(announcements)
    weakest = max(incumbents, key=order.index)
    assert (peer(weakest) not in election.supernode_set) is unseated
    if unseated:
        assert election.supernode_set == {peer(n) for n in order[:3]}
        assert any(r.startswith("unseated: ") for r in candidate(election, weakest).reasons)
        assert any(
            r.startswith("elected: beat incumbent ") for r in candidate(election, order[0]).reasons
        )


def test_more_incumbents_than_seats_keep_the_best() -> None:
    election = run(community(supernodes=MEMBERS[:5]))
    named = by_hash(MEMBERS[:5])
    assert election.supernodes == tuple(peer(n) for n in named[:3])
    assert "incumbent, but 3 incumbents rank higher" in candidate(election, named[4]).reasons


def test_a_free_seat_goes_to_the_best_challenger() -> None:
    order = by_hash(MEMBERS)
    announcements = community(supernodes=order[-2:])
    election = run(announcements)
    assert election.supernode_set == {peer(order[-2]), peer(order[-1]), peer(order[0])}
    assert candidate(election, order[0]).reasons == ("elected to a free seat",)


# Why a candidate is not eligible ----------------------------------------------------------------


def _silent(announcements: dict[str, Announcement], name: str, ago_ms: int) -> None:
    """``name`` last announced ``ago_ms`` ago, and the others say so too."""
    announcements.update(change_views_of(announcements, name, heard_ago_ms=ago_ms - 1000))
    announcements[name] = dataclasses.replace(announcements[name], received_ms=NOW_MS - ago_ms)


def test_a_peer_nobody_heard_lately_is_out() -> None:
    announcements = community()
    _silent(announcements, "m1", 45_000)
    election = run(announcements)
    m1 = candidate(election, "m1")
    assert not m1.eligible
    assert "last heard 45 s ago (stale after 20 s)" in m1.reasons
    assert peer("m1") not in election.voters
    assert election.recheck_at_ms == NOW_MS - 1000 + 20_000 + 1


def test_a_peer_we_lost_but_the_others_hear_is_live() -> None:
    announcements = community()
    # Our own receipt is 45 s old; the others heard m1 1 s before they announced.
    announcements["m1"] = dataclasses.replace(announcements["m1"], received_ms=NOW_MS - 45_000)
    election = run(announcements)
    assert candidate(election, "m1").eligible
    assert peer("m1") in election.voters


def test_a_minority_of_witnesses_cannot_keep_a_dead_peer_alive() -> None:
    announcements = community()
    _silent(announcements, "m1", 45_000)
    for name in ("m2", "m3"):  # 2 of m1's 5 witnesses claim they heard it just now
        announcements.update(
            {name: change_views_of({name: announcements[name]}, "m1", heard_ago_ms=0)[name]}
        )
    assert not candidate(run(announcements), "m1").eligible
    announcements["m4"] = change_views_of({"m4": announcements["m4"]}, "m1", heard_ago_ms=0)["m4"]
    assert candidate(run(announcements), "m1").eligible  # 3 of 5: the median


def test_an_unverified_claim_of_reachability_is_not_believed() -> None:
    announcements = community()
    for name, announcement in announcements.items():
        verified = tuple(p for p in announcement.reachable_verified if p != peer("m2"))
        announcements[name] = dataclasses.replace(announcement, reachable_verified=verified)
    m2 = candidate(run(announcements), "m2")
    assert m2.reasons == ("not verified reachable: dialled back by 0 of 5 voters, 3 needed",)


def test_a_minority_of_verifiers_is_not_enough() -> None:
    announcements = community(verified=False)
    for name in ("m1", "m3"):  # 2 of m2's 5 other voters: under half
        announcement = announcements[name]
        announcements[name] = dataclasses.replace(announcement, reachable_verified=(peer("m2"),))
    assert not candidate(run(announcements), "m2").eligible
    announcement = announcements["m4"]
    announcements["m4"] = dataclasses.replace(announcement, reachable_verified=(peer("m2"),))
    assert candidate(run(announcements), "m2").eligible


def test_a_short_record_is_out_and_untrusted_needs_longer() -> None:
    announcements = change_views_of(community(), "m1", heard_for_s=20)
    assert candidate(run(announcements), "m1").reasons == ("up 20 s < 60 s needed; claims 3600 s",)
    announcements = change_views_of(community(), "m1", heard_for_s=120)
    m1 = candidate(run(announcements, trust={}), "m1")
    assert m1.reasons == ("up 120 s < 300 s needed (trusted: 60 s); claims 3600 s",)
    assert candidate(run(announcements, trust={}), "m2").eligible  # 1000 s: long enough


def test_a_claimed_uptime_counts_for_nothing() -> None:
    announcements = change_views_of(community(), "m1", heard_for_s=0)
    announcements["m1"] = dataclasses.replace(announcements["m1"], uptime_s=10**8)
    m1 = candidate(run(announcements), "m1")
    assert m1.record_s == 0
    assert m1.reasons == ("up 0 s < 60 s needed; claims 100000000 s",)


def test_a_bad_reputation_is_out() -> None:
    announcements = change_views_of(community(), "m1", reputation_permille=10)
    m1 = candidate(run(announcements), "m1")
    assert m1.reasons == ("reputation 0.010 < 0.050 needed",)


# Voters ---------------------------------------------------------------------------------------


def _with_sybils(announcements: dict[str, Announcement], count: int) -> dict[str, Announcement]:
    sybils = [f"sybil{index}" for index in range(count)]
    honest = list(announcements)
    result = dict(announcements)
    for name in sybils:
        result[name] = Announcement(
            sender=peer(name),
            received_ms=NOW_MS - 1000,
            sent_ms=NOW_MS - 1000,
            started_ms=NOW_MS - 10**9,
            seq=1,
            uptime_s=10**6,
            addrs=("/dns4/sybil/tcp/1",),
            degree=10_000,
            views=tuple(PeerView(peer(o), 1000, 10**6) for o in sybils if o != name)
            + tuple(PeerView(peer(o), 0, 0) for o in honest),
            reachable_verified=tuple(peer(o) for o in sybils if o != name),
            supernodes=tuple(peer(o) for o in sybils[:3]),
        )
    return result


def test_with_enough_trusted_voters_the_untrusted_have_no_say() -> None:
    honest = community()
    election = run(_with_sybils(honest, 20))
    assert election.voters == tuple(sorted(peer(n) for n in MEMBERS))
    assert election.supernodes == run(honest).supernodes
    sybil = candidate(election, "sybil0")
    assert not sybil.eligible
    assert sybil.reasons[0] == "not verified reachable: dialled back by 0 of 6 voters, 3 needed"


def test_in_an_open_swarm_a_sybil_minority_cannot_move_the_medians() -> None:
    # 11 honest, 9 sybils: for each honest candidate, 10 honest and 9 sybil voters. (An open
    # swarm rests on an honest majority of announcers; trust is the defence beyond that.)
    members = [f"m{index}" for index in range(11)]
    honest = community(members)
    election = run(_with_sybils(honest, 9), trust={})
    assert len(election.voters) == 20
    assert election.supernodes == run(honest, trust={}).supernodes
    for index in range(9):
        sybil = candidate(election, f"sybil{index}")
        assert not sybil.eligible
        assert sybil.record_s == 0
        assert not sybil.incumbent


def test_few_trusted_announcers_mean_everyone_votes() -> None:
    election = run(community(), trust=trusting(MEMBERS[:2]))
    assert len(election.voters) == 6


def test_we_count_ourselves_as_trusted_as_anyone_we_trust() -> None:
    election = run(community(), trust=trusting(MEMBERS, but="m0"), us="m0")
    assert candidate(election, "m0").trusted
    assert not candidate(run(community(), trust={}, us="m0"), "m0").trusted
    explicit = {peer("m0"): pb.TLP_CLEAR, **trusting(MEMBERS, but="m0")}
    assert not candidate(run(community(), trust=explicit, us="m0"), "m0").trusted


def test_the_later_of_two_announcements_from_one_sender_counts() -> None:
    announcements = community()
    old = dataclasses.replace(announcements["m1"], received_ms=NOW_MS - 50_000, seq=1)
    election = elect(
        [old, *announcements.values()], trusting(MEMBERS), NOW_MS, our_peer_id=peer("m0")
    )
    assert candidate(election, "m1").eligible


# Output -----------------------------------------------------------------------------------------


def test_visibility_report_shape() -> None:
    report = run(community()).to_json()
    assert set(report) == {"supernodes", "candidates"}
    assert len(report["supernodes"]) == 3
    assert set(report["candidates"][0]) == {"peer_id", "score", "eligible", "reasons"}
    assert report["candidates"][0]["peer_id"] == report["supernodes"][0]
    assert isinstance(report["candidates"][0]["score"], float)


def test_recheck_is_when_the_oldest_live_announcement_goes_stale() -> None:
    announcements = community()
    _silent(announcements, "m3", 15_000)
    assert run(announcements).recheck_at_ms == NOW_MS - 15_000 + 20_000 + 1
    assert run(announcements, now_ms=NOW_MS + 60_000).recheck_at_ms is None


def test_automatic_seats_grow_with_the_swarm() -> None:
    members = [f"m{index}" for index in range(9)]
    election = run(community(members), trust={}, config=ElectionConfig(seats=None))
    assert election.seats == 3
    assert len(election.supernodes) == 3


@pytest.mark.parametrize(
    ("n_peers", "configured", "expected"),
    [(5, 3, 3), (100, 5, 5), (0, None, 1), (3, None, 1), (4, None, 2), (20, None, 4)],
)
def test_seats(n_peers: int, configured: int | None, expected: int) -> None:
    assert seats(n_peers, configured) == expected


def test_automatic_seats_are_capped() -> None:
    assert seats(1000, None) == 8
    assert seats(1000, None, cap=20) == 20


@pytest.mark.parametrize(
    "changes",
    [
        {"seats": 0},
        {"announce_interval_ms": 0},
        {"min_record_s": 400},
        {"stability_steps_s": ()},
        {"stability_steps_s": (300, 60)},
        {"reachability_quorum_percent": 101},
        {"min_verifiers": 0},
        {"margin_permille": -1},
        {"reputation_step_permille": 0},
    ],
)
def test_a_bad_config_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ElectionConfigError, match="election config: "):
        ElectionConfig(**changes)  # type: ignore[arg-type]


# Adopting a result ----------------------------------------------------------------------------


def test_reelection_delay_is_within_an_interval_fixed_and_spread() -> None:
    delays = [reelection_delay_ms(peer(f"n{i}"), "lost:x", 10_000) for i in range(20)]
    assert all(2_000 <= delay < 10_000 for delay in delays)
    assert delays == [reelection_delay_ms(peer(f"n{i}"), "lost:x", 10_000) for i in range(20)]
    assert len(set(delays)) == 20
    assert reelection_delay_ms(peer("n0"), "lost:y", 10_000) != delays[0]


def test_tracker_adopts_gains_at_once_and_losses_after_its_delay() -> None:
    tracker = SeatTracker(our_peer_id=peer("n0"), interval_ms=10_000)
    a, b, c, d = (peer(x) for x in "abcd")
    assert tracker.offer([a, b, c], NOW_MS) == (a, b, c)
    assert tracker.due_ms is None
    # c is lost: the change waits for the delay, whatever is offered meanwhile.
    assert tracker.offer([a, b, d], NOW_MS + 100) == (a, b, c)
    due = tracker.due_ms
    assert due == NOW_MS + 100 + reelection_delay_ms(peer("n0"), c, 10_000)
    assert tracker.offer([a, b, d], due - 1) == (a, b, c)
    assert tracker.offer([a, b, d], due) == (a, b, d)
    assert tracker.due_ms is None


def test_tracker_forgets_a_loss_that_comes_back() -> None:
    tracker = SeatTracker(our_peer_id=peer("n0"), interval_ms=10_000)
    a, b, c, d = (peer(x) for x in "abcd")
    tracker.offer([a, b, c], NOW_MS)
    tracker.offer([a, b, d], NOW_MS + 100)
    assert tracker.offer([a, b, c], NOW_MS + 200) == (a, b, c)
    assert tracker.due_ms is None


# Agreement, as properties -----------------------------------------------------------------------


@st.composite
def communities(draw: st.DrawFn) -> tuple[list[str], dict[str, Announcement]]:
    """Members whose announcements disagree in every detail: each view, verification and
    named supernode is drawn independently."""
    size = draw(st.integers(min_value=2, max_value=9))
    members = [f"p{index}" for index in range(size)]
    announcements = {}
    for name in members:
        others = [o for o in members if o != name]
        announcements[name] = Announcement(
            sender=peer(name),
            received_ms=NOW_MS - draw(st.integers(0, 30_000)),
            sent_ms=NOW_MS,
            started_ms=NOW_MS - 10**7,
            seq=1,
            uptime_s=10**4,
            addrs=("/dns4/x/tcp/1",),
            views=tuple(
                PeerView(
                    peer(o),
                    draw(st.integers(0, 1000)),
                    draw(st.sampled_from([0, 30, 60, 100, 299, 300, 1000, 5000])),
                )
                for o in others
                if draw(st.integers(0, 4)) > 0  # some voters have no view: it counts 0
            ),
            reachable_verified=tuple(peer(o) for o in others if draw(st.booleans())),
            supernodes=tuple(peer(o) for o in members if draw(st.integers(0, 3)) == 0),
        )
    return members, announcements


AGREEMENT = settings(max_examples=100, deadline=timedelta(seconds=2))


@AGREEMENT
@given(communities(), st.booleans(), st.randoms(use_true_random=False))
def test_every_member_computes_the_same_election(
    drawn: tuple[list[str], dict[str, Announcement]], trusted: bool, shuffler: random.Random
) -> None:
    members, announcements = drawn
    results = set()
    for name in members:
        trust = trusting(members, but=name) if trusted else {}
        listed = list(announcements.values())
        shuffler.shuffle(listed)
        election = elect(listed, trust, NOW_MS, our_peer_id=peer(name))
        results.add(
            (election.supernodes, tuple(c.to_json().__repr__() for c in election.candidates))
        )
    assert len(results) == 1


@AGREEMENT
@given(communities())
def test_the_seated_are_eligible_and_no_more_than_the_seats(
    drawn: tuple[list[str], dict[str, Announcement]],
) -> None:
    _, announcements = drawn
    election = run(announcements, trust={})
    seated = [c for c in election.candidates if c.seated]
    assert [c.peer_id for c in seated] == list(election.supernodes)
    assert len(seated) <= election.seats
    assert all(c.eligible for c in seated)
    eligible_left = [c for c in election.candidates if c.eligible and not c.seated]
    if len(seated) < election.seats:
        assert not eligible_left
