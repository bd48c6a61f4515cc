"""Pure decisions of the node service: status report, bootstrap backoff, listen addresses.

Nothing here awaits, reads a clock or touches a socket; callers pass ``now`` and data in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from multiaddr import Multiaddr

BOOTSTRAP_FIRST_DELAY_S = 0.5


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


def bootstrap_delay_s(attempt: int, cap_s: float, jitter: float = 0.0) -> float:
    """Wait before dial attempt ``attempt`` (0-based): 0, then 0.5 s doubling up to ``cap_s``.

    ``jitter`` in [0, 1) spreads a mass restart (callers pass ``random.random()``); it adds up
    to 25 % of the delay.
    """
    if attempt <= 0:
        return 0.0
    delay: float = min(cap_s, BOOTSTRAP_FIRST_DELAY_S * 2 ** (attempt - 1))
    return delay * (1.0 + 0.25 * jitter)


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
