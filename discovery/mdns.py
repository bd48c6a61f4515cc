"""The mDNS LAN beacon: nodes on one LAN find each other with no bootstrap list.

This module is the one adapter around py-libp2p 0.8.1's ``libp2p.discovery.mdns``
(libp2p spec ``discovery/mdns.md``; py-libp2p uses python-zeroconf). What we change, and why:

- Service name per swarm. Upstream advertises ``_p2p._udp.local.``, shared with every libp2p
  node on the LAN (IPFS included); ``private_network_fingerprint=fp`` gives
  ``_p2p-<fp>._udp.local.``. We always pass one: for a private swarm the first 11 hex
  characters of the PSK fingerprint (``transports.swarm_key.fingerprint``), otherwise of a
  hash of the swarm name, so the LAN sees neither the swarm name nor the key. zeroconf caps
  the label at 15 bytes ("p2p-" + 11).
- The Zeroconf thread. Upstream's listener resolves a peer and calls
  ``peerstore.add_addrs`` from the zeroconf ServiceBrowser thread (``listener.py``,
  ``add_service``), after blocking there on ``get_service_info``. Nothing of trio may run in
  that thread: the peerstore we hand to upstream is a *tap* that only hands the peer to trio
  with ``TrioToken.run_sync_soon``, into a bounded channel (full: the peer is dropped and
  counted; mDNS repeats itself). The real peerstore is updated from trio.
- The process-global registry. Upstream also announces every find through
  ``discovery.events.peerDiscovery``, a process singleton that says nothing of which host or
  swarm found the peer; we never register a handler there. The tap is per instance.
- Interfaces. ``MDNSDiscovery.__init__`` builds ``Zeroconf()`` on every interface, with no
  parameter. We rebind the module's ``Zeroconf`` name to one with our interface list for
  the duration of the constructor only, under a lock, in a worker thread.
- Blocking calls. ``register_service`` (probing), ``unregister_service`` and
  ``Zeroconf.close`` block for up to seconds; they run in worker threads, the last two bounded
  by ``close_timeout_s`` on the way out.
- What is advertised. Upstream copies ``host.get_transport_addrs()``, so a node listening on
  0.0.0.0 would advertise 0.0.0.0; we advertise ``announce_addrs``: unspecified hosts
  replaced by the beacon's interface addresses.
- Removal. Upstream clears a peer's peerstore addresses when its mDNS record goes away; the
  tap ignores that: the addresses may have come from the DHT too, and the peerstore ages
  them out itself.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import threading
from collections.abc import Callable, Sequence
from typing import Any

import libp2p.discovery.mdns.mdns as upstream_mdns
import structlog
import trio
import zeroconf
from libp2p.abc import IHost
from libp2p.discovery.mdns.mdns import MDNSDiscovery, create_mdns_discovery
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

# trio's own TaskStatus type is hidden from mypy by trio-typing's stubs (see node/node.py).
from trio_typing import TaskStatus

from threatmesh.discovery.errors import DiscoverySettingsError
from threatmesh.transports.swarm_key import fingerprint

log = structlog.get_logger("threatmesh.discovery.mdns")

MDNS_FINGERPRINT_CHARS = 11  # "p2p-" + 11 = zeroconf's 15-byte label limit
_PUBLIC_SWARM_PREFIX = b"/threatmesh/mdns/1/"
# Serialises the temporary rebinding of upstream's module-global ``Zeroconf``.
_ZEROCONF_REBIND_LOCK = threading.Lock()
_ZEROCONF_NAME = "Zeroconf"  # the name ``MDNSDiscovery.__init__`` calls


def mdns_fingerprint(swarm: str, psk: bytes | None) -> str:
    """The 11 hex characters naming ``swarm`` on the LAN; the key's fingerprint if private."""
    if psk is not None:
        return fingerprint(psk).hex()[:MDNS_FINGERPRINT_CHARS]
    digest = hashlib.sha256(_PUBLIC_SWARM_PREFIX + swarm.encode("utf-8")).hexdigest()
    return digest[:MDNS_FINGERPRINT_CHARS]


def mdns_service_type(mdns_fp: str) -> str:
    return f"_p2p-{mdns_fp}._udp.local."


def announce_addrs(listen_addrs: Sequence[Multiaddr], interface_ips: Sequence[str]) -> list[str]:
    """What to advertise: TCP listen addresses, with 0.0.0.0 / :: replaced by each interface
    address of the same family. WebSocket and QUIC are left out (upstream filters ``/ws``;
    one dialable address per interface is all a LAN peer needs)."""
    result: list[str] = []
    for addr in listen_addrs:
        text = str(addr)
        parts = text.split("/")
        if len(parts) != 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
            continue
        host = ipaddress.ip_address(parts[2])
        if not host.is_unspecified:
            result.append(text)
            continue
        for ip in interface_ips:
            if ipaddress.ip_address(ip).version == host.version:
                result.append(f"/{parts[1]}/{ip}/tcp/{parts[4]}")
    return list(dict.fromkeys(result))


class _PeerstoreTap:
    """Stands in for the peerstore in upstream's listener; called in the zeroconf thread."""

    def __init__(self, token: trio.lowlevel.TrioToken, deliver: Callable[[PeerInfo], None]) -> None:
        self._token = token
        self._deliver = deliver

    def add_addrs(self, peer_id: ID, addrs: Sequence[Multiaddr], ttl: int = 0) -> None:
        # RunFinishedError: the node is gone and the zeroconf thread is being stopped.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._deliver, PeerInfo(peer_id, list(addrs)))

    def clear_addrs(self, peer_id: ID) -> None:
        return None  # see the module docstring, "Removal"


