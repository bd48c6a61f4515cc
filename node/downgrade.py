"""No downgrade: an indicator this node holds at AMBER or above is not re-published lower.

Pure: the caller passes the levels the store holds (``Store.max_levels``). A record is refused
when the store saw its (itype, value) at AMBER, AMBER+STRICT or RED and the record's TLP is
lower than that. Publishing at the same level or higher is fine; so is anything the store saw
only at CLEAR or GREEN (those were never restricted to named recipients).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from threatmesh.pubsub.proto import threatmesh_pb2 as pb
from threatmesh.pubsub.topics import TLP_LEVELS

_NAMES = dict(TLP_LEVELS)


def downgrades(
    indicators: Sequence[pb.Indicator], held: Mapping[tuple[int, str], int]
) -> dict[int, str]:
    """The positions (0-based) in ``indicators`` that would downgrade, with what is wrong
    with their ``tlp`` field."""
    refused: dict[int, str] = {}
    for position, indicator in enumerate(indicators):
        level = held.get((indicator.itype, indicator.value), pb.TLP_CLEAR)
        if level >= pb.TLP_AMBER and indicator.tlp < level:
            refused[position] = (
                f"this node holds {indicator.value} at {_NAMES[level]}; publishing it at "
                f"{_NAMES.get(indicator.tlp, indicator.tlp)} would widen its audience "
                "(no downgrade)"
            )
    return refused
