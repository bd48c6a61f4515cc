"""Sealed batches: an AMBER, AMBER+STRICT or RED ``Batch`` encrypted to chosen recipients.

This module owns the encryption of restricted batches (DESIGN.md, "Trust and sensitivity",
enforcement layer 3): even a copy that reaches an untrusted peer reveals nothing. It is pure:
no I/O, no clock; randomness comes from ``rng`` so tests can pin the output. Who the
recipients are is the caller's decision (the trust store); nobody is added or left out here.

The scheme (the byte-level layout is in ``threatmesh.proto``, message ``SealedBatch``):

1. Draw a fresh 32-byte content key K and a 12-byte nonce N. Encrypt the Batch bytes once
   with ChaCha20-Poly1305 (RFC 8439) under K and N, with associated data
   ``"threatmesh/seal/v1/batch" || u8(tlp) || origin peer ID``.
2. Draw one ephemeral key per curve that some recipient needs: secp256k1 (for secp256k1
   peers) and X25519 (for ed25519 peers, whose keys are mapped to X25519, RFC 7748). They are
   fresh per batch and thrown away after sealing.
3. For each recipient (each peer ID once): its public key is read from its peer ID (an
   identity multihash inlines it); an ECDH with the ephemeral key gives a shared secret; the
   key-encryption key is HKDF-SHA256 (RFC 5869) of it, with info
   ``label || ephemeral public key || recipient peer ID``; K encrypted under the KEK with
   ChaCha20-Poly1305 (12 zero bytes of nonce) goes into a slot labelled with
   ``key_id = SHA-256(recipient peer ID)[:8]``. Slots are sorted by key_id.

Opening is the reverse for the one slot (or few, if key_ids collide) carrying our key_id.

Why it is built this way:

- One content key per batch means the batch is encrypted once whatever the number of
  recipients; each recipient costs one ECDH, one HKDF and a 56-byte slot.
- One ephemeral key per curve per batch (not per recipient) halves the work and the size.
  It is safe because the KDF binds each recipient's peer ID, so every KEK is distinct, and
  because the ephemeral key is fresh, so every KEK encrypts exactly one message: the fixed
  all-zero wrap nonce is never reused under a key.
- The associated data binds the level and the origin, so a ciphertext cannot be replayed on
  another level's topic (a RED batch as AMBER) or under another origin. The seal does not
  authenticate the origin itself: that is GossipSub's StrictSign, which signs the whole
  payload. A recipient knows K and could encrypt something else under it, but could not sign
  it as the origin.
- key_ids let a recipient find its slot with one hash rather than an ECDH per slot. The price:
  anyone who can list candidate peer IDs (peer IDs are public in the swarm) learns who the
  publisher seals for, that is, whom it trusts at that level. The content stays secret.
- A signing key is reused for key agreement (secp256k1 ECDSA + ECDH, as devp2p's ECIES does;
  Ed25519 + X25519, as age's ssh-ed25519 recipients do), so the publisher needs nothing but
  a peer ID to seal for a peer. RSA peer IDs hash their key, so such peers cannot be
  recipients.
- ChaCha20-Poly1305 does not commit to its key: a malicious origin could craft one
  ciphertext that opens to different batches for different recipients. The origin signs what
  it sends and answers for it; nothing in threatmesh relies on recipients seeing one
  plaintext, so version 1 accepts this.
- Zero recipients is allowed: the result is a batch nobody can open (no slots, no ephemeral
  keys). Whether to publish it is the caller's decision.
- Everything is bounded (``MAX_RECIPIENTS``, ``MAX_BATCH_BYTES``, exact lengths of nonce,
  ephemeral keys, key_ids and slots) and checked before any cryptography is done.

Errors: ``SealError`` (and its subclass ``NotForUs``) for everything wrong with the input.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import coincurve
import nacl.bindings
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from libp2p.crypto.keys import KeyType, PrivateKey, PublicKey
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from threatmesh.pubsub.proto import threatmesh_pb2 as pb

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_RECIPIENTS",
    "SEALED_LEVELS",
    "NotForUs",
    "SealError",
    "key_id",
    "open_sealed",
    "recipient_public_key",
    "seal",
]

SEALED_LEVELS = frozenset({pb.TLP_AMBER, pb.TLP_AMBER_STRICT, pb.TLP_RED})

MAX_RECIPIENTS = 1024  # a slot is 62 bytes on the wire: 1024 are ~62 KiB of a 1 MiB message
MAX_BATCH_BYTES = 1024 * 1024  # plaintext; GossipSub's RPC frame limit, so no larger can travel

CONTENT_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16  # Poly1305
KEY_ID_BYTES = 8
WRAPPED_KEY_BYTES = CONTENT_KEY_BYTES + TAG_BYTES
SECP256K1_POINT_BYTES = 33  # compressed
SECP256K1_SECRET_BYTES = 32
X25519_KEY_BYTES = 32
_WRAP_NONCE = bytes(NONCE_BYTES)  # each KEK encrypts one message (module docstring)

_BATCH_AAD_LABEL = b"threatmesh/seal/v1/batch"

# A peer ID is a multihash: 0x00 <length> <key> inlines a PublicKey protobuf; 0x12 0x20
# <32 bytes> is SHA-256 of one (RSA and other large keys).
_IDENTITY_MULTIHASH = 0x00
_SHA2_256_MULTIHASH = 0x12

Rng = Callable[[int], bytes]


class SealError(ValueError):
    """A batch cannot be sealed or opened; the message names the field or peer at fault."""


class NotForUs(SealError):
    """The sealed batch holds no content key we can unwrap: we are not a recipient."""


class _Curve(enum.Enum):
    """The key agreement used for a recipient; ``value`` is the KDF label."""

    SECP256K1 = b"threatmesh/seal/v1/kek/secp256k1"
    X25519 = b"threatmesh/seal/v1/kek/x25519"


@dataclass(frozen=True)
class _Recipient:
    peer_id: ID
    curve: _Curve
    public: bytes  # compressed secp256k1 point or X25519 public key
    key_id: bytes


# Public helpers -------------------------------------------------------------------------------


def key_id(peer_id: ID) -> bytes:
    """The slot label of ``peer_id``: the first 8 bytes of SHA-256 of its peer ID bytes."""
    return hashlib.sha256(peer_id.to_bytes()).digest()[:KEY_ID_BYTES]


def recipient_public_key(peer: ID) -> PublicKey:
    """The public key inlined in ``peer``'s ID; ``SealError`` if it is hashed or unsupported."""
    data = peer.to_bytes()
    if len(data) >= 2 and data[0] == _SHA2_256_MULTIHASH:
        raise SealError(
            f"peer {peer} cannot be a recipient: its ID is a hash of its key (RSA or another "
            "large key), so the key is not known; only secp256k1 and ed25519 peers can be"
        )
    # An inlined key is at most 42 bytes (py-libp2p's MAX_INLINE_KEY_LENGTH), so its length is
    # a one-byte varint.
    if len(data) < 2 or data[0] != _IDENTITY_MULTIHASH or data[1] != len(data) - 2:
        raise SealError(f"peer {peer} cannot be a recipient: its ID is not a valid multihash")
    try:
        public_key = deserialize_public_key(data[2:])
    except Exception:  # protobuf, coincurve and the deserializer table raise many types
        raise SealError(
            f"peer {peer} cannot be a recipient: its ID does not hold a valid public key"
        ) from None
    if public_key.get_type() not in (KeyType.Secp256k1, KeyType.Ed25519):
        raise SealError(
            f"peer {peer} cannot be a recipient: key type {public_key.get_type().name} is not "
            "supported (secp256k1 or ed25519)"
        )
    return public_key


