"""The one adapter between threatmesh and py-libp2p 0.8.1's Pubsub and GossipSub routers.

``build_pubsub(host, GossipSettings())`` returns a ``ThreatmeshPubsub`` (with its
``ThreatmeshGossipSub`` router). Each place where py-libp2p's default is wrong for a
threat-intel firehose is fixed here, and only here (file:line are for libp2p 0.8.1; the tests in
``tests/test_gossipsub_adapter.py`` fail if a fix stops working, so re-run them on any upgrade):

- Heartbeat. ``gossipsub.py:179`` defaults to 120 s; GossipSub v1.1 says 1 s. And the default
  ``adaptive_gossip_enabled=True`` lets ``_adapt_heartbeat_parameters`` (2852) raise the
  interval back to 30-60 s whenever its "network health" (recomputed every 30 s) is below 0.7,
  which it is for any mesh smaller than D. We pass 1 s and turn adaptive gossip off.
- Spam limit. ``_check_spam_protection`` (2872) drops everything past 10 msg/s per peer and
  topic, including our *own* publishes (the forwarder is our ID), silently. Off: the spec's
  defences are scoring and graylisting, not a per-neighbour rate cap on a firehose.
- Peer exchange. ``do_px=False`` (182) never *sends* PX, yet PX is always *accepted*
  (``accept_px_threshold=-inf``), and heartbeat PRUNEs carry no PX or backoff even with
  ``do_px=True``. We send PX whenever we prune and accept it only from peers whose score
  reached ``accept_px_threshold`` (see ``score_params``).
- Scoring. ``score.py`` subtracts P4/P5/P7 (``s -= weight * ...``, 318, 381, 390): its weights
  are *positive* penalties, the opposite sign of the spec and go-libp2p. Defaults are weights
  0, caps 0 and thresholds -inf, so nothing is ever scored or gated. ``score_params`` fixes it.
- Per-IP colocation. ``add_peer`` reads the peer's IP before ``Pubsub`` stores its stream
  (``pubsub.py:940`` vs 945), so P7 and eclipse protection never see an IP. We record it in
  ``flush_pending_messages``, which ``Pubsub`` calls right after (``pubsub.py:959``).
- Protocols. We offer /meshsub/1.2.0, 1.1.0, 1.0.0 (go-libp2p's list without /floodsub/1.0.0:
  a floodsub peer gets every message of a topic, outside the mesh and its scoring, and no
  current libp2p implementation needs it). Not 1.3+ (extensions, topic observation: drafts).
- IDONTWANT (1.2). Upstream (``_emit_idontwant_for_message`` 2166) sends one, as a priority
  RPC that takes an outbound queue slot, to every mesh peer for every message, our own
  publishes and the peer that sent it to us included. That halves the queue under a burst.
  Ours follows go-libp2p: only for received messages of at least ``idontwant_min_bytes``, not to
  the forwarder or the origin, never to a peer whose queue is above the watermark, and on
  arrival, once its signature checks but before validation (a copy with a bad signature
  must not turn the real one away; upstream waits until the message is validated and forwarded,
  by which time the other mesh peers have sent their copies). Upstream also checks a peer's
  IDONTWANTs only when a message is queued for it; ``write_msg`` checks again when the queued
  copy is written, which under load is much later (a batch is ~400 KB; each copy not sent
  saves the peer reading, decrypting and parsing it). The threshold is 64 KiB, not go's 1 KiB:
  here an RPC costs about as much to send and read as a 10 KB message does (py-libp2p's
  per-RPC path: yamux, noise, a task per message), so an IDONTWANT to every mesh peer for
  every small batch cost more than the copies it saved. Measured (bench/throughput.py, paced
  phase): 13.4 instead of 14.4 ms of CPU per batch and node, delivered 681 instead of 484/s.
- Mesh degree. D_hi is 8, not the spec's 12: every mesh peer sends each message once more,
  and in a swarm of 10 the mesh stayed at 9 (never over D_hi, so never pruned), so every
  node read each batch ~9 times. With D_hi 8 the mesh is pruned to D (6) and a node reads
  each batch ~5 times. D and D_lo keep the spec's values.
- Per-RPC cost. Upstream reads a message's length prefix byte by byte, then its body (3-4
  yamux reads, each returning window credit), spawns a service task per message, and writes
  each queued RPC on its own. ``continuously_read_stream`` here cuts RPCs from chunks
  (``RpcReader``) and handles each message before reading on (flow control instead of a pile
  of tasks); ``handle_sending_messages`` writes what a peer's queue holds in one write.
- Equivocation check. ``_check_equivocation`` (2908) keeps every forwarded message whole,
  keyed by origin and seqno, to compare the next one with the same key; its cleanup (3541)
  trims to 500 only past 1,000 — up to 1,000 batches of up to 1 MiB held for nothing. Ours
  keeps the signature and the topics instead, for at most ``EQUIVOCATION_KEYS`` keys.
- Signed peer records. Upstream attaches our signed peer record (``env_to_send_in_RPC``) to
  every RPC it sends, and the receiver verifies its signature for every RPC it reads
  (``maybe_consume_signed_record``, ``pubsub.py:565``): a public-key verification per
  IDONTWANT, IHAVE or message, ~11 % of a relaying node's CPU at 20 batches/s. go-libp2p
  sends none in pubsub RPCs. Ours goes once per stream and then every
  ``SENDER_RECORD_REFRESH_S`` (the receiver keeps it for 2 h), and is cut from other RPCs.
- Message IDs. Content-addressed (``message_id``: SHA-256 of the data, DESIGN "Wire
  protocol"). ``MessageCache.put`` (``mcache.py:73``) ignores the configured ID and keys on
  from+seqno, so IHAVE/IWANT would use other IDs than the seen cache; ``attach`` replaces it.
- Backpressure. Each peer's outbound ``RpcQueue`` (``pubsub.py:948``) and each subscription
  channel (``SUBSCRIPTION_CHANNEL_SIZE``, 124) hold 32 entries, and a full one drops with a log
  line. Ours are larger (still bounded); ``ThreatmeshPubsub.publish`` waits, bounded, until the
  topic's peers' queues are under ``publish_watermark`` and raises ``PublishError`` instead of
  dropping; every drop that remains is counted in ``counters`` (``GossipCounters``).
- Message size. py-libp2p resets the stream of a peer that sends an RPC over
  ``max_inbound_rpc_size`` and treats the peer as gone (``pubsub.py`` MessageTooLarge), and drops
  an outbound RPC over the queue's ``max_message_size`` (counted here as ``dropped_oversized``),
  while local subscribers still get the message. ``publish`` refuses such data up front.
- StrictSign stays on (``pubsub.py:381``): our messages are signed, unsigned ones dropped.
- Validators can only say yes or no (``pubsub.py:1754``), and no counts an invalid message
  (P4) against the forwarder. A sealed batch we cannot open is nobody's fault (we are not among
  its recipients), so a validator raises ``IgnoreMessage`` instead: the message is dropped, not
  forwarded, not marked seen, and nobody is penalised (GossipSub v1.1's "ignore" verdict).

TLP gating (DESIGN "Trust and sensitivity"; decision: ``threatmesh.pubsub.gating.Audience``).
A peer the audience does not allow for a topic must get nothing of it by any path. py-libp2p
has no per-peer topic filter, so the audience is applied at each place a topic can reach one:

- ``handle_subscription`` (``pubsub.py:1273``): its SUBSCRIBE is withheld, so it never enters
  ``peer_topics`` — which closes mesh fill, opportunistic grafts, fanout, IHAVE targets, PX and
  the replay of recent messages. Withheld subscriptions are remembered, so a peer that gains
  trust later (a vouch, ``trust add``) is taken in without resubscribing.
- ``handle_graft`` (``gossipsub.py:1841``): its GRAFT is answered with a PRUNE.
- ``_get_peers_to_send`` (1091): direct, floodsub, mesh and fanout peers are filtered.
- ``send_rpc`` (2029) and, last, ``write_msg`` (``pubsub.py:1826``), which also carries what
  bypasses ``send_rpc`` (pending-message flushes 704, recent-message replays 788): messages,
  IHAVE and GRAFT of a withheld topic are cut out of every RPC before it is queued or written.
- ``set_audience`` applies a new snapshot at run time: a peer that lost trust is forgotten as a
  subscriber, removed from mesh and fanout and pruned; a withheld subscription now allowed is
  taken in.
Messages on gated topics (GREEN and above), ours and forwarded, go to every subscribed peer
the audience allows, not only to the mesh (flood publishing, for these topics only). Trust
changes at run time — a vouch arrives, ``trust add`` — and a peer that was pruned while it was
not trusted stays out of the mesh for a backoff; with the mesh alone it would miss what is sent
meanwhile. Audiences there are small by nature (peers trusted one by one), and duplicates are
dropped by the seen cache. CLEAR, the firehose everyone reads, keeps the mesh.

Running it: Pubsub and the router are py-libp2p "services"; ``running_pubsub`` starts both with
``background_trio_service`` and waits until the pubsub is ready; ``run_pubsub`` is the same for
``await nursery.start(run_pubsub, pubsub)``. The host must be running (``running(host, ...)``)::

    pubsub = build_pubsub(host, GossipSettings())
    pubsub.set_validator(topic, lambda forwarder, msg: is_valid(msg.data))
    async with running_pubsub(pubsub):
        subscription = await pubsub.subscribe(topic)
        await pubsub.publish(topic, payload)          # may raise PublishError
        msg = await subscription.get()                # rpc_pb2.Message; msg.data is the payload
        status = pubsub.counters.as_dict()
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from google.protobuf.message import DecodeError
from libp2p.abc import IHost, INetStream, ISubscriptionAPI
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IOException, MessageTooLarge
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.exceptions import NoPubsubAttached
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.mcache import CacheEntry, MessageCache
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.pubsub.subscription import TrioSubscriptionAPI
from libp2p.pubsub.utils import maybe_consume_signed_record
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX, signature_validator
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import encode_uvarint

# trio's own TaskStatus type is hidden from mypy by the trio-stubs package that py-libp2p
# pulls in (trio-typing); its TaskStatus is the same protocol.
from trio_typing import TaskStatus

from threatmesh.pubsub.gating import OPEN_AUDIENCE, Audience

log = logging.getLogger(__name__)

# Highest first: multistream-select takes the first one both sides speak.
PROTOCOLS: tuple[TProtocol, ...] = (PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID)

# How often a peer's stream carries our signed peer record again (see the module docstring);
# receivers keep one for 7,200 s (pubsub/utils.py).
SENDER_RECORD_REFRESH_S = 600.0
# A peer's sending loop writes queued RPCs together up to this many bytes: one yamux frame
# (64 KiB payload) and one noise message (see ThreatmeshPubsub.handle_sending_messages).
COALESCE_BYTES = 64 * 1024 - 64
# (origin, seqno) keys remembered for the equivocation check, oldest dropped first.
EQUIVOCATION_KEYS = 4096
# Message IDs remembered by signature for the write-time IDONTWANT check, so a
# 400 KB batch is hashed once, not once per peer; FIFO, a few seconds of a busy stream.
_WRITE_ID_CACHE = 1024

# What an RPC adds around our payload: signature and public key (up to ~1.1 KiB for RSA-4096),
# origin ID, seqno, topic, our signed peer record when the stream is due for one (~0.5 KiB).
RPC_ENVELOPE_ALLOWANCE_BYTES = 4 * 1024

# The backoff of a PRUNE sent because the peer is not trusted for the topic (see _gate_prune).
GATED_PRUNE_BACKOFF_S = 10

# How long a waiting publisher sleeps before looking at the queues again when no write woke it
# (a peer that disconnects drops its queue without writing).
_QUEUE_RECHECK_S = 0.05

Validator = Callable[[ID, rpc_pb2.Message], bool]


class GossipError(Exception):
    """Base of this module's errors."""


