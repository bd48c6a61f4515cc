"""Status announcements: the ``Announcement`` record, its conversion to and from the wire's
``Status``, and the checks every received ``Status`` must pass.

Every node publishes a ``Control{status}`` on ``/threatmesh/<swarm>/control/1`` every announce
interval (``pubsub/proto/threatmesh.proto``, message ``Status``). An ``Announcement`` is that
``Status`` plus what the wire does not carry in the payload: the sender (the peer that signed
the pubsub message, GossipSub StrictSign), the sender's ``Control.sent_ms`` and the time *we*
received it (our clock, the only one election compares with ``now``).

Rules for a received ``Status`` (``announcement_from_status`` raises ``AnnouncementError``
naming the sender and the field; the whole announcement is rejected, nothing is trimmed):

- Bounded lists: ``addrs`` <= 16 (each 1..256 characters, starting with ``/``), ``roles`` <= 8
  (each 1..32 of ``a-z 0-9 -``), ``version`` <= 64 printable ASCII, ``views`` and
  ``reachable_verified`` <= 1024, ``supernodes`` <= 64; no peer twice in one list.
- Peer IDs are multihash bytes of the shape libp2p uses (identity multihash of at most 42
  bytes, or SHA-256); they become base58 text, the form the rest of threatmesh uses.
- Sane times: ``started_ms`` after 2020-01-01 and not later than our receive time plus
  ``MAX_CLOCK_SKEW_MS``; ``uptime_s`` and every ``heard_for_s`` not negative and no more than
  the time since 2020; ``seq`` >= 1; a view's ``heard_for_s`` no longer than the announcer's
  own claimed uptime (it cannot have heard anyone before it started); a view's
  ``heard_ago_ms`` at most an hour.
- Self-consistency: ``views`` and ``reachable_verified`` never name the announcer (a peer
  does not vouch for itself); ``reputation_permille`` <= 1000; ``degree`` <= 100000.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import base58

from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.reputation.errors import AnnouncementError

MAX_ADDRS = 16
MAX_ADDR_CHARS = 256
MAX_ROLES = 8
MAX_ROLE_CHARS = 32
MAX_VERSION_CHARS = 64
MAX_VIEWS = 1024
MAX_VERIFIED = 1024
MAX_SUPERNODES = 64
MAX_DEGREE = 100_000
MAX_HEARD_AGO_MS = 3_600_000
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000  # a sender's clock may run this far ahead of ours
EARLIEST_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z: no threatmesh session began before

# Builds the error for one received status, with its sender in the message.
_Fail = Callable[[str], AnnouncementError]

_ROLE = re.compile(rf"[a-z0-9-]{{1,{MAX_ROLE_CHARS}}}")
_IDENTITY_MULTIHASH = 0x00
_SHA256_MULTIHASH = 0x12
_MAX_INLINED_KEY_BYTES = 42  # libp2p peer-ids spec: keys up to 42 bytes are inlined


@dataclass(frozen=True)
class PeerView:
    """One announcer's view of one other peer (wire: ``PeerView``)."""

    peer_id: str  # base58
    reputation_permille: int  # 0..1000
    heard_for_s: int  # how long the announcer has heard this peer's session without a gap
    heard_ago_ms: int = 0  # how long before the status the announcer last heard this peer


