"""reputation/announcements.py (Status <-> Announcement and its checks), reputation/book.py
(the announcement book) and reputation/reachability.py (the dial-back ledger)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from datetime import timedelta

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.reputation import (
    Announcement,
    AnnouncementBook,
    AnnouncementError,
    DialBackLedger,
    PeerView,
    announcement_from_status,
    peer_id_bytes,
)
from threatmesh.reputation.announcements import MAX_VIEWS

NOW_MS = 1_760_000_000_000
HOUR_S = 3600


@functools.cache
def peer(name: str) -> str:
    return base58.b58encode(bytes([0x12, 0x20]) + hashlib.sha256(name.encode()).digest()).decode()


ALICE, BOB, CAROL = peer("alice"), peer("bob"), peer("carol")


def announcement(sender: str = ALICE, **changes: object) -> Announcement:
    fields: dict[str, object] = {
        "sender": sender,
        "received_ms": NOW_MS,
        "sent_ms": NOW_MS - 20,
        "started_ms": NOW_MS - HOUR_S * 1000,
        "seq": 360,
        "uptime_s": HOUR_S,
        "addrs": ("/ip4/192.0.2.1/tcp/4001", "/ip4/192.0.2.1/udp/4001/quic-v1"),
        "degree": 12,
        "roles": ("supernode", "dht-server"),
        "version": "threatmesh/0.1.0",
        "views": (PeerView(BOB, 420, 1800), PeerView(CAROL, 0, 0)),
        "reachable_verified": (BOB,),
        "supernodes": (ALICE, CAROL),
    }
    fields.update(changes)
    return Announcement(**fields)  # type: ignore[arg-type]


def received(status: pb.Status, sender: str = ALICE) -> Announcement:
    wire = pb.Status.FromString(status.SerializeToString())
    return announcement_from_status(wire, sender=sender, sent_ms=NOW_MS - 20, received_ms=NOW_MS)


# Announcement <-> Status ----------------------------------------------------------------------


def test_an_announcement_survives_the_wire() -> None:
    ours = announcement()
    assert received(ours.to_status()) == ours


def test_peer_ids_are_bytes_on_the_wire_and_base58_here() -> None:
    status = announcement().to_status()
    assert status.views[0].peer_id == peer_id_bytes(BOB)
    assert status.supernodes[0][:2] == b"\x12\x20"
    assert received(status).views_by_peer[BOB].heard_for_s == 1800


def _status(**changes: object) -> pb.Status:
    status = announcement().to_status()
    for name, value in changes.items():
        field = getattr(status, name)
        if isinstance(value, list):
            del field[:]
            field.extend(value)
        else:
            setattr(status, name, value)
    return status


def _view(who: str, permille: int = 100, heard_for_s: int = 10) -> pb.PeerView:
    return pb.PeerView(
        peer_id=peer_id_bytes(who), reputation_permille=permille, heard_for_s=heard_for_s
    )


BAD_STATUSES: list[tuple[str, Callable[[], pb.Status], str]] = [
    ("seq 0", lambda: _status(seq=0), "seq must be 1"),
    ("started before 2020", lambda: _status(started_ms=1_000), "started_ms 1000 is before"),
    (
        "started in the future",
        lambda: _status(started_ms=NOW_MS + 3_600_000),
        "ahead of our clock",
    ),
    ("uptime negative", lambda: _status(uptime_s=-1), "uptime_s -1"),
    ("too many addrs", lambda: _status(addrs=[f"/ip4/10.0.0.{i}" for i in range(17)]), "addrs"),
    ("not a multiaddr", lambda: _status(addrs=["192.0.2.1:4001"]), r"addrs\[0\]"),
    ("bad role", lambda: _status(roles=["Super Node"]), r"roles\[0\]"),
    ("too many roles", lambda: _status(roles=[f"r{i}" for i in range(9)]), "roles has 9"),
    ("long version", lambda: _status(version="v" * 65), "version"),
    ("control chars", lambda: _status(version="v1\n"), "version"),
    ("degree", lambda: _status(degree=100_001), "degree 100001"),
    ("permille", lambda: _status(views=[_view(BOB, permille=1001)]), r"views\[0\]"),
    (
        "heard ago",
        lambda: _status(views=[pb.PeerView(peer_id=peer_id_bytes(BOB), heard_ago_ms=3_600_001)]),
        r"views\[0\].heard_ago_ms is 3600001",
    ),
    (
        "view older than announcer",
        lambda: _status(views=[_view(BOB, heard_for_s=HOUR_S + 1)]),
        "longer than the announcer's own uptime",
    ),
    ("duplicate view", lambda: _status(views=[_view(BOB), _view(BOB)]), "views names"),
    ("self view", lambda: _status(views=[_view(ALICE)]), "name the announcer itself"),
    (
        "self verified",
        lambda: _status(reachable_verified=[peer_id_bytes(ALICE)]),
        "name the announcer itself",
    ),
    (
        "duplicate supernode",
        lambda: _status(supernodes=[peer_id_bytes(BOB)] * 2),
        "supernodes names",
    ),
    (
        "too many views",
        lambda: _status(views=[_view(peer(str(i))) for i in range(MAX_VIEWS + 1)]),
        "views has 1025 entries",
    ),
    (
        "too many supernodes",
        lambda: _status(supernodes=[peer_id_bytes(peer(str(i))) for i in range(65)]),
        "supernodes has 65",
    ),
    ("not a multihash", lambda: _status(supernodes=[b"\x12\x05abc"]), r"supernodes\[0\]"),
    (
        "unknown multihash",
        lambda: _status(reachable_verified=[b"\x13\x02ab"]),
        r"reachable_verified\[0\] is not a peer ID",
    ),
    (
        "identity too long",
        lambda: _status(views=[pb.PeerView(peer_id=bytes([0, 43]) + bytes(43))]),
        r"views\[0\].peer_id",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"),
    [(build, message) for _, build, message in BAD_STATUSES],
    ids=[name for name, _, _ in BAD_STATUSES],
)
def test_a_bad_status_is_rejected_naming_sender_and_field(
    build: Callable[[], pb.Status], message: str
) -> None:
    with pytest.raises(AnnouncementError, match=message) as raised:
        received(build())
    assert str(raised.value).startswith(f"status from {ALICE}: ")


def test_an_announcement_error_is_a_value_error() -> None:
    # The control-topic validator catches ValueError (node/sharing.py).
    with pytest.raises(ValueError, match="seq"):
        received(_status(seq=0))


@settings(max_examples=200, deadline=timedelta(milliseconds=500))
@given(
    uptime_s=st.integers(min_value=-(2**40), max_value=2**40),
    started_ms=st.integers(min_value=-(2**62), max_value=2**62),
    seq=st.integers(min_value=0, max_value=2**64 - 1),
    views=st.lists(
        st.tuples(st.binary(max_size=40), st.integers(0, 2000), st.integers(0, 2**32 - 1)),
        max_size=5,
    ),
    supernodes=st.lists(st.binary(max_size=40), max_size=5),
)
def test_any_status_is_either_taken_or_refused_cleanly(
    uptime_s: int,
    started_ms: int,
    seq: int,
    views: list[tuple[bytes, int, int]],
    supernodes: list[bytes],
) -> None:
    status = pb.Status(
        uptime_s=uptime_s,
        started_ms=started_ms,
        seq=seq,
        views=[pb.PeerView(peer_id=p, reputation_permille=r, heard_for_s=h) for p, r, h in views],
        supernodes=supernodes,
    )
    try:
        taken = received(status)
    except AnnouncementError:
        return
    assert taken.uptime_s >= 0
    assert all(view.reputation_permille <= 1000 for view in taken.views)


# The book -------------------------------------------------------------------------------------

STALE_MS = 20_000


def book(max_peers: int = 1024) -> AnnouncementBook:
    return AnnouncementBook(
        our_peer_id=ALICE, stale_after_ms=STALE_MS, forget_after_ms=100_000, max_peers=max_peers
    )


def heard(sender: str, at_ms: int, *, seq: int, started_ms: int = NOW_MS - 1) -> Announcement:
    return announcement(sender, received_ms=at_ms, seq=seq, started_ms=started_ms, views=())


def test_a_session_is_heard_from_its_first_announcement_on() -> None:
    announcements = book()
    for index in range(10):
        assert announcements.record(heard(BOB, NOW_MS + index * 10_000, seq=index + 1))
    assert announcements.heard_since_ms(BOB) == NOW_MS
    assert announcements.heard_for_s(BOB, NOW_MS + 95_000) == 95
    assert announcements.get(BOB) is not None
    assert announcements.latest()[0].seq == 10


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (heard(BOB, NOW_MS + 10_000, seq=1, started_ms=NOW_MS + 5_000), "a new started_ms"),
        (heard(BOB, NOW_MS + 100_001, seq=2), "a gap longer than forget_after"),
    ],
)
def test_a_restart_or_a_gap_starts_the_record_again(second: Announcement, why: str) -> None:
    announcements = book()
    announcements.record(heard(BOB, NOW_MS, seq=1))
    assert announcements.record(second), why
    assert announcements.heard_since_ms(BOB) == second.received_ms


def test_a_lost_announcement_or_two_do_not_restart_the_record() -> None:
    announcements = book()
    announcements.record(heard(BOB, NOW_MS, seq=1))
    assert announcements.record(heard(BOB, NOW_MS + 30_000, seq=4))
    assert announcements.heard_since_ms(BOB) == NOW_MS


def test_a_duplicate_or_an_older_seq_is_ignored() -> None:
    announcements = book()
    announcements.record(heard(BOB, NOW_MS, seq=5))
    assert not announcements.record(heard(BOB, NOW_MS + 1_000, seq=5))
    assert not announcements.record(heard(BOB, NOW_MS + 1_000, seq=4))
    latest = announcements.get(BOB)
    assert latest is not None
    assert latest.received_ms == NOW_MS


def test_a_full_book_refuses_newcomers_unless_someone_is_stale() -> None:
    announcements = book(max_peers=2)
    announcements.record(heard(BOB, NOW_MS, seq=1))
    announcements.record(heard(CAROL, NOW_MS + 5_000, seq=1))
    assert not announcements.record(heard(peer("dave"), NOW_MS + 10_000, seq=1))
    assert len(announcements) == 2
    # Bob goes stale: the next newcomer takes his place.
    assert announcements.record(heard(peer("erin"), NOW_MS + STALE_MS + 1, seq=1))
    assert announcements.get(BOB) is None
    assert len(announcements) == 2


def test_fresh_and_forget() -> None:
    announcements = book()
    announcements.record(heard(BOB, NOW_MS, seq=1))
    announcements.record(heard(CAROL, NOW_MS + 30_000, seq=1))
    assert announcements.fresh(NOW_MS + 30_000) == sorted([CAROL])
    assert announcements.heard_for_s(BOB, NOW_MS + 30_000) == 0  # stale: no longer heard
    assert announcements.forget(NOW_MS + 100_001) == [BOB]
    assert [a.sender for a in announcements.latest()] == [CAROL]


def test_views_are_of_fresh_others_clamped_and_bounded() -> None:
    announcements = book()
    announcements.record(heard(ALICE, NOW_MS, seq=1))  # ourselves: never viewed
    announcements.record(heard(BOB, NOW_MS - 15_000, seq=1))
    announcements.record(heard(BOB, NOW_MS, seq=2))
    announcements.record(heard(CAROL, NOW_MS, seq=1))
    views = announcements.views({BOB: 0.42, CAROL: 2.0}, NOW_MS + 5_000, our_uptime_s=12)
    assert views == tuple(
        sorted(
            [PeerView(BOB, 420, 12, 5_000), PeerView(CAROL, 1000, 5, 5_000)],
            key=lambda v: v.peer_id,
        )
    )


def test_views_keep_the_peers_heard_longest_when_over_the_bound() -> None:
    announcements = book(max_peers=MAX_VIEWS + 10)
    for index in range(MAX_VIEWS + 5):
        announcements.record(heard(peer(f"p{index}"), NOW_MS + index, seq=1))
    views = announcements.views({}, NOW_MS + 10_000, our_uptime_s=HOUR_S)
    assert len(views) == MAX_VIEWS
    assert peer(f"p{MAX_VIEWS + 4}") not in {view.peer_id for view in views}


def test_book_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="stale_after_ms"):
        AnnouncementBook(our_peer_id=ALICE, stale_after_ms=10, forget_after_ms=5)


# Dial-back ledger -----------------------------------------------------------------------------


def ledger(**changes: int) -> DialBackLedger:
    parameters = {
        "recheck_after_ms": 100_000,
        "valid_for_ms": 200_000,
        "retry_after_ms": 10_000,
        "retry_cap_ms": 40_000,
        "max_per_call": 8,
    }
    parameters.update(changes)
    return DialBackLedger(**parameters)


SESSIONS = {BOB: NOW_MS - 1000, CAROL: NOW_MS - 2000}


def test_new_peers_are_due_once_and_verified_after_success() -> None:
    dials = ledger()
    assert dials.take_due(SESSIONS, NOW_MS) == sorted(SESSIONS)
    assert dials.take_due(SESSIONS, NOW_MS + 1) == []  # in flight: not twice
    dials.record(BOB, reachable=True, now_ms=NOW_MS + 500)
    dials.record(CAROL, reachable=False, now_ms=NOW_MS + 500)
    assert dials.verified(NOW_MS + 1000) == (BOB,)
    assert dials.verified(NOW_MS + 500 + 200_001) == ()  # too old to vouch for


def test_a_success_is_rechecked_and_a_failure_clears_it() -> None:
    dials = ledger()
    dials.take_due({BOB: 1}, NOW_MS)
    dials.record(BOB, reachable=True, now_ms=NOW_MS)
    assert dials.take_due({BOB: 1}, NOW_MS + 99_999) == []
    assert dials.take_due({BOB: 1}, NOW_MS + 100_000) == [BOB]
    assert dials.verified(NOW_MS + 100_000) == (BOB,)  # still, while the recheck runs
    dials.record(BOB, reachable=False, now_ms=NOW_MS + 100_500)
    assert dials.verified(NOW_MS + 100_500) == ()


def test_failures_back_off_doubling_up_to_the_cap() -> None:
    dials = ledger()
    at = NOW_MS
    assert dials.take_due({BOB: 1}, at) == [BOB]
    dials.record(BOB, reachable=False, now_ms=at)
    for wait_ms in (10_000, 20_000, 40_000, 40_000):
        assert dials.take_due({BOB: 1}, at + wait_ms - 1) == []
        at += wait_ms
        assert dials.take_due({BOB: 1}, at) == [BOB]
        dials.record(BOB, reachable=False, now_ms=at)


def test_an_attempt_that_never_reports_counts_as_failed() -> None:
    dials = ledger()
    dials.take_due({BOB: 1}, NOW_MS)
    assert dials.take_due({BOB: 1}, NOW_MS + 9_999) == []
    assert dials.take_due({BOB: 1}, NOW_MS + 10_000) == [BOB]


def test_a_new_session_is_dialled_again_and_old_peers_are_dropped() -> None:
    dials = ledger()
    dials.take_due({BOB: 1}, NOW_MS)
    dials.record(BOB, reachable=True, now_ms=NOW_MS)
    assert dials.take_due({BOB: 2}, NOW_MS + 1) == [BOB]
    assert dials.verified(NOW_MS + 1) == ()
    dials.take_due({}, NOW_MS + 2)
    dials.record(BOB, reachable=True, now_ms=NOW_MS + 3)  # dropped meanwhile: ignored
    assert dials.verified(NOW_MS + 3) == ()


def test_at_most_max_per_call_longest_waiting_first() -> None:
    dials = ledger(max_per_call=2)
    sessions = {peer(f"p{i}"): 1 for i in range(5)}
    first = dials.take_due(sessions, NOW_MS)
    assert len(first) == 2
    second = dials.take_due(sessions, NOW_MS + 1)
    assert len(second) == 2
    assert not set(first) & set(second)


def test_ledger_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="recheck_after"):
        DialBackLedger(recheck_after_ms=10, valid_for_ms=5)