class PublishError(GossipError):
    """A message was not published (too large, or peers' queues stayed full); nothing was sent."""


class IgnoreMessage(GossipError):
    """Raised by a validator: drop the message without penalising anyone (see module docstring)."""


@dataclass(frozen=True)
class GossipSettings:
    """GossipSub parameters (spec names in comments) and our queue bounds."""

    heartbeat_interval_s: float = 1.0  # spec: heartbeat_interval = 1 s
    degree: int = 6  # D
    degree_low: int = 4  # D_lo
    degree_high: int = 8  # D_hi
    gossip_window: int = 3  # mcache_gossip: heartbeats of IDs advertised in IHAVE
    gossip_history: int = 5  # mcache_len: heartbeats a message stays servable by IWANT
    fanout_ttl_s: int = 60
    prune_backoff_s: int = 60
    px_peers: int = 16  # peers offered / dialled per PRUNE
    seen_ttl_s: int = 120  # how long a message ID stays "seen" (network-wide dedup)
    max_message_bytes: int = 1024 * 1024  # whole RPC frame, in and out (go/js default 1 MiB)
    outbound_queue_size: int = 256  # RPCs per peer (upstream 32)
    subscription_queue_size: int = 1024  # messages per local subscription (upstream 32)
    publish_watermark: int = 64  # publish() waits while a peer's queue holds more RPCs
    publish_timeout_s: float = 10.0  # default bound on that wait
    idontwant_min_bytes: int = 64 * 1024  # go-libp2p: 1 KiB (IDontWantMessageThreshold)
    max_idontwant_ids_per_peer: int = 1000  # go-libp2p MaxIDontWantMessages (upstream 10)
    ip_colocation_threshold: int = 10  # peers per IP before P7 applies; raise for one-host labs

    @property
    def max_payload_bytes(self) -> int:
        """The largest ``data`` that ``publish`` accepts."""
        return self.max_message_bytes - RPC_ENVELOPE_ALLOWANCE_BYTES


