"""Who may receive what: the one pure decision behind TLP gating (DESIGN "Trust and sensitivity").

A peer may receive messages of a topic when this node trusts it at the topic's level or
higher. ``Audience`` is an immutable snapshot of that decision for every topic and peer; the
pubsub adapter (``libp2p_gossipsub``) asks it at every place a message, an advertisement of a
message (IHAVE) or a mesh slot (GRAFT) could go to a peer, and takes a new snapshot when trust
changes. Nothing here awaits or reads a clock: whoever builds the snapshot resolves expiry.

Rules:

- ``may_receive(peer_level, topic_level)`` is the whole policy: ``peer_level >= topic_level``.
  Levels are ``pb.Tlp`` values, CLEAR (1) < GREEN < AMBER < AMBER+STRICT < RED (5).
- A peer this node knows nothing about is at CLEAR: it reads CLEAR and the control topic.
- A topic that is not one of ours (another application's) is not gated: we neither subscribe
  to it nor forward it, so there is nothing to withhold.
- Our own peer ID is at RED: local delivery is never gated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from libp2p.peer.id import ID

from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.seal import SEALED_LEVELS
from threatmesh.pubsub.topics import all_tlp_topics, control_topic


def may_receive(peer_level: int, topic_level: int) -> bool:
    """Whether a peer trusted at ``peer_level`` may receive a topic of ``topic_level``."""
    return peer_level >= topic_level


def swarm_topic_levels(swarm: str) -> dict[str, int]:
    """The level of every topic of ``swarm``: its TLP topics, and the control topic at CLEAR."""
    return {**all_tlp_topics(swarm), control_topic(swarm): pb.TLP_CLEAR}


@dataclass(frozen=True)
class Audience:
    """A snapshot: the level of each gated topic and the trust level of each known peer."""

    topic_levels: Mapping[str, int] = field(default_factory=dict)
    peer_levels: Mapping[ID, int] = field(default_factory=dict)

    @classmethod
    def for_swarm(cls, swarm: str, peer_levels: Mapping[ID, int], me: ID) -> Audience:
        return cls(swarm_topic_levels(swarm), {**peer_levels, me: pb.TLP_RED})

    def level_of(self, peer: ID) -> int:
        return self.peer_levels.get(peer, pb.TLP_CLEAR)

    def allows(self, peer: ID, topic: str) -> bool:
        topic_level = self.topic_levels.get(topic)
        if topic_level is None:
            return True
        return may_receive(self.peer_levels.get(peer, pb.TLP_CLEAR), topic_level)

    def allows_all(self, peer: ID, topics: Iterable[str]) -> bool:
        return all(self.allows(peer, topic) for topic in topics)

    def sealed_topics(self) -> frozenset[str]:
        """Our topics whose batches travel sealed (``threatmesh.pubsub.seal``)."""
        return frozenset(t for t, level in self.topic_levels.items() if level in SEALED_LEVELS)

    def gated_topics(self) -> frozenset[str]:
        """Our topics not everyone may read (GREEN and above)."""
        return frozenset(t for t, level in self.topic_levels.items() if level > pb.TLP_CLEAR)


OPEN_AUDIENCE = Audience()
