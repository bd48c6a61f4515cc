"""The supernode service: status announcements, dial-back, election, and the roles that follow.

DESIGN.md, "Reputation and supernodes". The decisions are pure and live in
``threatmesh.reputation``: ``SupernodeEngine`` (book, dial-back ledger, election, seat
tracker; ``reputation/engine.py`` says the order of the steps) and ``roles_for``
(``reputation/roles.py``). This service feeds them and carries out what they return:

- ``rounds`` (one task): every ``announce_interval_s``: dial back the announcers that are due
  (each a new raw connection and a security handshake, ``transports/dial_back.py``; all of
  them together bounded by ``dial_back_timeout_s``), elect, apply the roles, publish our
  ``Status`` on ``/threatmesh/<swarm>/control/1``. Between announcements it wakes at the
  engine's ``wake_at_ms`` (a peer going stale, a pending adoption) and elects again. Two
  shortcuts make start-up take about one interval less each: when a new announcer (or a new
  session of one) is heard it is dialled back at once instead of at the next round, so its
  reachability is in our very next announcement; and while this node follows no set yet,
  every burst of received announcements is followed by an election (``START_UP_DEBOUNCE``
  of an interval later, so at most 10 per interval). The first announcement waits (at most
  one interval) until a peer is subscribed to the control topic: one sent before anyone
  listens is lost.
- ``keeper.keep`` (one task, ``node/supernode_roles.py``): stay connected to the supernodes
  (rejoin points, and the relays of nodes that are not reachable), and, while this node is
  not reachable, hold relay reservations on up to two of them.
- ``relay``: circuit relay v2 (``transports/relay.py``): accepts circuits from the relays we
  reserved with; offers hop while we are a supernode.
- Receiving: ``Sharing`` owns the control topic's subscription and hands every ``Status`` to
  ``check_status`` (in the topic validator: an invalid one is rejected and counts against its
  sender, GossipSub P4) and then ``receive_status`` (into the book).

Roles, when the set this node follows changes (``roles_for``, carried out by ``RoleKeeper``):
a supernode serves the DHT (server mode), offers relay hop, and takes GossipSub mesh degree
``supernode_mesh_degree``; dropping the seat returns each to the configured value. Every node
protects the supernodes from pruning, writes them into its peer cache (``peers.json``) as
rejoin points, and publishes a ``SupernodeElected`` / ``SupernodeDropped`` membership event
for each peer that enters or leaves the set (``GET /v1/events``, ``threatmesh peers
--watch``). A new rank order of the same members is not a change.

For the sync service: ``is_supernode`` and ``current`` say whether this node and which peers
hold a seat (a supernode keeps a longer history for catch-up; that is the sync service's part).

Time: announcements carry wall-clock milliseconds (``wall_ms``), as every node compares its
own receive times with ``now``; waits are ``trio.sleep`` of wall-clock differences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import DHTMode
from libp2p.peer.id import ID
from multiaddr import Multiaddr

# trio's own TaskStatus type is hidden from mypy by trio-typing's stubs (see node/node.py).
from trio_typing import TaskStatus

from threatmesh.discovery import Discovery
from threatmesh.node.logs import get_logger
from threatmesh.node.sharing import Sharing
from threatmesh.node.supernode_roles import RoleKeeper, failures_logged
from threatmesh.pubsub.libp2p_gossipsub import ThreatmeshPubsub
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.topics import control_topic
from threatmesh.reputation import (
    AnnouncementError,
    ElectionConfig,
    Observation,
    announcement_from_status,
    reputation,
)
from threatmesh.reputation.engine import DialBack, SupernodeEngine
from threatmesh.reputation.roles import Roles, needs_relay, roles_for
from threatmesh.transports.dial_back import dial_back
from threatmesh.transports.libp2p_host import connected_peers
from threatmesh.transports.relay import Relay, RelaySettings, is_circuit

log = get_logger("threatmesh.supernodes")

# At start-up, an election follows received announcements this share of an interval later.
START_UP_DEBOUNCE = 0.1


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _version() -> str:
    try:
        return f"threatmesh/{metadata.version('threatmesh')}"
    except metadata.PackageNotFoundError:
        return "threatmesh/unknown"


@dataclass(frozen=True)
class SupernodeSettings:
    """The service's part of the node config (``NodeConfig`` keys in comments)."""

    announce_interval_s: float = 10.0  # announce_interval_s
    seats: int = 3  # supernode_seats; 0: automatic (about sqrt of the announcers)
    min_record_s: int = 60  # supernode_min_record_s
    min_record_untrusted_s: int = 300  # supernode_min_record_untrusted_s
    supernode_degree: int = 12  # supernode_mesh_degree
    relay: RelaySettings = dataclasses.field(default_factory=RelaySettings)
    dial_timeout_s: float = 10.0  # dial_timeout_s: connecting to a supernode

    @property
    def interval_ms(self) -> int:
        return max(1, round(self.announce_interval_s * 1000))

    @property
    def dial_back_timeout_s(self) -> float:
        """All dial-backs of one round together: half an interval, at most the dial timeout."""
        return min(self.dial_timeout_s, max(0.05, self.announce_interval_s / 2))

    def election_config(self) -> ElectionConfig:
        return ElectionConfig(
            announce_interval_ms=self.interval_ms,
            seats=self.seats or None,
            min_record_s=self.min_record_s,
            min_record_untrusted_s=self.min_record_untrusted_s,
        )


