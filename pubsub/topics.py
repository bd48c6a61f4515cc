"""Topic names of the wire protocol (DESIGN.md, "Wire protocol").

``/threatmesh/<swarm>/tlp/<level>/1`` for each TLP 2.0 level and ``/threatmesh/<swarm>/control/1``.
The trailing ``1`` is the topic version: a change to what a topic carries gets a new number.
"""

from __future__ import annotations

from dataclasses import dataclass

from threatmesh.pubsub.proto import threatmesh_pb2 as pb

# TLP levels in increasing restriction, with the names used in topics, the CLI and JSON.
TLP_LEVELS: tuple[tuple[int, str], ...] = (
    (pb.TLP_CLEAR, "clear"),
    (pb.TLP_GREEN, "green"),
    (pb.TLP_AMBER, "amber"),
    (pb.TLP_AMBER_STRICT, "amber-strict"),
    (pb.TLP_RED, "red"),
)
_NAME_BY_TLP = dict(TLP_LEVELS)
_TLP_BY_NAME = {name: tlp for tlp, name in TLP_LEVELS}
TOPIC_VERSION = 1


class TopicError(ValueError):
    """A topic string that is not one of ours."""


@dataclass(frozen=True)
class TlpTopic:
    swarm: str
    tlp: int

    def __str__(self) -> str:
        return f"/threatmesh/{self.swarm}/tlp/{_NAME_BY_TLP[self.tlp]}/{TOPIC_VERSION}"


def tlp_topic(swarm: str, tlp: int) -> str:
    if tlp not in _NAME_BY_TLP:
        raise TopicError(f"no topic for TLP value {tlp}")
    return str(TlpTopic(swarm, tlp))


def control_topic(swarm: str) -> str:
    return f"/threatmesh/{swarm}/control/{TOPIC_VERSION}"


def all_tlp_topics(swarm: str) -> dict[str, int]:
    """Every TLP topic of ``swarm`` with its level."""
    return {tlp_topic(swarm, tlp): tlp for tlp, _ in TLP_LEVELS}


def parse_tlp_topic(topic: str) -> TlpTopic:
    parts = topic.split("/")
    # ["", "threatmesh", swarm, "tlp", level, version]
    if (
        len(parts) != 6
        or parts[0] != ""
        or parts[1] != "threatmesh"
        or parts[3] != "tlp"
        or parts[5] != str(TOPIC_VERSION)
        or parts[4] not in _TLP_BY_NAME
        or not parts[2]
    ):
        raise TopicError(f"{topic!r} is not a threatmesh TLP topic")
    return TlpTopic(parts[2], _TLP_BY_NAME[parts[4]])