@dataclass
class GossipCounters:
    """Messages py-libp2p would have lost without a trace, counted for the node's status."""

    dropped_outbound: int = 0  # RPC chunks refused by a full outbound queue (any peer)
    dropped_outbound_messages: int = 0  # payload messages inside those chunks
    dropped_oversized: int = 0  # RPC chunks over max_message_bytes, never sent
    dropped_subscription: int = 0  # messages a local subscriber missed (its queue was full)
    dropped_announce: int = 0  # our SUBSCRIBE/UNSUBSCRIBE refused by a full queue (retried)
    idontwant_skipped: int = 0  # IDONTWANTs not sent because the peer's queue was busy
    publish_timeouts: int = 0  # publish() calls that raised PublishError after waiting
    ignored_messages: int = 0  # dropped by a validator's IgnoreMessage (e.g. sealed, not ours)
    withheld_messages: int = 0  # messages of a topic not sent to a peer not trusted for it
    withheld_subscriptions: int = 0  # SUBSCRIBEs ignored: the peer is not trusted for the topic
    withheld_grafts: int = 0  # GRAFTs answered with PRUNE for the same reason
    duplicate_messages: int = 0  # copies received of a message already seen (mesh redundancy)
    unwanted_cut: int = 0  # queued copies not sent: the peer said IDONTWANT meanwhile

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def message_id(msg: rpc_pb2.Message) -> bytes:
    """The content-addressed message ID: the raw SHA-256 digest of ``msg.data``.

    Raw bytes, not hex: IHAVE/IWANT IDs pass through ``safe_bytes_from_hex`` (``utils.py``),
    which hex-*decodes* any ID that is ASCII hex text, so a hex ID would come back as other
    bytes (or None) and miss the cache. A raw digest is ASCII hex only if all 32 bytes fall in
    [0-9a-fA-F] (odds ~1e-34, and not constructible without a SHA-256 preimage).
    The TLP travels inside the payload, so one payload never belongs to two topics.
    """
    return hashlib.sha256(msg.data).digest()


def score_params(*, ip_colocation_threshold: int = 10) -> ScoreParams:
    """Peer-score weights, caps and thresholds for py-libp2p's ``PeerScorer``.

    Sign convention: the spec (and go-libp2p) writes penalties as *negative* weights that are
    *added*. py-libp2p's ``score.py`` *subtracts* P4 (invalid messages), P5 (behaviour) and P7
    (IP colocation), so here those weights are positive: a negative one would raise the score of
    a peer that sends invalid messages. P1-P3 are added, as in the spec. A cap of 0 (upstream's
    default) zeroes a term. Decays apply once per heartbeat, i.e. per second at our 1 s.

    Scale: one first delivery (P2) is worth +1, up to +100; one invalid message costs 5. Five
    invalid messages with no deliveries put a peer at -25: below ``gossip_threshold``, so we stop
    gossiping with it; at -40 its messages are ignored; at -80 it is graylisted. PX is accepted
    only from a peer at +10 or more (roughly ten recent first deliveries).
    """
    return ScoreParams(
        # P1 is +1 per GRAFT in py-libp2p, not time in mesh: re-grafting would raise a score.
        p1_time_in_mesh=TopicScoreParams(weight=0.0, cap=0.0, decay=1.0),
        p2_first_message_deliveries=TopicScoreParams(weight=1.0, cap=100.0, decay=0.99),
        # P3 is never fed upstream (on_mesh_delivery has no caller): leave it at zero.
        p3_mesh_message_deliveries=TopicScoreParams(weight=0.0, cap=0.0, decay=1.0),
        p4_invalid_messages=TopicScoreParams(weight=5.0, cap=1000.0, decay=0.99),
        p5_behavior_penalty_weight=1.0,
        p5_behavior_penalty_decay=0.99,
        p5_behavior_penalty_threshold=10.0,  # upstream adds 5-10 per incident
        p7_ip_colocation_weight=1.0,  # subtracted as weight * (peers over threshold)^2
        p7_ip_colocation_threshold=ip_colocation_threshold,
        # Spec ordering: graylist < publish < gossip <= 0 <= accept_px.
        gossip_threshold=-20.0,
        publish_threshold=-40.0,
        graylist_threshold=-80.0,
        accept_px_threshold=10.0,
    )


def withhold(rpc: rpc_pb2.RPC, allowed: Callable[[str], bool]) -> tuple[rpc_pb2.RPC | None, int]:
    """``rpc`` without the messages, IHAVEs and GRAFTs of topics ``allowed`` refuses.

    Returns ``(rpc, 0)`` itself when nothing is refused (the common case costs no copy), a
    trimmed copy and the number of messages cut otherwise, and ``(None, n)`` when nothing worth
    sending is left.
    """
    cut_publish = sum(1 for m in rpc.publish if not all(allowed(t) for t in m.topicIDs))
    control = rpc.control if rpc.HasField("control") else None
    cut_control = control is not None and (
        any(not allowed(i.topicID) for i in control.ihave)
        or any(not allowed(g.topicID) for g in control.graft)
    )
    if not cut_publish and not cut_control:
        return rpc, 0
    out = rpc_pb2.RPC()
    out.CopyFrom(rpc)
    if cut_publish:
        kept = [m for m in out.publish if all(allowed(t) for t in m.topicIDs)]
        del out.publish[:]
        out.publish.extend(kept)
    if cut_control:
        ihave = [i for i in out.control.ihave if allowed(i.topicID)]
        graft = [g for g in out.control.graft if allowed(g.topicID)]
        del out.control.ihave[:]
        del out.control.graft[:]
        out.control.ihave.extend(ihave)
        out.control.graft.extend(graft)
        if out.control.ByteSize() == 0:
            out.ClearField("control")
    if not out.publish and not out.subscriptions and not out.HasField("control"):
        return None, cut_publish
    return out, cut_publish