@dataclass(frozen=True)
class Announcement:
    """A ``Status`` as received: its fields, the sender, and when it was sent and received.

    Peer IDs are base58 text. Lists are tuples in wire order. Build one for our own status
    with ``received_ms = sent_ms = now_ms`` and publish ``to_status()``.
    """

    sender: str
    received_ms: int  # our clock
    sent_ms: int  # the sender's clock (Control.sent_ms); shown, never compared with ours
    started_ms: int
    seq: int
    uptime_s: int
    addrs: tuple[str, ...] = ()
    degree: int = 0
    roles: tuple[str, ...] = ()
    version: str = ""
    views: tuple[PeerView, ...] = ()
    reachable_verified: tuple[str, ...] = ()
    supernodes: tuple[str, ...] = ()

    @functools.cached_property
    def views_by_peer(self) -> Mapping[str, PeerView]:
        return {view.peer_id: view for view in self.views}

    @functools.cached_property
    def verified_set(self) -> frozenset[str]:
        return frozenset(self.reachable_verified)

    @functools.cached_property
    def supernode_set(self) -> frozenset[str]:
        return frozenset(self.supernodes)

    def age_ms(self, now_ms: int) -> int:
        """How long ago we received it (0 if our clock went back)."""
        return max(0, now_ms - self.received_ms)

    def to_status(self) -> pb.Status:
        """The wire form (the sender and times other than ``started_ms`` are not in it)."""
        return pb.Status(
            uptime_s=self.uptime_s,
            addrs=list(self.addrs),
            degree=self.degree,
            roles=list(self.roles),
            version=self.version,
            started_ms=self.started_ms,
            seq=self.seq,
            views=[
                pb.PeerView(
                    peer_id=peer_id_bytes(view.peer_id),
                    reputation_permille=view.reputation_permille,
                    heard_for_s=view.heard_for_s,
                    heard_ago_ms=view.heard_ago_ms,
                )
                for view in self.views
            ],
            reachable_verified=[peer_id_bytes(peer) for peer in self.reachable_verified],
            supernodes=[peer_id_bytes(peer) for peer in self.supernodes],
        )


# base58 is pure Python and slow; the same few hundred peer IDs come by in every status.
_PEER_ID_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=_PEER_ID_CACHE_SIZE)
def peer_id_bytes(peer_id: str) -> bytes:
    """The wire bytes of a base58 peer ID."""
    return bytes(base58.b58decode(peer_id))


@functools.lru_cache(maxsize=_PEER_ID_CACHE_SIZE)
def _base58(raw: bytes) -> str:
    return str(base58.b58encode(raw).decode("ascii"))


def peer_id_text(raw: bytes, where: str) -> str:
    """``raw`` (peer ID bytes from the wire) as base58, or AnnouncementError naming ``where``.

    Only the multihash shape is checked, not that an inlined key decodes: a view of a peer
    that does not exist is harmless (nobody hears it announce), and decoding up to 3,000 keys
    per announcement would be the expensive part of receiving one.
    """
    if len(raw) < 2 or raw[1] != len(raw) - 2:
        raise AnnouncementError(f"{where} is not a peer ID (not a multihash)")
    code, length = raw[0], raw[1]
    identity_ok = code == _IDENTITY_MULTIHASH and 0 < length <= _MAX_INLINED_KEY_BYTES
    if not identity_ok and not (code == _SHA256_MULTIHASH and length == 32):
        raise AnnouncementError(f"{where} is not a peer ID (not an identity or SHA-256 multihash)")
    return _base58(raw)


