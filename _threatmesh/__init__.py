"""threatmesh: a peer-to-peer node for sharing threat-intelligence indicators.

The subpackages are the architecture (see DESIGN.md, Layout): ``identity``, ``transports``,
``discovery``, ``pubsub``, ``reputation`` and ``node``. Imports point one way; nothing imports
``node``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("threatmesh")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0.0.0"
