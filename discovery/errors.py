"""Errors raised by ``threatmesh.discovery``.

Discovery keeps running on bad input from the network (junk DHT answers, unreachable seeds,
a corrupt peer cache): those are logged, one line each, and never raised to the node. These
exceptions are for mistakes of the operator or the caller, found before anything starts.
"""


class DiscoveryError(Exception):
    """Base class for errors of ``threatmesh.discovery``."""


class DiscoverySettingsError(DiscoveryError):
    """A discovery setting is out of range or names something we do not support."""