class _ContentAddressedMessageCache(MessageCache):
    """``MessageCache`` keyed by the pubsub's message ID instead of from+seqno (mcache.py:73)."""

    def __init__(
        self, window_size: int, history_size: int, id_of: Callable[[rpc_pb2.Message], bytes]
    ) -> None:
        super().__init__(window_size, history_size)
        self._id_of = id_of

    def put(self, msg: rpc_pb2.Message) -> None:
        mid = self._id_of(msg)
        if mid in self.msgs:
            return
        self.msgs[mid] = msg
        self.history[0].append(CacheEntry(mid, msg.topicIDs))


class _SizedQueues(dict[ID, RpcQueue]):
    """``Pubsub.peer_queues``, resizing each ``RpcQueue()`` (``pubsub.py:948``: 32 RPCs, no
    setting) as Pubsub stores it, before anything can push to it. Upstream only uses ``[]=``."""

    def __init__(self, max_rpcs: int, max_rpc_bytes: int) -> None:
        super().__init__()
        self._max_rpcs = max_rpcs
        self._max_rpc_bytes = max_rpc_bytes

    def __setitem__(self, peer_id: ID, queue: RpcQueue) -> None:
        queue._queue.max_size = self._max_rpcs  # private in 0.8.1, see the class docstring
        queue.max_message_size = self._max_rpc_bytes
        super().__setitem__(peer_id, queue)


class ThreatmeshGossipSub(GossipSub):
    """GossipSub with our parameters, ID-aware mcache, IP tracking, IDONTWANT policy, counters,
    and TLP gating."""

    def __init__(self, settings: GossipSettings, counters: GossipCounters) -> None:
        super().__init__(
            protocols=list(PROTOCOLS),
            degree=settings.degree,
            degree_low=settings.degree_low,
            degree_high=settings.degree_high,
            time_to_live=settings.fanout_ttl_s,
            gossip_window=settings.gossip_window,
            gossip_history=settings.gossip_history,
            # Annotated int upstream; it only ever reaches trio.sleep, so a float works.
            heartbeat_interval=settings.heartbeat_interval_s,  # type: ignore[arg-type]
            do_px=True,
            px_peers_count=settings.px_peers,
            prune_back_off=settings.prune_backoff_s,
            score_params=score_params(ip_colocation_threshold=settings.ip_colocation_threshold),
            max_idontwant_messages=settings.max_idontwant_ids_per_peer,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
        )
        self.settings = settings
        self.counters = counters
        self.audience: Audience = OPEN_AUDIENCE
        self._direct_topics: frozenset[str] = frozenset()
        self._equivocation: dict[bytes, tuple[bytes, tuple[str, ...]]] = {}  # key -> seen

    # TLP gating (see the module docstring) ---------------------------------------------------

    def use_audience(self, audience: Audience) -> None:
        self.audience = audience
        self._direct_topics = audience.gated_topics()

    async def handle_graft(self, graft_msg: rpc_pb2.ControlGraft, sender_peer_id: ID) -> None:
        if not self.audience.allows(sender_peer_id, graft_msg.topicID):
            self.counters.withheld_grafts += 1
            await self._gate_prune(graft_msg.topicID, sender_peer_id)
            return
        await super().handle_graft(graft_msg, sender_peer_id)

    async def _gate_prune(self, topic: str, peer_id: ID) -> None:
        """PRUNE ``peer_id`` from ``topic`` because of trust, with a short backoff both ways.

        Both sides must keep the backoff a PRUNE carries: upstream penalises a GRAFT from a
        peer that pruned us less than 10 s before (``handle_prune`` 1917, GRAFT-flood check
        516), so we record it for ourselves too, and never re-graft a peer we just turned
        away. It is short (``GATED_PRUNE_BACKOFF_S``, not ``prune_backoff_s``) so that a peer
        trusted a moment later joins the mesh soon after; until then it is a subscriber that
        gets IHAVE gossip (and direct delivery of our sealed batches).
        """
        # Upstream stores backoffs as int(time.time()) + seconds (gossipsub.py:1629), so ours
        # could end up to a second early and our GRAFT land inside the peer's 10 s window.
        self._add_back_off(peer_id, topic, False, GATED_PRUNE_BACKOFF_S + 2)
        prune = rpc_pb2.ControlPrune(topicID=topic, backoff=GATED_PRUNE_BACKOFF_S)
        await self.emit_control_message(rpc_pb2.ControlMessage(prune=[prune]), peer_id)

    def _get_peers_to_send(
        self,
        topic_ids: Iterable[str],
        msg_forwarder: ID,
        origin: ID,
        msg_id: bytes | None = None,
    ) -> Iterable[ID]:
        topics = list(topic_ids)
        peers = set(super()._get_peers_to_send(topics, msg_forwarder, origin, msg_id))
        pubsub = self.pubsub
        if pubsub is not None:
            for topic in self._direct_topics.intersection(topics):
                peers.update(pubsub.peer_topics.get(topic, ()))
            peers.difference_update((msg_forwarder, origin))
            if msg_id is not None:
                peers = {p for p in peers if msg_id not in self.dont_send_message_ids.get(p, ())}
        allowed = self.audience.allows_all
        yield from (peer for peer in peers if allowed(peer, topics))

    def send_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, priority: bool = False) -> None:
        kept, cut = withhold(rpc, lambda topic: self.audience.allows(peer_id, topic))
        self.counters.withheld_messages += cut
        if kept is not None:
            super().send_rpc(peer_id, kept, priority)

    async def exclude(self, peer_id: ID, topic: str) -> None:
        """Take ``peer_id`` out of ``topic``'s mesh and fanout (trust was withdrawn)."""
        in_mesh = peer_id in self.mesh.get(topic, ())
        self.mesh.get(topic, set()).discard(peer_id)
        self.fanout.get(topic, set()).discard(peer_id)
        if in_mesh:
            await self._gate_prune(topic, peer_id)

    def attach(self, pubsub: Pubsub) -> None:
        super().attach(pubsub)
        # IHAVE advertises, and IWANT looks up, the same IDs as the seen cache uses.
        self.mcache = _ContentAddressedMessageCache(
            self.mcache.window_size, self.mcache.history_size, pubsub.get_message_id
        )

    async def flush_pending_messages(self, peer_id: ID) -> None:
        # The first point where pubsub.peers[peer_id] exists; see the module docstring.
        self._track_remote_ip(peer_id)
        if isinstance(self.pubsub, ThreatmeshPubsub):
            self.pubsub.hello_sent(peer_id)  # it carried our signed peer record
        await super().flush_pending_messages(peer_id)

    def _track_remote_ip(self, peer_id: ID) -> None:
        if self.pubsub is None or self.scorer is None:
            return
        stream = self.pubsub.peers.get(peer_id)
        address = stream.get_remote_address() if stream is not None else None
        if address is not None:
            self.scorer.add_peer_ip(peer_id, address[0])

    async def _emit_control_msgs(
        self,
        peers_to_graft: dict[ID, list[str]],
        peers_to_prune: dict[ID, list[str]],
        peers_to_gossip: dict[ID, dict[str, list[bytes]]],
    ) -> None:
        # Upstream packs heartbeat PRUNEs (oversubscribed mesh) bare: no PX, no backoff
        # (gossipsub.py:1243). GossipSub v1.1 sends both, so those go through emit_prune.
        for peer_id in [peer for peer in peers_to_prune if peer not in peers_to_graft]:
            for topic in peers_to_prune.pop(peer_id):
                await self.emit_prune(topic, peer_id, self.do_px, False)
        await super()._emit_control_msgs(peers_to_graft, peers_to_prune, peers_to_gossip)

    def _check_equivocation(self, msg: rpc_pb2.Message) -> bool:
        """False if the origin sent other content under the same seqno (see the module
        docstring); the penalty is upstream's."""
        key = msg.from_id + msg.seqno
        # The signature stands for the content: it was checked (StrictSign) and covers data,
        # topics, origin and seqno, and hashing a 400 KB batch again would cost ~0.3 ms.
        seen = (msg.signature, tuple(msg.topicIDs))
        first = self._equivocation.setdefault(key, seen)
        if first == seen:
            if len(self._equivocation) > EQUIVOCATION_KEYS:
                del self._equivocation[next(iter(self._equivocation))]
            return True
        log.warning("equivocation: %s sent two messages with one seqno", ID(msg.from_id))
        if self.scorer is not None:
            self.scorer.penalize_equivocation(ID(msg.from_id), 100.0)
        return False

    async def emit_control_message(self, control_msg: rpc_pb2.ControlMessage, to_peer: ID) -> None:
        # Upstream (2148) also attaches our signed peer record to each one; write_msg adds it
        # when the peer's stream is due for one (see the module docstring).
        if self.pubsub is None:
            raise NoPubsubAttached
        packet = rpc_pb2.RPC()
        packet.control.CopyFrom(control_msg)
        self.send_rpc(to_peer, packet, priority=True)

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        """Upstream's IDONTWANT, called without the forwarder; replaced by ``send_idontwant``."""
        return None

    async def send_idontwant(self, forwarder: ID, msg: rpc_pb2.Message, msg_id: bytes) -> None:
        """IDONTWANT per GossipSub v1.2, as go-libp2p sends it (see the module docstring).

        Called by ``ThreatmeshPubsub.push_msg`` when a message arrives: after its signature
        check, before validation.
        """
        pubsub = self.pubsub
        if pubsub is None or forwarder == pubsub.my_id:
            return
        if len(msg.data) < self.settings.idontwant_min_bytes:
            return
        mesh_peers = {peer for topic in msg.topicIDs for peer in self.mesh.get(topic, ())}
        for peer_id in mesh_peers - {forwarder, ID(msg.from_id)}:
            if self.peer_protocol.get(peer_id) != PROTOCOL_ID_V12:
                continue
            queue = pubsub.peer_queues.get(peer_id)
            if queue is None:
                continue
            if len(queue) >= self.settings.publish_watermark:
                self.counters.idontwant_skipped += 1
                continue
            await self.emit_idontwant([msg_id], peer_id)

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        if reason == "oversized":
            self.counters.dropped_oversized += 1
        else:  # "queue_full"
            self.counters.dropped_outbound += 1
            self.counters.dropped_outbound_messages += len(rpc.publish)
        super()._handle_dropped_rpc(peer_id, rpc, reason)


