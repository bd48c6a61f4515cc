"""``QuietNotifee``: a py-libp2p ``INotifee`` that ignores every network event.

py-libp2p's notifee interface has six async callbacks and no default bodies; our notifees
care about one or two. Subclass this and override those. Rule for every override: never
block (the swarm awaits each callback inline), hand the event off with a non-blocking offer.
"""

from __future__ import annotations

from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from multiaddr import Multiaddr


class QuietNotifee(INotifee):
    async def connected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None
