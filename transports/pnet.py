"""Private-network (pnet) protection of raw connections, wire-compatible with go, js and rust.

This module is the one adapter for pnet: it owns the stream cipher, the connection wrapper
and the switch that makes py-libp2p's swarm use them.

What the spec says (libp2p/specs ``pnet/Private-Networks-PSK-V1.md``): each side of a
connection sends a fresh random 24-byte nonce, then everything it writes is XORed with an
XSalsa20 stream keyed by the 32-byte PSK and that nonce. The two directions are independent:
one cipher per direction, each keyed by its sender's nonce. go-libp2p
(``p2p/net/pnet/psk_conn.go``), js-libp2p (``packages/pnet``) and rust-libp2p
(``transports/pnet``) all do exactly this.

What upstream does: py-libp2p 0.8.1 ``security/pnet/psk_conn.py:26-28`` sends an **8-byte**
nonce and uses plain Salsa20 (its docstring at ``:23`` says 24), and ``:41-43`` takes a single
``read(8)`` as the whole nonce. It is not wire-compatible with any other implementation, and a
short read breaks it. The swarm calls ``new_protected_conn`` (imported at
``network/swarm.py:54``) at ``:1139`` (outbound dial), ``:1459`` (dial from a source port, hole
punching) and ``:2102`` (inbound), looking the module global up at call time; ``install()``
rebinds that global to ``protect``.

Why we differ, beyond the wire format:
- Fail fast on a wrong key. A wrong PSK decrypts to noise, which py-libp2p's multistream
  parser may wait on until a 10 s (listener) or 30 s (dialer) timeout. Both sides of every
  TCP/WebSocket upgrade begin with the multistream-select header
  ``b"\\x13/multistream/1.0.0\\n"``, so we check the first 20 decrypted bytes against it and
  refuse on the first mismatch: one round trip, and still wire-compatible.
- Bound the handshake. A peer with no PSK, or one that says nothing, must be refused in under
  2 s. The handshake (sending our nonce, and every read until the peer's nonce and header
  are in) shares one deadline, ``handshake_timeout_s`` after the first I/O (js-libp2p uses
  1 s).
- Our failures are ``PnetHandshakeError``, a ``RawConnError`` (see its docstring), so the
  swarm handles them like a broken socket: a failed-upgrade log line and a failed dial,
  never a crash.

Rules:
- One writer at a time is enforced here (a lock), because the keystream position must follow
  the byte order on the wire. Reads are not locked: like the socket below, a conn has one
  reader (the security handshake, then the muxer's read loop).
- After a handshake failure the underlying conn is closed and every later read or write
  raises the same error.
- pnet runs over TCP and WebSocket only. QUIC conns arrive already secured and multiplexed;
  ``protect`` refuses them, as go-libp2p refuses a PSK with QUIC
  (``p2p/transport/quic/transport.go:74``).
- Relayed conns are not covered by ``install()`` alone: py-libp2p's outbound relay path
  (``relay/circuit_v2/transport.py:268`` -> ``host/basic_host.py:1593``
  ``upgrade_outbound_raw_conn``) never calls ``new_protected_conn``, while the inbound relay
  path does (``swarm.py:2102``). ``transports/relay.py`` therefore dials through a relay
  itself and protects the outbound relayed conn as the swarm protects a direct one
  (tests/test_supernodes_units.py has a private-swarm circuit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Callable
from typing import Any, NoReturn

import libp2p.network.swarm as libp2p_swarm
import trio
from Crypto.Cipher import Salsa20
from libp2p.abc import IMuxedConn, IRawConnection
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.exceptions import RawConnError
from multiaddr import Multiaddr

from threatmesh.transports.errors import PnetError

PSK_BYTES = 32
NONCE_BYTES = 24
HSALSA20_NONCE_BYTES = 16

logger = logging.getLogger(__name__)

# Both sides of every libp2p TCP/WebSocket upgrade start with this multistream-select line
# (varint length 19, then the protocol id and "\n"); it is the first plaintext after the nonce.
MULTISTREAM_HEADER = b"\x13/multistream/1.0.0\n"

# The requirement is that a wrong-key or no-key peer is refused within 2 s of the dial. The
# handshake deadline plus TCP connect, close and the swarm's own bookkeeping must fit in that,
# so take js-libp2p's 1 s default: it leaves a second of slack for a slow link or machine.
DEFAULT_HANDSHAKE_TIMEOUT_S = 1.0

# Closing after a failed handshake is best effort; a WebSocket close can wait on the peer.
CLOSE_TIMEOUT_S = 0.25

_MASK32 = 0xFFFFFFFF
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")


class PnetHandshakeError(PnetError, RawConnError):
    """The pnet handshake failed: wrong PSK, peer without a PSK, EOF or no answer in time.

    It is a ``RawConnError`` (an ``IOException``) on purpose. During the security upgrade the
    swarm reads and writes through multistream-select, whose communicator turns an
    ``IOException`` into ``MultiselectCommunicatorError``
    (``protocol_muxer/multiselect_communicator.py:42,54``); that becomes a
    ``MultiselectError`` / ``MultiselectClientError``, the upgrader makes it a
    ``SecurityUpgradeFailure`` (``transport/upgrader.py:74``), and the swarm logs one line and
    raises ``SwarmException`` (outbound ``network/swarm.py:1255-1266``, inbound
    ``:2164-2177``). So a refused peer is a failed dial, exactly like a reset socket. Any other
    type (``ValueError``, a bare ``PnetError``, ``trio.TooSlowError``) would escape those
    handlers and reach the caller of ``connect()`` raw. It is also a ``PnetError`` so that our
    own code can catch it by what it means; the reason survives in the ``__cause__`` chain.
    """


def hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """HSalsa20: derive the 32-byte XSalsa20 subkey from ``key`` and the nonce's first 16 bytes.

    Pure Python; it runs once per direction per connection, so speed does not matter.
    (PyNaCl does not expose ``crypto_core_hsalsa20``, and pycryptodome has no XSalsa20.)
    """
    if len(key) != PSK_BYTES:
        raise ValueError(f"HSalsa20 key must be {PSK_BYTES} bytes, got {len(key)}")
    if len(nonce16) != HSALSA20_NONCE_BYTES:
        raise ValueError(f"HSalsa20 input must be {HSALSA20_NONCE_BYTES} bytes, got {len(nonce16)}")
    key_words = struct.unpack("<8I", key)
    nonce_words = struct.unpack("<4I", nonce16)
    # The Salsa20 state layout: constants on the diagonal, key around them, nonce in the middle.
    x = [
        _SIGMA[0], *key_words[:4],
        _SIGMA[1], *nonce_words,
        _SIGMA[2], *key_words[4:],
        _SIGMA[3],
    ]  # fmt: skip

    def quarter_round(a: int, b: int, c: int, d: int) -> None:
        x[b] ^= _rotl32((x[a] + x[d]) & _MASK32, 7)
        x[c] ^= _rotl32((x[b] + x[a]) & _MASK32, 9)
        x[d] ^= _rotl32((x[c] + x[b]) & _MASK32, 13)
        x[a] ^= _rotl32((x[d] + x[c]) & _MASK32, 18)

    for _ in range(10):  # 20 rounds = 10 double rounds
        quarter_round(0, 4, 8, 12)  # columns
        quarter_round(5, 9, 13, 1)
        quarter_round(10, 14, 2, 6)
        quarter_round(15, 3, 7, 11)
        quarter_round(0, 1, 2, 3)  # rows
        quarter_round(5, 6, 7, 4)
        quarter_round(10, 11, 8, 9)
        quarter_round(15, 12, 13, 14)
    # Unlike the Salsa20 block function, HSalsa20 adds no input back and outputs the diagonal
    # and the nonce positions.
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


def _rotl32(value: int, shift: int) -> int:
    return ((value << shift) & _MASK32) | (value >> (32 - shift))


class XSalsa20:
    """An XSalsa20 keystream: ``xor`` calls continue where the previous one stopped.

    XSalsa20(key, nonce24) = Salsa20(HSalsa20(key, nonce24[:16]), nonce24[16:]); pycryptodome
    does the Salsa20 part (in C), since it rejects 24-byte nonces itself.
    """

    def __init__(self, key: bytes, nonce: bytes) -> None:
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"XSalsa20 nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
        subkey = hsalsa20(key, nonce[:HSALSA20_NONCE_BYTES])
        self._cipher = Salsa20.new(key=subkey, nonce=nonce[HSALSA20_NONCE_BYTES:])

    def xor(self, data: bytes) -> bytes:
        """XOR ``data`` with the next ``len(data)`` keystream bytes (encrypts and decrypts)."""
        return self._cipher.encrypt(data)


class PnetConn(IRawConnection):
    """A raw connection whose bytes are XSalsa20-encrypted with the swarm's PSK.

    Writing: the first write sends our 24-byte nonce and the first ciphertext in one write.
    Reading: the first read takes exactly 24 bytes of the peer's nonce (looping on short
    reads), then decrypts; the first 20 plaintext bytes must be the multistream header.
    """

    is_initiator: bool

    def __init__(
        self,
        conn: IRawConnection,
        psk: bytes,
        *,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        nonce_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(psk) != PSK_BYTES:
            raise ValueError(f"pnet pre-shared key must be {PSK_BYTES} bytes, got {len(psk)}")
        self._conn = conn
        self._psk = psk
        self._handshake_timeout_s = handshake_timeout_s
        self._nonce_source = nonce_source
        self.is_initiator = conn.is_initiator
        self._write_lock = trio.Lock()
        self._write_cipher: XSalsa20 | None = None
        self._read_cipher: XSalsa20 | None = None
        # How many bytes of the peer's multistream header have been checked so far.
        self._header_bytes_checked = 0
        # Set at the first read or write; bounds the first write and every read until the
        # peer's header is verified.
        self._handshake_deadline: float | None = None
        self._failure: PnetHandshakeError | None = None
        # Named now: once the peer has reset the socket, getpeername() fails.
        self._peer = _describe_remote(conn)

    @property
    def handshake_done(self) -> bool:
        """True once the peer's nonce arrived and its first bytes decrypted to the header."""
        return self._header_bytes_checked == len(MULTISTREAM_HEADER)

    async def write(self, data: bytes) -> None:
        self._raise_if_failed()
        if self._write_cipher is not None:
            await self._write(data)
            return
        # Only the first write (our nonce) is part of the handshake: later writes do not wait
        # on anything the peer sends, and a peer that stops reading is caught by our read.
        with trio.move_on_at(self._handshake_deadline_now()):
            await self._write(data)
            return
        await self._fail(f"could not send our nonce within {self._handshake_timeout_s:g} s")

    async def read(self, n: int | None = None) -> bytes:
        self._raise_if_failed()
        if n == 0:
            return b""
        if self.handshake_done:
            return await self._read(n)
        with trio.move_on_at(self._handshake_deadline_now()):
            try:
                return await self._read(n)
            except PnetHandshakeError:
                raise
            except Exception as error:  # e.g. a reset: a peer without our key drops garbage
                await self._fail(
                    f"the connection broke during the pnet handshake ({error}); "
                    "the peer has another swarm key, or none"
                )
        await self._fail(
            f"no nonce and multistream header within {self._handshake_timeout_s:g} s; "
            "the peer has no swarm key or is not a libp2p node"
        )

    async def close(self) -> None:
        await self._conn.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._conn.get_remote_address()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self._conn.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self._conn.get_connection_type()

    def __getattr__(self, name: str) -> Any:
        # Transports add their own extras (e.g. a `conn_state()` that io/utils.py:60 looks
        # for); forward them, as upstream's PskConn does by subclassing RawConnection. Private
        # names are not forwarded: they would hide a typo here and recurse before __init__.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._conn, name)

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            if self._write_cipher is None:
                nonce = self._nonce_source(NONCE_BYTES)
                if len(nonce) != NONCE_BYTES:
                    raise ValueError(f"nonce source gave {len(nonce)} bytes, not {NONCE_BYTES}")
                self._write_cipher = XSalsa20(self._psk, nonce)
                # One write for nonce and first record: fewer packets, same bytes on the wire.
                await self._conn.write(nonce + self._write_cipher.xor(data))
                return
            await self._conn.write(self._write_cipher.xor(data))

    async def _read(self, n: int | None) -> bytes:
        if self._read_cipher is None:
            self._read_cipher = XSalsa20(self._psk, await self._read_nonce())
        ciphertext = await self._conn.read(n)
        if not ciphertext:
            if not self.handshake_done:
                await self._fail(
                    "the peer closed the connection during the pnet handshake; "
                    "it has another swarm key, or none"
                )
            return b""
        plaintext = self._read_cipher.xor(ciphertext)
        if not self.handshake_done:
            await self._check_header(plaintext)
        return plaintext

    async def _read_nonce(self) -> bytes:
        nonce = b""
        while len(nonce) < NONCE_BYTES:
            chunk = await self._conn.read(NONCE_BYTES - len(nonce))
            if not chunk:
                await self._fail(
                    f"the peer closed the connection after {len(nonce)} of the "
                    f"{NONCE_BYTES} pnet nonce bytes; it has another swarm key, or none"
                )
            nonce += chunk
        return nonce

    async def _check_header(self, plaintext: bytes) -> None:
        start = self._header_bytes_checked
        end = min(len(MULTISTREAM_HEADER), start + len(plaintext))
        if plaintext[: end - start] != MULTISTREAM_HEADER[start:end]:
            await self._fail(
                "the peer's first bytes do not decrypt to a multistream header; "
                "it uses a different swarm key (or none)"
            )
        self._header_bytes_checked = end

    def _handshake_deadline_now(self) -> float:
        """The handshake deadline, started by the first read or write."""
        if self._handshake_deadline is None:
            self._handshake_deadline = trio.current_time() + self._handshake_timeout_s
        return self._handshake_deadline

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise PnetHandshakeError(str(self._failure))

    async def _fail(self, reason: str) -> NoReturn:
        """Record the failure, close the underlying conn (bounded, best effort) and raise."""
        self._failure = PnetHandshakeError(f"pnet handshake with {self._peer} failed: {reason}")
        # Debug, as upstream logs inbound upgrade failures (swarm.py:2169): on a public node any
        # scanner triggers this. The reason also travels in the exception's cause chain.
        logger.debug("%s", self._failure)
        # Shielded so that a deadline expiring right now cannot skip the close, and bounded so
        # the close cannot hold up the failure. Already failing: an error from close would
        # only hide the reason.
        close_deadline = trio.current_time() + CLOSE_TIMEOUT_S
        with trio.CancelScope(deadline=close_deadline, shield=True), contextlib.suppress(Exception):
            await self._conn.close()
        raise self._failure