class _SwarmView:
    """All ``MDNSDiscovery`` reads of the swarm: its peer ID and its peerstore."""

    def __init__(self, peer_id: ID, peerstore: _PeerstoreTap) -> None:
        self._peer_id = peer_id
        self.peerstore = peerstore

    def get_peer_id(self) -> ID:
        return self._peer_id


def _build_discovery(
    view: _SwarmView, mdns_fp: str, interfaces: Sequence[str], addrs: list[str], port: int
) -> MDNSDiscovery:
    """Upstream's ``create_mdns_discovery`` with our interfaces (runs in a worker thread)."""
    factory: Any = zeroconf.Zeroconf
    if interfaces:
        versions = {ipaddress.ip_address(ip).version for ip in interfaces}
        ip_version = (
            zeroconf.IPVersion.V4Only
            if versions == {4}
            else zeroconf.IPVersion.V6Only
            if versions == {6}
            else zeroconf.IPVersion.All
        )
        factory = functools.partial(
            zeroconf.Zeroconf, interfaces=list(interfaces), ip_version=ip_version
        )
    with _ZEROCONF_REBIND_LOCK:
        original = getattr(upstream_mdns, _ZEROCONF_NAME)
        setattr(upstream_mdns, _ZEROCONF_NAME, factory)
        try:
            return create_mdns_discovery(
                view,  # type: ignore[arg-type]
                port=port,
                listen_addrs=addrs,
                private_network_fingerprint=mdns_fp,
            )
        finally:
            setattr(upstream_mdns, _ZEROCONF_NAME, original)


def _stop_discovery(discovery: MDNSDiscovery) -> None:
    discovery.broadcaster.unregister()
    discovery.listener.stop()
    discovery.zeroconf.close()


class MdnsBeacon:
    """Advertise this node and report LAN peers of the same swarm (``discovered()``)."""

    def __init__(
        self,
        host: IHost,
        *,
        mdns_fp: str,
        interfaces: Sequence[str] = (),
        queue_size: int = 64,
        ttl_s: int = 120,
        cleanup_interval_s: float = 60.0,
        close_timeout_s: float = 3.0,
    ) -> None:
        if not mdns_fp or len(mdns_fp) > MDNS_FINGERPRINT_CHARS or not mdns_fp.isalnum():
            raise DiscoverySettingsError(
                f"mDNS fingerprint must be 1 to {MDNS_FINGERPRINT_CHARS} letters or digits"
            )
        for ip in interfaces:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise DiscoverySettingsError(
                    f"mDNS interface {ip!r}: expected an IP address of a local interface"
                ) from None
        if queue_size < 1 or cleanup_interval_s <= 0 or close_timeout_s <= 0:
            raise DiscoverySettingsError("mDNS queue, cleanup and close bounds must be > 0")
        self._host = host
        self.mdns_fp = mdns_fp
        self.service_type = mdns_service_type(mdns_fp)
        self.interfaces = tuple(interfaces)
        self._ttl_s = ttl_s
        self._cleanup_interval_s = cleanup_interval_s
        self._close_timeout_s = close_timeout_s
        self._send, self._receive = trio.open_memory_channel[PeerInfo](queue_size)
        self.found = 0
        self.dropped = 0

    def discovered(self) -> trio.MemoryReceiveChannel[PeerInfo]:
        """LAN peers of this swarm as they are found (one consumer; bounded)."""
        return self._receive

    def _deliver(self, peer_info: PeerInfo) -> None:
        """Runs in trio (``run_sync_soon``): must never raise."""
        if peer_info.peer_id == self._host.get_id():
            return
        try:
            self._send.send_nowait(peer_info)
            self.found += 1
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def advertised_addrs(self) -> list[str]:
        interface_ips = list(self.interfaces) or _interface_ips()
        return announce_addrs(self._host.get_transport_addrs(), interface_ips)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Advertise and browse until cancelled. ``started`` once registered on the LAN."""
        token = trio.lowlevel.current_trio_token()
        view = _SwarmView(self._host.get_id(), _PeerstoreTap(token, self._deliver))
        addrs = self.advertised_addrs()
        port = next((int(a.split("/")[4]) for a in addrs), 4001)
        try:
            discovery = await trio.to_thread.run_sync(
                _build_discovery, view, self.mdns_fp, self.interfaces, addrs, port
            )
            try:
                await trio.to_thread.run_sync(discovery.broadcaster.register)
                log.info("mDNS beacon on", service=self.service_type, addrs=addrs)
                task_status.started()
                while True:
                    await trio.sleep(self._cleanup_interval_s)
                    # upstream's own cleanup loop is a trio system task outliving us; we run
                    # it here instead: it bounds the listener's table of seen services.
                    discovery.listener.cleanup_stale_entries(max_age=self._ttl_s * 2)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout_s):
                    # trio-typing's stubs predate ``abandon_on_cancel`` (trio >= 0.23).
                    await trio.to_thread.run_sync(  # type: ignore[call-arg]
                        _stop_discovery, discovery, abandon_on_cancel=True
                    )
        finally:
            self._send.close()  # ends the consumer of ``discovered()``


def _interface_ips() -> list[str]:
    """This machine's interface addresses, to replace 0.0.0.0 / :: in what we advertise."""
    from multiaddr.utils import get_network_addrs

    ips: list[str] = []
    for version in (4, 6):
        try:
            ips.extend(str(ip) for ip in get_network_addrs(version))
        except Exception as error:  # interface enumeration is best effort
            log.debug("cannot list interface addresses", ip_version=version, error=str(error))
    return ips or ["127.0.0.1"]
