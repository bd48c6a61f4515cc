"""``Node``: one threatmesh node, its services under one trio nursery.

Use it as an async context manager::

    async with Node(config, home) as node:
        print(node.addrs)

or run it in a nursery of your own with ``await nursery.start(node.run)``. Either way the
libp2p host and every service stop together when the scope ends: nothing outlives the node.

``Node.run`` is the list of services; each is a short method that calls pure policy
(``threatmesh.node.policy``) and carries out what it returns.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.peer.peerinfo import PeerInfo
from multiaddr.utils import get_network_addrs

# trio's own TaskStatus type is hidden from mypy by the trio-stubs package that py-libp2p
# pulls in (trio-typing); its TaskStatus is the same protocol.
from trio_typing import TaskStatus

from threatmesh.discovery import Discovery, DiscoverySettings, MembershipEvent
from threatmesh.identity import Identity, OwnVouches, TrustStore
from threatmesh.node.api import BadRequest, ServiceUnavailable, build_api, serve_api
from threatmesh.node.config import NodeConfig
from threatmesh.node.downgrade import downgrades
from threatmesh.node.errors import NodeError
from threatmesh.node.home import Home
from threatmesh.node.logs import get_logger
from threatmesh.node.policy import expand_unspecified, status_report
from threatmesh.node.records import event_record, received_record
from threatmesh.node.sharing import Sharing, SharingError
from threatmesh.node.store import Store
from threatmesh.node.stream import IndicatorStream, Received, Sealing, StreamError
from threatmesh.node.supernodes import Supernodes, SupernodeSettings
from threatmesh.node.sync import Sync
from threatmesh.pubsub.batching import BatchLimits
from threatmesh.pubsub.formats import FORMATS, parse_indicators
from threatmesh.pubsub.indicators import (
    IndicatorError,
    indicator_from_record,
    parse_tlp,
    validate_indicator,
)
from threatmesh.pubsub.libp2p_gossipsub import GossipSettings, build_pubsub, run_pubsub
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.transports.addrs import parse_listen_addr
from threatmesh.transports.errors import TransportError
from threatmesh.transports.libp2p_host import (
    HostSettings,
    build_host,
    connected_peers,
    running,
)
from threatmesh.transports.relay import RelaySettings, connect_any
from threatmesh.transports.swarm_key import load_swarm_key

log = get_logger("threatmesh.node")

PEER_CACHE_FILE_NAME = "peers.json"
# How often expired indicators are removed from the store.
EXPIRY_SWEEP_INTERVAL_S = 60.0
# One sweep removes at most EXPIRY_SWEEP_BATCH rows per call, EXPIRY_SWEEP_MAX_ROUNDS calls.
EXPIRY_SWEEP_BATCH = 10_000
EXPIRY_SWEEP_MAX_ROUNDS = 100
# A supernode keeps this many times the configured catch-up history (retention and size).
SUPERNODE_HISTORY_FACTOR = 4


def _wall_ms() -> int:
    return int(time.time() * 1000)


def host_settings(config: NodeConfig, home: Home) -> HostSettings:
    """The transport settings a config asks for (reads the swarm key file if one is set)."""
    psk_path = config.psk_path(home.path)
    return HostSettings(
        listen_addrs=tuple(parse_listen_addr(addr) for addr in config.listen_addrs()),
        psk=load_swarm_key(psk_path) if psk_path is not None else None,
        security=config.security,
        max_connections=config.max_connections,
        max_streams=config.max_streams,
        max_memory_mb=config.max_memory_mb,
        dial_timeout_s=config.dial_timeout_s,
    )


def supernode_settings(config: NodeConfig) -> SupernodeSettings:
    """The supernode service's part of the config (election, roles, relay)."""
    return SupernodeSettings(
        announce_interval_s=config.announce_interval_s,
        seats=config.supernode_seats,
        min_record_s=config.supernode_min_record_s,
        min_record_untrusted_s=config.supernode_min_record_untrusted_s,
        supernode_degree=config.supernode_mesh_degree,
        relay=RelaySettings(
            max_reservations=config.relay_max_reservations, timeout_s=config.dial_timeout_s
        ),
        dial_timeout_s=config.dial_timeout_s,
    )