def announcement_from_status(
    status: pb.Status, *, sender: str, sent_ms: int, received_ms: int
) -> Announcement:
    """The ``Announcement`` of a received ``status``; AnnouncementError when it breaks a rule.

    ``sender`` is the base58 peer ID that signed the pubsub message; ``received_ms`` is now.
    """

    def fail(message: str) -> AnnouncementError:
        return AnnouncementError(f"status from {sender}: {message}")

    _check_times(status, received_ms, fail)
    _check_count("addrs", len(status.addrs), MAX_ADDRS, fail)
    for index, addr in enumerate(status.addrs):
        if not 0 < len(addr) <= MAX_ADDR_CHARS or not addr.startswith("/"):
            raise fail(f"addrs[{index}] is not a multiaddr of 1..{MAX_ADDR_CHARS} characters")
    _check_count("roles", len(status.roles), MAX_ROLES, fail)
    for index, role in enumerate(status.roles):
        if not _ROLE.fullmatch(role):
            raise fail(f"roles[{index}] {role[:40]!r} is not 1..{MAX_ROLE_CHARS} of a-z 0-9 -")
    if len(status.version) > MAX_VERSION_CHARS or not all(
        " " <= char <= "~" for char in status.version
    ):
        raise fail(f"version is not printable ASCII of at most {MAX_VERSION_CHARS} characters")
    if status.degree > MAX_DEGREE:
        raise fail(f"degree {status.degree} is over {MAX_DEGREE}")

    _check_count("views", len(status.views), MAX_VIEWS, fail)
    views: list[PeerView] = []
    for index, view in enumerate(status.views):
        where = f"views[{index}]"
        peer_id = _peer(view.peer_id, f"{where}.peer_id", fail)
        if view.reputation_permille > 1000:
            raise fail(f"{where}.reputation_permille is {view.reputation_permille}, over 1000")
        if view.heard_for_s > status.uptime_s:
            raise fail(
                f"{where}.heard_for_s is {view.heard_for_s} s, longer than the announcer's "
                f"own uptime {status.uptime_s} s"
            )
        if view.heard_ago_ms > MAX_HEARD_AGO_MS:
            raise fail(f"{where}.heard_ago_ms is {view.heard_ago_ms}, over {MAX_HEARD_AGO_MS}")
        views.append(
            PeerView(peer_id, view.reputation_permille, view.heard_for_s, view.heard_ago_ms)
        )
    _check_unique("views", (view.peer_id for view in views), fail)

    _check_count("reachable_verified", len(status.reachable_verified), MAX_VERIFIED, fail)
    verified = tuple(
        _peer(raw, f"reachable_verified[{index}]", fail)
        for index, raw in enumerate(status.reachable_verified)
    )
    _check_unique("reachable_verified", verified, fail)
    _check_count("supernodes", len(status.supernodes), MAX_SUPERNODES, fail)
    supernodes = tuple(
        _peer(raw, f"supernodes[{index}]", fail) for index, raw in enumerate(status.supernodes)
    )
    _check_unique("supernodes", supernodes, fail)
    if sender in verified or any(view.peer_id == sender for view in views):
        raise fail("views or reachable_verified name the announcer itself")

    return Announcement(
        sender=sender,
        received_ms=received_ms,
        sent_ms=sent_ms,
        started_ms=status.started_ms,
        seq=status.seq,
        uptime_s=status.uptime_s,
        addrs=tuple(status.addrs),
        degree=status.degree,
        roles=tuple(status.roles),
        version=status.version,
        views=tuple(views),
        reachable_verified=verified,
        supernodes=supernodes,
    )


def _check_times(status: pb.Status, received_ms: int, fail: _Fail) -> None:
    if status.seq < 1:
        raise fail("seq must be 1 or more")
    if not EARLIEST_MS <= status.started_ms <= received_ms + MAX_CLOCK_SKEW_MS:
        raise fail(
            f"started_ms {status.started_ms} is before 2020 or more than "
            f"{MAX_CLOCK_SKEW_MS // 1000} s ahead of our clock"
        )
    longest_s = max(0, received_ms + MAX_CLOCK_SKEW_MS - EARLIEST_MS) // 1000
    if not 0 <= status.uptime_s <= longest_s:
        raise fail(f"uptime_s {status.uptime_s} is negative or longer than since 2020")


def _check_count(field: str, count: int, limit: int, fail: _Fail) -> None:
    if count > limit:
        raise fail(f"{field} has {count} entries, over the limit of {limit}")


def _check_unique(field: str, peers: Iterable[str], fail: _Fail) -> None:
    seen: set[str] = set()
    for peer in peers:
        if peer in seen:
            raise fail(f"{field} names {peer} twice")
        seen.add(peer)


def _peer(raw: bytes, where: str, fail: _Fail) -> str:
    try:
        return peer_id_text(raw, where)
    except AnnouncementError as error:
        raise fail(str(error)) from None
