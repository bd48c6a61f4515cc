"""Sealed AMBER/RED batches (pubsub/seal.py): round trips, refusals, bounds and a pinned vector.

The pinned vector is checked twice: ``seal`` with fixed keys and an injected rng must give
exactly the stored bytes (so the format cannot drift), and an independent opener written from
the scheme in threatmesh.proto, with other libraries (pycryptodome's HKDF and
ChaCha20-Poly1305, libsodium's X25519), must open it: what a Go or JS implementer would do.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator

import coincurve
import nacl.bindings
import pytest
from Crypto.Cipher import ChaCha20_Poly1305
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto import ed25519, secp256k1
from libp2p.peer.id import ID

from threatmesh.identity import Identity, KeyType, generate_identity
from threatmesh.pubsub import seal as seal_module
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.seal import (
    MAX_RECIPIENTS,
    NotForUs,
    SealError,
    key_id,
    open_sealed,
    recipient_public_key,
    seal,
)

ORIGIN = generate_identity()
ALICE = generate_identity(KeyType.SECP256K1)
BOB = generate_identity(KeyType.SECP256K1)
CAROL = generate_identity(KeyType.ED25519)
DAVE = generate_identity(KeyType.ED25519)
EVE_SECP256K1 = generate_identity(KeyType.SECP256K1)
EVE_ED25519 = generate_identity(KeyType.ED25519)
BATCH = pb.Batch(
    seq=1,
    sent_ms=1_700_000_000_000,
    tlp=pb.TLP_RED,
    indicators=[pb.Indicator(value="198.51.100.7", itype=pb.ITYPE_IPV4, tlp=pb.TLP_RED)],
).SerializeToString()


def _open(sealed: pb.SealedBatch, who: Identity, origin: Identity = ORIGIN) -> bytes:
    return open_sealed(
        sealed, origin=origin.peer_id, me=who.peer_id, private_key=who.key_pair.private_key
    )


def _seal(*recipients: Identity, tlp: int = pb.TLP_RED) -> pb.SealedBatch:
    peers = [recipient.peer_id for recipient in recipients]
    return seal(BATCH, tlp=tlp, origin=ORIGIN.peer_id, recipients=peers)


def _copy(sealed: pb.SealedBatch) -> pb.SealedBatch:
    copy = pb.SealedBatch()
    copy.CopyFrom(sealed)
    return copy


def _flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


# Round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipients",
    [(ALICE,), (CAROL,), (ALICE, BOB, CAROL, DAVE)],
    ids=["secp256k1", "ed25519", "mixed"],
)
@pytest.mark.parametrize("tlp", [pb.TLP_AMBER, pb.TLP_AMBER_STRICT, pb.TLP_RED])
def test_every_recipient_opens_the_batch(recipients: tuple[Identity, ...], tlp: int) -> None:
    sealed = pb.SealedBatch.FromString(_seal(*recipients, tlp=tlp).SerializeToString())
    assert sealed.tlp == tlp
    assert len(sealed.keys) == len(recipients)
    for recipient in recipients:
        assert _open(sealed, recipient) == BATCH


def test_only_the_ephemeral_keys_needed_are_sent() -> None:
    only_secp256k1 = _seal(ALICE, BOB)
    assert len(only_secp256k1.ephemeral_secp256k1) == 33
    assert only_secp256k1.ephemeral_x25519 == b""
    only_ed25519 = _seal(CAROL)
    assert only_ed25519.ephemeral_secp256k1 == b""
    assert len(only_ed25519.ephemeral_x25519) == 32


def test_recipients_are_deduplicated_and_slots_sorted() -> None:
    sealed = _seal(CAROL, ALICE, CAROL, ALICE, BOB)
    assert len(sealed.keys) == 3
    assert [slot.key_id for slot in sealed.keys] == sorted(slot.key_id for slot in sealed.keys)
    assert {slot.key_id for slot in sealed.keys} == {
        key_id(ALICE.peer_id),
        key_id(BOB.peer_id),
        key_id(CAROL.peer_id),
    }


def test_each_batch_gets_fresh_keys() -> None:
    first, second = _seal(ALICE, CAROL), _seal(ALICE, CAROL)
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext
    assert first.ephemeral_secp256k1 != second.ephemeral_secp256k1
    assert first.ephemeral_x25519 != second.ephemeral_x25519


def test_zero_recipients_gives_a_batch_nobody_can_open() -> None:
    sealed = _seal()
    assert len(sealed.keys) == 0
    assert sealed.ephemeral_secp256k1 == sealed.ephemeral_x25519 == b""
    assert len(sealed.ciphertext) == len(BATCH) + 16
    with pytest.raises(NotForUs):
        _open(sealed, ALICE)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.binary(max_size=4096),
    tlp=st.sampled_from([pb.TLP_AMBER, pb.TLP_AMBER_STRICT, pb.TLP_RED]),
)
def test_any_bytes_round_trip(batch: bytes, tlp: int) -> None:
    peers = [ALICE.peer_id, CAROL.peer_id]
    sealed = seal(batch, tlp=tlp, origin=ORIGIN.peer_id, recipients=peers)
    assert _open(sealed, ALICE) == _open(sealed, CAROL) == batch


# Who can open it ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outsider", [EVE_SECP256K1, EVE_ED25519, ORIGIN], ids=["secp256k1", "ed25519", "origin"]
)
def test_a_non_recipient_gets_not_for_us(outsider: Identity) -> None:
    with pytest.raises(NotForUs, match="no slot for"):
        _open(_seal(ALICE, CAROL), outsider)


@pytest.mark.parametrize("recipient", [ALICE, CAROL], ids=["secp256k1", "ed25519"])
def test_a_slot_copied_to_another_key_id_opens_for_nobody(recipient: Identity) -> None:
    # Eve relabels Alice's slot as hers: the KEK binds Alice's peer ID, so Eve cannot unwrap.
    eve = EVE_SECP256K1 if recipient.key_type is KeyType.SECP256K1 else EVE_ED25519
    sealed = _seal(recipient)
    sealed.keys[0].key_id = key_id(eve.peer_id)
    with pytest.raises(NotForUs, match="unwraps"):
        _open(sealed, eve)


def test_me_must_match_the_private_key() -> None:
    with pytest.raises(SealError, match="not the peer ID of the private key"):
        open_sealed(
            _seal(ALICE),
            origin=ORIGIN.peer_id,
            me=ALICE.peer_id,
            private_key=BOB.key_pair.private_key,
        )


# Tampering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipient", [ALICE, CAROL], ids=["secp256k1", "ed25519"])
def test_tampered_ciphertext_fails_authentication(recipient: Identity) -> None:
    sealed = _seal(recipient)
    for index in (0, len(sealed.ciphertext) - 1):  # first byte of the text, last of the tag
        tampered = _copy(sealed)
        tampered.ciphertext = _flip(sealed.ciphertext, index)
        with pytest.raises(SealError, match="ciphertext: fails authentication") as error:
            _open(tampered, recipient)
        assert not isinstance(error.value, NotForUs)


def test_tampered_nonce_fails_authentication() -> None:
    sealed = _seal(ALICE)
    sealed.nonce = _flip(sealed.nonce)
    with pytest.raises(SealError, match="ciphertext: fails authentication"):
        _open(sealed, ALICE)


@pytest.mark.parametrize("recipient", [ALICE, CAROL], ids=["secp256k1", "ed25519"])
def test_tampered_wrapped_key_does_not_unwrap(recipient: Identity) -> None:
    sealed = _seal(recipient)
    sealed.keys[0].wrapped = _flip(sealed.keys[0].wrapped, 5)
    with pytest.raises(NotForUs, match="unwraps"):  # a SealError
        _open(sealed, recipient)


def test_another_ephemeral_key_does_not_unwrap() -> None:
    sealed, other = _seal(ALICE, CAROL), _seal(ALICE, CAROL)
    sealed.ephemeral_secp256k1 = other.ephemeral_secp256k1
    sealed.ephemeral_x25519 = other.ephemeral_x25519
    for recipient in (ALICE, CAROL):
        with pytest.raises(NotForUs):
            _open(sealed, recipient)


@pytest.mark.parametrize("recipient", [ALICE, CAROL], ids=["secp256k1", "ed25519"])
def test_another_origin_fails_authentication(recipient: Identity) -> None:
    # The same bytes republished by Eve under her own signature do not open as hers.
    with pytest.raises(SealError, match="ciphertext: fails authentication"):
        _open(_seal(recipient), recipient, origin=EVE_SECP256K1)


@pytest.mark.parametrize(("sealed_at", "claimed"), [(pb.TLP_RED, pb.TLP_AMBER), (3, 4), (4, 5)])
def test_another_level_fails_authentication(sealed_at: int, claimed: int) -> None:
    sealed = _seal(ALICE, tlp=sealed_at)
    sealed.tlp = pb.Tlp.ValueType(claimed)
    with pytest.raises(SealError, match="ciphertext: fails authentication"):
        _open(sealed, ALICE)


def test_an_invalid_ephemeral_point_is_refused() -> None:
    sealed = _seal(ALICE, CAROL)
    sealed.ephemeral_secp256k1 = b"\x02" + b"\xff" * 32  # x >= p: not on the curve
    with pytest.raises(SealError, match="ephemeral_secp256k1: not a valid secp256k1 point"):
        _open(sealed, ALICE)
    sealed.ephemeral_x25519 = bytes(32)  # small order: the shared secret would be zero
    with pytest.raises(SealError, match="ephemeral_x25519: an X25519 key of small order"):
        _open(sealed, CAROL)


@pytest.mark.parametrize(
    ("recipient", "field"),
    [(ALICE, "ephemeral_secp256k1"), (CAROL, "ephemeral_x25519")],
    ids=["secp256k1", "ed25519"],
)
def test_a_missing_ephemeral_key_is_refused(recipient: Identity, field: str) -> None:
    sealed = _seal(ALICE, CAROL)
    setattr(sealed, field, b"")  # absent: proto3 does not send an empty bytes field
    with pytest.raises(SealError, match=f"{field}: missing") as error:
        _open(sealed, recipient)
    assert not isinstance(error.value, NotForUs)


# Bounds, checked before any cryptography --------------------------------------------------------


@pytest.fixture
def no_crypto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every cryptographic step of seal.py fail the test if it is reached."""

    def reached(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("cryptography was done before the bounds were checked")

    for name in ("ChaCha20Poly1305", "X25519PrivateKey", "_kek", "_recipient"):
        monkeypatch.setattr(seal_module, name, reached)
    monkeypatch.setattr(seal_module.coincurve, "PublicKey", reached)


def _no_rng(size: int) -> bytes:
    raise AssertionError(f"rng({size}) was called before the bounds were checked")


def _fake_peers() -> Iterator[ID]:
    for number in itertools.count():  # endless: the bound must stop reading
        yield ID(b"\x00\x05" + number.to_bytes(5, "big"))


@pytest.mark.usefixtures("no_crypto")
def test_too_many_recipients_are_refused_while_reading_them() -> None:
    with pytest.raises(SealError, match=f"recipients: more than {MAX_RECIPIENTS}"):
        seal(BATCH, tlp=pb.TLP_RED, origin=ORIGIN.peer_id, recipients=_fake_peers(), rng=_no_rng)


@pytest.mark.usefixtures("no_crypto")
@pytest.mark.parametrize(
    ("batch", "tlp", "message"),
    [
        (b"x" * (1024 * 1024 + 1), pb.TLP_RED, "batch: 1048577 bytes; at most 1048576"),
        (BATCH, pb.TLP_GREEN, "tlp: level 2 is not sealed"),
        (BATCH, pb.TLP_CLEAR, "tlp: level 1 is not sealed"),
        (BATCH, 9, "tlp: level 9 is not sealed"),
    ],
    ids=["too-big", "green", "clear", "unknown-level"],
)
def test_seal_refuses_before_any_crypto(batch: bytes, tlp: int, message: str) -> None:
    with pytest.raises(SealError, match=message):
        seal(batch, tlp=tlp, origin=ORIGIN.peer_id, recipients=[ALICE.peer_id], rng=_no_rng)


def _many_slots(sealed: pb.SealedBatch) -> None:
    for _ in range(MAX_RECIPIENTS):
        sealed.keys.add(key_id=bytes(8), wrapped=bytes(48))


_MALFORMED: dict[str, tuple[Callable[[pb.SealedBatch], object], str]] = {
    "short-nonce": (lambda s: setattr(s, "nonce", bytes(11)), "nonce: 11 bytes; must be 12"),
    "long-nonce": (lambda s: setattr(s, "nonce", bytes(24)), "nonce: 24 bytes; must be 12"),
    "no-tag": (lambda s: setattr(s, "ciphertext", bytes(15)), "ciphertext: 15 bytes"),
    "huge-ciphertext": (
        lambda s: setattr(s, "ciphertext", bytes(1024 * 1024 + 17)),
        "ciphertext: 1048593 bytes",
    ),
    "too-many-slots": (_many_slots, f"keys: 1026 slots; at most {MAX_RECIPIENTS}"),
    "green": (lambda s: setattr(s, "tlp", pb.TLP_GREEN), "tlp: level 2 is not a sealed level"),
    "unknown-level": (lambda s: setattr(s, "tlp", 7), "tlp: level 7 is not a sealed level"),
    "short-secp256k1": (
        lambda s: setattr(s, "ephemeral_secp256k1", bytes(32)),
        "ephemeral_secp256k1: 32 bytes; must be 33",
    ),
    "uncompressed-secp256k1": (
        lambda s: setattr(s, "ephemeral_secp256k1", bytes(65)),
        "ephemeral_secp256k1: 65 bytes; must be 33",
    ),
    "long-x25519": (
        lambda s: setattr(s, "ephemeral_x25519", bytes(33)),
        "ephemeral_x25519: 33 bytes; must be 32",
    ),
    "short-key-id": (
        lambda s: s.keys.add(key_id=bytes(7), wrapped=bytes(48)),
        r"keys\[2\]: key_id 7 and wrapped 48 bytes; must be 8 and 48",
    ),
    "short-wrapped": (
        lambda s: setattr(s.keys[0], "wrapped", bytes(47)),
        r"keys\[0\]: key_id 8 and wrapped 47 bytes; must be 8 and 48",
    ),
}


@pytest.mark.parametrize("case", _MALFORMED)
def test_open_refuses_malformed_input_before_any_crypto(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = _seal(ALICE, CAROL)
    damage, message = _MALFORMED[case]
    damage(sealed)
    monkeypatch.setattr(seal_module, "_kek", _no_rng)
    monkeypatch.setattr(seal_module, "ChaCha20Poly1305", _no_rng)
    with pytest.raises(SealError, match=message) as error:
        _open(sealed, ALICE)
    assert not isinstance(error.value, NotForUs)


def test_a_bad_rng_is_refused() -> None:
    def short(size: int) -> bytes:
        return bytes(size - 1)

    with pytest.raises(SealError, match="rng gave 31 bytes for the content key; 32 were asked"):
        seal(BATCH, tlp=pb.TLP_RED, origin=ORIGIN.peer_id, recipients=[ALICE.peer_id], rng=short)
    with pytest.raises(SealError, match="rng gave an invalid secp256k1 secret"):
        seal(BATCH, tlp=pb.TLP_RED, origin=ORIGIN.peer_id, recipients=[ALICE.peer_id], rng=bytes)


# Recipients' keys -----------------------------------------------------------------------------


def test_a_hashed_peer_id_cannot_be_a_recipient() -> None:
    # RSA keys are too long to inline: the peer ID is SHA-256 of the key ("Qm...").
    rsa_like = ID(b"\x12\x20" + hashlib.sha256(b"an RSA public key").digest())
    assert rsa_like.to_base58().startswith("Qm")
    with pytest.raises(SealError, match="its ID is a hash of its key") as error:
        seal(BATCH, tlp=pb.TLP_RED, origin=ORIGIN.peer_id, recipients=[ALICE.peer_id, rsa_like])
    assert str(rsa_like) in str(error.value)
    with pytest.raises(SealError, match="RSA"):
        recipient_public_key(rsa_like)


@pytest.mark.parametrize(
    "peer_bytes",
    [b"", b"\x00", b"\x00\x05abc", b"\x00\x03abc", b"\x99\x01x"],
    ids=["empty", "no-length", "short", "not-a-key", "unknown-hash"],
)
def test_a_peer_id_without_a_key_cannot_be_a_recipient(peer_bytes: bytes) -> None:
    peer = ID(peer_bytes)
    with pytest.raises(SealError, match="cannot be a recipient") as error:
        recipient_public_key(peer)
    assert str(peer) in str(error.value)


def test_an_ed25519_key_of_small_order_cannot_be_a_recipient() -> None:
    identity_point = ed25519.Ed25519PublicKey.from_bytes(b"\x01" + bytes(31))
    peer = ID.from_pubkey(identity_point)
    with pytest.raises(SealError, match="not a usable curve point") as error:
        seal(BATCH, tlp=pb.TLP_RED, origin=ORIGIN.peer_id, recipients=[peer])
    assert str(peer) in str(error.value)


def test_recipient_public_key_reads_the_inlined_key() -> None:
    for identity in (ALICE, CAROL):
        public_key = recipient_public_key(identity.peer_id)
        assert public_key.to_bytes() == identity.key_pair.public_key.to_bytes()


# The pinned vector ----------------------------------------------------------------------------

VECTOR_ORIGIN = Identity.from_private_key(
    secp256k1.create_new_key_pair(hashlib.sha256(b"origin").digest()).private_key
)
VECTOR_SECP256K1 = Identity.from_private_key(
    secp256k1.create_new_key_pair(hashlib.sha256(b"secp256k1 recipient").digest()).private_key
)
VECTOR_ED25519 = Identity.from_private_key(
    ed25519.create_new_key_pair(hashlib.sha256(b"ed25519 recipient").digest()).private_key
)
# seal(BATCH, RED, origin, [ed25519, secp256k1 recipient], rng=_counting_rng()), serialized.
VECTOR_SEALED_HEX = (
    "0805120c26d0a6c4bb94b87d4b6788341a2f51c3edab1a69d6312b817618f10900abc40aa0839f69905efd6f"
    "8c52f9726b7b0e36b18ce41b25d9a1981d9e96719b2221021b232ccac6ad93d2103b2f4d608768796eab3bed"
    "8a344989c5024d711082ccca2a20b190706acfceefa893ee5df5a34ad1e3176fe15d77d8eaf39b94d25adf4c"
    "847a323c0a0800bd50c648a16b9f1230ff262ebe146fd59af1bf5dfe8c0169f6b918330d1795fd466e08476c"
    "d370df3ca4ad22d2bfd8fe66e3c36533e4d774aa323c0a08538ef6d4225274fe12302084dc85667d7ef9e30e"
    "b4fb0aa43364c7ba4de3f3b1645db7464ecacce30ec7931ab2bfe0ebfa8b63a7bf507ca4a887"
)


def _counting_rng() -> Callable[[int], bytes]:
    """Deterministic "random" bytes: SHAKE-256 of a label, handed out in order."""
    stream = hashlib.shake_256(b"threatmesh seal test vector").digest(1024)
    position = 0

    def rng(size: int) -> bytes:
        nonlocal position
        position += size
        return stream[position - size : position]

    return rng


def _seal_vector(rng: Callable[[int], bytes]) -> pb.SealedBatch:
    return seal(
        BATCH,
        tlp=pb.TLP_RED,
        origin=VECTOR_ORIGIN.peer_id,
        recipients=[VECTOR_ED25519.peer_id, VECTOR_SECP256K1.peer_id],
        rng=rng,
    )


def test_the_rng_is_drawn_in_the_documented_order() -> None:
    sizes: list[int] = []
    rng = _counting_rng()

    def recording(size: int) -> bytes:
        sizes.append(size)
        return rng(size)

    _seal_vector(recording)
    assert sizes == [32, 12, 32, 32]  # content key, nonce, secp256k1, X25519


def test_seal_writes_the_pinned_vector() -> None:
    assert _seal_vector(_counting_rng()).SerializeToString().hex() == VECTOR_SEALED_HEX


@pytest.mark.parametrize(
    "recipient", [VECTOR_SECP256K1, VECTOR_ED25519], ids=["secp256k1", "ed25519"]
)
def test_the_pinned_vector_opens(recipient: Identity) -> None:
    sealed = pb.SealedBatch.FromString(bytes.fromhex(VECTOR_SEALED_HEX))
    assert _open(sealed, recipient, origin=VECTOR_ORIGIN) == BATCH


def _open_by_the_spec(sealed: pb.SealedBatch, me: Identity, origin: ID) -> bytes:
    """The opening steps of threatmesh.proto, written out with other libraries."""
    peer_bytes = me.peer_id.to_bytes()
    (slot,) = [s for s in sealed.keys if s.key_id == hashlib.sha256(peer_bytes).digest()[:8]]
    secret = me.key_pair.private_key.to_bytes()
    if me.key_type is KeyType.SECP256K1:
        ephemeral, label = sealed.ephemeral_secp256k1, b"threatmesh/seal/v1/kek/secp256k1"
        point = coincurve.PublicKey(ephemeral).multiply(secret)
        shared = point.format(compressed=False)[1:33]  # the x-coordinate
    else:
        ephemeral, label = sealed.ephemeral_x25519, b"threatmesh/seal/v1/kek/x25519"
        expanded = hashlib.sha512(secret).digest()[:32]  # RFC 8032 secret scalar, unclamped
        shared = nacl.bindings.crypto_scalarmult(expanded, ephemeral)  # X25519 clamps
    kek = HKDF(shared, 32, b"", SHA256, context=label + ephemeral + peer_bytes)
    unwrap = ChaCha20_Poly1305.new(key=kek, nonce=bytes(12))
    content_key = unwrap.decrypt_and_verify(slot.wrapped[:32], slot.wrapped[32:])
    aad = b"threatmesh/seal/v1/batch" + bytes([sealed.tlp]) + origin.to_bytes()
    content = ChaCha20_Poly1305.new(key=content_key, nonce=sealed.nonce)
    content.update(aad)
    return bytes(content.decrypt_and_verify(sealed.ciphertext[:-16], sealed.ciphertext[-16:]))


@pytest.mark.parametrize(
    "recipient", [VECTOR_SECP256K1, VECTOR_ED25519], ids=["secp256k1", "ed25519"]
)
def test_the_pinned_vector_opens_by_the_written_scheme(recipient: Identity) -> None:
    sealed = pb.SealedBatch.FromString(bytes.fromhex(VECTOR_SEALED_HEX))
    assert _open_by_the_spec(sealed, recipient, VECTOR_ORIGIN.peer_id) == BATCH
