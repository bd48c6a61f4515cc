"""The private-swarm key file (``swarm.key``) in the kubo / go-ipfs format.

A private swarm is defined by one 256-bit pre-shared key that every member holds (libp2p spec
``pnet/Private-Networks-PSK-V1.md``). The file that carries it is three lines::

    /key/swarm/psk/1.0.0/
    /base16/            (or /base64/ or /bin/)
    <the 32-byte key in that encoding>

Rules:
- Decoding follows go-libp2p ``core/pnet/codec.go`` (``DecodeV1PSK``): the two header lines may
  end in ``\\n`` or ``\\r\\n``; ``/base16/`` takes upper or lower case hex, ``/base64/`` is the
  standard alphabet with padding, ``/bin/`` is the 32 raw bytes. We are stricter than go in one
  way: go reads 32 bytes and ignores whatever follows, we accept only a line ending after the
  key, so a pasted key with a stray character is reported instead of silently truncated.
- We always write ``/base16/`` with lower-case hex and a final newline: the one form that
  go, js and rust all read (rust-libp2p reads ``/base16/`` only).
- The key is a secret shared by the whole swarm. The file is created with mode 0600 and never
  exists with wider rights, even briefly; a file that group or others can read or write is
  refused with one line that says what to do, as ssh does.
- Every failure is a ``SwarmKeyError`` whose message names the file (or the ``source`` the
  caller gave) and what is wrong, so the CLI can print it as one line.
- ``fingerprint`` names a swarm without revealing its key (rust-libp2p's ``fingerprint``, said
  there to match go-ipfs output; not in the spec).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from pathlib import Path

from Crypto.Cipher import Salsa20

from threatmesh.identity.private_files import create_private_file, read_private_file
from threatmesh.transports.errors import SwarmKeyError

SWARM_KEY_BYTES = 32
FINGERPRINT_BYTES = 16

KEY_TYPE_LINE = b"/key/swarm/psk/1.0.0/"
BASE16_LINE = b"/base16/"
BASE64_LINE = b"/base64/"
BIN_LINE = b"/bin/"

# A well-formed key file is under 100 bytes; anything far larger is not one, and reading it
# whole would let a wrong path (a log, a disk image) eat memory.
MAX_SWARM_KEY_FILE_BYTES = 4096

# rust-libp2p transports/pnet/src/lib.rs `fingerprint`: Salsa20 keyed by the PSK with this
# 8-byte nonce over 64 zero bytes, then SHAKE128 truncated to 16 bytes.
_FINGERPRINT_NONCE = b"finprint"
_FINGERPRINT_INPUT = bytes(64)

_HEX_KEY = re.compile(rb"[0-9a-fA-F]{64}")
# What may follow the key: nothing, or one line ending.
_LINE_ENDINGS = (b"", b"\n", b"\r\n")


def generate_swarm_key() -> bytes:
    """Return a fresh random 32-byte pre-shared key."""
    return secrets.token_bytes(SWARM_KEY_BYTES)


def format_swarm_key(psk: bytes) -> bytes:
    """Encode ``psk`` as a kubo swarm.key file: the ``/base16/`` form, lower-case hex."""
    _check_key_length(psk, "swarm key")
    return KEY_TYPE_LINE + b"\n" + BASE16_LINE + b"\n" + psk.hex().encode("ascii") + b"\n"


def parse_swarm_key(data: bytes, source: str = "swarm key") -> bytes:
    """Decode a swarm.key file's bytes to the 32-byte key; ``source`` names it in errors."""
    key_type_line, rest = _split_line(data, source, "the key type line")
    if key_type_line != KEY_TYPE_LINE:
        raise SwarmKeyError(
            f"{source}: first line must be {KEY_TYPE_LINE.decode()} "
            f"(got {_show(key_type_line)}); not a swarm key file"
        )
    encoding_line, body = _split_line(rest, source, "the encoding line")
    if encoding_line == BASE16_LINE:
        return _decode_base16(body, source)
    if encoding_line == BASE64_LINE:
        return _decode_base64(body, source)
    if encoding_line == BIN_LINE:
        return _decode_bin(body, source)
    raise SwarmKeyError(
        f"{source}: unknown encoding {_show(encoding_line)}; expected /base16/, /base64/ or /bin/"
    )


def _create_private_file(path: Path, data: bytes, *, exists: str) -> None:
    create_private_file(path, data, what="swarm key file", exists=exists, error=SwarmKeyError)


