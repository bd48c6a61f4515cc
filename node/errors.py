"""Errors of ``threatmesh.node``. Each message names the file, key or address at fault."""


class NodeError(Exception):
    """Base class for errors of ``threatmesh.node``."""


class ConfigError(NodeError):
    """``config.toml`` or a command-line flag has an unknown key or a bad value."""


class HomeError(NodeError):
    """The node's home directory is missing, not a directory, or has unsafe files."""


class ApiError(NodeError):
    """The local API of a running node could not be reached or refused the request."""
