"""Indicators as records for people and scripts: JSON lines, CSV rows, query filters.

Pure: turns stored or received indicators into JSON-ready dicts and command-line filters into
store query arguments, with errors that name the option.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from threatmesh.discovery import (
    EventsDropped,
    MembershipEvent,
    PeerAddressesChanged,
    PeerJoined,
    PeerLeft,
    SupernodeDropped,
    SupernodeElected,
)
from threatmesh.node.errors import ConfigError
from threatmesh.node.store import StoredIndicator
from threatmesh.pubsub.indicators import (
    ITYPE_BY_NAME,
    RECORD_FIELDS,
    indicator_to_record,
    parse_tlp,
    tlp_name,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

# Columns of CSV output, in order: the indicator record, then what the store adds.
CSV_FIELDS = (*RECORD_FIELDS, "origin", "sightings", "providers", "origins", "max_tlp")


def event_record(event: MembershipEvent) -> dict[str, Any]:
    """A membership event as JSON: ``{"event": "joined"|..., "peer_id", ...}``."""
    fields = {key: value for key, value in dataclasses.asdict(event).items() if key != "at"}
    name = {
        PeerJoined: "joined",
        PeerLeft: "left",
        PeerAddressesChanged: "addresses_changed",
        SupernodeElected: "supernode_elected",
        SupernodeDropped: "supernode_dropped",
        EventsDropped: "dropped",
    }[type(event)]
    return {"event": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def received_record(indicator: pb.Indicator, origin: str) -> dict[str, Any]:
    """A streamed indicator: the record plus the peer it came from."""
    return {**indicator_to_record(indicator), "origin": origin}


def stored_record(stored: StoredIndicator) -> dict[str, Any]:
    """A stored indicator: the merged record plus sightings, providers, origins, max TLP."""
    return {
        **indicator_to_record(stored.indicator),
        "sightings": stored.sightings,
        "providers": list(stored.providers),
        "origins": list(stored.origins),
        "max_tlp": tlp_name(stored.max_tlp),
    }


def query_filters(
    *,
    itype: str | None,
    value: str | None,
    tag: str | None,
    since: str | None,
    tlp: str | None,
) -> dict[str, Any]:
    """``threatmesh query`` options as ``Store.query`` arguments; ConfigError names the option."""
    filters: dict[str, Any] = {"value": value, "tag": tag.lower() if tag else None}
    if itype is not None:
        if itype.lower() not in ITYPE_BY_NAME:
            raise ConfigError(f"--itype: expected one of {', '.join(ITYPE_BY_NAME)}, got {itype!r}")
        filters["itype"] = ITYPE_BY_NAME[itype.lower()]
    if since is not None:
        try:
            moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--since: expected an ISO 8601 time, got {since!r}") from None
        if moment.tzinfo is None:
            raise ConfigError(f"--since: give a time zone (for example {since}Z)")
        filters["since_ms"] = int(moment.timestamp() * 1000)
    if tlp is not None:
        filters["tlp"] = parse_tlp(tlp)
    return filters