# Sealing --------------------------------------------------------------------------------------


def seal(
    batch_bytes: bytes,
    *,
    tlp: int,
    origin: ID,
    recipients: Iterable[ID],
    rng: Rng = os.urandom,
) -> pb.SealedBatch:
    """Encrypt ``batch_bytes`` (a serialized Batch) for each of ``recipients``.

    ``origin`` is our own peer ID (the one that signs the pubsub message). Recipients are
    deduplicated; an empty set gives a batch nobody can open. ``rng(n)`` must return ``n``
    random bytes; it is called for the content key (32), the nonce (12), then the secp256k1
    ephemeral secret (32) if a recipient is secp256k1, then the X25519 one (32) if a
    recipient is ed25519, in that order.
    """
    if tlp not in SEALED_LEVELS:
        raise SealError(f"tlp: level {tlp} is not sealed (only AMBER, AMBER+STRICT and RED)")
    if len(batch_bytes) > MAX_BATCH_BYTES:
        raise SealError(f"batch: {len(batch_bytes)} bytes; at most {MAX_BATCH_BYTES}")
    sealed_for = _recipients(recipients)

    content_key = _draw(rng, CONTENT_KEY_BYTES, "content key")
    nonce = _draw(rng, NONCE_BYTES, "nonce")
    sealed = pb.SealedBatch(
        tlp=pb.Tlp.ValueType(tlp),
        nonce=nonce,
        ciphertext=ChaCha20Poly1305(content_key).encrypt(
            nonce, batch_bytes, _batch_aad(tlp, origin)
        ),
    )
    # Per curve needed: the ephemeral public key sent, and the key agreement with a recipient.
    curves = {recipient.curve for recipient in sealed_for}
    agreements: dict[_Curve, tuple[bytes, Callable[[bytes], bytes | None]]] = {}
    if _Curve.SECP256K1 in curves:
        secp256k1_secret = _draw(rng, SECP256K1_SECRET_BYTES, "secp256k1 ephemeral secret")
        try:
            public = coincurve.PublicKey.from_secret(secp256k1_secret).format(compressed=True)
        except ValueError:  # 0 or >= the group order: 2^-128 odds from a real rng
            raise SealError("rng gave an invalid secp256k1 secret") from None
        sealed.ephemeral_secp256k1 = public
        agreements[_Curve.SECP256K1] = (public, partial(_secp256k1_shared, secp256k1_secret))
    if _Curve.X25519 in curves:
        x25519_key = X25519PrivateKey.from_private_bytes(
            _draw(rng, X25519_KEY_BYTES, "X25519 ephemeral secret")
        )
        sealed.ephemeral_x25519 = public = x25519_key.public_key().public_bytes_raw()
        agreements[_Curve.X25519] = (public, partial(_x25519_shared, x25519_key))

    for recipient in sealed_for:
        ephemeral_public, agree = agreements[recipient.curve]
        shared = agree(recipient.public)
        if shared is None:  # not expected: _recipient checked the key
            raise SealError(f"peer {recipient.peer_id}: key agreement with its key failed")
        kek = _kek(recipient.curve, shared, ephemeral_public, recipient.peer_id)
        wrapped = ChaCha20Poly1305(kek).encrypt(_WRAP_NONCE, content_key, None)
        sealed.keys.add(key_id=recipient.key_id, wrapped=wrapped)
    return sealed


