"""The one adapter between threatmesh and py-libp2p 0.8.1's circuit relay v2
(``libp2p.relay.circuit_v2``; libp2p specs ``relay/circuit-v2.md``).

``Relay`` gives one host the three parts of circuit relay v2 that threatmesh uses:

- **hop** (the relay): a supernode offers it (``offer_hop`` / ``withdraw_hop``) so that
  peers that are not reachable can reserve a slot and be reached through it. Served by
  upstream's ``CircuitV2Protocol._handle_hop_stream`` (reservations, CONNECT, the byte pump
  with its duration and data caps), behind our gate: only peers ``may_use`` accepts (the
  swarm's announcers) get an answer, others a PERMISSION_DENIED status.
- **reserve** (the client of a relay): a node that is not reachable reserves a slot on a
  supernode (``reserve``) and announces the circuit address it gets (``circuit_addrs``).
- **stop** (being reached through a relay): incoming circuits are accepted, upgraded (Noise,
  Yamux, the swarm key if any) and added to the swarm like any connection, but only from a
  relay we hold a reservation with (the spec's advice; upstream accepts a STOP from anyone).
- **dial**: ``dial(peer_id, circuit_addr)`` opens a connection to a peer through its relay.

What we take from upstream and what we do not, and why:
- Upstream's ``CircuitV2Protocol`` is used for its stream handlers only; we never run it as
  a py-libp2p service (its ``run`` registers the hop handler only at start, with no way to
  take it back when a node stops being a supernode). We register and remove the handlers.
- Upstream's ``CircuitV2Transport`` is not used. Its ``dial`` makes a reservation before
  every CONNECT when the client role is on, picks relays by its own discovery and
  performance tracker, logs a WARNING for every peer not in the peerstore, and never applies
  the swarm key to an outbound relayed connection (``transport.py:268`` ->
  ``basic_host.py:1593``, no ``new_protected_conn``), so relayed dials in a private swarm
  fail. ``reserve`` and ``dial`` here are the two message exchanges of the spec (RESERVE,
  CONNECT), with the swarm key applied as the swarm applies it to its own dials.
- The swarm cannot dial ``/p2p-circuit`` addresses at all: ``Swarm.dial_peer`` drops them
  (``network/swarm.py:818-829``) because it has no relay transport. ``dial`` here is how a
  relayed connection is opened; ``connect_any`` tries direct addresses first, then circuits.
- Upstream's relay counts one reservation per peer and caps them at ``max_reservations``
  (default 4; ours is ``RelaySettings.max_reservations``). A reservation lasts
  ``reservation_ttl_s``; ``reserve`` again before it ends to keep it.
- The relay logs an ERROR "Error reading from hop stream" each time a client closes its HOP
  stream after the exchange, as the spec says it should (``protocol.py:351``), and
  "Unexpected error reading from stream" when a circuit closes (``protocol.py:291``):
  ``node/logs.py`` filters both as noise.

Bounds: every exchange is bounded by ``RelaySettings.timeout_s``; circuits by the caps above.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

import trio
from libp2p.abc import IHost, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID, CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from multiaddr import Multiaddr

# trio's own TaskStatus type is hidden from mypy by trio-typing's stubs (see node/node.py).
from trio_typing import TaskStatus

from threatmesh.transports import pnet
from threatmesh.transports.errors import TransportError
from threatmesh.transports.libp2p_host import connect, is_connected

CIRCUIT = "/p2p-circuit"


class RelayError(TransportError):
    """A reservation or a relayed dial failed; the message names the relay and the reason."""


@dataclass(frozen=True)
class RelaySettings:
    max_reservations: int = 128  # slots a relay (hop) serves at a time
    max_circuits_per_peer: int = 8  # open circuits to one reserved peer
    reservation_ttl_s: int = 3600
    circuit_duration_s: int = 3600  # a circuit is reset after this long (then redialled)
    circuit_bytes: int = 1 << 30  # ... or after this many bytes, both directions together
    timeout_s: float = 10.0  # one RESERVE or CONNECT exchange, and the upgrade after it

    def __post_init__(self) -> None:
        numbers = asdict(self)
        bad = [name for name, value in numbers.items() if value <= 0]
        if bad:
            raise ValueError(f"relay settings must be positive: {', '.join(bad)}")


@dataclass
class RelayCounters:
    reservations_made: int = 0  # RESERVE exchanges that succeeded (we are the client)
    reservations_failed: int = 0
    circuits_dialled: int = 0  # connections we opened through a relay
    circuits_failed: int = 0
    circuits_accepted: int = 0  # STOP streams accepted (a peer reached us through a relay)
    stop_refused: int = 0  # STOP streams from a relay we hold no reservation with
    hop_refused: int = 0  # HOP streams from a peer ``may_use`` refuses


def circuit_addr(relay_addr: Multiaddr | str, relay_id: ID) -> str:
    """``<relay addr>/p2p/<relay>/p2p-circuit``: where peers reach us through ``relay_id``."""
    bare = str(relay_addr).split("/p2p/", 1)[0]
    return f"{bare}/p2p/{relay_id.to_base58()}{CIRCUIT}"


def is_circuit(addr: Multiaddr | str) -> bool:
    return CIRCUIT in str(addr)


def split_circuit(addr: Multiaddr | str) -> tuple[ID, Multiaddr]:
    """The relay of a circuit address and the relay's own address; ValueError if malformed."""
    text = str(addr)
    before, found, _ = text.partition(CIRCUIT)
    if not found or "/p2p/" not in before:
        raise ValueError(f"{text}: not a circuit address (<relay addr>/p2p/<relay>/p2p-circuit)")
    relay_addr, _, relay_text = before.rpartition("/p2p/")
    try:
        return ID.from_base58(relay_text), Multiaddr(relay_addr or "/")
    except Exception:
        raise ValueError(f"{text}: the relay's peer ID or address does not parse") from None


