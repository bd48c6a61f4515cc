"""Vouches: signed statements "peer A vouches for peer B at level L", and their revocations.

Owns the statements, the bytes they are signed over, their verification and the book of
vouches this node heard (``VouchBook``). The ones it issued itself, and their file, live in
``own_vouches``. DESIGN.md, "Trust and sensitivity".

Rules:
- A statement is signed by the voucher's libp2p key over canonical bytes (``vouch_signing_bytes``,
  ``revocation_signing_bytes``): a domain string, then the fields in a fixed binary layout,
  with peer IDs as their multihash bytes, as the wire's ``Vouch`` and ``Revocation`` messages
  (pubsub/proto) carry them. Another implementation can rebuild the bytes from the message.
  The domain keeps a vouch's signature from being valid as any other signed thing.
- The voucher must be the signer of the pubsub message that carried the statement, so nobody
  replays A's vouch as if A were announcing it now.
- Verification is pure (``now_ms`` is passed in) and checks the cheap things before the
  signature. A vouch lives at most 30 days and may be issued up to 5 minutes in our future
  (clock skew); its issuer re-announces it every announce interval, so a vouch stops counting
  soon after its issuer stops renewing it.
- A revocation removes the voucher's vouch for the subject issued at or before it and is
  remembered, so an older vouch replayed later is refused; a vouch issued after it is a new
  vouch and counts. A revocation matters only while a vouch it revokes can still be live:
  until ``issued_ms + MAX_VOUCH_LIFETIME_MS`` (``revocation_matters``).
- What a vouch is worth is not decided here: ``trust.effective_level`` counts only vouchers
  that this node trusts explicitly. The node should put into its ``VouchBook`` only vouches
  from such vouchers: others can never count, and storing them would let a flood of sybil
  vouches evict the ones that do. Issuers re-announce, so a voucher trusted later is heard
  within an announce interval.
- Bounded: ``VouchBook`` keeps 64 vouches per subject, 10,000 in all and 10,000 revocations,
  evicting the oldest (by issue time); a signature is at most 1,024 bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from libp2p.crypto.keys import PublicKey
from libp2p.peer.id import ID

from threatmesh.identity.keys import Identity, parse_peer_id
from threatmesh.identity.levels import TLP_GREEN, TLP_LEVEL_NAMES
from threatmesh.identity.trust import MAX_TIME_MS

VOUCH_DOMAIN = b"threatmesh/vouch/v1\n"
REVOCATION_DOMAIN = b"threatmesh/revocation/v1\n"

MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
MAX_VOUCH_LIFETIME_MS = 30 * 24 * 3600 * 1000
# An RSA-4096 signature is 512 bytes, secp256k1 (DER) at most 72, ed25519 64.
MAX_SIGNATURE_BYTES = 1024

MAX_VOUCHES_PER_SUBJECT = 64
MAX_VOUCHES = 10_000
MAX_REVOCATIONS = 10_000


class VouchProblem(enum.StrEnum):
    """Why a statement is refused; the node may weigh them differently (a bad signature is
    an attack, an expired vouch a slow clock)."""

    MALFORMED = "malformed"
    WRONG_SIGNER = "wrong signer"
    SELF_VOUCH = "vouch for oneself"
    BAD_LEVEL = "bad level"
    FROM_THE_FUTURE = "issued in the future"
    BAD_LIFETIME = "expires before issued"
    LIFETIME_TOO_LONG = "lifetime too long"
    EXPIRED = "expired"
    NO_PUBLIC_KEY = "no public key"
    KEY_MISMATCH = "key does not match voucher"
    BAD_SIGNATURE = "bad signature"


class VouchError(Exception):
    """A vouch or revocation is refused; ``reason`` says why, the message adds detail."""

    def __init__(self, reason: VouchProblem, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class VouchStatement:
    """``voucher`` vouches for ``subject`` at ``level`` from ``issued_ms`` until
    ``expires_ms`` (exclusive). Peer IDs in base58."""

    voucher: str
    subject: str
    level: int
    issued_ms: int
    expires_ms: int
    signature: bytes


@dataclass(frozen=True)
class RevocationStatement:
    """``voucher`` withdraws its vouches for ``subject`` issued at or before ``issued_ms``."""

    voucher: str
    subject: str
    issued_ms: int
    signature: bytes


# Signed bytes -------------------------------------------------------------------------------


def vouch_signing_bytes(
    voucher: str, subject: str, level: int, issued_ms: int, expires_ms: int
) -> bytes:
    """The bytes a vouch's signature covers::

        "threatmesh/vouch/v1\\n"
        u32 length, voucher peer ID bytes; u32 length, subject peer ID bytes
        u32 level; i64 issued_ms; i64 expires_ms          (integers big-endian)

    VouchError (malformed) for a bad peer ID or a number out of range.
    """
    _check_times(issued_ms, expires_ms)
    if not (isinstance(level, int) and 0 <= level < 2**32):
        raise VouchError(VouchProblem.MALFORMED, f"level {level!r} is out of range")
    return b"".join(
        [
            VOUCH_DOMAIN,
            _length_prefixed(_peer_id_bytes(voucher, "voucher")),
            _length_prefixed(_peer_id_bytes(subject, "subject")),
            struct.pack(">Iqq", level, issued_ms, expires_ms),
        ]
    )


def revocation_signing_bytes(voucher: str, subject: str, issued_ms: int) -> bytes:
    """The bytes a revocation's signature covers::

    "threatmesh/revocation/v1\\n"
    u32 length, voucher peer ID bytes; u32 length, subject peer ID bytes; i64 issued_ms
    """
    _check_times(issued_ms)
    return b"".join(
        [
            REVOCATION_DOMAIN,
            _length_prefixed(_peer_id_bytes(voucher, "voucher")),
            _length_prefixed(_peer_id_bytes(subject, "subject")),
            struct.pack(">q", issued_ms),
        ]
    )


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _peer_id_bytes(peer_id: str, field: str) -> bytes:
    try:
        parsed: bytes = parse_peer_id(peer_id).to_bytes()
    except ValueError as error:
        raise VouchError(VouchProblem.MALFORMED, f"{field}: {error}") from None
    return parsed


def _check_times(*times_ms: int) -> None:
    for time_ms in times_ms:
        if isinstance(time_ms, bool) or not isinstance(time_ms, int):
            raise VouchError(VouchProblem.MALFORMED, f"time {time_ms!r} is not an integer")
        if not 0 <= time_ms <= MAX_TIME_MS:
            raise VouchError(VouchProblem.MALFORMED, f"time {time_ms} ms is out of range")


# Signing and verifying ----------------------------------------------------------------------


def sign_vouch(
    identity: Identity, subject: str, level: int, issued_ms: int, expires_ms: int
) -> VouchStatement:
    """A vouch by ``identity`` for ``subject``; VouchError for one that peers would refuse
    whatever the time (for oneself, a level below GREEN, a lifetime out of bounds)."""
    voucher = identity.peer_id.to_base58()
    check_vouch_content(voucher, subject, level, issued_ms, expires_ms)
    data = vouch_signing_bytes(voucher, subject, level, issued_ms, expires_ms)
    signature: bytes = identity.key_pair.private_key.sign(data)
    return VouchStatement(voucher, subject, level, issued_ms, expires_ms, signature)


def sign_revocation(identity: Identity, subject: str, issued_ms: int) -> RevocationStatement:
    """A revocation by ``identity`` of its vouches for ``subject`` issued up to ``issued_ms``."""
    voucher = identity.peer_id.to_base58()
    if subject == voucher:
        raise VouchError(VouchProblem.SELF_VOUCH, f"{voucher} cannot revoke a vouch for itself")
    data = revocation_signing_bytes(voucher, subject, issued_ms)
    signature: bytes = identity.key_pair.private_key.sign(data)
    return RevocationStatement(voucher, subject, issued_ms, signature)


def verify_vouch(
    vouch: VouchStatement, *, sender: str, now_ms: int, public_key: PublicKey | None = None
) -> None:
    """Return if ``vouch`` is acceptable now from ``sender``; VouchError (with its reason)
    if not.

    ``sender`` is the peer that signed the pubsub message that carried the vouch.
    ``public_key`` is the voucher's key when its peer ID does not inline one (RSA: the pubsub
    message's ``key`` field); it must hash to the voucher's peer ID.
    """
    data = vouch_signing_bytes(
        vouch.voucher, vouch.subject, vouch.level, vouch.issued_ms, vouch.expires_ms
    )
    _check_signer(vouch.voucher, sender)
    check_vouch_content(
        vouch.voucher, vouch.subject, vouch.level, vouch.issued_ms, vouch.expires_ms
    )
    _check_not_future(vouch.issued_ms, now_ms)
    if vouch.expires_ms <= now_ms:
        raise VouchError(VouchProblem.EXPIRED, f"expired at {vouch.expires_ms} ms")
    _check_signature(vouch.voucher, data, vouch.signature, public_key)


def verify_revocation(
    revocation: RevocationStatement,
    *,
    sender: str,
    now_ms: int,
    public_key: PublicKey | None = None,
) -> None:
    """Return if ``revocation`` is acceptable now from ``sender``; VouchError if not.

    A revocation is "expired" once every vouch it could revoke has expired
    (``issued_ms + MAX_VOUCH_LIFETIME_MS``). Arguments as for ``verify_vouch``.
    """
    data = revocation_signing_bytes(revocation.voucher, revocation.subject, revocation.issued_ms)
    _check_signer(revocation.voucher, sender)
    if revocation.subject == revocation.voucher:
        raise VouchError(VouchProblem.SELF_VOUCH, f"{revocation.voucher} revokes itself")
    _check_not_future(revocation.issued_ms, now_ms)
    if not revocation_matters(revocation, now_ms):
        raise VouchError(VouchProblem.EXPIRED, "every vouch it could revoke has expired")
    _check_signature(revocation.voucher, data, revocation.signature, public_key)


def check_vouch_content(
    voucher: str, subject: str, level: int, issued_ms: int, expires_ms: int
) -> None:
    """Refuse (VouchError) a vouch that no time can make acceptable: for oneself, at a level
    below GREEN, or with a lifetime that is empty or longer than ``MAX_VOUCH_LIFETIME_MS``."""
    if voucher == subject:
        raise VouchError(VouchProblem.SELF_VOUCH, f"{voucher} vouches for itself")
    if level not in TLP_LEVEL_NAMES or level < TLP_GREEN:
        raise VouchError(VouchProblem.BAD_LEVEL, f"level {level!r} is not green or higher")
    if expires_ms <= issued_ms:
        raise VouchError(VouchProblem.BAD_LIFETIME, "expires_ms is not after issued_ms")
    if expires_ms - issued_ms > MAX_VOUCH_LIFETIME_MS:
        raise VouchError(
            VouchProblem.LIFETIME_TOO_LONG,
            f"lifetime {expires_ms - issued_ms} ms, at most {MAX_VOUCH_LIFETIME_MS}",
        )


def revocation_matters(revocation: RevocationStatement, now_ms: int) -> bool:
    """Whether a vouch that ``revocation`` revokes may still be live at ``now_ms``."""
    return revocation.issued_ms + MAX_VOUCH_LIFETIME_MS > now_ms


def _check_signer(voucher: str, sender: str) -> None:
    if voucher != sender:
        raise VouchError(VouchProblem.WRONG_SIGNER, f"signed by {voucher}, sent by {sender}")


def _check_not_future(issued_ms: int, now_ms: int) -> None:
    if issued_ms > now_ms + MAX_CLOCK_SKEW_MS:
        raise VouchError(
            VouchProblem.FROM_THE_FUTURE,
            f"issued {issued_ms - now_ms} ms ahead of our clock (at most {MAX_CLOCK_SKEW_MS})",
        )


def _check_signature(
    voucher: str, data: bytes, signature: bytes, public_key: PublicKey | None
) -> None:
    if not isinstance(signature, bytes) or len(signature) > MAX_SIGNATURE_BYTES:
        raise VouchError(VouchProblem.MALFORMED, "the signature is not bytes or too long")
    voucher_id = ID.from_base58(voucher)  # checked by the signing bytes
    if public_key is not None:
        if ID.from_pubkey(public_key) != voucher_id:
            raise VouchError(VouchProblem.KEY_MISMATCH, f"the key given is not {voucher}'s")
    else:
        public_key = voucher_id.extract_public_key()
        if public_key is None:
            raise VouchError(
                VouchProblem.NO_PUBLIC_KEY, f"{voucher} does not inline its key and none given"
            )
    try:
        valid = bool(public_key.verify(data, signature))
    except Exception:  # coincurve raises on a signature that does not parse
        valid = False
    if not valid:
        raise VouchError(VouchProblem.BAD_SIGNATURE, f"not signed by {voucher}")


# The vouches this node heard ----------------------------------------------------------------


@dataclass(frozen=True)
class VouchBookSnapshot:
    """The book's content for status reports, ordered by (subject, voucher)."""

    vouches: tuple[VouchStatement, ...]
    revocations: tuple[RevocationStatement, ...]


