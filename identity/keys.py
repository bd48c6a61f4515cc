"""The node's key pair and the key file that holds it.

Rules:
- A node has one key pair for life; its peer ID is derived from the public key, so the peer ID
  is stable across restarts as long as ``<home>/identity.key`` is kept.
- secp256k1 is the default key type (the design's choice; coincurve does the curve work),
  ed25519 is an option.
- The file holds the libp2p ``PrivateKey`` protobuf (the same bytes go-libp2p and kubo export),
  so a key can move between implementations.
- The file is created with mode 0600 and never exists with wider rights, even briefly. A key
  file that group or others can read or write, or that does not decode, is refused with one
  line that says what to do, as ssh does: a leaked key is a stolen identity.
- A peer ID that arrives as text (a file, the CLI, the API) is checked by ``parse_peer_id``:
  it must be a multihash of a public key (libp2p peer-ids spec) in its one canonical base58
  form, so that one peer cannot be written two ways.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from libp2p.crypto import ed25519, secp256k1
from libp2p.crypto.keys import KeyPair, PrivateKey
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from threatmesh.identity.private_files import create_private_file, read_private_file

KEY_FILE_NAME = "identity.key"

# A serialized libp2p private key is a few dozen bytes; anything much larger is not a key file.
MAX_KEY_FILE_BYTES = 4096

# Peer IDs are multihashes (libp2p peer-ids spec): the identity hash (code 0x00) of a
# protobuf public key of at most 42 bytes (ed25519, secp256k1), or SHA-256 (0x12, 32 bytes)
# of a larger one (RSA).
_IDENTITY_MULTIHASH = 0x00
_MAX_INLINED_KEY_BYTES = 42
_SHA256_MULTIHASH = 0x12
_SHA256_BYTES = 32


class IdentityError(Exception):
    """The key file is missing, unreadable, too open or corrupt; the message says which."""


class KeyType(enum.StrEnum):
    SECP256K1 = "secp256k1"
    ED25519 = "ed25519"


@dataclass(frozen=True)
class Identity:
    """A key pair and the peer ID derived from it."""

    key_pair: KeyPair
    peer_id: ID

    @classmethod
    def from_private_key(cls, private_key: PrivateKey) -> Identity:
        key_pair = KeyPair(private_key, private_key.get_public_key())
        return cls(key_pair=key_pair, peer_id=ID.from_pubkey(key_pair.public_key))

    @property
    def key_type(self) -> KeyType:
        return KeyType(self.key_pair.private_key.get_type().name.lower())


def generate_identity(key_type: KeyType = KeyType.SECP256K1) -> Identity:
    if key_type is KeyType.SECP256K1:
        key_pair = secp256k1.create_new_key_pair()
    else:
        key_pair = ed25519.create_new_key_pair()
    return Identity.from_private_key(key_pair.private_key)


def write_key_file(path: Path, identity: Identity) -> None:
    """Write ``identity`` to a new file at ``path`` with mode 0600.

    The file is opened with O_EXCL and its mode at creation, so there is no moment at which
    another user could read it. An existing file is never overwritten: that would change the
    node's peer ID.
    """
    create_private_file(
        path,
        identity.key_pair.private_key.serialize(),
        what="key file",
        exists="a key file already exists",
        error=IdentityError,
    )


def load_key_file(path: Path) -> Identity:
    """Read the key file at ``path``; refuse it if it is too open or corrupt."""
    data = read_private_file(
        path,
        what="key file",
        secret="key",
        max_bytes=MAX_KEY_FILE_BYTES,
        missing="no key file; run `threatmesh init` first",
        error=IdentityError,
    )
    try:
        private_key = deserialize_private_key(data)
    except Exception:  # protobuf, coincurve and nacl raise many types for garbage
        raise IdentityError(f"{path}: the key file is corrupt (not a libp2p private key)") from None
    if private_key.get_type().name.lower() not in {key_type.value for key_type in KeyType}:
        raise IdentityError(
            f"{path}: unsupported key type {private_key.get_type().name}; "
            "threatmesh uses secp256k1 or ed25519"
        )
    return Identity.from_private_key(private_key)


def load_or_create(home: Path, key_type: KeyType = KeyType.SECP256K1) -> tuple[Identity, bool]:
    """Load ``<home>/identity.key``, creating it first if absent; return (identity, created)."""
    path = home / KEY_FILE_NAME
    if path.exists() or path.is_symlink():
        return load_key_file(path), False
    identity = generate_identity(key_type)
    write_key_file(path, identity)
    return identity, True


def parse_peer_id(text: str) -> ID:
    """The peer ID written as ``text`` (base58), or ValueError saying what is wrong.

    ``ID.from_base58`` accepts any base58 string; this also checks that the bytes are a peer
    ID: an identity multihash of a public key that decodes, or a SHA-256 multihash, written
    in its one canonical form.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("a peer ID must be a non-empty string")
    try:
        peer_id = ID.from_base58(text)
    except ValueError:
        raise ValueError(f"{_shown(text)} is not a peer ID (not base58)") from None
    data: bytes = peer_id.to_bytes()
    if len(data) < 2 or data[1] != len(data) - 2:
        raise ValueError(f"{_shown(text)} is not a peer ID (not a multihash)")
    code, length = data[0], data[1]
    if code == _IDENTITY_MULTIHASH and length <= _MAX_INLINED_KEY_BYTES:
        if peer_id.extract_public_key() is None:
            raise ValueError(f"{_shown(text)} is not a peer ID (its inlined key does not decode)")
    elif not (code == _SHA256_MULTIHASH and length == _SHA256_BYTES):
        raise ValueError(f"{_shown(text)} is not a peer ID (not an identity or SHA-256 multihash)")
    if peer_id.to_base58() != text:
        raise ValueError(f"{_shown(text)} is not a peer ID in canonical base58")
    return peer_id


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
