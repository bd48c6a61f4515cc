"""Unit and property tests of discovery's pure pieces: keys, modes, provider merging, dial
backoff, rendezvous choice, the peer cache, pruning, membership tracking, the event hub,
mDNS naming and the settings checks. No network, no clock."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import multihash
import pytest
import structlog
import trio
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.kad_dht.kad_dht import DHTMode
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from threatmesh.discovery.connections import (
    ConnectionManager,
    PeerConnection,
    Watermarks,
    peers_to_prune,
)
from threatmesh.discovery.dialer import (
    DialBackoff,
    Dialer,
    DialOutcome,
    dialable_addrs,
    retry_delay_s,
)
from threatmesh.discovery.errors import DiscoveryError, DiscoverySettingsError
from threatmesh.discovery.events import (
    EventHub,
    EventsDropped,
    MembershipTracker,
    PeerAddressesChanged,
    PeerJoined,
    PeerLeft,
)
from threatmesh.discovery.libp2p_kad import (
    DHT_KEY_BYTES,
    MAX_FIND_NODE_KEY_BYTES,
    DhtMode,
    dht_key,
    kad_protocol_id,
    merge_providers,
    resolve_dht_mode,
)
from threatmesh.discovery.mdns import announce_addrs, mdns_fingerprint, mdns_service_type
from threatmesh.discovery.peer_cache import (
    MAX_ADDRS_PER_PEER,
    CachedPeer,
    PeerCache,
    PeerCacheFormatError,
    load_peer_cache,
    save_peer_cache,
)
from threatmesh.discovery.rendezvous import members_to_dial, next_round_delay_s, rendezvous_key
from threatmesh.discovery.service import DiscoverySettings
from threatmesh.transports.swarm_key import fingerprint

PEERS = [ID.from_pubkey(create_new_key_pair().public_key) for _ in range(8)]
peer_ids = st.sampled_from(PEERS)
tcp_addrs = st.integers(1, 65535).map(lambda port: Multiaddr(f"/ip4/10.0.0.1/tcp/{port}"))


# Keys and protocol ids ------------------------------------------------------------------


@given(st.binary(max_size=1000))
def test_dht_keys_are_sha256_multihashes_within_the_find_node_limit(data: bytes) -> None:
    key = dht_key(data)
    assert len(key) == DHT_KEY_BYTES <= MAX_FIND_NODE_KEY_BYTES
    decoded = multihash.decode(key)
    assert decoded.name == "sha2-256"
    assert decoded.digest == hashlib.sha256(data).digest()


def test_protocol_id_is_per_swarm_and_never_ipfs() -> None:
    assert kad_protocol_id("s1") == "/threatmesh/s1/kad/1.0.0"
    assert kad_protocol_id("s1") != kad_protocol_id("s2")
    with pytest.raises(DiscoverySettingsError):
        kad_protocol_id("a/b")
    with pytest.raises(DiscoverySettingsError):
        kad_protocol_id("")


def test_rendezvous_key_depends_on_the_swarm_only() -> None:
    assert rendezvous_key("s1") == rendezvous_key("s1")
    assert rendezvous_key("s1") != rendezvous_key("s2")
    assert len(rendezvous_key("x" * 32)) == DHT_KEY_BYTES


@pytest.mark.parametrize(
    ("mode", "listening", "expected"),
    [
        ("auto", True, DHTMode.SERVER),
        ("auto", False, DHTMode.CLIENT),
        ("server", False, DHTMode.SERVER),
        ("client", True, DHTMode.CLIENT),
        (DhtMode.SERVER, True, DHTMode.SERVER),
    ],
)
def test_dht_mode(mode: str, listening: bool, expected: DHTMode) -> None:
    assert resolve_dht_mode(mode, listening=listening) is expected


def test_unknown_dht_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(DiscoverySettingsError, match="auto, server, client"):
        resolve_dht_mode("sometimes", listening=True)


# Providers ------------------------------------------------------------------------------


@given(st.lists(st.tuples(peer_ids, st.lists(tcp_addrs, max_size=3)), max_size=30))
def test_merge_providers_keeps_one_entry_per_peer_with_every_address(
    answers: list[tuple[ID, list[Multiaddr]]],
) -> None:
    merged = merge_providers(PeerInfo(peer_id, addrs) for peer_id, addrs in answers)
    ids = [info.peer_id for info in merged]
    assert len(ids) == len(set(ids))
    assert ids == list(dict.fromkeys(peer_id for peer_id, _ in answers))  # first-seen order
    for info in merged:
        expected = {addr for peer_id, addrs in answers if peer_id == info.peer_id for addr in addrs}
        assert set(info.addrs) == expected
        assert len(info.addrs) == len(set(info.addrs))


def test_merge_providers_strips_p2p_suffixes() -> None:
    peer = PEERS[0]
    with_suffix = Multiaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{peer.to_base58()}")
    bare = Multiaddr("/ip4/10.0.0.1/tcp/1")
    [merged] = merge_providers([PeerInfo(peer, [with_suffix]), PeerInfo(peer, [bare])])
    assert merged.addrs == [bare]


# Dialling ---------------------------------------------------------------------------------


def test_dialable_addrs_drops_what_cannot_be_dialled() -> None:
    peer = PEERS[0].to_base58()
    addrs = [
        Multiaddr("/ip4/0.0.0.0/tcp/4001"),
        Multiaddr("/ip6/::/tcp/4001"),
        Multiaddr(f"/ip4/10.0.0.1/tcp/4001/p2p/{peer}"),
        Multiaddr("/ip4/10.0.0.1/tcp/4001"),
        Multiaddr(f"/ip4/10.0.0.9/tcp/4001/p2p/{peer}/p2p-circuit"),
        Multiaddr("/dns4/example.org/tcp/4001"),
    ]
    assert [str(a) for a in dialable_addrs(addrs)] == [
        "/ip4/10.0.0.1/tcp/4001",
        "/dns4/example.org/tcp/4001",
    ]


@given(
    st.integers(0, 10_000),
    st.floats(0.01, 10),
    st.floats(0.01, 1000),
    st.floats(0, 0.999),
)
def test_retry_delay_is_capped_and_grows(attempt: int, first: float, cap: float, jitter: float):
    cap = max(cap, first)
    delay = retry_delay_s(attempt, first_s=first, cap_s=cap, jitter=jitter)
    assert 0 <= delay <= cap * 1.25
    if attempt == 0:
        assert delay == 0
    later = retry_delay_s(attempt + 1, first_s=first, cap_s=cap, jitter=jitter)
    assert later >= delay


def test_backoff_blocks_a_failed_peer_until_its_time() -> None:
    backoff = DialBackoff(first_s=1.0, cap_s=8.0, max_peers=10)
    peer = PEERS[0]
    assert backoff.ready(peer, now=0.0)
    assert backoff.failed(peer, now=0.0) == 1.0
    assert not backoff.ready(peer, now=0.5)
    assert backoff.ready(peer, now=1.0)
    assert backoff.failed(peer, now=1.0) == 3.0  # 2 s after the second failure
    for _ in range(10):
        retry_at = backoff.failed(peer, now=100.0)
    assert retry_at == 108.0  # capped
    backoff.succeeded(peer)
    assert backoff.ready(peer, now=100.0)
    assert backoff.failures(peer) == 0


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 1000)), max_size=200))
def test_backoff_table_stays_bounded(failures: list[tuple[int, float]]) -> None:
    backoff = DialBackoff(first_s=1.0, cap_s=60.0, max_peers=5)
    for peer, now in failures:
        backoff.failed(peer, now)
        assert len(backoff) <= 5


def test_backoff_settings_are_checked() -> None:
    with pytest.raises(DiscoverySettingsError):
        DialBackoff(first_s=0, cap_s=1, max_peers=1)
    with pytest.raises(DiscoverySettingsError):
        DialBackoff(first_s=2, cap_s=1, max_peers=1)


@given(
    st.lists(st.tuples(peer_ids, st.lists(tcp_addrs, max_size=2)), max_size=20),
    st.sets(peer_ids),
    st.integers(0, 10),
)
def test_members_to_dial(answers: list[tuple[ID, list[Multiaddr]]], connected: set[ID], cap: int):
    us = PEERS[0]
    providers = merge_providers(PeerInfo(peer_id, addrs) for peer_id, addrs in answers)
    chosen = members_to_dial(providers, our_peer_id=us, connected=connected, max_dials=cap)
    assert len(chosen) <= cap
    for info in chosen:
        assert info.peer_id != us
        assert info.peer_id not in connected
        assert info.addrs
    eligible = [
        info.peer_id
        for info in providers
        if info.peer_id != us and info.peer_id not in connected and info.addrs
    ]
    assert [info.peer_id for info in chosen] == eligible[:cap]


@given(st.lists(st.booleans(), max_size=30), st.floats(0.1, 100), st.floats(1, 50))
def test_round_delays_back_off_while_idle_and_reset_when_productive(
    rounds: list[bool], base: float, factor: float
) -> None:
    cap = base * factor
    delay = next_round_delay_s(None, productive=False, base_s=base, cap_s=cap)
    assert delay == base
    for productive in rounds:
        previous = delay
        delay = next_round_delay_s(previous, productive=productive, base_s=base, cap_s=cap)
        assert base <= delay <= cap
        if productive:
            assert delay == base
        else:
            assert delay == min(cap, previous * 2)


# Peer cache -------------------------------------------------------------------------------


def _addr(n: int) -> str:
    return f"/ip4/10.0.0.{n % 250 + 1}/tcp/{4000 + n}"


def test_cache_ranks_supernodes_then_recent_then_frequent() -> None:
    cache = PeerCache(max_peers=10)
    a, b, c, d = (p.to_base58() for p in PEERS[:4])
    cache.record(a, [_addr(1)], now=100.0)
    cache.record(b, [_addr(2)], now=200.0)
    cache.record(c, [_addr(3)], now=150.0, supernode=True)
    cache.record(d, [_addr(4)], now=200.0)
    cache.record(d, [_addr(4)], now=200.0)  # seen twice
    assert [p.peer_id for p in cache.ranked(now=300.0)] == [c, d, b, a]
    assert [p.peer_id for p in cache.ranked(now=300.0, limit=2)] == [c, d]


def test_cache_drops_stale_entries_from_the_ranking() -> None:
    cache = PeerCache(max_peers=10, max_age_s=100.0)
    cache.record(PEERS[0].to_base58(), [_addr(1)], now=0.0)
    cache.record(PEERS[1].to_base58(), [_addr(2)], now=150.0)
    assert [p.peer_id for p in cache.ranked(now=200.0)] == [PEERS[1].to_base58()]


def test_cache_keeps_newest_addresses_first_and_bounded() -> None:
    cache = PeerCache()
    peer = PEERS[0].to_base58()
    for n in range(20):
        cache.record(peer, [_addr(n)], now=float(n))
    entry = cache.get(peer)
    assert entry is not None
    assert len(entry.addrs) == MAX_ADDRS_PER_PEER
    assert entry.addrs[0] == _addr(19)
    assert entry.seen_count == 20


def test_a_peer_without_address_is_not_cached() -> None:
    cache = PeerCache()
    cache.record(PEERS[0].to_base58(), [], now=1.0)
    assert len(cache) == 0


@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 300), st.floats(0, 1e6), st.booleans()),
        max_size=60,
    )
)
def test_cache_is_bounded_and_round_trips_through_json(
    records: list[tuple[int, int, float, bool]],
) -> None:
    cache = PeerCache(max_peers=4, max_age_s=1e9)
    for peer, addr, now, supernode in records:
        cache.record(PEERS[peer].to_base58(), [_addr(addr)], now, supernode=supernode)
        assert len(cache) <= 4
    restored, skipped = PeerCache.from_json(cache.to_json(), max_peers=4, max_age_s=1e9)
    assert skipped == 0
    assert restored.ranked(now=1e6) == cache.ranked(now=1e6)


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", '{"version": 2, "peers": []}', '{"version": 1, "peers": {}}', "\x00\x01"],
)
def test_cache_format_errors(text: str) -> None:
    with pytest.raises(PeerCacheFormatError):
        PeerCache.from_json(text)


def test_cache_skips_bad_entries_and_keeps_good_ones() -> None:
    good = {"peer_id": PEERS[0].to_base58(), "addrs": [_addr(1)], "last_seen": 5.0}
    bad = [
        {"peer_id": "not-a-peer-id", "addrs": [_addr(1)], "last_seen": 5.0},
        {"peer_id": PEERS[1].to_base58(), "addrs": ["/not/an/addr"], "last_seen": 5.0},
        {"peer_id": PEERS[2].to_base58(), "addrs": [], "last_seen": 5.0},
        {"peer_id": PEERS[3].to_base58(), "addrs": [_addr(2)], "last_seen": "yesterday"},
        "just a string",
    ]
    text = json.dumps({"version": 1, "peers": [good, *bad]})
    cache, skipped = PeerCache.from_json(text)
    assert skipped == len(bad)
    assert [p.peer_id for p in cache.ranked(now=10.0)] == [PEERS[0].to_base58()]


def test_cache_file_round_trip_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "home" / "peers.json"
    cache = PeerCache()
    cache.record(PEERS[0].to_base58(), [_addr(1)], now=1.0)
    save_peer_cache(path, cache)
    save_peer_cache(path, cache)
    assert [p.name for p in path.parent.iterdir()] == ["peers.json"]  # no temporary left
    assert load_peer_cache(path).ranked(now=2.0) == cache.ranked(now=2.0)


def test_missing_cache_is_empty_and_silent(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        assert len(load_peer_cache(tmp_path / "peers.json")) == 0
    assert logs == []


@pytest.mark.parametrize("content", [b"{ not json", b"\xff\xfe", b'{"version": 7}'])
def test_corrupt_cache_is_ignored_with_one_warning(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "peers.json"
    path.write_bytes(content)
    with structlog.testing.capture_logs() as logs:
        assert len(load_peer_cache(path)) == 0
    assert len(logs) == 1
    [entry] = logs
    assert entry["log_level"] == "warning"
    assert "corrupt" in entry["event"]
    assert entry["path"] == str(path)


# Connection manager ----------------------------------------------------------------------

connections = st.lists(
    st.builds(
        PeerConnection,
        peer_id=st.integers(0, 10_000),
        connected_at=st.floats(0, 100),
        streams=st.integers(0, 5),
        value=st.integers(0, 3),
    ),
    max_size=40,
    unique_by=lambda c: c.peer_id,
)


@given(
    connections,
    st.integers(0, 20),
    st.integers(0, 20),
    st.floats(0, 50),
    st.sets(st.integers(0, 10_000)),
)
def test_pruning_respects_watermarks_protection_and_grace(
    conns: list[PeerConnection], low: int, extra: int, grace: float, protected: set[int]
) -> None:
    marks = Watermarks(low=low, high=max(1, low + extra), grace_s=grace)
    now = 100.0
    pruned = peers_to_prune(conns, watermarks=marks, protected=protected, now=now)
    if len(conns) <= marks.high:
        assert pruned == []
        return
    assert len(set(pruned)) == len(pruned)
    assert len(conns) - len(pruned) >= marks.low
    by_id = {c.peer_id: c for c in conns}
    for peer_id in pruned:
        assert peer_id not in protected
        assert now - by_id[peer_id].connected_at >= grace
    eligible = [c for c in conns if c.peer_id not in protected and now - c.connected_at >= grace]
    assert len(pruned) == min(len(eligible), len(conns) - marks.low)
    # Least useful first: nothing kept is strictly less useful than something pruned.
    kept = [c for c in eligible if c.peer_id not in pruned]
    for peer_id in pruned:
        assert all(by_id[peer_id].value <= c.value for c in kept)


def test_pruning_prefers_low_value_idle_young_connections() -> None:
    marks = Watermarks(low=1, high=2, grace_s=0)
    conns = [
        PeerConnection("old-useful", connected_at=0, streams=0, value=1),
        PeerConnection("busy", connected_at=5, streams=3, value=0),
        PeerConnection("idle-old", connected_at=1, streams=0, value=0),
        PeerConnection("idle-young", connected_at=9, streams=0, value=0),
    ]
    assert peers_to_prune(conns, watermarks=marks, protected=(), now=10) == [
        "idle-young",
        "idle-old",
        "busy",
    ]


def test_watermarks_are_checked() -> None:
    with pytest.raises(DiscoverySettingsError, match="low=5, high=4"):
        Watermarks(low=5, high=4)


# Membership -------------------------------------------------------------------------------


def test_tracker_joins_on_first_connection_and_leaves_on_last() -> None:
    tracker = MembershipTracker()
    assert tracker.connected("a", 1, ["/ip4/1.2.3.4/tcp/1"], 0.0) == [
        PeerJoined("a", ("/ip4/1.2.3.4/tcp/1",), 0.0)
    ]
    assert tracker.connected("a", 2, [], 1.0) == []
    assert tracker.disconnected("a", 1, 2.0) == []
    assert tracker.disconnected("a", 2, 3.0) == [PeerLeft("a", 3.0)]
    assert tracker.disconnected("a", 2, 4.0) == []


def test_tracker_reports_address_changes_once() -> None:
    tracker = MembershipTracker()
    tracker.connected("a", 1, [], 0.0)
    new = ["/ip4/1.2.3.4/tcp/1", "/ip4/5.6.7.8/tcp/1"]
    assert tracker.addresses("a", new, 1.0) == [PeerAddressesChanged("a", tuple(sorted(new)), 1.0)]
    assert tracker.addresses("a", list(reversed(new)), 2.0) == []
    assert tracker.addresses("unknown", new, 2.0) == []


def test_tracker_is_bounded() -> None:
    tracker = MembershipTracker(max_peers=2)
    for name in "abc":
        tracker.connected(name, 1, [], 0.0)
    assert tracker.members() == ["a", "b"]
    assert tracker.untracked == 1


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abc"), st.integers(0, 2)), max_size=80))
def test_tracker_events_alternate_and_match_reconcile(
    changes: list[tuple[bool, str, int]],
) -> None:
    tracker = MembershipTracker()
    truth: dict[str, set[int]] = {}
    last: dict[str, type] = {}
    for step, (up, peer, conn) in enumerate(changes):
        if up:
            events = tracker.connected(peer, conn, [], float(step))
            truth.setdefault(peer, set()).add(conn)
        else:
            events = tracker.disconnected(peer, conn, float(step))
            truth.get(peer, set()).discard(conn)
        for event in events:
            assert isinstance(event, PeerJoined | PeerLeft)
            assert last.get(peer) is not type(event)  # joined, left, joined, ...
            last[peer] = type(event)
        assert sorted(tracker.members()) == sorted(p for p, c in truth.items() if c)
    assert tracker.reconcile({p: c for p, c in truth.items()}, 1e6) == []


def test_reconcile_repairs_a_lost_change() -> None:
    tracker = MembershipTracker()
    tracker.connected("gone", 1, [], 0.0)
    events = tracker.reconcile({"new": [7]}, 5.0)
    assert PeerLeft("gone", 5.0) in events
    assert PeerJoined("new", (), 5.0) in events
    assert tracker.members() == ["new"]


async def test_hub_drops_for_a_slow_subscriber_and_tells_it() -> None:
    hub = EventHub(buffer=2)
    slow = hub.subscribe()
    fast = hub.subscribe(buffer=100)
    for n in range(5):
        hub.publish(PeerLeft(str(n), float(n)))
    assert hub.dropped == 3
    assert [slow.receive_nowait(), slow.receive_nowait()] == [
        PeerLeft("0", 0.0),
        PeerLeft("1", 1.0),
    ]
    hub.publish(PeerLeft("5", 5.0))
    assert slow.receive_nowait() == EventsDropped(3, 5.0)
    assert slow.receive_nowait() == PeerLeft("5", 5.0)
    assert [fast.receive_nowait().peer_id for _ in range(6)] == list("012345")  # type: ignore[union-attr]


async def test_hub_forgets_closed_subscribers_and_closes_the_rest() -> None:
    hub = EventHub(buffer=4, max_subscribers=2)
    gone = hub.subscribe()
    kept = hub.subscribe()
    with pytest.raises(DiscoveryError, match="too many"):
        hub.subscribe()
    await gone.aclose()
    hub.publish(PeerLeft("x", 0.0))
    hub.subscribe()  # room again
    hub.close()
    assert kept.receive_nowait() == PeerLeft("x", 0.0)
    with pytest.raises(trio.EndOfChannel):
        kept.receive_nowait()


# mDNS naming ------------------------------------------------------------------------------


def test_mdns_name_hides_swarm_and_key() -> None:
    psk = bytes(range(32))
    private = mdns_fingerprint("secret-swarm", psk)
    assert private == fingerprint(psk).hex()[:11]
    assert private != mdns_fingerprint("secret-swarm", bytes(32))
    public = mdns_fingerprint("secret-swarm", None)
    assert "secret" not in public
    assert len(public) == 11
    assert public.isalnum()
    assert public != mdns_fingerprint("other", None)
    service = mdns_service_type(public)
    assert service == f"_p2p-{public}._udp.local."
    assert len(f"p2p-{public}") <= 15


def test_announce_addrs_expands_unspecified_hosts() -> None:
    listen = [
        Multiaddr("/ip4/0.0.0.0/tcp/4001"),
        Multiaddr("/ip6/::/tcp/4001"),
        Multiaddr("/ip4/127.0.0.1/tcp/5"),
        Multiaddr("/ip4/0.0.0.0/udp/4001/quic-v1"),
        Multiaddr("/ip4/0.0.0.0/tcp/4002/ws"),
    ]
    assert announce_addrs(listen, ["10.0.0.1", "fe80::1", "10.0.0.2"]) == [
        "/ip4/10.0.0.1/tcp/4001",
        "/ip4/10.0.0.2/tcp/4001",
        "/ip6/fe80::1/tcp/4001",
        "/ip4/127.0.0.1/tcp/5",
    ]


# Settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dht_mode", "maybe", "dht_mode"),
        ("rendezvous_interval_s", 0.0, "rendezvous_interval_s"),
        ("dial_concurrency", 0, "dial_concurrency"),
        ("low_watermark", 500, "low=500"),
        ("rendezvous_max_interval_s", 1.0, "rendezvous_max_interval_s must be >="),
    ],
)
def test_settings_are_checked(field: str, value: object, message: str) -> None:
    with pytest.raises(DiscoverySettingsError, match=message):
        DiscoverySettings(**{field: value})  # type: ignore[arg-type]


def test_cached_peer_is_plain_data() -> None:
    peer = CachedPeer("p", ("/ip4/1.2.3.4/tcp/1",), 1.0)
    assert peer.seen_count == 1
    assert not peer.supernode


# Services on a fake host, in virtual time ---------------------------------------------------


class _FakeNetwork:
    def __init__(self) -> None:
        self.connections: dict[object, list[object]] = {}
        self.unblocked: list[object] = []

    def unblock_peer(self, peer_id: object) -> None:  # Swarm's negative dial cache
        self.unblocked.append(peer_id)


class _FakeHost:
    """What Dialer and ConnectionManager use of a host: an ID, connect, the conn table."""

    def __init__(self) -> None:
        self._network = _FakeNetwork()
        self.dials: list[tuple[float, object]] = []
        self.disconnected: list[object] = []

    def get_id(self) -> ID:
        return PEERS[7]

    def get_network(self) -> _FakeNetwork:
        return self._network

    async def connect(self, peer_info: PeerInfo) -> None:
        self.dials.append((trio.current_time(), peer_info.peer_id))
        raise ConnectionRefusedError("nobody home")

    async def disconnect(self, peer_id: object) -> None:
        self.disconnected.append(peer_id)
        self._network.connections.pop(peer_id, None)


async def test_bootstrap_retries_follow_the_capped_backoff(autojump_clock: object) -> None:
    host = _FakeHost()
    dialer = Dialer(
        host,  # type: ignore[arg-type]
        concurrency=2,
        timeout_s=1.0,
        backoff=DialBackoff(first_s=1.0, cap_s=60.0, max_peers=8),
        jitter=lambda: 0.0,
    )
    target = PeerInfo(PEERS[0], [Multiaddr("/ip4/10.0.0.1/tcp/4001")])
    with structlog.testing.capture_logs() as logs:
        outcome = await dialer.dial_with_retries(
            target, source="bootstrap", attempts=5, first_s=0.5, cap_s=2.0
        )
    assert outcome is DialOutcome.FAILED
    assert [round(at, 3) for at, _ in host.dials] == [0.0, 0.5, 1.5, 3.5, 5.5]
    assert [entry["event"] for entry in logs if entry["log_level"] != "debug"] == [
        "peer not reachable; retrying with backoff",
        "peer unreachable; giving up",
    ]


async def test_dialer_skips_a_peer_in_backoff(autojump_clock: object) -> None:
    host = _FakeHost()
    dialer = Dialer(
        host,  # type: ignore[arg-type]
        concurrency=1,
        timeout_s=1.0,
        backoff=DialBackoff(first_s=10.0, cap_s=60.0, max_peers=8),
        jitter=lambda: 0.0,
    )
    target = PeerInfo(PEERS[0], [Multiaddr("/ip4/10.0.0.1/tcp/4001")])
    assert await dialer.dial(target, source="test") is DialOutcome.FAILED
    assert await dialer.dial(target, source="test") is DialOutcome.BACKING_OFF
    await trio.sleep(10.0)
    assert await dialer.dial(target, source="test") is DialOutcome.FAILED
    no_addr = PeerInfo(PEERS[1], [Multiaddr("/ip4/0.0.0.0/tcp/1")])
    assert await dialer.dial(no_addr, source="test") is DialOutcome.NO_ADDRESS
    assert await dialer.dial(PeerInfo(PEERS[7], []), source="test") is DialOutcome.SELF
    assert len(host.dials) == 2


async def test_connection_manager_waits_out_the_grace_period(autojump_clock: object) -> None:
    host = _FakeHost()
    protected = {PEERS[0]}
    manager = ConnectionManager(
        host,  # type: ignore[arg-type]
        Watermarks(low=1, high=2, grace_s=30.0),
        protected=lambda: protected,
        value_of=lambda peer_id: 0,
        interval_s=10.0,
    )
    for peer in PEERS[:4]:
        host.get_network().connections[peer] = [object()]
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(25.0)
        assert host.disconnected == []  # all four are still within their grace period
        await trio.sleep(10.0)
        assert sorted(map(str, host.disconnected)) == sorted(map(str, PEERS[1:4]))
        assert manager.pruned == 3
        nursery.cancel_scope.cancel()
