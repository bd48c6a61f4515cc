"""The swarm.key file: go-libp2p's decode cases, our exact output, file modes, fingerprint."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest

from threatmesh.transports.errors import SwarmKeyError
from threatmesh.transports.swarm_key import (
    fingerprint,
    format_swarm_key,
    generate_swarm_key,
    load_swarm_key,
    parse_swarm_key,
    write_swarm_key,
)

BYTES_0_TO_31 = bytes(range(32))


def key_file(encoding: bytes, body: bytes, *, windows: bool) -> bytes:
    """Build a file as go-libp2p core/pnet/codec_test.go `bufWithBase` does, then the body."""
    newline = b"\r\n" if windows else b"\n"
    return b"/key/swarm/psk/1.0.0/" + newline + encoding + newline + body


# go-libp2p core/pnet/codec_test.go: TestDecodeHex, TestDecodeB64, TestDecodeBin, each with
# and without Windows line endings.
@pytest.mark.parametrize("windows", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize(
    ("encoding", "body", "expected"),
    [
        (b"/base16/", b"FF" * 32, b"\xff" * 32),
        (b"/base64/", base64.standard_b64encode(BYTES_0_TO_31), BYTES_0_TO_31),
        (b"/bin/", BYTES_0_TO_31, BYTES_0_TO_31),
    ],
    ids=["base16", "base64", "bin"],
)
def test_decodes_go_codec_cases(encoding: bytes, body: bytes, expected: bytes, windows: bool):
    assert parse_swarm_key(key_file(encoding, body, windows=windows)) == expected


@pytest.mark.parametrize("windows", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("encoding", [b"/base16/", b"/base64/", b"/bin/"])
def test_decodes_with_trailing_line_ending(encoding: bytes, windows: bool):
    psk = bytes(range(100, 132))
    body = {
        b"/base16/": psk.hex().encode(),
        b"/base64/": base64.standard_b64encode(psk),
        b"/bin/": psk,
    }[encoding]
    ending = b"\r\n" if windows else b"\n"
    assert parse_swarm_key(key_file(encoding, body + ending, windows=windows)) == psk


@pytest.mark.parametrize("windows", [False, True], ids=["lf", "crlf"])
def test_unknown_encoding_is_refused(windows: bool):
    data = key_file(b"/verybadbase/", b"Have fun decoding that key", windows=windows)
    with pytest.raises(SwarmKeyError, match=r"my\.key: unknown encoding '/verybadbase/'"):
        parse_swarm_key(data, source="my.key")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"ends before the key type line"),
        (b"/key/swarm/psk/2.0.0/\n/base16/\n" + b"00" * 32, r"first line must be"),
        (b"/key/swarm/psk/1.0.0/\n", r"ends before the encoding line"),
        (b"/key/swarm/psk/1.0.0/\n/base16/\n" + b"00" * 31, r"62 characters; expected 64"),
        (b"/key/swarm/psk/1.0.0/\n/base16/\n" + b"00" * 33, r"66 characters; expected 64"),
        (b"/key/swarm/psk/1.0.0/\n/base16/\n" + b"zz" * 32, r"not hex digits"),
        (b"/key/swarm/psk/1.0.0/\n/base16/\n" + b"00 " * 21 + b"0", r"not hex digits"),
        (b"/key/swarm/psk/1.0.0/\n/base64/\n" + b"!" * 44, r"not valid standard base64"),
        (
            b"/key/swarm/psk/1.0.0/\n/base64/\n" + base64.standard_b64encode(bytes(31)),
            r"decodes to 31 bytes; expected 32",
        ),
        (b"/key/swarm/psk/1.0.0/\n/bin/\n" + bytes(31), r"binary key is 31 bytes"),
        (b"/key/swarm/psk/1.0.0/\n/bin/\n" + bytes(32) + b"xx", r"binary key is 34 bytes"),
    ],
    ids=[
        "empty",
        "bad-header",
        "no-encoding",
        "hex-short",
        "hex-long",
        "hex-bad-digit",
        "hex-spaces",
        "base64-bad",
        "base64-short",
        "bin-short",
        "bin-trailing-junk",
    ],
)
def test_malformed_key_names_source_and_problem(data: bytes, message: str):
    with pytest.raises(SwarmKeyError, match=r"^swarm\.key: .*" + message):
        parse_swarm_key(data, source="swarm.key")


def test_format_is_kubo_base16_lowercase():
    psk = bytes.fromhex("6189C5CF0B87FB800C1A9FEEDA73C6AB5E998DB48FB9E6A978575C770CEEF683")
    assert format_swarm_key(psk) == (
        b"/key/swarm/psk/1.0.0/\n/base16/\n"
        b"6189c5cf0b87fb800c1a9feeda73c6ab5e998db48fb9e6a978575c770ceef683\n"
    )
    # js-libp2p's generateKey writes the same 95 bytes, without the final newline.
    assert len(format_swarm_key(psk)) == 96


def test_format_parse_round_trip():
    for _ in range(20):
        psk = generate_swarm_key()
        assert len(psk) == 32
        assert parse_swarm_key(format_swarm_key(psk)) == psk


def test_generated_keys_differ():
    assert generate_swarm_key() != generate_swarm_key()


def test_format_refuses_wrong_length():
    with pytest.raises(SwarmKeyError, match="31 bytes; expected 32"):
        format_swarm_key(bytes(31))


def test_write_creates_owner_only_file(tmp_path: Path):
    path = tmp_path / "swarm.key"
    psk = generate_swarm_key()
    write_swarm_key(path, psk)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == format_swarm_key(psk)
    assert load_swarm_key(path) == psk


def test_write_is_0600_even_with_a_permissive_umask(tmp_path: Path):
    path = tmp_path / "swarm.key"
    old_umask = os.umask(0)
    try:
        write_swarm_key(path, generate_swarm_key())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_refuses_existing_file(tmp_path: Path):
    path = tmp_path / "swarm.key"
    first = generate_swarm_key()
    write_swarm_key(path, first)
    with pytest.raises(
        SwarmKeyError, match=rf"^{re.escape(str(path))}: a swarm key file already exists"
    ):
        write_swarm_key(path, generate_swarm_key())
    assert load_swarm_key(path) == first


def test_write_overwrite_replaces_and_stays_private(tmp_path: Path):
    path = tmp_path / "swarm.key"
    write_swarm_key(path, generate_swarm_key())
    second = generate_swarm_key()
    write_swarm_key(path, second, overwrite=True)
    assert load_swarm_key(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swarm.key"]


def test_write_refuses_missing_directory(tmp_path: Path):
    path = tmp_path / "no-such-dir" / "swarm.key"
    with pytest.raises(
        SwarmKeyError, match=rf"^{re.escape(str(path))}: cannot create the swarm key file"
    ):
        write_swarm_key(path, generate_swarm_key())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_too_open_file_is_refused(tmp_path: Path, mode: int):
    path = tmp_path / "swarm.key"
    write_swarm_key(path, generate_swarm_key())
    path.chmod(mode)
    with pytest.raises(SwarmKeyError) as caught:
        load_swarm_key(path)
    message = str(caught.value)
    assert message == (
        f"{path}: permissions {mode:04o} are too open; the swarm key must be readable by its "
        f"owner only (run: chmod 600 {path})"
    )
    assert "\n" not in message


def test_owner_read_only_file_is_accepted(tmp_path: Path):
    path = tmp_path / "swarm.key"
    psk = generate_swarm_key()
    write_swarm_key(path, psk)
    path.chmod(0o400)
    assert load_swarm_key(path) == psk


def test_missing_file_is_refused(tmp_path: Path):
    path = tmp_path / "swarm.key"
    with pytest.raises(SwarmKeyError, match=rf"^{re.escape(str(path))}: no swarm key file$"):
        load_swarm_key(path)


def test_directory_is_refused(tmp_path: Path):
    with pytest.raises(SwarmKeyError, match=rf"^{re.escape(str(tmp_path))}: is a directory"):
        load_swarm_key(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_refused(tmp_path: Path):
    path = tmp_path / "swarm.key"
    write_swarm_key(path, generate_swarm_key())
    path.chmod(0o000)
    try:
        with pytest.raises(
            SwarmKeyError, match=rf"^{re.escape(str(path))}: cannot read the swarm key file"
        ):
            load_swarm_key(path)
    finally:
        path.chmod(0o600)


def test_unreadable_file_is_refused_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "swarm.key"
    write_swarm_key(path, generate_swarm_key())

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(
        SwarmKeyError,
        match=rf"^{re.escape(str(path))}: cannot read the swarm key file: Permission denied$",
    ):
        load_swarm_key(path)


def test_bad_content_names_the_file(tmp_path: Path):
    path = tmp_path / "swarm.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as key_file_handle:
        key_file_handle.write(b"/key/swarm/psk/1.0.0/\n/base32/\nAAAA\n")
    with pytest.raises(
        SwarmKeyError, match=rf"^{re.escape(str(path))}: unknown encoding '/base32/'"
    ):
        load_swarm_key(path)


def test_huge_file_is_refused_without_reading_it(tmp_path: Path):
    path = tmp_path / "swarm.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as key_file_handle:
        key_file_handle.write(b"x" * 10_000)
    with pytest.raises(SwarmKeyError, match=rf"^{re.escape(str(path))}: 10000 bytes is too large"):
        load_swarm_key(path)


def test_fingerprint_matches_rust_libp2p_vector():
    # rust-libp2p transports/pnet/src/lib.rs test `fingerprint` ("checked against go-ipfs").
    psk = parse_swarm_key(
        b"/key/swarm/psk/1.0.0/\n/base16/\n"
        b"6189c5cf0b87fb800c1a9feeda73c6ab5e998db48fb9e6a978575c770ceef683"
    )
    assert fingerprint(psk) == bytes.fromhex("45fc986bbc9388a11d939df26f730f0c")


def test_fingerprint_differs_per_key():
    assert fingerprint(bytes(32)) != fingerprint(b"\x01" + bytes(31))
    assert len(fingerprint(generate_swarm_key())) == 16