def _recipients(peers: Iterable[ID]) -> list[_Recipient]:
    """Each peer once, with its key, sorted by key_id; bounded while reading ``peers``."""
    unique: dict[bytes, ID] = {}
    for peer in peers:
        unique.setdefault(peer.to_bytes(), peer)
        if len(unique) > MAX_RECIPIENTS:
            raise SealError(f"recipients: more than {MAX_RECIPIENTS}")
    found = [_recipient(peer) for peer in unique.values()]
    found.sort(key=lambda recipient: (recipient.key_id, recipient.peer_id.to_bytes()))
    return found


def _recipient(peer: ID) -> _Recipient:
    public_key = recipient_public_key(peer)
    if public_key.get_type() is KeyType.Secp256k1:
        return _Recipient(peer, _Curve.SECP256K1, public_key.to_bytes(), key_id(peer))
    try:
        montgomery = bytes(
            nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key.to_bytes())
        )
    except RuntimeError:  # libsodium refuses non-points and small-order points
        raise SealError(
            f"peer {peer} cannot be a recipient: its ed25519 key is not a usable curve point"
        ) from None
    return _Recipient(peer, _Curve.X25519, montgomery, key_id(peer))


# Opening --------------------------------------------------------------------------------------


def open_sealed(sealed: pb.SealedBatch, *, origin: ID, me: ID, private_key: PrivateKey) -> bytes:
    """The Batch bytes inside ``sealed``, which ``origin`` published; we are ``me``.

    The caller checks ``sealed.tlp`` against the topic's level first; the associated data
    makes sure it is the level the origin sealed at. Raises ``NotForUs`` when no slot carries
    our key_id or none of ours unwraps, and ``SealError`` for malformed or forged input.
    """
    _check_shape(sealed)
    curve = _our_curve(private_key)
    if ID.from_pubkey(private_key.get_public_key()) != me:
        raise SealError(f"me: {me} is not the peer ID of the private key given")
    our_key_id = key_id(me)
    our_slots = [slot.wrapped for slot in sealed.keys if slot.key_id == our_key_id]
    if not our_slots:
        raise NotForUs(f"no slot for {me} among {len(sealed.keys)}")

    if curve is _Curve.SECP256K1:
        if not sealed.ephemeral_secp256k1:
            raise SealError("ephemeral_secp256k1: missing, but a slot is for our secp256k1 key")
        ephemeral_public = sealed.ephemeral_secp256k1
        shared = _secp256k1_shared(private_key.to_bytes(), ephemeral_public)
        if shared is None:
            raise SealError("ephemeral_secp256k1: not a valid secp256k1 point")
    else:
        if not sealed.ephemeral_x25519:
            raise SealError("ephemeral_x25519: missing, but a slot is for our ed25519 key")
        ephemeral_public = sealed.ephemeral_x25519
        shared = _x25519_shared(_x25519_key(private_key), ephemeral_public)
        if shared is None:
            raise SealError("ephemeral_x25519: an X25519 key of small order")
    kek = _kek(curve, shared, ephemeral_public, me)

    content_key = _unwrap(kek, our_slots)
    if content_key is None:
        raise NotForUs(f"none of the {len(our_slots)} slot(s) labelled for {me} unwraps")
    try:
        return ChaCha20Poly1305(content_key).decrypt(
            sealed.nonce, sealed.ciphertext, _batch_aad(sealed.tlp, origin)
        )
    except InvalidTag:
        raise SealError(
            f"ciphertext: fails authentication (tampered, or not sealed by {origin} at tlp "
            f"{sealed.tlp})"
        ) from None


