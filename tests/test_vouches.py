"""Vouches and revocations (identity/vouches.py): signing, every reason for refusal, the book
of vouches heard and the vouches a node issued."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
from libp2p.crypto.rsa import create_new_key_pair as create_rsa_key_pair
from libp2p.peer.id import ID

from threatmesh.identity import (
    TLP_AMBER,
    TLP_CLEAR,
    TLP_GREEN,
    TLP_RED,
    Identity,
    KeyType,
    OwnVouches,
    RevocationStatement,
    VouchBook,
    VouchError,
    VouchFileError,
    VouchProblem,
    VouchStatement,
    generate_identity,
    revocation_signing_bytes,
    sign_revocation,
    sign_vouch,
    verify_revocation,
    verify_vouch,
    vouch_signing_bytes,
)
from threatmesh.identity import own_vouches as own_vouches_module
from threatmesh.identity.vouches import (
    MAX_CLOCK_SKEW_MS,
    MAX_VOUCH_LIFETIME_MS,
    REVOCATION_DOMAIN,
    VOUCH_DOMAIN,
)

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000

ALICE = generate_identity()
BOB = generate_identity(KeyType.ED25519)
CAROL = generate_identity()
ALICE_ID = ALICE.peer_id.to_base58()
BOB_ID = BOB.peer_id.to_base58()
CAROL_ID = CAROL.peer_id.to_base58()


def _vouch(
    voucher: Identity = ALICE,
    subject: str = CAROL_ID,
    *,
    issued_ms: int = NOW_MS,
    lifetime_ms: int = DAY_MS,
    level: int = TLP_GREEN,
) -> VouchStatement:
    return sign_vouch(voucher, subject, level, issued_ms, issued_ms + lifetime_ms)


def _forged(vouch: VouchStatement, **changes: object) -> VouchStatement:
    """``vouch`` with fields changed and re-signed by its voucher's key, to get past the
    signature to the check under test."""
    changed = dataclasses.replace(vouch, **changes)
    signer = {ALICE_ID: ALICE, BOB_ID: BOB, CAROL_ID: CAROL}[vouch.voucher]
    data = vouch_signing_bytes(
        changed.voucher, changed.subject, changed.level, changed.issued_ms, changed.expires_ms
    )
    return dataclasses.replace(changed, signature=signer.key_pair.private_key.sign(data))


def _refused(vouch: VouchStatement, reason: VouchProblem, **arguments: object) -> VouchError:
    options: dict[str, object] = {"sender": vouch.voucher, "now_ms": NOW_MS, **arguments}
    with pytest.raises(VouchError) as error:
        verify_vouch(vouch, **options)
    assert error.value.reason is reason, error.value
    return error.value


# Signing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("voucher", [ALICE, BOB], ids=["secp256k1", "ed25519"])
def test_a_signed_vouch_verifies(voucher: Identity) -> None:
    vouch = _vouch(voucher)
    assert vouch.voucher == voucher.peer_id.to_base58()
    assert (vouch.subject, vouch.level, vouch.expires_ms) == (CAROL_ID, TLP_GREEN, NOW_MS + DAY_MS)
    verify_vouch(vouch, sender=vouch.voucher, now_ms=NOW_MS)
    revocation = sign_revocation(voucher, CAROL_ID, NOW_MS)
    verify_revocation(revocation, sender=revocation.voucher, now_ms=NOW_MS)


def test_signed_bytes_layout() -> None:
    data = vouch_signing_bytes(ALICE_ID, CAROL_ID, TLP_AMBER, NOW_MS, NOW_MS + DAY_MS)
    alice, carol = ID.from_base58(ALICE_ID).to_bytes(), ID.from_base58(CAROL_ID).to_bytes()
    assert data == (
        b"threatmesh/vouch/v1\n"
        + struct.pack(">I", len(alice))
        + alice
        + struct.pack(">I", len(carol))
        + carol
        + struct.pack(">Iqq", 3, NOW_MS, NOW_MS + DAY_MS)
    )
    assert revocation_signing_bytes(ALICE_ID, CAROL_ID, NOW_MS) == (
        REVOCATION_DOMAIN
        + struct.pack(">I", len(alice))
        + alice
        + struct.pack(">I", len(carol))
        + carol
        + struct.pack(">q", NOW_MS)
    )
    assert data.startswith(VOUCH_DOMAIN)


def test_domains_keep_a_vouch_signature_from_passing_as_a_revocation() -> None:
    vouch = _vouch()
    posing = RevocationStatement(vouch.voucher, vouch.subject, vouch.issued_ms, vouch.signature)
    with pytest.raises(VouchError) as error:
        verify_revocation(posing, sender=ALICE_ID, now_ms=NOW_MS)
    assert error.value.reason is VouchProblem.BAD_SIGNATURE


def test_signing_refuses_what_peers_would_refuse() -> None:
    with pytest.raises(VouchError) as error:
        sign_vouch(ALICE, ALICE_ID, TLP_GREEN, NOW_MS, NOW_MS + DAY_MS)
    assert error.value.reason is VouchProblem.SELF_VOUCH
    with pytest.raises(VouchError) as error:
        sign_vouch(ALICE, CAROL_ID, TLP_CLEAR, NOW_MS, NOW_MS + DAY_MS)
    assert error.value.reason is VouchProblem.BAD_LEVEL
    with pytest.raises(VouchError) as error:
        sign_revocation(ALICE, ALICE_ID, NOW_MS)
    assert error.value.reason is VouchProblem.SELF_VOUCH
    with pytest.raises(VouchError) as error:
        sign_vouch(ALICE, "nope", TLP_GREEN, NOW_MS, NOW_MS + DAY_MS)
    assert error.value.reason is VouchProblem.MALFORMED


# Every reason to refuse a vouch -------------------------------------------------------------


def test_wrong_signer() -> None:
    error = _refused(_vouch(), VouchProblem.WRONG_SIGNER, sender=BOB_ID)
    assert str(error).startswith("wrong signer: ")
    assert ALICE_ID in str(error)
    assert BOB_ID in str(error)


def test_bad_signature() -> None:
    vouch = _vouch()
    _refused(
        dataclasses.replace(vouch, expires_ms=vouch.expires_ms + 1), VouchProblem.BAD_SIGNATURE
    )
    _refused(dataclasses.replace(vouch, level=TLP_RED), VouchProblem.BAD_SIGNATURE)
    _refused(dataclasses.replace(vouch, subject=BOB_ID), VouchProblem.BAD_SIGNATURE)
    _refused(dataclasses.replace(vouch, signature=b"garbage"), VouchProblem.BAD_SIGNATURE)
    _refused(dataclasses.replace(vouch, signature=b""), VouchProblem.BAD_SIGNATURE)
    by_bob = _vouch(BOB)
    _refused(dataclasses.replace(vouch, signature=by_bob.signature), VouchProblem.BAD_SIGNATURE)
    _refused(dataclasses.replace(vouch, signature=b"x" * 5000), VouchProblem.MALFORMED)


def test_vouch_for_oneself() -> None:
    _refused(_forged(_vouch(), subject=ALICE_ID), VouchProblem.SELF_VOUCH)


@pytest.mark.parametrize("level", [TLP_CLEAR, 0, 6, 99])
def test_level_below_green_or_unknown(level: int) -> None:
    _refused(_forged(_vouch(), level=level), VouchProblem.BAD_LEVEL)


def test_levels_above_green_are_accepted_here() -> None:
    # effective_level caps what they give at GREEN (tests/test_trust.py)
    verify_vouch(_vouch(level=TLP_RED), sender=ALICE_ID, now_ms=NOW_MS)


def test_issued_in_the_future() -> None:
    verify_vouch(_vouch(issued_ms=NOW_MS + MAX_CLOCK_SKEW_MS), sender=ALICE_ID, now_ms=NOW_MS)
    error = _refused(_vouch(issued_ms=NOW_MS + MAX_CLOCK_SKEW_MS + 1), VouchProblem.FROM_THE_FUTURE)
    assert str(error).startswith("issued in the future: ")


def test_expired() -> None:
    vouch = _vouch(issued_ms=NOW_MS - DAY_MS, lifetime_ms=DAY_MS)
    _refused(vouch, VouchProblem.EXPIRED)
    verify_vouch(vouch, sender=ALICE_ID, now_ms=NOW_MS - 1)


def test_lifetime() -> None:
    verify_vouch(_vouch(lifetime_ms=MAX_VOUCH_LIFETIME_MS), sender=ALICE_ID, now_ms=NOW_MS)
    too_long = _forged(_vouch(), expires_ms=NOW_MS + MAX_VOUCH_LIFETIME_MS + 1)
    _refused(too_long, VouchProblem.LIFETIME_TOO_LONG)
    _refused(_forged(_vouch(), expires_ms=NOW_MS), VouchProblem.BAD_LIFETIME)


def test_malformed_fields() -> None:
    _refused(dataclasses.replace(_vouch(), subject="QmNope"), VouchProblem.MALFORMED)
    _refused(dataclasses.replace(_vouch(), issued_ms=-1), VouchProblem.MALFORMED)
    _refused(dataclasses.replace(_vouch(), level=2**40), VouchProblem.MALFORMED)


@pytest.fixture(scope="module")
def rsa_identity() -> Identity:
    return Identity.from_private_key(create_rsa_key_pair(1024).private_key)


def test_key_not_in_the_peer_id(rsa_identity: Identity) -> None:
    vouch = _vouch(rsa_identity)
    assert vouch.voucher.startswith("Qm")  # a SHA-256 peer ID: the key is not inlined
    error = _refused(vouch, VouchProblem.NO_PUBLIC_KEY)
    assert str(error).startswith("no public key: ")
    verify_vouch(
        vouch, sender=vouch.voucher, now_ms=NOW_MS, public_key=rsa_identity.key_pair.public_key
    )


def test_key_given_must_be_the_vouchers() -> None:
    _refused(_vouch(), VouchProblem.KEY_MISMATCH, public_key=BOB.key_pair.public_key)


# Revocations --------------------------------------------------------------------------------


def _revocation_refused(
    revocation: RevocationStatement, reason: VouchProblem, **kw: object
) -> None:
    options: dict[str, object] = {"sender": revocation.voucher, "now_ms": NOW_MS, **kw}
    with pytest.raises(VouchError) as error:
        verify_revocation(revocation, **options)
    assert error.value.reason is reason, error.value


def test_every_reason_to_refuse_a_revocation(rsa_identity: Identity) -> None:
    revocation = sign_revocation(ALICE, CAROL_ID, NOW_MS)
    _revocation_refused(revocation, VouchProblem.WRONG_SIGNER, sender=BOB_ID)
    _revocation_refused(
        dataclasses.replace(revocation, issued_ms=NOW_MS + 1), VouchProblem.BAD_SIGNATURE
    )
    _revocation_refused(dataclasses.replace(revocation, subject=ALICE_ID), VouchProblem.SELF_VOUCH)
    _revocation_refused(
        sign_revocation(ALICE, CAROL_ID, NOW_MS + MAX_CLOCK_SKEW_MS + 1),
        VouchProblem.FROM_THE_FUTURE,
    )
    stale = sign_revocation(ALICE, CAROL_ID, NOW_MS - MAX_VOUCH_LIFETIME_MS)
    _revocation_refused(stale, VouchProblem.EXPIRED)
    verify_revocation(stale, sender=ALICE_ID, now_ms=NOW_MS - 1)
    _revocation_refused(sign_revocation(rsa_identity, CAROL_ID, NOW_MS), VouchProblem.NO_PUBLIC_KEY)
    _revocation_refused(revocation, VouchProblem.KEY_MISMATCH, public_key=BOB.key_pair.public_key)
    _revocation_refused(
        dataclasses.replace(revocation, voucher="QmNope", subject=CAROL_ID),
        VouchProblem.MALFORMED,
    )


# The book of vouches heard ------------------------------------------------------------------


def test_book_vouchers_for_and_expiry() -> None:
    book = VouchBook()
    assert book.add(_vouch(ALICE, CAROL_ID)) is True
    assert book.add(_vouch(BOB, CAROL_ID, lifetime_ms=2 * DAY_MS)) is True
    assert book.vouchers_for(CAROL_ID, NOW_MS) == {ALICE_ID, BOB_ID}
    assert book.vouchers_for(CAROL_ID, NOW_MS + DAY_MS) == {BOB_ID}
    assert book.vouchers_for(ALICE_ID, NOW_MS) == set()
    assert book.subjects() == {CAROL_ID}
    assert len(book) == 2
    assert book.expire(NOW_MS + DAY_MS) == 1
    assert len(book) == 1
    assert book.expire(NOW_MS + 2 * DAY_MS) == 1
    assert book.subjects() == set()


def test_book_keeps_the_newest_vouch_per_pair() -> None:
    book = VouchBook()
    old, new = _vouch(issued_ms=NOW_MS), _vouch(issued_ms=NOW_MS + 1000)
    assert book.add(old)
    assert book.add(new)
    assert book.add(old) is False  # replayed
    assert book.add(new) is False  # again: no change
    assert book.snapshot().vouches == (new,)


def test_revocation_then_replayed_older_vouch_is_refused() -> None:
    book = VouchBook()
    vouch = _vouch(issued_ms=NOW_MS)
    book.add(vouch)
    revocation = sign_revocation(ALICE, CAROL_ID, NOW_MS + 1000)
    assert book.revoke(revocation) is True
    assert book.vouchers_for(CAROL_ID, NOW_MS + 2000) == set()
    assert book.add(vouch) is False  # the old vouch, replayed
    assert book.add(_vouch(issued_ms=NOW_MS + 1000)) is False  # issued at the revocation
    renewed = _vouch(issued_ms=NOW_MS + 1001)  # a new vouch, after the revocation
    assert book.add(renewed) is True
    assert book.vouchers_for(CAROL_ID, NOW_MS + 2000) == {ALICE_ID}
    assert book.revoke(revocation) is False  # an older revocation leaves the new vouch alone
    assert book.snapshot().revocations == (revocation,)


def test_revocation_before_the_vouch_arrives() -> None:
    book = VouchBook()
    assert book.revoke(sign_revocation(ALICE, CAROL_ID, NOW_MS)) is False
    assert book.add(_vouch(issued_ms=NOW_MS - 5)) is False
    # forgotten once no vouch it revokes can be live; then the stale vouch is expired anyway
    assert book.expire(NOW_MS + MAX_VOUCH_LIFETIME_MS) == 1
    assert book.snapshot().revocations == ()


def test_book_bound_per_subject_evicts_the_oldest() -> None:
    book = VouchBook(max_per_subject=2)
    vouchers = [generate_identity() for _ in range(3)]
    first, second, third = (
        _vouch(voucher, CAROL_ID, issued_ms=NOW_MS + index)
        for index, voucher in enumerate(vouchers)
    )
    book.add(second)
    book.add(third)
    assert book.add(first) is False  # the oldest of the three: not kept
    assert book.add(_vouch(ALICE, CAROL_ID, issued_ms=NOW_MS + 10)) is True
    assert book.vouchers_for(CAROL_ID, NOW_MS) == {third.voucher, ALICE_ID}
    assert book.add(_vouch(ALICE, BOB_ID)) is True  # another subject has its own room
    assert len(book) == 3


def test_book_bound_in_all_evicts_the_oldest() -> None:
    book = VouchBook(max_vouches=2)
    subjects = [generate_identity().peer_id.to_base58() for _ in range(3)]
    for index, subject in enumerate(subjects):
        assert book.add(_vouch(ALICE, subject, issued_ms=NOW_MS + index))
    assert len(book) == 2
    assert book.subjects() == set(subjects[1:])
    assert book.add(_vouch(BOB, CAROL_ID, issued_ms=NOW_MS - 1)) is False


def test_book_bound_on_revocations() -> None:
    book = VouchBook(max_revocations=2)
    subjects = [generate_identity().peer_id.to_base58() for _ in range(3)]
    for index, subject in enumerate(subjects):
        book.revoke(sign_revocation(ALICE, subject, NOW_MS + index))
    assert [rev.subject for rev in book.snapshot().revocations] == sorted(subjects[1:])


# The vouches a node issued ------------------------------------------------------------------


def test_own_vouches_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "vouches.json"
    own = OwnVouches(path, ALICE)
    own.load()
    vouch = own.vouch(CAROL_ID, now_ms=NOW_MS, lifetime_ms=DAY_MS)
    verify_vouch(vouch, sender=ALICE_ID, now_ms=NOW_MS)
    for_bob = own.vouch(BOB_ID, TLP_AMBER, now_ms=NOW_MS, lifetime_ms=2 * DAY_MS)
    assert path.stat().st_mode & 0o777 == 0o600

    restarted = OwnVouches(path, ALICE)
    restarted.load()
    vouches, revocations = restarted.active(NOW_MS)
    assert set(vouches) == {vouch, for_bob}
    assert revocations == ()
    assert restarted.active(NOW_MS + DAY_MS).vouches == (for_bob,)
    assert restarted.active(NOW_MS + 2 * DAY_MS) == ((), ())


def test_own_revocation_is_announced_while_a_revoked_vouch_could_live(tmp_path: Path) -> None:
    path = tmp_path / "vouches.json"
    own = OwnVouches(path, ALICE)
    vouch = own.vouch(CAROL_ID, now_ms=NOW_MS, lifetime_ms=DAY_MS)
    revocation = own.revoke(CAROL_ID, now_ms=NOW_MS)  # in the same millisecond
    assert revocation.issued_ms >= vouch.issued_ms  # so it covers the vouch
    verify_revocation(revocation, sender=ALICE_ID, now_ms=NOW_MS)

    restarted = OwnVouches(path, ALICE)
    restarted.load()
    assert restarted.active(NOW_MS) == ((), (revocation,))
    # Not only until this vouch's expiry: an earlier, longer vouch it replaced may be replayed.
    last_ms = NOW_MS + MAX_VOUCH_LIFETIME_MS - 1
    assert restarted.active(last_ms).revocations == (revocation,)
    assert restarted.active(last_ms + 1).revocations == ()

    # A peer that heard both never counts the old vouch again.
    book = VouchBook()
    book.revoke(revocation)
    assert book.add(vouch) is False


def test_vouching_again_after_a_revocation(tmp_path: Path) -> None:
    own = OwnVouches(tmp_path / "vouches.json", ALICE)
    own.vouch(CAROL_ID, now_ms=NOW_MS)
    revocation = own.revoke(CAROL_ID, now_ms=NOW_MS + 5)
    renewed = own.vouch(CAROL_ID, now_ms=NOW_MS + 5)  # same millisecond again
    assert renewed.issued_ms > revocation.issued_ms
    assert own.active(NOW_MS + 5) == ((renewed,), ())
    book = VouchBook()
    book.revoke(revocation)
    assert book.add(renewed) is True


def test_revoking_without_a_vouch_on_file(tmp_path: Path) -> None:
    own = OwnVouches(tmp_path / "vouches.json", ALICE)
    revocation = own.revoke(CAROL_ID, now_ms=NOW_MS)
    assert own.active(NOW_MS + MAX_VOUCH_LIFETIME_MS - 1).revocations == (revocation,)
    assert own.active(NOW_MS + MAX_VOUCH_LIFETIME_MS).revocations == ()


def test_expired_statements_are_dropped_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vouches.json"
    own = OwnVouches(path, ALICE)
    own.vouch(CAROL_ID, now_ms=NOW_MS, lifetime_ms=DAY_MS)
    own.revoke(generate_identity().peer_id.to_base58(), now_ms=NOW_MS)
    own.vouch(BOB_ID, now_ms=NOW_MS + MAX_VOUCH_LIFETIME_MS)
    document = json.loads(path.read_text())
    assert [v["subject"] for v in document["vouches"]] == [BOB_ID]
    assert document["revocations"] == []


def test_own_vouches_refuse_a_file_of_another_identity(tmp_path: Path) -> None:
    path = tmp_path / "vouches.json"
    OwnVouches(path, ALICE).vouch(CAROL_ID, now_ms=NOW_MS)
    with pytest.raises(VouchFileError, match="not by this node") as error:
        OwnVouches(path, BOB).load()
    assert str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda doc: doc["vouches"][0].update(level="red"), "signature is not this node's"),
        (lambda doc: doc["vouches"][0].update(level="purple"), "vouch 1: 'purple'"),
        (lambda doc: doc["vouches"][0].update(subject="nope"), "vouch 1: malformed"),
        (lambda doc: doc["vouches"][0].update(signature="%%%"), "not base64"),
        (lambda doc: doc["vouches"][0].pop("expires_ms"), "vouch 1: expected an object"),
        (lambda doc: doc["revocations"][0].update(issued_ms=1), "revocation 1: the signature"),
        (lambda doc: doc["revocations"][0].update(subject=1), "revocation 1: malformed"),
        (lambda doc: doc.update(version=2), "'version' must be 1"),
        (lambda doc: doc.update(extra=1), "expected an object with"),
    ],
    ids=[
        "level",
        "level-name",
        "subject",
        "signature",
        "missing",
        "revocation",
        "revocation-subject",
        "version",
        "key",
    ],
)
def test_own_vouches_refuse_a_damaged_file(tmp_path: Path, edit: object, problem: str) -> None:
    path = tmp_path / "vouches.json"
    own = OwnVouches(path, ALICE)
    own.vouch(CAROL_ID, now_ms=NOW_MS)
    own.revoke(BOB_ID, now_ms=NOW_MS)
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    with pytest.raises(VouchFileError, match=problem):
        OwnVouches(path, ALICE).load()
    with pytest.raises(VouchFileError, match=problem):  # and it is never overwritten
        own.vouch(BOB_ID, now_ms=NOW_MS)
    assert json.loads(path.read_text()) == document


def test_own_vouches_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(own_vouches_module, "MAX_OWN_STATEMENTS", 1)
    own = OwnVouches(tmp_path / "vouches.json", ALICE)
    own.vouch(CAROL_ID, now_ms=NOW_MS)
    own.vouch(CAROL_ID, now_ms=NOW_MS + 1)  # replacing needs no room
    with pytest.raises(VouchFileError, match="at most 1"):
        own.vouch(BOB_ID, now_ms=NOW_MS)
    own.revoke(BOB_ID, now_ms=NOW_MS)
    with pytest.raises(VouchFileError, match="at most 1"):
        own.revoke(generate_identity().peer_id.to_base58(), now_ms=NOW_MS)


def test_own_vouch_refuses_oneself(tmp_path: Path) -> None:
    with pytest.raises(VouchError) as error:
        OwnVouches(tmp_path / "vouches.json", ALICE).vouch(ALICE_ID, now_ms=NOW_MS)
    assert error.value.reason is VouchProblem.SELF_VOUCH