def write_swarm_key(path: Path, psk: bytes, *, overwrite: bool = False) -> None:
    """Write ``psk`` to a new file at ``path`` with mode 0600.

    The file is opened with O_CREAT|O_EXCL and its mode given at creation, so no other user can
    ever read it. An existing file is refused unless ``overwrite``: replacing a swarm key cuts
    this node off from its swarm. With ``overwrite`` the new key goes to a fresh 0600 file
    beside ``path`` that then replaces it in one rename, so ``path`` always holds a whole key.
    """
    data = format_swarm_key(psk)
    if not overwrite:
        _create_private_file(path, data, exists="a swarm key file already exists")
        return
    temporary_path = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _create_private_file(temporary_path, data, exists="temporary file exists")
    try:
        os.replace(temporary_path, path)
    except OSError as error:
        temporary_path.unlink(missing_ok=True)
        raise SwarmKeyError(
            f"{path}: cannot replace the swarm key file: {error.strerror}"
        ) from None


def load_swarm_key(path: Path) -> bytes:
    """Read the swarm key at ``path``; refuse it if missing, too open or malformed."""
    data = read_private_file(
        path,
        what="swarm key file",
        secret="swarm key",
        max_bytes=MAX_SWARM_KEY_FILE_BYTES,
        missing="no swarm key file",
        error=SwarmKeyError,
    )
    return parse_swarm_key(data, source=str(path))


def fingerprint(psk: bytes) -> bytes:
    """The 16-byte PSK fingerprint of rust-libp2p / go-ipfs: names a swarm, hides its key."""
    _check_key_length(psk, "swarm key")
    keystream = Salsa20.new(key=psk, nonce=_FINGERPRINT_NONCE).encrypt(_FINGERPRINT_INPUT)
    return hashlib.shake_128(keystream).digest(FINGERPRINT_BYTES)


def _check_key_length(psk: bytes, source: str) -> None:
    if len(psk) != SWARM_KEY_BYTES:
        raise SwarmKeyError(f"{source}: key is {len(psk)} bytes; expected {SWARM_KEY_BYTES}")


def _split_line(data: bytes, source: str, what: str) -> tuple[bytes, bytes]:
    """Split off one header line; like go's readHeader, trailing ``\\r`` is dropped."""
    line, newline, rest = data.partition(b"\n")
    if not newline:
        raise SwarmKeyError(f"{source}: file ends before {what}; not a swarm key file")
    return line.rstrip(b"\r"), rest


def _decode_base16(body: bytes, source: str) -> bytes:
    text = _strip_line_ending(body)
    if len(text) != 2 * SWARM_KEY_BYTES:
        raise SwarmKeyError(
            f"{source}: base16 key is {len(text)} characters; "
            f"expected {2 * SWARM_KEY_BYTES} ({SWARM_KEY_BYTES} bytes)"
        )
    # bytes.fromhex would also accept spaces between digit pairs; the format has none.
    if not _HEX_KEY.fullmatch(text):
        raise SwarmKeyError(f"{source}: base16 key has characters that are not hex digits")
    return bytes.fromhex(text.decode("ascii"))


def _decode_base64(body: bytes, source: str) -> bytes:
    text = _strip_line_ending(body)
    try:
        psk = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SwarmKeyError(
            f"{source}: base64 key is not valid standard base64 (with = padding)"
        ) from None
    if len(psk) != SWARM_KEY_BYTES:
        raise SwarmKeyError(
            f"{source}: base64 key decodes to {len(psk)} bytes; expected {SWARM_KEY_BYTES}"
        )
    return psk


def _decode_bin(body: bytes, source: str) -> bytes:
    # The key is raw bytes and may itself contain \r or \n, so cut at exactly 32 bytes.
    psk, rest = body[:SWARM_KEY_BYTES], body[SWARM_KEY_BYTES:]
    if len(psk) != SWARM_KEY_BYTES or rest not in _LINE_ENDINGS:
        raise SwarmKeyError(
            f"{source}: binary key is {len(body)} bytes; expected {SWARM_KEY_BYTES} "
            "(optionally followed by one line ending)"
        )
    return psk


def _strip_line_ending(body: bytes) -> bytes:
    for ending in (b"\r\n", b"\n"):
        if body.endswith(ending):
            return body[: -len(ending)]
    return body


def _show(line: bytes) -> str:
    """A header line as it can be printed in one line of an error message."""
    shown = line[:40].decode("ascii", errors="replace")
    return repr(shown + ("..." if len(line) > 40 else ""))
