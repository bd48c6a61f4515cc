"""Sharing restrictions of a running node: who may read what, kept current.

``Sharing`` joins the trust store (``<home>/trust.json``, edited by ``threatmesh trust``), the
vouches heard on the control topic and this node's own vouches into one answer, the effective
level of every peer, and hands it to the pubsub as an ``Audience`` (which gates every topic,
``threatmesh.pubsub.gating``) and to the indicator stream as the recipients of sealed batches.

Rules:

- Explicit trust comes only from this node's trust store. A peer earns GREEN when at least
  ``green_vouches_required`` distinct peers this node trusts explicitly at GREEN or higher
  vouch for it (``threatmesh.identity.effective_level``); vouches never grant more.
- Sealed batches (AMBER and above) are wrapped for the peers this node trusts *explicitly* at
  that level or higher: the publisher's choice of audience, not the relays'.
- Vouches and revocations travel in ``Control`` messages on ``/threatmesh/<swarm>/control/1``.
  The topic validator checks each one before it is forwarded (signature, signer = the message's
  origin, not for oneself, not expired); a bad one is rejected, which counts against the peer
  that sent it (P4). Each node re-announces its own vouches and revocations every
  ``announce_interval_s``, so a node that joins later learns them within one interval.
- Status announcements travel on the same topic; ``Sharing`` owns the subscription and hands
  each ``Status`` to the listener registered with ``listen_for_status`` (the supernode
  service): its ``check_status`` runs in the topic validator (raising ValueError rejects the
  message, which counts against the sender), its ``receive_status`` gets what passed.
- Changes apply without a restart: the trust file is checked every ``TRUST_POLL_S``; a vouch or
  revocation applies when it arrives; expiry is rechecked every announce interval. A trust file
  that becomes unreadable keeps the last good trust and logs the problem.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import trio
from google.protobuf.message import DecodeError
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from trio_typing import TaskStatus

from threatmesh.identity import (
    TLP_GREEN,
    Identity,
    OwnVouches,
    RevocationStatement,
    TrustBook,
    TrustStore,
    VouchBook,
    VouchError,
    VouchStatement,
    effective_level,
    parse_peer_id,
    verify_revocation,
    verify_vouch,
)
from threatmesh.node.logs import get_logger
from threatmesh.pubsub.gating import Audience
from threatmesh.pubsub.libp2p_gossipsub import PublishError, ThreatmeshPubsub
from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.seal import SealError, recipient_public_key
from threatmesh.pubsub.topics import control_topic

log = get_logger("threatmesh.sharing")

# How often a running node looks at the trust file (one stat call).
TRUST_POLL_S = 1.0


class SharingError(Exception):
    """A vouch or revocation this node was asked to make cannot be made; the message says why."""


class StatusListener(Protocol):
    """Who reads the ``Status`` announcements of the control topic (the supernode service)."""

    def check_status(self, control: pb.Control, sender: str) -> None:
        """Raise ValueError if the status of ``control`` (signed by ``sender``) is invalid."""

    def receive_status(self, control: pb.Control, sender: str) -> None:
        """A status that passed the check. Must not block."""


@dataclass
class SharingCounters:
    vouches_accepted: int = 0
    revocations_accepted: int = 0
    control_rejected: int = 0  # forged, expired, self-vouches, undecodable control messages
    audience_updates: int = 0
    trust_reloads: int = 0
    trust_reload_errors: int = 0


class Sharing:
    def __init__(
        self,
        *,
        identity: Identity,
        pubsub: ThreatmeshPubsub,
        swarm: str,
        trust_store: TrustStore,
        own_vouches: OwnVouches,
        green_vouches_required: int,
        announce_interval_s: float,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._identity = identity
        self._me = identity.peer_id.to_base58()
        self._pubsub = pubsub
        self._swarm = swarm
        self._trust_store = trust_store
        self._trust: TrustBook = trust_store.load()
        self._own = own_vouches
        self._own.load()
        self._vouches = VouchBook()
        self._required = green_vouches_required
        self._interval_s = announce_interval_s
        self._wall_ms = wall_ms
        self._levels: dict[ID, int] = {}
        self._status_listener: StatusListener | None = None
        # Bounded by the trust file's entry limit: cleared whenever the file is reloaded.
        self._sealable_cache: dict[ID, bool] = {}
        self.counters = SharingCounters()
        # Gate from the first peer on: nobody connects before the node runs, so no peer's
        # subscription needs revisiting here (set_audience does that at run time).
        self._levels = self.levels(wall_ms())
        pubsub.gossip.use_audience(Audience.for_swarm(swarm, self._levels, identity.peer_id))

    # Decisions ----------------------------------------------------------------------------

    def levels(self, now_ms: int) -> dict[ID, int]:
        """The effective level of every peer this node knows something about (not CLEAR)."""
        known = {entry.peer_id for entry in self._trust.entries} | self._vouches.subjects()
        levels: dict[ID, int] = {}
        for peer in known - {self._me}:
            level = effective_level(
                peer,
                trust=self._trust,
                vouchers=self._vouches.vouchers_for(peer, now_ms),
                required=self._required,
                now_ms=now_ms,
            )
            if level > pb.TLP_CLEAR:
                levels[ID.from_base58(peer)] = level
        return levels

    def level_of(self, peer_id: str) -> int:
        return self._levels.get(ID.from_base58(peer_id), pb.TLP_CLEAR)

    def vouches_for(self, peer_id: str, now_ms: int) -> int:
        """Distinct live vouches for ``peer_id`` from peers we trust explicitly at GREEN+."""
        return sum(
            1
            for voucher in self._vouches.vouchers_for(peer_id, now_ms)
            if self._trust.level(voucher, now_ms) >= TLP_GREEN
        )

    def recipients(self, tlp: int) -> list[ID]:
        """Whom a sealed batch at ``tlp`` is wrapped for: peers trusted explicitly at ``tlp``+.

        A peer whose ID does not carry its public key (RSA) cannot be sealed for; it is left
        out, with one warning, rather than fail every publish at that level.
        """
        now_ms = self._wall_ms()
        chosen: list[ID] = []
        for peer in sorted(self._trust.peers_at_or_above(tlp, now_ms)):
            peer_id = ID.from_base58(peer)
            if peer != self._me and self._sealable(peer_id):
                chosen.append(peer_id)
        return chosen

    def _sealable(self, peer_id: ID) -> bool:
        known = self._sealable_cache.get(peer_id)
        if known is None:
            try:
                recipient_public_key(peer_id)
                known = True
            except SealError as error:
                log.warning("a trusted peer cannot receive sealed batches", error=str(error))
                known = False
            self._sealable_cache[peer_id] = known
        return known

    # Service ------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        topic = control_topic(self._swarm)
        self._pubsub.set_validator(topic, self._validate_control)
        subscription = await self._pubsub.subscribe(topic)
        await self._apply()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_control, subscription)
            nursery.start_soon(self._watch_trust_file)
            nursery.start_soon(self._announce)
            task_status.started()

    async def _apply(self, *, force: bool = False) -> None:
        """Hand the current levels to the pubsub (only when they changed, unless forced)."""
        levels = self.levels(self._wall_ms())
        if levels == self._levels and not force:
            return
        self._levels = levels
        self.counters.audience_updates += 1
        await self._pubsub.set_audience(
            Audience.for_swarm(self._swarm, levels, self._identity.peer_id)
        )

    async def _watch_trust_file(self) -> None:
        while True:
            await trio.sleep(TRUST_POLL_S)
            reload = self._trust_store.reload_if_changed()
            if reload is None:
                continue
            if reload.error is not None:  # reported once per bad version of the file
                self.counters.trust_reload_errors += 1
                log.warning("trust file not applied; keeping the last good one", error=reload.error)
                continue
            self._trust = reload.book
            self._sealable_cache.clear()  # only peers in the current trust file are kept
            self.counters.trust_reloads += 1
            log.info("trust file reloaded", entries=len(reload.book))
            await self._apply()

    async def _announce(self) -> None:
        while True:
            now_ms = self._wall_ms()
            vouches, revocations = self._own.active(now_ms)
            for vouch in vouches:
                await self.publish_control(pb.Control(sent_ms=now_ms, vouch=_vouch_pb(vouch)))
            for revocation in revocations:
                await self.publish_control(
                    pb.Control(sent_ms=now_ms, revocation=_revocation_pb(revocation))
                )
            self._vouches.expire(now_ms)
            await self._apply()
            await trio.sleep(self._interval_s)

    async def publish_control(self, control: pb.Control) -> None:
        """Publish ``control`` on the control topic; a failure is logged, not raised."""
        try:
            await self._pubsub.publish(control_topic(self._swarm), control.SerializeToString())
        except PublishError as error:
            log.warning("control message not sent", error=str(error))

    # Vouching -----------------------------------------------------------------------------

    async def vouch(
        self, subject: str, level: int = TLP_GREEN, lifetime_ms: int | None = None
    ) -> dict[str, Any]:
        """Sign, keep (``vouches.json``) and announce a vouch for ``subject`` at ``level``."""
        now_ms = self._wall_ms()
        _check_peer_id(subject)
        if subject == self._me:
            raise SharingError("a node cannot vouch for itself")
        try:
            if lifetime_ms is None:
                statement = self._own.vouch(subject, level, now_ms=now_ms)
            else:
                statement = self._own.vouch(subject, level, now_ms=now_ms, lifetime_ms=lifetime_ms)
            verify_vouch(statement, sender=self._me, now_ms=now_ms)
        except (VouchError, ValueError) as error:
            raise SharingError(str(error)) from None
        await self.publish_control(pb.Control(sent_ms=now_ms, vouch=_vouch_pb(statement)))
        return _vouch_record(statement)

    async def revoke(self, subject: str) -> dict[str, Any]:
        """Sign, keep and announce the revocation of this node's vouch for ``subject``."""
        now_ms = self._wall_ms()
        _check_peer_id(subject)
        statement = self._own.revoke(subject, now_ms=now_ms)
        await self.publish_control(pb.Control(sent_ms=now_ms, revocation=_revocation_pb(statement)))
        return {"voucher": self._me, "subject": subject, "revoked_ms": now_ms}

    # Control topic ------------------------------------------------------------------------

    def listen_for_status(self, listener: StatusListener) -> None:
        """Hand every ``Status`` of the control topic to ``listener`` (one listener)."""
        self._status_listener = listener

    def _validate_control(self, forwarder: ID, message: rpc_pb2.Message) -> bool:
        try:
            control = pb.Control.FromString(message.data)
            self._check_control(control, message)
        except (DecodeError, VouchError, ValueError) as error:
            self.counters.control_rejected += 1
            log.info("rejected a control message", forwarder=str(forwarder), reason=str(error))
            return False
        return True

    def _check_control(self, control: pb.Control, message: rpc_pb2.Message) -> None:
        body = control.WhichOneof("body")
        if body is None:
            raise ValueError("a control message without a body")
        sender = ID(message.from_id).to_base58()
        key = deserialize_public_key(message.key) if message.key else None
        now_ms = self._wall_ms()
        if body == "vouch":
            verify_vouch(
                _vouch_statement(control.vouch), sender=sender, now_ms=now_ms, public_key=key
            )
        elif body == "revocation":
            verify_revocation(
                _revocation_statement(control.revocation),
                sender=sender,
                now_ms=now_ms,
                public_key=key,
            )
        elif body == "status" and self._status_listener is not None:
            self._status_listener.check_status(control, sender)
        # Sighting is read by a later service.

    async def _receive_control(self, subscription: Any) -> None:
        while True:
            message = await subscription.get()
            control = pb.Control.FromString(message.data)
            body = control.WhichOneof("body")
            if body == "vouch":
                vouch = _vouch_statement(control.vouch)
                # Only vouches that can count are kept: a flood from untrusted vouchers
                # must not push out the ones that do (they are re-announced every interval,
                # so a voucher trusted later is heard again within one).
                if self._trust.level(vouch.voucher, self._wall_ms()) < TLP_GREEN:
                    continue
                self._vouches.add(vouch)
                self.counters.vouches_accepted += 1
                await self._apply()
            elif body == "revocation":
                self._vouches.revoke(_revocation_statement(control.revocation))
                self.counters.revocations_accepted += 1
                await self._apply()
            elif body == "status" and self._status_listener is not None:
                sender = ID(message.from_id).to_base58()
                self._status_listener.receive_status(control, sender)

    # Views --------------------------------------------------------------------------------

    def status(self) -> Mapping[str, Any]:
        now_ms = self._wall_ms()
        vouches, revocations = self._own.active(now_ms)
        return {
            **asdict(self.counters),
            "trusted_peers": len(self._trust.entries),
            "effective_levels": {
                str(peer): level for peer, level in sorted(self._levels.items(), key=str)
            },
            "own_vouches": len(vouches),
            "own_revocations": len(revocations),
        }