class Relay:
    """Circuit relay v2 for one host (module docstring). ``await nursery.start(relay.run)``."""

    def __init__(
        self,
        host: IHost,
        settings: RelaySettings | None = None,
        *,
        may_use: Callable[[ID], bool] = lambda peer_id: True,
        wall_s: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.settings = settings or RelaySettings()
        self._may_use = may_use
        self._wall_s = wall_s
        limits = RelayLimits(
            duration=self.settings.circuit_duration_s,
            data=self.settings.circuit_bytes,
            max_circuit_conns=self.settings.max_circuits_per_peer,
            max_reservations=self.settings.max_reservations,
            reservation_ttl=self.settings.reservation_ttl_s,
        )
        timeout = max(1, round(self.settings.timeout_s))
        self._protocol = CircuitV2Protocol(
            host,
            limits=limits,
            allow_hop=False,
            read_timeout=timeout,
            write_timeout=timeout,
            close_timeout=timeout,
        )
        self.hop_offered = False
        # Relays we hold a reservation with (we are their client): relay -> (expiry unix s,
        # the relay's addresses as it reported them).
        self._held: dict[ID, tuple[int, tuple[Multiaddr, ...]]] = {}
        self.counters = RelayCounters()

    # Lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept circuits from our relays until cancelled; hop stays off until offered."""
        self.host.set_stream_handler(STOP_PROTOCOL_ID, self._handle_stop)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.withdraw_hop()
            self.host.remove_stream_handler(STOP_PROTOCOL_ID)

    # Hop (we relay) -------------------------------------------------------------------------

    def offer_hop(self) -> None:
        """Serve reservations and circuits from now on."""
        if not self.hop_offered:
            self.host.set_stream_handler(HOP_PROTOCOL_ID, self._handle_hop)
            self.hop_offered = True

    def withdraw_hop(self) -> None:
        """Stop answering HOP streams. Open circuits run on until their caps end them."""
        if self.hop_offered:
            self.host.remove_stream_handler(HOP_PROTOCOL_ID)
            self.hop_offered = False

    async def _handle_hop(self, stream: INetStream) -> None:
        remote = stream.muxed_conn.peer_id
        if not self._may_use(remote):
            self.counters.hop_refused += 1
            with trio.move_on_after(self.settings.timeout_s):
                try:
                    denied = HopMessage(
                        type=HopMessage.STATUS,
                        status=to_proto_status(StatusCode.PERMISSION_DENIED),
                    )
                    await write_delimited_msg(stream, denied)
                    await stream.close()
                except Exception:  # the peer may be gone already
                    pass
            return
        await self._protocol._handle_hop_stream(stream)

    def reservations_served(self) -> int:
        """Reservations this node's relay holds for others (expired ones not counted)."""
        manager = self._protocol.resource_manager
        manager._clean_expired()  # private in 0.8.1: the only way to count live ones
        return len(manager._reservations)

    # Stop (we are reached through a relay) ---------------------------------------------------

    async def _handle_stop(self, stream: INetStream) -> None:
        relay_id = stream.muxed_conn.peer_id
        if relay_id not in self._held:
            self.counters.stop_refused += 1
            with contextlib.suppress(Exception):  # the relay may have hung up already
                await stream.reset()
            return
        self.counters.circuits_accepted += 1
        await self._protocol._handle_stop_stream(stream)

    # Client: reservations -------------------------------------------------------------------

    async def reserve(self, relay: PeerInfo) -> int:
        """Reserve a slot on ``relay`` (connecting if needed); returns when it expires (unix s).

        Raises RelayError naming the relay and the reason.
        """
        try:
            with trio.fail_after(self.settings.timeout_s):
                await self._ensure_connected(relay)
                stream = await self.host.new_stream(relay.peer_id, [HOP_PROTOCOL_ID])
                try:
                    request = HopMessage(
                        type=HopMessage.RESERVE,
                        peer=CircuitPeerId(id=self.host.get_id().to_bytes()),
                    )
                    await write_delimited_msg(stream, request)
                    response = await read_delimited_msg(stream, HopMessage)
                finally:
                    await _close_quietly(stream)
        except trio.TooSlowError:
            self.counters.reservations_failed += 1
            raise RelayError(
                f"relay {relay.peer_id}: no reservation within {self.settings.timeout_s:g} s"
            ) from None
        except RelayError:
            self.counters.reservations_failed += 1
            raise
        except Exception as error:  # stream refused (no hop), reset, decode error, ...
            self.counters.reservations_failed += 1
            raise RelayError(f"relay {relay.peer_id}: reservation failed ({error!r})") from None
        status = StatusCode(response.status) if response.HasField("status") else StatusCode.OK
        if status != StatusCode.OK or not response.HasField("reservation"):
            self.counters.reservations_failed += 1
            raise RelayError(f"relay {relay.peer_id}: reservation refused ({status.name})")
        addrs = _reservation_addrs(response.reservation.addrs) or tuple(relay.addrs)
        expires_s = int(response.reservation.expire)
        self._held[relay.peer_id] = (expires_s, addrs)
        self.counters.reservations_made += 1
        return expires_s

    def forget_reservation(self, relay_id: ID) -> None:
        """Stop using ``relay_id`` (the relay lets the slot run out; the spec has no cancel)."""
        self._held.pop(relay_id, None)

    def held(self) -> dict[ID, int]:
        """Relays we hold a live reservation with -> its expiry (unix s)."""
        now_s = self._wall_s()
        for relay_id in [r for r, (expires, _) in self._held.items() if expires <= now_s]:
            del self._held[relay_id]
        return {relay_id: expires for relay_id, (expires, _) in self._held.items()}

    def circuit_addrs(self) -> list[str]:
        """Where peers can reach us: one circuit address per address of each relay we hold."""
        addrs: list[str] = []
        for relay_id in self.held():
            _, relay_addrs = self._held[relay_id]
            addrs.extend(circuit_addr(addr, relay_id) for addr in relay_addrs)
        return list(dict.fromkeys(addrs))

    # Client: dialling through a relay --------------------------------------------------------

    async def dial(self, peer_id: ID, address: Multiaddr | str) -> None:
        """Connect to ``peer_id`` through the relay of ``address`` (a circuit address).

        The relayed connection is secured and multiplexed as a direct one and joins the swarm
        (pubsub, identify, ... see it as any connection). Raises RelayError.
        """
        try:
            relay_id, relay_addr = split_circuit(address)
        except ValueError as error:
            raise RelayError(str(error)) from None
        full = Multiaddr(f"{str(address).split(CIRCUIT, 1)[0]}{CIRCUIT}/p2p/{peer_id}")
        try:
            with trio.fail_after(self.settings.timeout_s):
                await self._ensure_connected(PeerInfo(relay_id, [relay_addr]))
                stream = await self.host.new_stream(relay_id, [HOP_PROTOCOL_ID])
                request = HopMessage(
                    type=HopMessage.CONNECT, peer=CircuitPeerId(id=peer_id.to_bytes())
                )
                await write_delimited_msg(stream, request)
                response = await read_delimited_msg(stream, HopMessage)
                status = (
                    StatusCode(response.status) if response.HasField("status") else StatusCode.OK
                )
                if status != StatusCode.OK:
                    await _close_quietly(stream)
                    raise RelayError(f"{full}: the relay refused the circuit ({status.name})")
                raw: Any = RawConnection(
                    stream=stream,
                    initiator=True,
                    connection_type=ConnectionType.RELAYED,
                    addresses=[full],
                )
                psk = cast(Any, self.host.get_network()).psk
                if psk is not None:  # what the swarm does on its own dials (swarm.py:1139)
                    raw = pnet.protect(raw, psk)
                await self.host.upgrade_outbound_connection(raw, peer_id)
        except trio.TooSlowError:
            self.counters.circuits_failed += 1
            raise RelayError(
                f"{full}: no relayed connection within {self.settings.timeout_s:g} s"
            ) from None
        except RelayError:
            self.counters.circuits_failed += 1
            raise
        except Exception as error:  # no hop on the relay, reset, handshake failure, ...
            self.counters.circuits_failed += 1
            raise RelayError(f"{full}: relayed dial failed ({error!r})") from None
        self.counters.circuits_dialled += 1

    async def _ensure_connected(self, relay: PeerInfo) -> None:
        if is_connected(self.host, relay) or not relay.addrs:
            return  # new_stream fails with its own error if we are not connected either
        try:
            await connect(self.host, relay, timeout_s=self.settings.timeout_s)
        except TransportError as error:
            raise RelayError(f"relay {relay.peer_id}: {error}") from None

    # Views ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "hop_offered": self.hop_offered,
            "reservations_served": self.reservations_served(),
            "reservations_held": sorted(str(relay_id) for relay_id in self.held()),
            "circuit_addrs": self.circuit_addrs(),
            **asdict(self.counters),
        }