def _describe_remote(conn: IRawConnection) -> str:
    try:
        remote = conn.get_remote_address()
    except Exception:  # the name is only for messages; never fail a conn over it
        remote = None
    return f"{remote[0]}:{remote[1]}" if remote else "the peer"


def protect(conn: IRawConnection, psk: str) -> PnetConn:
    """Wrap ``conn`` in spec pnet with the 64-hex-digit ``psk``.

    A drop-in for py-libp2p's ``security.pnet.protector.new_protected_conn(conn, psk)``,
    which the swarm calls with ``swarm.psk`` (the ``psk=`` string given to ``new_host``).
    """
    if isinstance(conn, IMuxedConn):
        # A QUIC conn is already secured and multiplexed: wrapping it would hide that from the
        # swarm's isinstance check (network/swarm.py:1172) and break the dial anyway.
        raise PnetError("private swarms run over TCP or WebSocket; QUIC cannot carry pnet")
    # Upstream checks only the length (protector.py:7-8) and lets fromhex fail on its own.
    if len(psk) != 2 * PSK_BYTES:
        raise ValueError(f"pnet pre-shared key must be 64 hex digits, got {len(psk)} characters")
    try:
        key = bytes.fromhex(psk)
    except ValueError:
        raise ValueError("pnet pre-shared key must be 64 hex digits") from None
    return PnetConn(conn, key)


def install() -> None:
    """Make py-libp2p's swarm protect conns with ``protect``; calling it again changes nothing.

    The swarm reads the module global ``new_protected_conn`` each time it protects a conn
    (network/swarm.py:1139, :1459, :2102), so rebinding it affects hosts built before and
    after this call, and only when they were given a ``psk``.
    """
    # mypy objects twice: swarm.py imports the name without re-exporting it (attr-defined), and
    # upstream's version returns its PskConn (assignment). Ours returns a PnetConn, also an
    # IRawConnection, which is all the swarm uses.
    libp2p_swarm.new_protected_conn = protect  # type: ignore[attr-defined,assignment]