class ThreatmeshPubsub(Pubsub):
    """Pubsub with bounded-but-larger queues, a waiting ``publish``, validators and counters."""

    def __init__(
        self,
        host: IHost,
        router: ThreatmeshGossipSub,
        settings: GossipSettings,
        counters: GossipCounters,
    ) -> None:
        super().__init__(
            host,
            router,
            seen_ttl=settings.seen_ttl_s,
            strict_signing=True,  # StrictSign: sign ours, drop unsigned (the upstream default)
            msg_id_constructor=message_id,
            max_inbound_rpc_size=settings.max_message_bytes,
        )
        self.gossip = router
        self.settings = settings
        self.counters = counters
        self.peer_queues = _SizedQueues(settings.outbound_queue_size, settings.max_message_bytes)
        self._queue_progress = trio.Event()
        # Per-stream write locks (see write_msg); weak keys, so closed streams drop out.
        self._write_locks: weakref.WeakKeyDictionary[INetStream, trio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        # When each stream last carried our signed peer record (see _set_sender_record).
        self._record_sent: weakref.WeakKeyDictionary[INetStream, float] = (
            weakref.WeakKeyDictionary()
        )
        self._write_ids: dict[bytes, bytes] = {}
        # Subscriptions withheld by the audience, per peer (bounded by the peer's
        # subscription limit); taken in by set_audience when the peer becomes allowed.
        self._withheld: dict[ID, set[str]] = {}

    # TLP gating (see the module docstring) ---------------------------------------------------

    @property
    def audience(self) -> Audience:
        return self.gossip.audience

    async def set_audience(self, audience: Audience) -> None:
        """Gate every topic by ``audience`` from now on, for peers already here too."""
        self.gossip.use_audience(audience)
        for topic, peers in list(self.peer_topics.items()):
            for peer in [p for p in peers if not audience.allows(p, topic)]:
                self._forget_subscription(peer, topic)
                self._withhold(peer, topic)
                await self.gossip.exclude(peer, topic)
        for peer, topics in list(self._withheld.items()):
            for topic in [t for t in topics if audience.allows(peer, t)]:
                topics.discard(topic)
                if peer in self.peers:
                    super().handle_subscription(
                        peer, rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)
                    )
            if not topics:
                del self._withheld[peer]

    def withheld_subscriptions(self) -> dict[ID, frozenset[str]]:
        return {peer: frozenset(topics) for peer, topics in self._withheld.items()}

    def _withhold(self, peer: ID, topic: str) -> None:
        topics = self._withheld.setdefault(peer, set())
        if len(topics) < self.max_subscriptions_per_peer:
            topics.add(topic)

    def handle_subscription(self, origin_id: ID, sub_message: rpc_pb2.RPC.SubOpts) -> None:
        topic = sub_message.topicid
        if not sub_message.subscribe:
            self._withheld.get(origin_id, set()).discard(topic)
        elif not self.audience.allows(origin_id, topic):
            self.counters.withheld_subscriptions += 1
            self._withhold(origin_id, topic)
            return
        super().handle_subscription(origin_id, sub_message)

    def _handle_dead_peer(self, peer_id: ID) -> None:
        self._withheld.pop(peer_id, None)
        super()._handle_dead_peer(peer_id)

    async def continuously_read_stream(self, stream: INetStream) -> None:
        """Upstream's read loop (``pubsub.py:547``), handling each message before the next read.

        Upstream spawns a py-libp2p service task per received message (``manager.run_task``,
        which also names it through a lazy import and files it in a task tree): ~10 % of a
        relaying node's CPU at 20 batches/s, and no bound on how many wait, so a fast peer
        can pile up messages (and memory) faster than we validate them. Here a peer's next
        RPC is read only once its messages were handled; a slow node slows its peers'
        streams (flow control) instead of buffering. ``push_msg`` does not wait on other
        peers: forwarding and local delivery enqueue and count drops, never block.
        RPCs are cut from whatever the stream has (``RpcReader``), not read prefix byte by
        byte and then body: one read, and at most one yamux window update, instead of 3-4.
        Upstream's metrics events (``stream.metric_send_channel``) are not produced.
        """
        peer_id = stream.muxed_conn.peer_id
        reader = RpcReader(stream, self.max_inbound_rpc_size)
        try:
            while self.manager.is_running:
                rpc = rpc_pb2.RPC.FromString(await reader.next())
                if rpc.HasField("senderRecord") and not maybe_consume_signed_record(
                    rpc, self.host, peer_id
                ):
                    log.debug("RPC with an invalid signed peer record from %s ignored", peer_id)
                    continue
                for msg in rpc.publish:
                    if self._is_subscribed_to_msg(msg):
                        await self.push_msg(peer_id, msg)
                if rpc.subscriptions:
                    if len(rpc.subscriptions) > self.max_subscriptions_per_rpc:
                        log.warning(
                            "%s sent %d subscriptions in one RPC (limit %d); ignored",
                            peer_id,
                            len(rpc.subscriptions),
                            self.max_subscriptions_per_rpc,
                        )
                    else:
                        for sub_opts in rpc.subscriptions:
                            self.handle_subscription(peer_id, sub_opts)
                if rpc.HasField("control"):
                    await self.router.handle_rpc(rpc, peer_id)
        except (MessageTooLarge, DecodeError) as error:
            # Upstream resets for an oversized RPC; an undecodable one is as broken.
            log.warning("pubsub stream of %s reset: %s", peer_id, error)
            with contextlib.suppress(Exception):
                await stream.reset()
            self._handle_dead_peer(peer_id)
        except (StreamEOF, StreamError, IOException, RawConnError):
            pass  # the stream or connection closed: upstream ends the loop quietly too

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        msg_id = self._msg_id_constructor(msg)
        if self.seen_messages.has(msg_id):  # upstream returns here too (pubsub.py:1729)
            self.counters.duplicate_messages += 1
            return
        # Upstream's first checks (pubsub.py:1714-1749), before our IDONTWANT: a copy with a
        # bad signature, or from a blacklisted peer, must not make us turn the real one away.
        if self.is_peer_blacklisted(msg_forwarder) or self.is_peer_blacklisted(ID(msg.from_id)):
            return
        if not signature_validator(msg):
            return
        await self.gossip.send_idontwant(msg_forwarder, msg, msg_id)
        try:
            await super().push_msg(msg_forwarder, msg)
        except IgnoreMessage:
            self.counters.ignored_messages += 1

    def counters_snapshot(self) -> dict[str, int]:
        """The drop counters as a plain dict (for the node's status)."""
        return self.counters.as_dict()

    # Validators ---------------------------------------------------------------------------

    def set_validator(self, topic: str, validator: Validator) -> None:
        """Run ``validator(forwarder_peer_id, msg) -> bool`` on every message of ``topic``.

        It runs after the signature check, on our own publishes too (forwarder = our ID). False
        drops the message and counts an invalid message (P4) against the forwarder.
        Raising ``IgnoreMessage`` drops the message without a penalty and without caching a
        verdict. It must depend on ``msg.data`` and the topic only: py-libp2p caches the verdict by
        message ID alone (``ValidationCache``, ``pubsub.py:1616``), and our IDs hash only the
        data, so a verdict reached for one forwarder or origin is reused for the same payload
        from any other. Per-peer decisions (trust) belong in a per-peer gate, not here.
        """
        self.set_topic_validator(topic, validator, is_async_validator=False)

    # Subscriptions ------------------------------------------------------------------------

    async def subscribe(self, topic_id: str) -> ISubscriptionAPI:
        """Upstream ``subscribe`` (``pubsub.py:1392``) with our channel size instead of 32."""
        if topic_id in self.topic_ids:
            return self.subscribed_topics_receive[topic_id]
        send_channel, receive_channel = trio.open_memory_channel[rpc_pb2.Message](
            self.settings.subscription_queue_size
        )
        subscription = TrioSubscriptionAPI(
            receive_channel, unsubscribe_fn=functools.partial(self.unsubscribe, topic_id)
        )
        self.subscribed_topics_send[topic_id] = send_channel
        self.subscribed_topics_receive[topic_id] = subscription
        packet, subopt = self._build_announce_rpc(topic_id, subscribe=True)
        await self.message_all_peers(packet.SerializeToString(), announce=subopt)
        await self.router.join(topic_id)
        return subscription

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        """Upstream's delivery to local subscribers (``pubsub.py:1358``), with drops counted.

        Delivery cannot wait here (this runs inside message handling), so a subscriber that
        falls ``subscription_queue_size`` messages behind loses messages; each is counted.
        """
        for topic in publish_message.topicIDs:
            channel = self.subscribed_topics_send.get(topic)
            if channel is None:
                continue
            try:
                channel.send_nowait(publish_message)
            except trio.WouldBlock:
                self.counters.dropped_subscription += 1
                if self.counters.dropped_subscription % 1000 == 1:  # the first, then 1 in 1000
                    log.warning(
                        "a subscriber of %s fell %d messages behind; %d dropped so far",
                        topic,
                        self.settings.subscription_queue_size,
                        self.counters.dropped_subscription,
                    )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the subscriber has gone away: nobody to deliver to

    def _schedule_announce_retry(self, peer_id: ID, announce: rpc_pb2.RPC.SubOpts) -> None:
        # Called for every announcement refused by a full queue (pubsub.py message_all_peers).
        self.counters.dropped_announce += 1
        super()._schedule_announce_retry(peer_id, announce)

    # Publishing ---------------------------------------------------------------------------

    async def publish(
        self, topic_id: str | list[str], data: bytes, *, timeout_s: float | None = None
    ) -> None:
        """Publish ``data`` to ``topic_id``: ``publish_message(sign(topic_id, data))``."""
        await self.publish_message(self.sign(topic_id, data), timeout_s=timeout_s)

    def sign(self, topic_id: str | list[str], data: bytes) -> rpc_pb2.Message:
        """The message upstream ``publish`` would send (``pubsub.py:1580``): ours, signed.

        Apart so that a caller can keep the signed message (the catch-up log) before it goes
        out. Raises ``PublishError`` if ``data`` is over ``max_payload_bytes``.
        """
        topics = [topic_id] if isinstance(topic_id, str) else list(topic_id)
        limit = self.settings.max_payload_bytes
        if len(data) > limit:
            raise PublishError(
                f"{', '.join(topics)}: a message of {len(data)} bytes is over the limit of "
                f"{limit} bytes (max_message_bytes minus the RPC envelope); split it"
            )
        msg = rpc_pb2.Message(
            data=data, topicIDs=topics, from_id=self.my_id.to_bytes(), seqno=self._next_seqno()
        )
        if self.sign_key is None:  # strict_signing is always on (see __init__)
            raise PublishError("no private key to sign with")
        msg.signature = self.sign_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        msg.key = self.host.get_public_key().serialize()
        return msg

    async def publish_message(
        self, msg: rpc_pb2.Message, *, timeout_s: float | None = None
    ) -> None:
        """Publish a message from ``sign``, waiting (bounded) for room instead of dropping.

        Waits until the outbound queue of every peer subscribed to the topic holds at most
        ``publish_watermark`` RPCs, then publishes (local subscribers and our validator
        included). Raises ``PublishError`` if the queues are still above the watermark after
        ``timeout_s`` (default ``settings.publish_timeout_s``); nothing is sent then. Upstream
        publishes never wait: a burst fills the 32-slot queues before the sender tasks run and
        the rest is dropped.
        """
        topics = list(msg.topicIDs)
        wait_s = self.settings.publish_timeout_s if timeout_s is None else timeout_s
        await trio.lowlevel.checkpoint()  # let the sender tasks run between publishes
        with trio.move_on_after(wait_s):
            await self._wait_for_queue_room(topics)
        busy = self._busy_peers(topics)
        if busy:
            self.counters.publish_timeouts += 1
            raise PublishError(
                f"{', '.join(topics)}: outbound queues of {len(busy)} peer(s) stayed above "
                f"{self.settings.publish_watermark} RPCs for {wait_s:g} s "
                f"(first: {busy[0]}); the message was not published"
            )
        await self.push_msg(self.my_id, msg)

    def _busy_peers(self, topics: list[str]) -> list[ID]:
        watermark = self.settings.publish_watermark
        peers = {peer for topic in topics for peer in self.peer_topics.get(topic, ())}
        return [
            peer
            for peer in peers
            if (queue := self.peer_queues.get(peer)) is not None and len(queue) > watermark
        ]

    async def _wait_for_queue_room(self, topics: list[str]) -> None:
        while self._busy_peers(topics):
            with trio.move_on_after(_QUEUE_RECHECK_S):
                await self._queue_progress.wait()

    async def handle_sending_messages(
        self, peer_id: ID, stream: INetStream, queue: RpcQueue
    ) -> None:
        """Upstream's per-peer sending loop (``pubsub.py:1250``), writing queued RPCs together.

        Upstream writes each queued RPC on its own: a yamux frame, a noise message and a syscall
        each, and the peer reads each with its own read (~0.26 ms of CPU per 8 KB RPC, both
        sides, measured through our host). When a peer falls behind, its queue holds many; we
        take up to ``COALESCE_BYTES`` of them into one write. They stay separate
        length-prefixed RPCs (the wire format is a stream of them), and the peer's
        ``RpcReader`` cuts them from one read. An idle peer's RPCs go out one by one, at once.
        """
        try:
            while True:
                rpc = await queue.pop()
                if rpc is None:
                    return  # the queue was closed: the peer is gone
                group = [rpc]
                size = rpc.ByteSize()
                while size < COALESCE_BYTES and (more := queue._queue.pop()) is not None:
                    group.append(more)  # ``_queue``: private in 0.8.1, as in _SizedQueues
                    size += more.ByteSize()
                if not await self._write_rpcs(stream, group):
                    return
        except Exception:
            log.debug("sending loop for %s ended with an error", peer_id, exc_info=True)
            self._handle_dead_peer(peer_id)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        """Upstream's ``write_msg`` (``pubsub.py:1826``): one RPC; see ``_write_rpcs``."""
        return await self._write_rpcs(stream, [rpc_msg])

    async def _write_rpcs(self, stream: INetStream, rpcs: list[rpc_pb2.RPC]) -> bool:
        """Write ``rpcs`` to ``stream`` in one write, each gated and trimmed for the peer.

        False if the stream is closed or reset (the peer is then dropped, as upstream does).
        """
        # One writer per stream at a time. Yamux (stream_muxer/yamux/yamux.py, ``write``)
        # takes its write lock per 64 KiB frame, not per message, and py-libp2p writes to a
        # peer's stream from several tasks (the RPC queue's sender, hello, IWANT replies), so
        # two RPCs over 64 KiB interleave their frames and the receiver fails to decode the
        # stream (DecodeError; the connection's task dies). Measured: a 10,000-indicator
        # burst in 512 KiB batches broke every run without this lock.
        peer = stream.muxed_conn.peer_id
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:
            parts: list[bytes] = []
            for rpc in rpcs:
                kept, cut = withhold(rpc, lambda topic: self.audience.allows(peer, topic))
                self.counters.withheld_messages += cut
                wanted = self._without_unwanted(peer, kept) if kept is not None else None
                if wanted is None:
                    continue  # nothing left to send
                # The RPC may be shared with other peers' queues: the record is set or
                # cleared per stream right before it is serialised (no await in between).
                self._set_sender_record(stream, wanted)
                data = wanted.SerializeToString()
                parts += (encode_uvarint(len(data)), data)
            ok = True
            if parts:
                try:
                    await stream.write(b"".join(parts))
                except (StreamClosed, StreamReset):
                    log.debug("cannot write to %s: stream closed or reset", peer)
                    self._handle_dead_peer(peer)
                    ok = False
        # Every write follows a pop from some queue: wake publishers waiting for room.
        self._queue_progress.set()
        self._queue_progress = trio.Event()
        return ok

    def _without_unwanted(self, peer: ID, rpc: rpc_pb2.RPC) -> rpc_pb2.RPC | None:
        """``rpc`` without the messages ``peer`` sent IDONTWANT for since they were queued."""
        unwanted = self.gossip.dont_send_message_ids.get(peer)
        if not unwanted or not rpc.publish:
            return rpc
        keep = [m for m in rpc.publish if self._write_id(m) not in unwanted]
        cut = len(rpc.publish) - len(keep)
        if not cut:
            return rpc
        self.counters.unwanted_cut += cut
        out = rpc_pb2.RPC(subscriptions=rpc.subscriptions, publish=keep)  # no copy of the cut
        if rpc.HasField("control"):
            out.control.CopyFrom(rpc.control)
        if rpc.HasField("senderRecord"):
            out.senderRecord = rpc.senderRecord
        if not out.publish and not out.subscriptions and not out.HasField("control"):
            return None
        return out

    def _write_id(self, msg: rpc_pb2.Message) -> bytes:
        # Keyed by signature: what reaches write_msg was signed (StrictSign) and validated, or
        # is ours, and one signature covers one payload. Unsigned: not cached.
        key = msg.signature
        if not key:
            return message_id(msg)
        msg_id = self._write_ids.get(key)
        if msg_id is None:
            msg_id = self._write_ids[key] = message_id(msg)
            if len(self._write_ids) > _WRITE_ID_CACHE:
                del self._write_ids[next(iter(self._write_ids))]
        return msg_id

    def hello_sent(self, peer_id: ID) -> None:
        """Upstream's hello (``get_hello_packet``, written before the peer's stream is known
        here) carried our signed peer record: count it as the stream's first."""
        stream = self.peers.get(peer_id)
        if stream is not None:
            # Upstream also flushes at every later SUBSCRIBE of the peer (pubsub.py:1333),
            # which sends no record: only the first call counts.
            self._record_sent.setdefault(stream, trio.current_time())

    def _set_sender_record(self, stream: INetStream, rpc: rpc_pb2.RPC) -> None:
        """Our signed peer record on the stream's first RPC and then every refresh interval."""
        now = trio.current_time()
        last = self._record_sent.get(stream)
        if last is None or now - last >= SENDER_RECORD_REFRESH_S:
            if not rpc.HasField("senderRecord"):
                rpc.senderRecord, _ = env_to_send_in_RPC(self.host)
            self._record_sent[stream] = now
        elif rpc.HasField("senderRecord"):
            rpc.ClearField("senderRecord")