def _check_peer_id(peer_id: str) -> None:
    try:
        parse_peer_id(peer_id)
    except ValueError as error:
        raise SharingError(str(error)) from None


def _vouch_pb(statement: VouchStatement) -> pb.Vouch:
    return pb.Vouch(
        voucher=ID.from_base58(statement.voucher).to_bytes(),
        subject=ID.from_base58(statement.subject).to_bytes(),
        level=pb.Tlp.ValueType(statement.level),
        issued_ms=statement.issued_ms,
        expires_ms=statement.expires_ms,
        signature=statement.signature,
    )


def _revocation_pb(statement: RevocationStatement) -> pb.Revocation:
    return pb.Revocation(
        voucher=ID.from_base58(statement.voucher).to_bytes(),
        subject=ID.from_base58(statement.subject).to_bytes(),
        issued_ms=statement.issued_ms,
        signature=statement.signature,
    )


def _peer_text(raw: bytes, field: str) -> str:
    """A peer ID from the wire as text; ValueError naming ``field`` if it is not one
    (``ID(raw)`` takes any bytes, ``parse_peer_id`` checks them)."""
    text = ID(raw).to_base58()
    try:
        parse_peer_id(text)
    except ValueError:
        raise ValueError(f"{field}: not a peer ID") from None
    return text


def _vouch_statement(vouch: pb.Vouch) -> VouchStatement:
    return VouchStatement(
        voucher=_peer_text(vouch.voucher, "voucher"),
        subject=_peer_text(vouch.subject, "subject"),
        level=vouch.level,
        issued_ms=vouch.issued_ms,
        expires_ms=vouch.expires_ms,
        signature=vouch.signature,
    )


def _revocation_statement(revocation: pb.Revocation) -> RevocationStatement:
    return RevocationStatement(
        voucher=_peer_text(revocation.voucher, "voucher"),
        subject=_peer_text(revocation.subject, "subject"),
        issued_ms=revocation.issued_ms,
        signature=revocation.signature,
    )


def _vouch_record(statement: VouchStatement) -> dict[str, Any]:
    return {
        "voucher": statement.voucher,
        "subject": statement.subject,
        "level": statement.level,
        "issued_ms": statement.issued_ms,
        "expires_ms": statement.expires_ms,
    }
