"""Spec pnet: the XSalsa20 vectors, the wire format, handshake failures, and real hosts.

Fakes first (no sockets, mock clock for timeouts), then one set of tests with real py-libp2p
hosts on 127.0.0.1 after ``install()``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import libp2p.network.swarm as libp2p_swarm
import pytest
import trio
import trio.testing
from libp2p import new_host
from libp2p.abc import IHost, INetStream, IRawConnection
from libp2p.connection_types import ConnectionType
from libp2p.crypto import ed25519, x25519
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.pnet.protector import new_protected_conn as upstream_new_protected_conn
from multiaddr import Multiaddr

from threatmesh.transports.errors import PnetError
from threatmesh.transports.pnet import (
    DEFAULT_HANDSHAKE_TIMEOUT_S,
    MULTISTREAM_HEADER,
    PnetConn,
    PnetHandshakeError,
    XSalsa20,
    hsalsa20,
    install,
    protect,
)

# golang/crypto salsa20/salsa20_test.go xSalsa20TestData (also nim-libp2p tests/testpnet.nim).
GO_KEY = b"this is 32-byte key for xsalsa20"
GO_NONCE = b"24-byte nonce for xsalsa"
# libsodium test/default/core2.c and stream.c / stream.exp.
SODIUM_KEY = bytes.fromhex("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389")
SODIUM_NONCE = bytes.fromhex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37")

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


# --- XSalsa20 -------------------------------------------------------------------------------


def test_xsalsa20_go_vector_hello_world():
    assert XSalsa20(GO_KEY, GO_NONCE).xor(b"Hello world!") == bytes.fromhex(
        "002d4513843fc240c401e541"
    )


def test_xsalsa20_go_vector_zero_block():
    assert XSalsa20(GO_KEY, GO_NONCE).xor(bytes(64)) == bytes.fromhex(
        "4848297feb1fb52fb66d81609bd547fabcbe7026edc8b5e5e449d088bfa69c08"
        "8f5d8da1d791267c2c195a7f8cae9c4b4050d08ce6d3a151ec265f3a58e47648"
    )


def test_hsalsa20_libsodium_vector():
    assert hsalsa20(SODIUM_KEY, SODIUM_NONCE[:16]) == bytes.fromhex(
        "dc908dda0b9344a953629b733820778880f3ceb421bb61b91cbd4c3e66256ce4"
    )


def test_xsalsa20_libsodium_4mib_keystream_hash():
    keystream = XSalsa20(SODIUM_KEY, SODIUM_NONCE).xor(bytes(4 * 1024 * 1024))
    assert hashlib.sha256(keystream).hexdigest() == (
        "662b9d0e3463029156069b12f918691a98f7dfb2ca0393c96bbfc6b1fbd630a2"
    )


def test_xsalsa20_keeps_position_across_calls():
    whole = XSalsa20(GO_KEY, GO_NONCE).xor(bytes(1000))
    stream = XSalsa20(GO_KEY, GO_NONCE)
    pieces = [stream.xor(bytes(size)) for size in (1, 7, 56, 64, 100, 772)]
    assert b"".join(pieces) == whole


@pytest.mark.parametrize(("key", "nonce"), [(bytes(31), bytes(24)), (bytes(32), bytes(8))])
def test_xsalsa20_rejects_wrong_sizes(key: bytes, nonce: bytes):
    with pytest.raises(ValueError, match="must be"):
        XSalsa20(key, nonce)


# --- fake raw connections -------------------------------------------------------------------


class ScriptedConn(IRawConnection):
    """Records writes; reads come from a script of chunks, then block (or EOF if `then_eof`)."""

    def __init__(self, chunks: list[bytes] | None = None, *, then_eof: bool = False) -> None:
        self.is_initiator = True
        self.writes: list[bytes] = []
        self.chunks = list(chunks or [])
        self.then_eof = then_eof
        self.closed = False

    async def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.chunks:
            chunk = self.chunks[0]
            take = len(chunk) if n is None else min(n, len(chunk))
            self.chunks[0] = chunk[take:]
            if not self.chunks[0]:
                self.chunks.pop(0)
            return chunk[:take]
        if self.then_eof or self.closed:
            return b""
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self.closed = True

    def get_remote_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 4001)

    def get_transport_addresses(self) -> list[Multiaddr]:
        return [Multiaddr("/ip4/127.0.0.1/tcp/4001")]

    def get_connection_type(self) -> ConnectionType:
        return ConnectionType.DIRECT


class MemoryConn(IRawConnection):
    """One end of an in-memory duplex (trio.testing.memory_stream_pair) as a raw conn."""

    def __init__(self, stream: trio.abc.Stream, *, initiator: bool) -> None:
        self.is_initiator = initiator
        self.stream = stream
        self.closed = False

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read(self, n: int | None = None) -> bytes:
        return await self.stream.receive_some(n)

    async def close(self) -> None:
        self.closed = True
        await self.stream.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 4002 if self.is_initiator else 4001)

    def get_transport_addresses(self) -> list[Multiaddr]:
        return []

    def get_connection_type(self) -> ConnectionType:
        return ConnectionType.DIRECT


def memory_pair() -> tuple[MemoryConn, MemoryConn]:
    left, right = trio.testing.memory_stream_pair()
    return MemoryConn(left, initiator=True), MemoryConn(right, initiator=False)


def counting_nonces() -> Callable[[int], bytes]:
    return lambda size: bytes(range(size))


async def read_exactly(conn: IRawConnection, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await conn.read(size - len(data))
        assert chunk, "unexpected EOF"
        data += chunk
    return data


# --- the wire format ------------------------------------------------------------------------

# Derived here (not published): psk 32x00, nonce 00..17, first record = multistream header.
# libsodium's crypto_stream_xsalsa20_xor gives the same bytes.
WIRE_NONCE = bytes.fromhex("000102030405060708090a0b0c0d0e0f1011121314151617")
WIRE_FIRST_RECORD = bytes.fromhex("ca321da4966cdd61938aedf5a7e7c0de71914b47")
WIRE_VECTOR = WIRE_NONCE + WIRE_FIRST_RECORD


async def test_first_write_is_nonce_then_xsalsa20_ciphertext():
    raw = ScriptedConn()
    conn = PnetConn(raw, bytes(32), nonce_source=counting_nonces())
    await conn.write(MULTISTREAM_HEADER)
    assert raw.writes == [WIRE_VECTOR]


async def test_later_writes_continue_the_keystream():
    raw = ScriptedConn()
    conn = PnetConn(raw, bytes(32), nonce_source=counting_nonces())
    await conn.write(MULTISTREAM_HEADER[:5])
    await conn.write(MULTISTREAM_HEADER[5:])
    assert b"".join(raw.writes) == WIRE_VECTOR
    assert raw.writes[0] == WIRE_VECTOR[: 24 + 5]


async def test_reads_the_wire_vector_one_byte_at_a_time():
    # Every read of the fake returns one byte: the nonce must be gathered over 24 reads.
    raw = ScriptedConn([bytes([byte]) for byte in WIRE_VECTOR])
    conn = PnetConn(raw, bytes(32))
    assert await read_exactly(conn, len(MULTISTREAM_HEADER)) == MULTISTREAM_HEADER
    assert conn.handshake_done


async def test_read_continues_keystream_after_header():
    nonce = bytes(range(24))
    stream = XSalsa20(KEY_A, nonce)
    wire = nonce + stream.xor(MULTISTREAM_HEADER) + stream.xor(b"/noise\n")
    conn = PnetConn(ScriptedConn([wire], then_eof=True), KEY_A)
    assert await conn.read() == MULTISTREAM_HEADER + b"/noise\n"
    assert await conn.read() == b""


async def test_read_zero_bytes_touches_nothing():
    raw = ScriptedConn()
    conn = PnetConn(raw, KEY_A)
    assert await conn.read(0) == b""
    assert not raw.closed


def test_delegates_connection_details():
    raw = ScriptedConn()
    raw.is_initiator = False
    conn = PnetConn(raw, KEY_A)
    assert conn.is_initiator is False
    assert conn.get_remote_address() == ("127.0.0.1", 4001)
    assert conn.get_transport_addresses() == [Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    assert conn.get_connection_type() is ConnectionType.DIRECT
    assert conn.chunks is raw.chunks  # transport extras pass through
    with pytest.raises(AttributeError):
        _ = conn._no_such_private_name


async def test_close_closes_the_underlying_conn():
    raw = ScriptedConn()
    await PnetConn(raw, KEY_A).close()
    assert raw.closed


# --- two PnetConns over an in-memory duplex -------------------------------------------------


async def test_round_trip_same_key():
    left_raw, right_raw = memory_pair()
    left, right = PnetConn(left_raw, KEY_A), PnetConn(right_raw, KEY_A)
    payload = bytes(range(256)) * 400  # ~100 KB, arrives in several chunks

    async def left_side() -> None:
        await left.write(MULTISTREAM_HEADER)
        await left.write(payload)
        assert (
            await read_exactly(left, len(MULTISTREAM_HEADER) + 5) == MULTISTREAM_HEADER + b"reply"
        )

    async def right_side() -> None:
        received = await read_exactly(right, len(MULTISTREAM_HEADER) + len(payload))
        assert received == MULTISTREAM_HEADER + payload
        await right.write(MULTISTREAM_HEADER + b"reply")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left_side)
            nursery.start_soon(right_side)
    assert left.handshake_done
    assert right.handshake_done


async def test_concurrent_writers_keep_the_keystream_in_wire_order():
    left_raw, right_raw = memory_pair()
    left, right = PnetConn(left_raw, KEY_A), PnetConn(right_raw, KEY_A)
    chunks = [bytes([index]) * 1000 for index in range(10)]

    with trio.fail_after(5):
        await left.write(MULTISTREAM_HEADER)
        async with trio.open_nursery() as nursery:
            for chunk in chunks:
                nursery.start_soon(left.write, chunk)
        received = await read_exactly(right, len(MULTISTREAM_HEADER) + 10_000)
    body = received[len(MULTISTREAM_HEADER) :]
    assert sorted(body[start : start + 1000] for start in range(0, 10_000, 1000)) == chunks


async def test_wrong_key_is_refused_on_the_first_record():
    left_raw, right_raw = memory_pair()
    left, right = PnetConn(left_raw, KEY_A), PnetConn(right_raw, KEY_B)
    with trio.fail_after(1):
        await left.write(MULTISTREAM_HEADER)
        with pytest.raises(PnetHandshakeError, match="different swarm key") as caught:
            await right.read()
    assert right_raw.closed
    # What the swarm catches (as an IOException) and what our code catches.
    assert isinstance(caught.value, RawConnError)
    assert isinstance(caught.value, PnetError)
    assert "with 127.0.0.1:4001 failed" in str(caught.value)


async def test_failure_is_sticky():
    raw = ScriptedConn([bytes(24) + b"garbage garbage garbage"])
    conn = PnetConn(raw, KEY_A)
    with pytest.raises(PnetHandshakeError):
        await conn.read()
    with pytest.raises(PnetHandshakeError, match="different swarm key"):
        await conn.read()
    with pytest.raises(PnetHandshakeError, match="different swarm key"):
        await conn.write(b"anything")
    assert raw.writes == []


async def test_peer_without_key_sending_a_full_proposal_is_refused_at_once():
    # A peer with no PSK speaks plaintext multistream; when it sends more than 24 bytes, the
    # first 24 are taken as its nonce and the rest decrypts to noise.
    raw = ScriptedConn([MULTISTREAM_HEADER + b"\x07/noise\n" + b"\x07/yamux\n"])
    with pytest.raises(PnetHandshakeError, match="different swarm key"):
        await PnetConn(raw, KEY_A).read()


async def test_eof_inside_the_nonce_is_refused():
    raw = ScriptedConn([bytes(10)], then_eof=True)
    with pytest.raises(PnetHandshakeError, match="after 10 of the 24 pnet nonce bytes"):
        await PnetConn(raw, KEY_A).read()
    assert raw.closed


async def test_a_reset_during_the_handshake_is_a_pnet_refusal():
    # A peer without a swarm key gets our nonce as garbage and may reset the connection
    # (unread data at close): the dialer must still learn it was the pnet handshake.
    class ResetConn(ScriptedConn):
        async def read(self, n: int | None = None) -> bytes:
            if not self.chunks:
                raise RawConnError("Connection reset by peer")
            return await super().read(n)

    raw = ResetConn([bytes(5)])
    with pytest.raises(PnetHandshakeError, match="broke during the pnet handshake"):
        await PnetConn(raw, KEY_A).read()
    assert raw.closed


async def test_eof_before_the_header_is_complete_is_refused():
    nonce = bytes(24)
    wire = nonce + XSalsa20(KEY_A, nonce).xor(MULTISTREAM_HEADER[:10])
    conn = PnetConn(ScriptedConn([wire], then_eof=True), KEY_A)
    assert await conn.read() == MULTISTREAM_HEADER[:10]
    with pytest.raises(PnetHandshakeError, match="closed the connection during"):
        await conn.read()


# --- handshake deadline (mock clock: no real waiting) ---------------------------------------


async def test_silent_peer_times_out_after_the_handshake_timeout(autojump_clock):
    raw = ScriptedConn()
    conn = PnetConn(raw, KEY_A)
    start = trio.current_time()
    with pytest.raises(PnetHandshakeError, match="no nonce and multistream header within 1 s"):
        await conn.read()
    assert trio.current_time() - start == pytest.approx(DEFAULT_HANDSHAKE_TIMEOUT_S)
    assert raw.closed


def test_default_handshake_timeout_fits_the_two_second_requirement():
    assert DEFAULT_HANDSHAKE_TIMEOUT_S <= 1.5


async def test_peer_without_key_sending_only_the_header_times_out(autojump_clock):
    # 20 plaintext bytes are not a whole nonce; py-libp2p's dialer then waits for an answer.
    raw = ScriptedConn([MULTISTREAM_HEADER])
    conn = PnetConn(raw, KEY_A, handshake_timeout_s=0.5)
    start = trio.current_time()
    with pytest.raises(PnetHandshakeError, match=r"within 0\.5 s"):
        await conn.read()
    assert trio.current_time() - start == pytest.approx(0.5)


class TricklingConn(ScriptedConn):
    """Sends one byte every `interval_s`: each read is quick, the whole handshake is not."""

    def __init__(self, data: bytes, interval_s: float) -> None:
        super().__init__([bytes([byte]) for byte in data])
        self.interval_s = interval_s

    async def read(self, n: int | None = None) -> bytes:
        await trio.sleep(self.interval_s)
        return await super().read(1)


async def test_deadline_covers_the_whole_handshake_not_each_read(autojump_clock):
    nonce = bytes(24)
    raw = TricklingConn(nonce + XSalsa20(KEY_A, nonce).xor(MULTISTREAM_HEADER), 0.3)
    conn = PnetConn(raw, KEY_A)
    start = trio.current_time()
    with pytest.raises(PnetHandshakeError, match="within 1 s"):
        await read_exactly(conn, len(MULTISTREAM_HEADER))
    assert trio.current_time() - start == pytest.approx(DEFAULT_HANDSHAKE_TIMEOUT_S)


class StuckWriteConn(ScriptedConn):
    """A peer that never reads: our first write cannot complete."""

    async def write(self, data: bytes) -> None:
        await trio.sleep_forever()


async def test_first_write_is_bounded_by_the_handshake_deadline(autojump_clock):
    raw = StuckWriteConn()
    conn = PnetConn(raw, KEY_A)
    start = trio.current_time()
    with pytest.raises(PnetHandshakeError, match="could not send our nonce within 1 s"):
        await conn.write(MULTISTREAM_HEADER)
    assert trio.current_time() - start == pytest.approx(DEFAULT_HANDSHAKE_TIMEOUT_S)
    assert raw.closed


async def test_no_deadline_once_the_header_is_verified(autojump_clock):
    left_raw, right_raw = memory_pair()
    left, right = PnetConn(left_raw, KEY_A), PnetConn(right_raw, KEY_A)

    async def slow_sender() -> None:
        await left.write(MULTISTREAM_HEADER)
        await trio.sleep(60)
        await left.write(b"late but welcome")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_sender)
        assert await read_exactly(right, 20) == MULTISTREAM_HEADER
        assert await read_exactly(right, 16) == b"late but welcome"


# --- protect() and install() ----------------------------------------------------------------


def test_protect_has_upstream_signature():
    ours = inspect.signature(protect).parameters
    theirs = inspect.signature(upstream_new_protected_conn).parameters
    assert list(ours) == list(theirs) == ["conn", "psk"]


def test_protect_wraps_with_the_hex_key():
    raw = ScriptedConn()
    conn = protect(raw, KEY_A.hex())
    assert isinstance(conn, PnetConn)
    assert isinstance(conn, IRawConnection)


@pytest.mark.parametrize("psk", ["zz" * 32, "00" * 31, ""])
def test_protect_refuses_a_bad_key(psk: str):
    with pytest.raises(ValueError, match="must be 64 hex digits"):
        protect(ScriptedConn(), psk)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # monkeypatch puts upstream's function back after the test, so install() stays local.
    monkeypatch.setattr(libp2p_swarm, "new_protected_conn", libp2p_swarm.new_protected_conn)
    install()


@pytest.mark.usefixtures("installed")
def test_install_rebinds_the_swarm_global_idempotently():
    assert libp2p_swarm.new_protected_conn is protect
    install()
    assert libp2p_swarm.new_protected_conn is protect


# --- real py-libp2p hosts on 127.0.0.1 ------------------------------------------------------

ECHO = TProtocol("/threatmesh-test/echo/1.0.0")
LOOPBACK = Multiaddr("/ip4/127.0.0.1/tcp/0")


def build_host(psk: bytes | None) -> IHost:
    key_pair = ed25519.create_new_key_pair()
    noise = NoiseTransport(key_pair, noise_privkey=x25519.create_new_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        psk=psk.hex() if psk is not None else None,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        connection_config=ConnectionConfig(max_connections_per_peer=1),
        listen_addrs=[LOOPBACK],
    )
    # Fail on the first attempt: retries would only repeat a refusal (4 attempts by default).
    host.get_network().retry_config = RetryConfig(max_retries=0)
    return host


@asynccontextmanager
async def running(psk: bytes | None) -> AsyncIterator[IHost]:
    host = build_host(psk)

    async def echo(stream: INetStream) -> None:
        await stream.write(await stream.read(100))
        await stream.close()

    host.set_stream_handler(ECHO, echo)
    async with host.run([LOOPBACK]):
        yield host


def address_of(host: IHost) -> PeerInfo:
    return info_from_p2p_addr(host.get_addrs()[0])


def has_live_connection(host: IHost, peer_id: ID) -> bool:
    connections = host.get_network().connections.get(peer_id, [])
    return any(not getattr(conn, "is_closed", False) for conn in connections)


async def connect_refused(dialer: IHost, peer: PeerInfo) -> bool:
    """True when the dial fails, or (notes §4) "succeeds" with no live connection left."""
    try:
        await dialer.connect(peer)
    except SwarmException:
        return True
    return not has_live_connection(dialer, peer.peer_id)


@pytest.mark.usefixtures("installed")
async def test_hosts_with_the_same_key_connect_and_echo():
    with trio.fail_after(10):
        async with running(KEY_A) as listener, running(KEY_A) as dialer:
            await dialer.connect(address_of(listener))
            stream = await dialer.new_stream(listener.get_id(), [ECHO])
            await stream.write(b"ping over pnet")
            assert await stream.read(100) == b"ping over pnet"
            await stream.close()
            assert has_live_connection(dialer, listener.get_id())


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize(
    ("dialer_key", "listener_key"),
    [(KEY_A, KEY_B), (KEY_A, None), (None, KEY_A)],
    ids=["wrong-key", "listener-without-key", "dialer-without-key"],
)
async def test_hosts_with_other_keys_are_refused_within_two_seconds(
    dialer_key: bytes | None, listener_key: bytes | None
):
    async with running(listener_key) as listener, running(dialer_key) as dialer:
        with trio.fail_after(2):
            assert await connect_refused(dialer, address_of(listener))


@pytest.mark.usefixtures("installed")
async def test_host_dials_with_spec_pnet_on_the_wire():
    """A plain TCP listener sees a 24-byte nonce and XSalsa20, not upstream's 8-byte Salsa20."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    some_peer = ID.from_pubkey(ed25519.create_new_key_pair().public_key)
    first_bytes = b""

    async def accept_one() -> None:
        nonlocal first_bytes
        stream = await listeners[0].accept()
        async with stream:
            while len(first_bytes) < 24 + len(MULTISTREAM_HEADER):
                chunk = await stream.receive_some()
                if not chunk:
                    break
                first_bytes += chunk

    with trio.fail_after(5):
        async with running(KEY_A) as dialer, trio.open_nursery() as nursery:
            nursery.start_soon(accept_one)
            address = Multiaddr(f"/ip4/127.0.0.1/tcp/{port}/p2p/{some_peer}")
            assert await connect_refused(dialer, info_from_p2p_addr(address))
    await listeners[0].aclose()
    nonce, record = first_bytes[:24], first_bytes[24:44]
    assert XSalsa20(KEY_A, nonce).xor(record) == MULTISTREAM_HEADER