class RpcReader:
    """Varint-prefixed RPCs from a stream, read in chunks of whatever has arrived.

    Upstream (``read_varint_prefixed_bytes_limited``) reads the length one byte at a time and
    then the body: 3-4 stream reads per RPC, each through yamux's locks and, by default, a
    window update sent back. A length over ``limit`` raises ``MessageTooLarge`` before the
    body is read; a malformed length raises ``DecodeError``; a stream that ends in the middle
    of an RPC raises ``StreamEOF``.
    """

    CHUNK_BYTES = 256 * 1024  # py-libp2p's yamux window: never more is buffered for us

    def __init__(self, stream: INetStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()

    async def next(self) -> bytes:
        while True:
            frame = self._frame()
            if frame is not None:
                return frame
            chunk = await self._stream.read(self.CHUNK_BYTES)
            if not chunk:
                raise StreamEOF("the stream ended inside an RPC" if self._buffer else "")
            self._buffer += chunk

    def _frame(self) -> bytes | None:
        """The next whole RPC in the buffer (removed from it), or None if it is not all here."""
        length = shift = 0
        for index, byte in enumerate(self._buffer[:10]):  # a 64-bit uvarint has <= 10 bytes
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte & 0x80:
                continue
            if length > self._limit:
                raise MessageTooLarge(f"an RPC of {length} bytes is over {self._limit}")
            start = index + 1
            end = start + length
            if len(self._buffer) < end:
                return None
            with memoryview(self._buffer) as view:  # one copy, not two (slice, then bytes)
                frame = bytes(view[start:end])
            del self._buffer[:end]
            return frame
        if len(self._buffer) >= 10:
            raise DecodeError("an RPC length prefix longer than 10 bytes")
        return None


def build_pubsub(host: IHost, settings: GossipSettings) -> ThreatmeshPubsub:
    """The pubsub every node runs, with its GossipSub router. Start it with ``running_pubsub``."""
    if not 0 < settings.degree_low <= settings.degree <= settings.degree_high:
        raise GossipError("mesh degrees must satisfy 0 < degree_low <= degree <= degree_high")
    if not 0 < settings.publish_watermark < settings.outbound_queue_size:
        raise GossipError("publish_watermark must be between 0 and outbound_queue_size")
    if settings.max_payload_bytes <= 0:
        raise GossipError(f"max_message_bytes must exceed {RPC_ENVELOPE_ALLOWANCE_BYTES}")
    counters = GossipCounters()
    return ThreatmeshPubsub(host, ThreatmeshGossipSub(settings, counters), settings, counters)


@asynccontextmanager
async def running_pubsub(pubsub: ThreatmeshPubsub) -> AsyncIterator[ThreatmeshPubsub]:
    """Run the pubsub and its router (py-libp2p services) for the block; stop both after."""
    try:
        async with background_trio_service(pubsub), background_trio_service(pubsub.gossip):
            await pubsub.wait_until_ready()
            yield pubsub
    finally:
        # Pubsub's notifee hands connects and disconnects to the service through unbuffered
        # channels (pubsub.py, `PubsubNotifee(peer_send, dead_peer_send)`) that are closed
        # only by tasks of the running service. Once it has stopped, a later disconnect (the
        # host closing its connections) blocks the swarm's notify in a listener's system
        # task forever, and trio.run never returns. Closed channels make those sends fail
        # fast (the notifee ignores BrokenResourceError).
        pubsub.peer_receive_channel.close()
        pubsub.dead_peer_receive_channel.close()


async def run_pubsub(
    pubsub: ThreatmeshPubsub, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """``await nursery.start(run_pubsub, pubsub)``: started once ready; runs until cancelled."""
    async with running_pubsub(pubsub):
        task_status.started()
        await trio.sleep_forever()
