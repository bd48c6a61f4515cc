"""Errors raised while building the host, reading swarm keys and guarding private swarms."""


class TransportError(Exception):
    """Base class for errors of ``threatmesh.transports``."""


class ListenAddressError(TransportError):
    """A listen or dial multiaddr is malformed or names a transport we do not run."""


class SwarmKeyError(TransportError):
    """A private-swarm key file is missing, unreadable, too open, or not in the kubo format."""


class PnetError(TransportError):
    """A private-swarm (pnet) handshake failed: wrong key, no key, or no answer in time."""