@dataclass
class SupernodeCounters:
    announcements_sent: int = 0
    announcements_received: int = 0
    announcements_rejected: int = 0  # by the validator, or later on the receive path
    dial_backs_reachable: int = 0
    dial_backs_unreachable: int = 0
    elections: int = 0
    set_changes: int = 0


class Supernodes:
    """The supernode service of one node. ``await nursery.start(supernodes.run)``."""

    def __init__(
        self,
        *,
        host: IHost,
        pubsub: ThreatmeshPubsub,
        sharing: Sharing,
        discovery: Discovery,
        settings: SupernodeSettings,
        swarm: str,
        our_addrs: Callable[[], Sequence[str]],
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.host = host
        self.pubsub = pubsub
        self.sharing = sharing
        self.discovery = discovery
        self.settings = settings
        self.topic = control_topic(swarm)
        self._our_addrs = our_addrs
        self._wall_ms = wall_ms
        self.our_peer_id = host.get_id().to_base58()
        self.engine = SupernodeEngine(
            our_peer_id=self.our_peer_id,
            started_ms=wall_ms(),
            config=settings.election_config(),
            version=_version(),
        )
        self.relay = Relay(host, settings.relay, may_use=self._is_announcer)
        self.keeper = RoleKeeper(
            host=host,
            pubsub=pubsub,
            discovery=discovery,
            relay=self.relay,
            our_peer_id=self.our_peer_id,
            announced_addrs=self.announced_addrs,
            interval_s=settings.announce_interval_s,
            dial_timeout_s=settings.dial_timeout_s,
            wall_s=lambda: wall_ms() / 1000,
        )
        self._followed: tuple[str, ...] = ()
        self._changed = trio.Event()
        self._ticked = trio.Event()
        self._attention = trio.Event()  # set when an announcement calls for work
        self._dial_back_soon = False
        self._evaluate_soon = False
        self.counters = SupernodeCounters()
        sharing.listen_for_status(self)

    # Views for other services ---------------------------------------------------------------

    @property
    def current(self) -> tuple[str, ...]:
        """The supernode set this node follows (and announces), in rank order."""
        return self._followed

    @property
    def is_supernode(self) -> bool:
        """Whether this node holds a seat (the sync service keeps a longer history then)."""
        return self.our_peer_id in self._followed

    @property
    def changed(self) -> trio.Event:
        """Set (and replaced by a fresh one) when the set this node follows changes (its
        members; a new rank order of the same members is not a change)."""
        return self._changed

    @property
    def ticked(self) -> trio.Event:
        """Set (and replaced by a fresh one) after every election, announcing or not."""
        return self._ticked

    @property
    def roles(self) -> Roles | None:
        return self.keeper.roles

    def announced_addrs(self, peer_id: ID) -> list[Multiaddr]:
        """The addresses ``peer_id`` announced, circuit addresses included."""
        addrs: list[Multiaddr] = []
        for text in self.engine.announced_addrs(peer_id.to_base58()):
            try:
                addrs.append(Multiaddr(text))
            except Exception:  # announcements are checked for shape, not for parsing
                continue
        return addrs

    def report(self) -> dict[str, Any]:
        """``{"supernodes", "candidates"}`` (issue #6 visibility), plus ``elected``: the last
        election's result, which the set followed adopts after a jittered delay when it takes
        a seat away."""
        election = self.engine.election
        return {
            "supernodes": list(self._followed),
            "elected": list(election.supernodes) if election is not None else [],
            "candidates": election.to_json()["candidates"] if election is not None else [],
        }

    def status(self) -> dict[str, Any]:
        now_ms = self._wall_ms()
        election = self.engine.election
        return {
            "supernodes": list(self._followed),
            "is_supernode": self.is_supernode,
            "roles": list(self.roles.names()) if self.roles is not None else [],
            "seats": election.seats if election is not None else 0,
            "voters": len(election.voters) if election is not None else 0,
            "announcers": len(self.engine.fresh_others(now_ms)),
            "verified_by": len(self.engine.verified_by(now_ms)),
            "relay": self.relay.status(),
            **dataclasses.asdict(self.counters),
            **dataclasses.asdict(self.keeper.counters),
        }

    # Receiving (called by Sharing) -------------------------------------------------------------

    def check_status(self, control: pb.Control, sender: str) -> None:
        """The validator's part: raises AnnouncementError (a ValueError) for a bad status."""
        try:
            announcement_from_status(
                control.status, sender=sender, sent_ms=control.sent_ms, received_ms=self._wall_ms()
            )
        except AnnouncementError:
            self.counters.announcements_rejected += 1
            raise

    def receive_status(self, control: pb.Control, sender: str) -> None:
        if sender == self.our_peer_id:
            return
        try:
            announcement = announcement_from_status(
                control.status, sender=sender, sent_ms=control.sent_ms, received_ms=self._wall_ms()
            )
        except AnnouncementError as error:
            # The validator's verdict is cached by message ID (the payload's hash): the same
            # bytes relayed under another sender's name pass it once more. Checked again here.
            self.counters.announcements_rejected += 1
            log.info("status ignored", sender=sender, reason=str(error))
            return
        known_since_ms = self.engine.book.heard_since_ms(sender)
        if self.engine.receive(announcement):
            self.counters.announcements_received += 1
            if self.engine.book.heard_since_ms(sender) != known_since_ms and announcement.addrs:
                self._dial_back_soon = True  # a new peer or session: dial it back now
                self._attention.set()
            if not self._followed:  # start-up: elect again once this burst is in
                self._evaluate_soon = True
                self._attention.set()

    # Service ----------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as tasks:
            await tasks.start(self.relay.run)
            tasks.start_soon(self.rounds, name="supernodes.rounds")
            tasks.start_soon(self.keeper.keep, name="supernodes.keep")
            task_status.started()

    async def rounds(self) -> None:
        """Announce every interval; elect again whenever the engine says it may change;
        dial back a new announcer as soon as it is heard."""
        interval_ms = self.settings.interval_ms
        await self._wait_for_a_listener()
        next_announce_ms = self._wall_ms()
        while True:
            now_ms = self._wall_ms()
            if now_ms >= next_announce_ms:
                next_announce_ms += interval_ms
                with failures_logged("round"):
                    await self.round()
                if next_announce_ms <= self._wall_ms():  # a slow round: do not burst
                    next_announce_ms = self._wall_ms() + interval_ms
            else:
                with failures_logged("election"):
                    if self._dial_back_soon:
                        self._dial_back_soon = False
                        due = self.engine.begin_round(now_ms)
                        if due:
                            await self.dial_back_all(due)
                    await self.evaluate(self._wall_ms())
            wake_ms = self.engine.wake_at_ms(next_announce_ms)
            with trio.move_on_after(max(1, wake_ms - self._wall_ms()) / 1000):
                await self._attention.wait()
            self._attention = trio.Event()
            if self._evaluate_soon:  # let the rest of a burst of announcements arrive
                self._evaluate_soon = False
                await trio.sleep(self.settings.announce_interval_s * START_UP_DEBOUNCE)

    async def _wait_for_a_listener(self) -> None:
        """Until some peer is subscribed to the control topic; at most one interval.

        py-libp2p has an event per (peer, topic) subscription but none for "anyone": wait on
        the connected peers' subscriptions, and on membership events while there are none.
        """
        with (
            trio.move_on_after(self.settings.announce_interval_s),
            self.discovery.events() as events,
        ):
            while not self.pubsub.peer_topics.get(self.topic):
                peers = connected_peers(self.host)
                if not peers:
                    await events.receive()
                    continue
                async with trio.open_nursery() as nursery:

                    async def subscribed(peer_id: ID) -> None:
                        with contextlib.suppress(trio.TooSlowError):
                            await self.pubsub.wait_for_subscription(
                                peer_id, self.topic, timeout=self.settings.announce_interval_s
                            )
                        nursery.cancel_scope.cancel()

                    for peer_id in peers:
                        nursery.start_soon(subscribed, peer_id)

    async def round(self) -> None:
        """One announce interval (``reputation/engine.py``, steps 1-3)."""
        due = self.engine.begin_round(self._wall_ms())
        if due:
            await self.dial_back_all(due)
        now_ms = self._wall_ms()
        await self.evaluate(now_ms)
        await self.announce(now_ms)

    async def dial_back_all(self, due: Sequence[DialBack]) -> None:
        """Dial each due peer back at once; results that are not in within the round's bound
        are not recorded (the ledger counts a missing result as a failure)."""
        timeout_s = self.settings.dial_back_timeout_s

        async def one(target: DialBack) -> None:
            reachable = await dial_back(
                self.host, ID.from_base58(target.peer_id), target.addrs, timeout_s=timeout_s
            )
            self.engine.record_dial_back(
                target.peer_id, reachable=reachable, now_ms=self._wall_ms()
            )
            if reachable:
                self.counters.dial_backs_reachable += 1
            else:
                self.counters.dial_backs_unreachable += 1

        with trio.move_on_after(timeout_s + 0.5):
            async with trio.open_nursery() as nursery:
                for target in due:
                    nursery.start_soon(one, target)

    async def evaluate(self, now_ms: int) -> None:
        """Elect, let the tracker adopt, and carry out any change of the set and the roles."""
        self.engine.evaluate(self._trust(now_ms), now_ms)
        self.counters.elections += 1
        followed, old = self.engine.supernodes, self._followed
        self._followed = followed  # the rank order may move; the set is what counts
        if set(followed) != set(old):
            self.counters.set_changes += 1
            self.keeper.set_changed(old, followed)
            log.info("supernode set changed", supernodes=list(followed), us=self.is_supernode)
            changed, self._changed = self._changed, trio.Event()
            changed.set()
        await self.keeper.apply(self._roles_now(now_ms))
        ticked, self._ticked = self._ticked, trio.Event()
        ticked.set()

    async def announce(self, now_ms: int) -> None:
        roles = self.roles.names() if self.roles is not None else ()
        ours = self.engine.announce(
            now_ms,
            addrs=tuple(self._announced_addrs()),
            degree=len(connected_peers(self.host)),
            roles=roles,
            reputations=self._reputations(now_ms),
        )
        await self.sharing.publish_control(pb.Control(sent_ms=now_ms, status=ours.to_status()))
        self.counters.announcements_sent += 1

    # Roles ------------------------------------------------------------------------------------

    def _roles_now(self, now_ms: int) -> Roles:
        direct = [addr for addr in self._our_addrs() if not is_circuit(addr)]
        unreachable = needs_relay(
            has_addrs=bool(direct),
            session_ms=now_ms - self.engine.started_ms,
            interval_ms=self.settings.interval_ms,
            fresh_witnesses=len(self.engine.fresh_others(now_ms)),
            verified_by=len(self.engine.verified_by(now_ms)),
        )
        return roles_for(
            our_peer_id=self.our_peer_id,
            supernodes=self._followed,
            configured_dht_server=self.discovery.configured_dht_mode == DHTMode.SERVER,
            needs_relay=unreachable,
            configured_mesh=self.keeper.configured_mesh,
            supernode_degree=self.settings.supernode_degree,
        )

    # Inputs of the engine ---------------------------------------------------------------------

    def _trust(self, now_ms: int) -> dict[str, int]:
        return {peer.to_base58(): level for peer, level in self.sharing.levels(now_ms).items()}

    def _announced_addrs(self) -> list[str]:
        direct = [addr for addr in self._our_addrs() if not is_circuit(addr)]
        return list(dict.fromkeys([*direct, *self.relay.circuit_addrs()]))

    def _reputations(self, now_ms: int) -> Mapping[str, float]:
        """What we observed of each fresh announcer, as a reputation in [0, 1]."""
        router = self.pubsub.gossip
        scorer = router.scorer
        topics = list(self.pubsub.topic_ids)
        trust = self._trust(now_ms)
        result: dict[str, float] = {}
        for peer in self.engine.fresh_others(now_ms):
            peer_id = ID.from_base58(peer)
            score, first, invalid = 0.0, 0, 0
            # The scorer's tables are defaultdicts: reading a peer that is not connected would
            # add it for good (they are cleaned on disconnect only).
            if scorer is not None and peer_id in self.pubsub.peers:
                score = scorer.score(peer_id, topics)
                first = round(sum(scorer.first_message_deliveries.get(peer_id, {}).values()))
                invalid = round(sum(scorer.invalid_messages.get(peer_id, {}).values()))
            observation = Observation(
                heard_since_ms=self.engine.book.heard_since_ms(peer),
                gossip_score=score,
                first_deliveries=first,
                invalid_messages=invalid,
                trust_level=trust.get(peer, pb.TLP_CLEAR),
                vouches=self.sharing.vouches_for(peer, now_ms),
            )
            result[peer] = reputation(observation, now_ms)
        return result

    def _is_announcer(self, peer_id: ID) -> bool:
        """Whom our relay serves: peers of our swarm (they announce on its control topic)."""
        return self.engine.book.get(peer_id.to_base58()) is not None