def discovery_settings(config: NodeConfig) -> DiscoverySettings:
    """Discovery's part of the config (bootstrap, DHT, mDNS, watermarks)."""
    return DiscoverySettings(
        dht_mode=config.dht_mode,
        bootstrap=config.bootstrap,
        bootstrap_max_attempts=config.bootstrap_max_attempts,
        bootstrap_backoff_cap_s=config.bootstrap_backoff_cap_s,
        mdns=config.mdns,
        mdns_interfaces=config.mdns_interfaces,
        rendezvous_interval_s=config.rendezvous_interval_s,
        random_walk_interval_s=config.random_walk_interval_s,
        low_watermark=config.low_watermark,
        high_watermark=config.high_watermark,
        dial_timeout_s=config.dial_timeout_s,
    )


class Node:
    """A running threatmesh node. Construct, then ``async with`` (or ``nursery.start(run)``)."""

    def __init__(self, config: NodeConfig, home: Home, identity: Identity | None = None) -> None:
        self.config = config
        self.home = home
        self.identity = identity if identity is not None else home.identity()
        self.settings = host_settings(config, home)
        self.host: IHost = build_host(self.identity, self.settings)
        self.store = Store.open(home.store_file)
        self.pubsub = build_pubsub(
            self.host, GossipSettings(ip_colocation_threshold=config.ip_colocation_threshold)
        )
        self.sharing = Sharing(
            identity=self.identity,
            pubsub=self.pubsub,
            swarm=config.swarm,
            trust_store=TrustStore(home.trust_file),
            own_vouches=OwnVouches(home.vouches_file, self.identity),
            green_vouches_required=config.green_vouches_required,
            announce_interval_s=config.announce_interval_s,
        )
        self.stream = IndicatorStream(
            pubsub=self.pubsub,
            store=self.store,
            swarm=config.swarm,
            our_peer_id=self.identity.peer_id.to_base58(),
            limits=BatchLimits(),
            sealing=Sealing(self.identity, self.sharing.recipients),
        )
        self.discovery = Discovery(
            self.host,
            discovery_settings(config),
            swarm=config.swarm,
            psk=self.settings.psk,
            peer_cache_path=home.path / PEER_CACHE_FILE_NAME,
        )
        self.sync = Sync(
            host=self.host,
            store=self.store,
            stream=self.stream,
            pubsub=self.pubsub,
            swarm=config.swarm,
        )
        self.supernodes = Supernodes(
            host=self.host,
            pubsub=self.pubsub,
            sharing=self.sharing,
            discovery=self.discovery,
            settings=supernode_settings(config),
            swarm=config.swarm,
            our_addrs=self.listen_addrs,
        )
        self.sync.preferred_sources = lambda: self.supernodes.current
        self.api_url: str | None = None
        self._api_token = home.ensure_api_token()
        self._started_at: float | None = None
        self._nursery_manager: Any = None
        self._nursery: trio.Nursery | None = None

    # Lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        try:
            await self._nursery.start(self.run)
        except BaseException as error:
            self._nursery.cancel_scope.cancel()
            await self._nursery_manager.__aexit__(type(error), error, error.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        result: bool | None = await self._nursery_manager.__aexit__(exc_type, exc, traceback)
        return result

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every service until cancelled. ``started`` once the node is listening."""
        try:
            async with (
                running(self.host, self.settings.listen_addrs),
                trio.open_nursery() as services,
            ):
                await services.start(run_pubsub, self.pubsub)
                await services.start(self.sharing.run)
                await services.start(self.stream.run)
                # Catch-up hears every peer that joins from the first one on.
                await services.start(self.sync.run, self.discovery.events())
                await services.start(self.discovery.run)
                await services.start(self.supernodes.run)
                services.start_soon(self.keep_trusted_peers_connected)
                self.api_url = await services.start(self.serve_api)
                services.start_soon(self.sweep_expired_indicators)
                self._started_at = trio.current_time()
                log.info("node started", peer_id=str(self.peer_id), swarm=self.config.swarm)
                task_status.started()
        finally:
            self.home.clear_api_addr()
            self._started_at = None
            self.store.close()

    # Services -------------------------------------------------------------------------

    async def serve_api(self, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """The local HTTP API; its URL is written to ``<home>/api.addr`` once it listens."""

        app = build_api(self, self._api_token)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_api, app, self.config.api)
            self.home.write_api_addr(url)
            task_status.started(url)

    async def sweep_expired_indicators(self) -> None:
        """Delete expired indicators from the store, every ``EXPIRY_SWEEP_INTERVAL_S``."""
        while True:
            await trio.sleep(EXPIRY_SWEEP_INTERVAL_S)
            swept = 0
            for _ in range(EXPIRY_SWEEP_MAX_ROUNDS):
                removed = await trio.to_thread.run_sync(self.store.sweep_expired, _wall_ms())
                swept += removed
                if removed < EXPIRY_SWEEP_BATCH:
                    break
            if swept:
                log.info("expired indicators removed", count=swept)
            dropped = await trio.to_thread.run_sync(self._sweep_log)
            if dropped:
                log.info("old batches removed from the catch-up log", count=dropped)

    def _sweep_log(self) -> int:
        """Trim the catch-up log to its retention; a supernode keeps a longer history."""
        factor = SUPERNODE_HISTORY_FACTOR if self.supernodes.is_supernode else 1
        retention_ms = int(self.config.history_retention_days * 24 * 3600 * 1000) * factor
        return self.store.sweep_log(
            older_than_ms=_wall_ms() - retention_ms,
            max_bytes=self.config.history_max_mb * 1024 * 1024 * factor,
        )

    async def keep_trusted_peers_connected(self) -> None:
        """Stay connected to the peers we seal for (AMBER and above), every announce interval.

        Sealed batches go straight to every trusted peer we are connected to (direct
        delivery), so a recipient we are not connected to would depend on relays that may
        not be trusted with it. Such peers are looked up (DHT, and the addresses they
        announce), dialled, and never pruned. A peer that is reachable only through a relay
        (it announces circuit addresses) is dialled through its relay.
        """
        while True:
            connected = set(connected_peers(self.host))
            for peer_id in self.sharing.recipients(pb.TLP_AMBER):
                self.discovery.protect(peer_id)
                if peer_id in connected:
                    continue
                with trio.move_on_after(2 * self.config.dial_timeout_s):
                    info = await self.discovery.find_peer(peer_id)
                    addrs = [*(info.addrs if info is not None else [])]
                    addrs += self.supernodes.announced_addrs(peer_id)
                    if addrs:
                        try:
                            await connect_any(
                                self.host,
                                self.supernodes.relay,
                                PeerInfo(peer_id, list(dict.fromkeys(addrs))),
                                timeout_s=self.config.dial_timeout_s,
                            )
                        except TransportError as error:  # retried next round
                            log.info(
                                "trusted peer not reachable", peer=str(peer_id), error=str(error)
                            )
            await trio.sleep(self.config.announce_interval_s)

    # Python API -------------------------------------------------------------------------

    async def publish(
        self,
        indicators: Iterable[pb.Indicator | Mapping[str, Any]],
        *,
        tlp: str | int = "clear",
        provider: str = "",
    ) -> int:
        """Validate and publish ``indicators``; return how many were published.

        Items are ``pb.Indicator`` messages or records (dicts with ``value``, ``itype``, ...,
        as in JSON lines). ``tlp`` is the level of items that do not name one. Raises
        IndicatorError (naming the field and the item's 1-based position) for a bad item, so
        nothing is published from a call with a bad item; StreamError if publishing failed.
        """
        default_tlp = parse_tlp(tlp) if isinstance(tlp, str) else tlp
        now_ms = _wall_ms()
        ready: list[pb.Indicator] = []
        for position, item in enumerate(indicators, start=1):
            if isinstance(item, pb.Indicator):
                indicator = pb.Indicator()
                indicator.CopyFrom(item)
                if indicator.tlp == pb.TLP_UNSPECIFIED:
                    indicator.tlp = pb.Tlp.ValueType(default_tlp)
                validate_indicator(indicator, now_ms=now_ms)
            else:
                indicator = indicator_from_record(
                    item,
                    line=position,
                    default_tlp=default_tlp,
                    now_ms=now_ms,
                    default_provider=provider,
                )
            ready.append(indicator)
        refused = await self._downgrades(ready)
        if refused:
            position, problem = min(refused.items())
            raise IndicatorError("tlp", problem, line=position + 1)
        return await self._publish_by_level(ready)

    async def _downgrades(self, indicators: Sequence[pb.Indicator]) -> dict[int, str]:
        """Positions of ``indicators`` that would widen the audience of what we hold."""
        keys = [(i.itype, i.value) for i in indicators if i.tlp < pb.TLP_RED]
        if not keys:
            return {}
        held = await trio.to_thread.run_sync(self.store.max_levels, keys)
        return downgrades(indicators, held)

    async def subscribe(self, tlp: str | int | Sequence[str | int] = ()) -> AsyncIterator[Received]:
        """Every indicator published or received from now on, at the given levels (all)."""
        levels = [tlp] if isinstance(tlp, str | int) else list(tlp)
        subscription = self.stream.subscribe(
            [parse_tlp(level) if isinstance(level, str) else level for level in levels]
        )
        try:
            async for item in subscription:
                yield item
        finally:
            self.stream.unsubscribe(subscription)

    async def _publish_by_level(self, indicators: Sequence[pb.Indicator]) -> int:
        by_level: dict[int, list[pb.Indicator]] = {}
        for indicator in indicators:
            by_level.setdefault(indicator.tlp, []).append(indicator)
        published = 0
        for level, group in sorted(by_level.items()):
            published += await self.stream.publish(group, level)
        return published

    def events(self) -> trio.MemoryReceiveChannel[MembershipEvent]:
        """Membership events (peer joined / left / addresses changed, supernode elected /
        dropped) from now on.

        A bounded channel: a reader that falls behind loses events and then receives one
        ``EventsDropped`` with the count. Close it when done.
        """
        return self.discovery.events()

    # Local API backend ------------------------------------------------------------------

    def event_records(self) -> AsyncIterator[Mapping[str, Any]]:
        channel = self.discovery.events()

        async def records() -> AsyncIterator[Mapping[str, Any]]:
            with channel:
                async for event in channel:
                    yield event_record(event)

        return records()

    def supernodes_report(self) -> Mapping[str, Any]:
        if self._started_at is None:
            raise NodeError("the node is not running")
        return self.supernodes.report()

    async def publish_text(
        self, text: str, *, fmt: str, tlp_name: str, provider: str
    ) -> Mapping[str, Any]:
        if fmt not in FORMATS:
            raise BadRequest(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
        try:
            default_tlp = parse_tlp(tlp_name)
        except IndicatorError as error:
            raise BadRequest(str(error)) from None
        parsed = await trio.to_thread.run_sync(
            lambda: parse_indicators(
                text, fmt, default_tlp=default_tlp, now_ms=_wall_ms(), default_provider=provider
            )
        )
        refused = await self._downgrades(parsed.indicators)
        rejected = [(r.line, r.reason) for r in parsed.rejected]
        rejected += [
            (parsed.lines[position], IndicatorError("tlp", problem).reason)
            for position, problem in refused.items()
        ]
        ready = [i for position, i in enumerate(parsed.indicators) if position not in refused]
        try:
            accepted = await self._publish_by_level(ready)
        except StreamError as error:
            raise ServiceUnavailable(str(error)) from None
        return {
            "accepted": accepted,
            "rejected": [{"line": line, "reason": reason} for line, reason in sorted(rejected)],
        }

    async def vouch_request(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        unknown = set(body) - {"peer_id", "level", "lifetime_ms", "revoke"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        peer_id, revoke = body.get("peer_id"), body.get("revoke", False)
        if not isinstance(peer_id, str) or not isinstance(revoke, bool):
            raise BadRequest("peer_id must be a peer ID string and revoke true or false")
        try:
            if revoke:
                return await self.sharing.revoke(peer_id)
            level, lifetime_ms = body.get("level", "green"), body.get("lifetime_ms")
            if not isinstance(level, str):
                raise BadRequest("level must be a TLP level name")
            if lifetime_ms is not None and (
                not isinstance(lifetime_ms, int) or isinstance(lifetime_ms, bool)
            ):
                raise BadRequest("lifetime_ms must be an integer (milliseconds)")
            return await self.sharing.vouch(peer_id, parse_tlp(level), lifetime_ms)
        except (SharingError, IndicatorError) as error:
            raise BadRequest(str(error)) from None

    def stream_records(self, tlp_names: Sequence[str]) -> AsyncIterator[Mapping[str, Any]]:
        try:
            levels = [parse_tlp(name) for name in tlp_names]
        except IndicatorError as error:
            raise BadRequest(str(error)) from None
        subscription = self.stream.subscribe(levels)

        async def records() -> AsyncIterator[Mapping[str, Any]]:
            try:
                async for item in subscription:
                    yield received_record(item.indicator, item.origin)
            finally:
                self.stream.unsubscribe(subscription)

        return records()

    # Views ----------------------------------------------------------------------------

    @property
    def peer_id(self) -> Any:
        return self.identity.peer_id

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/<peer id>``) others can dial."""
        suffix = f"/p2p/{self.peer_id.to_base58()}"
        return [addr + suffix for addr in self.listen_addrs()]

    def listen_addrs(self) -> list[str]:
        """Our listen multiaddrs others can dial, without ``/p2p`` (0.0.0.0 expanded)."""
        return expand_unspecified(self.host.get_transport_addrs(), _interface_ips())

    def peers(self) -> list[str]:
        return [peer_id.to_base58() for peer_id in connected_peers(self.host)]

    def status(self) -> Mapping[str, Any]:
        if self._started_at is None:
            raise NodeError("the node is not running")
        report = status_report(
            peer_id=self.peer_id.to_base58(),
            addrs=self.addrs,
            peers=self.peers(),
            started_at=self._started_at,
            now=trio.current_time(),
            swarm=self.config.swarm,
        )
        report["stream"] = {
            **dataclasses.asdict(self.stream.counters),
            "dropped_local": self.stream.dropped_local(),
            "subscribers": self.stream.subscriber_count(),
        }
        report["pubsub"] = dict(self.pubsub.counters_snapshot())
        report["discovery"] = dict(self.discovery.status())
        report["sharing"] = dict(self.sharing.status())
        report["sync"] = self.sync.status()
        report["supernodes"] = self.supernodes.status()
        return report


def _interface_ips() -> list[str]:
    """This machine's interface addresses (loopback included), to expand 0.0.0.0 / ::."""
    ips = ["127.0.0.1", "::1"]
    for version in (4, 6):
        try:
            ips.extend(str(ip) for ip in get_network_addrs(version))
        except Exception as error:  # interface enumeration is best effort
            log.debug("cannot list interface addresses", ip_version=version, error=str(error))
    return list(dict.fromkeys(ips))
