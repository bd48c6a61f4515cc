"""Pure decisions of the node service: the status report and printable listen addresses.

Nothing here awaits, reads a clock or touches a socket; callers pass ``now`` and data in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from multiaddr import Multiaddr


def status_report(
    *,
    peer_id: str,
    addrs: Sequence[str],
    peers: Iterable[str],
    started_at: float,
    now: float,
    swarm: str,
) -> dict[str, Any]:
    """The body of ``GET /v1/status`` and of ``threatmesh status --json``."""
    return {
        "peer_id": peer_id,
        "addrs": list(addrs),
        "peers": sorted(peers),
        "uptime_s": round(max(0.0, now - started_at), 3),
        "swarm": swarm,
    }


def expand_unspecified(addrs: Sequence[Multiaddr], interface_ips: Sequence[str]) -> list[str]:
    """Listen addresses with 0.0.0.0 / :: replaced by each interface address of that family.

    A node listening on all interfaces must print addresses others can dial, not 0.0.0.0.
    """
    expanded: list[str] = []
    for addr in addrs:
        text = str(addr)
        host = addr.value_for_protocol("ip4") if "/ip4/" in text else None
        family = 4
        if host is None and "/ip6/" in text:
            host, family = addr.value_for_protocol("ip6"), 6
        if host is None or not ipaddress.ip_address(host).is_unspecified:
            expanded.append(text)
            continue
        for ip in interface_ips:
            if ipaddress.ip_address(ip).version == family:
                expanded.append(text.replace(f"/ip{family}/{host}/", f"/ip{family}/{ip}/", 1))
    return list(dict.fromkeys(expanded))