async def connect_any(host: IHost, relay: Relay, peer_info: PeerInfo, *, timeout_s: float) -> None:
    """Connect to ``peer_info``: its direct addresses first, then its circuit addresses.

    Raises TransportError (RelayError for the relayed part) when no address worked.
    """
    direct = [addr for addr in peer_info.addrs if not is_circuit(addr)]
    circuits = [addr for addr in peer_info.addrs if is_circuit(addr)]
    problems: list[str] = []
    if direct:
        try:
            await connect(host, PeerInfo(peer_info.peer_id, direct), timeout_s=timeout_s)
            return
        except TransportError as error:
            problems.append(str(error))
    for address in circuits:
        try:
            await relay.dial(peer_info.peer_id, address)
            return
        except RelayError as error:
            problems.append(str(error))
    if not problems:
        raise TransportError(f"{peer_info.peer_id}: no address to dial")
    raise TransportError("; ".join(problems))


def _reservation_addrs(raw_addrs: Iterable[bytes]) -> tuple[Multiaddr, ...]:
    addrs: list[Multiaddr] = []
    for raw in raw_addrs:
        try:
            addrs.append(Multiaddr(raw))
        except Exception:  # a relay may send anything; skip what does not parse
            continue
    return tuple(addrs)


async def _close_quietly(stream: INetStream) -> None:
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(1.0),
        contextlib.suppress(Exception),  # the relay may have reset it already
    ):
        await stream.close()