def _age_order(statement: VouchStatement | RevocationStatement) -> tuple[int, str, str]:
    return (statement.issued_ms, statement.voucher, statement.subject)


class VouchBook:
    """Verified vouches and revocations heard from peers, by subject. Pure: no clock, no I/O.

    Callers add only statements that ``verify_vouch``/``verify_revocation`` accepted. One
    vouch per (voucher, subject): the newest issued. Full (per subject or in all): the oldest
    issued vouch is evicted, the new one if it is the oldest.
    """

    def __init__(
        self,
        *,
        max_per_subject: int = MAX_VOUCHES_PER_SUBJECT,
        max_vouches: int = MAX_VOUCHES,
        max_revocations: int = MAX_REVOCATIONS,
    ) -> None:
        self.max_per_subject = max_per_subject
        self.max_vouches = max_vouches
        self.max_revocations = max_revocations
        self._by_subject: dict[str, dict[str, VouchStatement]] = {}
        self._count = 0
        self._revoked: dict[tuple[str, str], RevocationStatement] = {}

    def __len__(self) -> int:
        return self._count

    def add(self, vouch: VouchStatement) -> bool:
        """Keep ``vouch``; False if refused: revoked, not newer than the one held, or the
        oldest when full."""
        revocation = self._revoked.get((vouch.voucher, vouch.subject))
        if revocation is not None and vouch.issued_ms <= revocation.issued_ms:
            return False
        held = self._by_subject.get(vouch.subject, {})
        current = held.get(vouch.voucher)
        if current is not None:
            if vouch.issued_ms <= current.issued_ms:
                return False
            held[vouch.voucher] = vouch
            return True
        if len(held) >= self.max_per_subject:
            oldest = min(held.values(), key=_age_order)
            if _age_order(vouch) <= _age_order(oldest):
                return False
            self._remove(oldest)
        elif self._count >= self.max_vouches:
            oldest = min(self._all_vouches(), key=_age_order)
            if _age_order(vouch) <= _age_order(oldest):
                return False
            self._remove(oldest)
        self._by_subject.setdefault(vouch.subject, {})[vouch.voucher] = vouch
        self._count += 1
        return True

    def revoke(self, revocation: RevocationStatement) -> bool:
        """Remember ``revocation`` and drop the vouch it revokes; True if one was dropped."""
        key = (revocation.voucher, revocation.subject)
        remembered = self._revoked.get(key)
        if remembered is None or revocation.issued_ms > remembered.issued_ms:
            self._remember(key, revocation)
        current = self._by_subject.get(revocation.subject, {}).get(revocation.voucher)
        if current is not None and current.issued_ms <= revocation.issued_ms:
            self._remove(current)
            return True
        return False

    def vouchers_for(self, subject: str, now_ms: int) -> set[str]:
        """The peers with a live vouch for ``subject``."""
        return {
            voucher
            for voucher, vouch in self._by_subject.get(subject, {}).items()
            if vouch.expires_ms > now_ms
        }

    def subjects(self) -> set[str]:
        """The peers that some vouch held names (live or not yet expired by ``expire``)."""
        return set(self._by_subject)

    def expire(self, now_ms: int) -> int:
        """Forget expired vouches and revocations that can no longer matter; how many."""
        expired = [vouch for vouch in self._all_vouches() if vouch.expires_ms <= now_ms]
        for vouch in expired:
            self._remove(vouch)
        stale = [
            key
            for key, revocation in self._revoked.items()
            if not revocation_matters(revocation, now_ms)
        ]
        for key in stale:
            del self._revoked[key]
        return len(expired) + len(stale)

    def snapshot(self) -> VouchBookSnapshot:
        return VouchBookSnapshot(
            vouches=tuple(
                sorted(self._all_vouches(), key=lambda vouch: (vouch.subject, vouch.voucher))
            ),
            revocations=tuple(
                sorted(self._revoked.values(), key=lambda rev: (rev.subject, rev.voucher))
            ),
        )

    def _all_vouches(self) -> Iterable[VouchStatement]:
        for held in self._by_subject.values():
            yield from held.values()

    def _remove(self, vouch: VouchStatement) -> None:
        held = self._by_subject[vouch.subject]
        del held[vouch.voucher]
        if not held:
            del self._by_subject[vouch.subject]
        self._count -= 1

    def _remember(self, key: tuple[str, str], revocation: RevocationStatement) -> None:
        if key not in self._revoked and len(self._revoked) >= self.max_revocations:
            # Forgetting the oldest revocation lets its voucher's older vouches be replayed;
            # they expire at most MAX_VOUCH_LIFETIME_MS after it, and only count if their
            # voucher is trusted, who can re-send the revocation.
            oldest = min(self._revoked.values(), key=_age_order)
            if _age_order(revocation) <= _age_order(oldest):
                return
            del self._revoked[(oldest.voucher, oldest.subject)]
        self._revoked[key] = revocation