def _check_shape(sealed: pb.SealedBatch) -> None:
    """Every bound and length of ``sealed``, before any cryptography."""
    if sealed.tlp not in SEALED_LEVELS:
        raise SealError(f"tlp: level {sealed.tlp} is not a sealed level")
    if len(sealed.nonce) != NONCE_BYTES:
        raise SealError(f"nonce: {len(sealed.nonce)} bytes; must be {NONCE_BYTES}")
    if not TAG_BYTES <= len(sealed.ciphertext) <= MAX_BATCH_BYTES + TAG_BYTES:
        raise SealError(
            f"ciphertext: {len(sealed.ciphertext)} bytes; must be {TAG_BYTES} to "
            f"{MAX_BATCH_BYTES + TAG_BYTES}"
        )
    if len(sealed.keys) > MAX_RECIPIENTS:
        raise SealError(f"keys: {len(sealed.keys)} slots; at most {MAX_RECIPIENTS}")
    if sealed.ephemeral_secp256k1 and len(sealed.ephemeral_secp256k1) != SECP256K1_POINT_BYTES:
        raise SealError(
            f"ephemeral_secp256k1: {len(sealed.ephemeral_secp256k1)} bytes; "
            f"must be {SECP256K1_POINT_BYTES}"
        )
    if sealed.ephemeral_x25519 and len(sealed.ephemeral_x25519) != X25519_KEY_BYTES:
        raise SealError(
            f"ephemeral_x25519: {len(sealed.ephemeral_x25519)} bytes; must be {X25519_KEY_BYTES}"
        )
    for index, slot in enumerate(sealed.keys):
        if len(slot.key_id) != KEY_ID_BYTES or len(slot.wrapped) != WRAPPED_KEY_BYTES:
            raise SealError(
                f"keys[{index}]: key_id {len(slot.key_id)} and wrapped {len(slot.wrapped)} "
                f"bytes; must be {KEY_ID_BYTES} and {WRAPPED_KEY_BYTES}"
            )


def _our_curve(private_key: PrivateKey) -> _Curve:
    key_type = private_key.get_type()
    if key_type is KeyType.Secp256k1:
        return _Curve.SECP256K1
    if key_type is KeyType.Ed25519:
        return _Curve.X25519
    raise SealError(f"private_key: type {key_type.name} cannot open sealed batches")


def _x25519_key(private_key: PrivateKey) -> X25519PrivateKey:
    """Our ed25519 key's X25519 key (libsodium's conversion: clamped SHA-512 of the seed)."""
    _, expanded = nacl.bindings.crypto_sign_seed_keypair(private_key.to_bytes())
    secret = bytes(nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(expanded))
    return X25519PrivateKey.from_private_bytes(secret)


def _unwrap(kek: bytes, wrapped_keys: list[bytes]) -> bytes | None:
    aead = ChaCha20Poly1305(kek)
    for wrapped in wrapped_keys:
        try:
            return aead.decrypt(_WRAP_NONCE, wrapped, None)
        except InvalidTag:
            continue  # a key_id collision or a forged slot: try the next
    return None


# Shared steps ---------------------------------------------------------------------------------


def _batch_aad(tlp: int, origin: ID) -> bytes:
    return _BATCH_AAD_LABEL + bytes([tlp]) + origin.to_bytes()


def _kek(curve: _Curve, shared: bytes, ephemeral_public: bytes, recipient: ID) -> bytes:
    info = curve.value + ephemeral_public + recipient.to_bytes()
    kdf = HKDF(algorithm=hashes.SHA256(), length=CONTENT_KEY_BYTES, salt=None, info=info)
    return kdf.derive(shared)


def _secp256k1_shared(secret: bytes, point: bytes) -> bytes | None:
    """SEC 1 ECDH: the x-coordinate of ``secret`` x ``point``; None if ``point`` is invalid."""
    try:
        return coincurve.PublicKey(point).multiply(secret).format(compressed=True)[1:]
    except ValueError:
        return None


def _x25519_shared(our_key: X25519PrivateKey, public: bytes) -> bytes | None:
    """RFC 7748 X25519; None for an all-zero result (``public`` of small order)."""
    try:
        return our_key.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return None


def _draw(rng: Rng, size: int, what: str) -> bytes:
    data = rng(size)
    if len(data) != size:
        raise SealError(f"rng gave {len(data)} bytes for the {what}; {size} were asked")
    return data
