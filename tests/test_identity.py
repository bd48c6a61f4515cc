from __future__ import annotations

import os
from pathlib import Path

import pytest

from threatmesh.identity import (
    KEY_FILE_NAME,
    IdentityError,
    KeyType,
    generate_identity,
    load_key_file,
    load_or_create,
    write_key_file,
)


def test_new_key_is_secp256k1_with_mode_0600(tmp_path: Path) -> None:
    identity, created = load_or_create(tmp_path)
    assert created
    assert identity.key_type is KeyType.SECP256K1
    assert (tmp_path / KEY_FILE_NAME).stat().st_mode & 0o777 == 0o600
    # secp256k1 peer IDs are identity multihashes of the protobuf public key: "16Uiu2..."
    assert identity.peer_id.to_base58().startswith("16Uiu2")


def test_peer_id_is_stable_across_loads(tmp_path: Path) -> None:
    first, _ = load_or_create(tmp_path)
    second, created = load_or_create(tmp_path)
    assert not created
    assert second.peer_id == first.peer_id
    assert load_key_file(tmp_path / KEY_FILE_NAME).peer_id == first.peer_id


def test_ed25519_by_option(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path, KeyType.ED25519)
    assert identity.key_type is KeyType.ED25519
    assert identity.peer_id.to_base58().startswith("12D3KooW")
    assert load_key_file(tmp_path / KEY_FILE_NAME).peer_id == identity.peer_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create(tmp_path)
    path = tmp_path / KEY_FILE_NAME
    os.chmod(path, mode)
    with pytest.raises(IdentityError, match=r"too open.*chmod 600") as error:
        load_key_file(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", os.urandom(36), b"\x08\x02\x12\x20" + b"\x00" * 31, b"x" * 5000],
    ids=["empty", "text", "random", "short-secp256k1", "huge"],
)
def test_corrupt_key_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="corrupt"):
        load_key_file(path)


def test_missing_key_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="threatmesh init"):
        load_key_file(tmp_path / KEY_FILE_NAME)


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path)
    with pytest.raises(IdentityError, match="already exists"):
        write_key_file(tmp_path / KEY_FILE_NAME, generate_identity())
    assert load_key_file(tmp_path / KEY_FILE_NAME).peer_id == identity.peer_id


def test_key_file_is_the_libp2p_protobuf(tmp_path: Path) -> None:
    # The same bytes go-libp2p's crypto.MarshalPrivateKey writes: field 1 (type, 2 =
    # secp256k1), field 2 (32-byte key).
    load_or_create(tmp_path)
    data = (tmp_path / KEY_FILE_NAME).read_bytes()
    assert data[:4] == b"\x08\x02\x12\x20"
    assert len(data) == 36
