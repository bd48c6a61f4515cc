"""The node's configuration: ``<home>/config.toml``, then command-line flags on top.

Rules:
- Every key has a default, a type and a check; the table ``CONFIG_KEYS`` is the one place
  they are written down, and the README's config section mirrors it.
- An unknown key or a bad value is refused with the key's name, what was found and what is
  expected. Nothing is silently ignored: a typo in a security setting must not fall back to a
  default without anyone noticing.
- Flags given on the command line win over the file (``NodeConfig.with_overrides``).
- Parsing is pure: ``parse_config(text, source)`` takes the text and returns a ``NodeConfig``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threatmesh.identity import KeyType
from threatmesh.node.errors import ConfigError
from threatmesh.transports.addrs import parse_listen_addr, parse_peer_addr
from threatmesh.transports.errors import ListenAddressError
from threatmesh.transports.libp2p_host import SECURITY_NOISE, SECURITY_TLS

CONFIG_FILE_NAME = "config.toml"

DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1")
# A private swarm cannot use QUIC (see transports/libp2p_host.py), so its default is TCP only.
DEFAULT_PRIVATE_LISTEN = ("/ip4/0.0.0.0/tcp/4001",)
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_SWARM_NAME_LENGTH = 32


@dataclass(frozen=True)
class NodeConfig:
    """A validated configuration. ``listen`` is None when neither file nor flag chose one."""

    swarm: str = "public"
    listen: tuple[str, ...] | None = None
    bootstrap: tuple[str, ...] = ()
    psk_file: str = ""
    api: str = "127.0.0.1:0"
    key_type: str = KeyType.SECP256K1.value
    security: tuple[str, ...] = (SECURITY_NOISE,)
    log_level: str = "info"
    log_json: bool = False
    max_connections: int = 256
    max_streams: int = 8192
    max_memory_mb: int = 256
    dial_timeout_s: float = 10.0
    bootstrap_max_attempts: int = 8
    bootstrap_backoff_cap_s: float = 30.0
    dht_mode: str = "auto"
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    low_watermark: int = 32
    high_watermark: int = 96
    rendezvous_interval_s: float = 60.0
    random_walk_interval_s: float = 60.0
    announce_interval_s: float = 10.0
    green_vouches_required: int = 2
    history_retention_days: float = 7.0
    history_max_mb: int = 512
    supernode_seats: int = 3  # 0: about sqrt(announcing peers), at most 8
    supernode_min_record_s: int = 60
    supernode_min_record_untrusted_s: int = 300
    supernode_mesh_degree: int = 12
    relay_max_reservations: int = 128
    ip_colocation_threshold: int = 10

    def listen_addrs(self) -> tuple[str, ...]:
        if self.listen is not None:
            return self.listen
        return DEFAULT_PRIVATE_LISTEN if self.psk_file else DEFAULT_LISTEN

    def with_overrides(self, **overrides: Any) -> NodeConfig:
        """This config with the flags the operator gave (None means "not given")."""
        given = {key: value for key, value in overrides.items() if value is not None}
        for key, value in given.items():
            _check_key(key, value, "command line")
        config = dataclasses.replace(self, **given)
        check_consistency(config, "command line")
        return config

    def psk_path(self, home: Path) -> Path | None:
        if not self.psk_file:
            return None
        path = Path(self.psk_file).expanduser()
        return path if path.is_absolute() else home / path


# Checks -----------------------------------------------------------------------------------
# Each check takes the value (already of the right Python type) and returns an error text or
# "" when the value is good.


def _check_swarm(value: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
    if not value or len(value) > MAX_SWARM_NAME_LENGTH or not set(value) <= allowed:
        return f"expected 1 to {MAX_SWARM_NAME_LENGTH} characters of a-z, 0-9, '-', '_' or '.'"
    return ""


def _check_addresses(parse: Callable[[str], object]) -> Callable[[tuple[str, ...]], str]:
    def check(values: tuple[str, ...]) -> str:
        for value in values:
            try:
                parse(value)
            except ListenAddressError as error:
                return str(error)
        return ""

    return check


def _check_api(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return "expected HOST:PORT, for example 127.0.0.1:0"
    if host not in {"127.0.0.1", "localhost", "::1", "[::1]"}:
        return "the local API only listens on loopback (127.0.0.1, localhost or [::1])"
    return ""


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    return lambda value: "" if value in choices else f"expected one of {', '.join(choices)}"


def _check_security(values: tuple[str, ...]) -> str:
    if not values:
        return "expected at least one of noise, tls"
    bad = [value for value in values if value not in (SECURITY_NOISE, SECURITY_TLS)]
    return f"unknown {bad[0]!r}; expected noise and/or tls" if bad else ""


def _check_ips(values: tuple[str, ...]) -> str:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"{value!r} is not an IP address"
    return ""


def _at_least(minimum: float) -> Callable[[float], str]:
    return lambda value: "" if value >= minimum else f"expected a number >= {minimum:g}"


@dataclass(frozen=True)
class _Key:
    kind: type
    check: Callable[[Any], str]
    doc: str


CONFIG_KEYS: Mapping[str, _Key] = {
    "swarm": _Key(str, _check_swarm, "swarm name; nodes of different swarms never mix"),
    "listen": _Key(tuple, _check_addresses(parse_listen_addr), "listen multiaddrs"),
    "bootstrap": _Key(tuple, _check_addresses(parse_peer_addr), "peers to dial at start"),
    "psk_file": _Key(str, lambda value: "", "private-swarm key file (relative to home)"),
    "api": _Key(str, _check_api, "local API address, HOST:PORT on loopback"),
    "key_type": _Key(str, _one_of(tuple(k.value for k in KeyType)), "key type for init"),
    "security": _Key(tuple, _check_security, "security protocols offered, in order"),
    "log_level": _Key(str, _one_of(LOG_LEVELS), "log level"),
    "log_json": _Key(bool, lambda value: "", "log JSON lines instead of text"),
    "max_connections": _Key(int, _at_least(1), "maximum open connections"),
    "max_streams": _Key(int, _at_least(1), "maximum open streams"),
    "max_memory_mb": _Key(int, _at_least(16), "libp2p resource manager memory cap"),
    "dial_timeout_s": _Key(float, _at_least(0.1), "timeout of one dial"),
    "bootstrap_max_attempts": _Key(int, _at_least(1), "dial attempts per bootstrap peer"),
    "bootstrap_backoff_cap_s": _Key(float, _at_least(0.1), "longest wait between attempts"),
    "dht_mode": _Key(str, _one_of(("auto", "server", "client")), "DHT mode"),
    "mdns": _Key(bool, lambda value: "", "LAN beacon (mDNS) on or off"),
    "mdns_interfaces": _Key(tuple, _check_ips, "interface IPs for mDNS; empty: all"),
    "low_watermark": _Key(int, _at_least(0), "connections the node looks for"),
    "high_watermark": _Key(int, _at_least(1), "connections above which it prunes"),
    "rendezvous_interval_s": _Key(float, _at_least(1), "DHT rendezvous interval"),
    "random_walk_interval_s": _Key(float, _at_least(1), "DHT random walk interval"),
    "announce_interval_s": _Key(float, _at_least(0.1), "control-topic announce interval"),
    "green_vouches_required": _Key(int, _at_least(1), "vouches that earn a peer GREEN"),
    "history_retention_days": _Key(float, _at_least(0.01), "catch-up log retention"),
    "history_max_mb": _Key(int, _at_least(1), "catch-up log size cap"),
    "supernode_seats": _Key(int, _at_least(0), "supernode seats; 0: about sqrt(peers)"),
    "supernode_min_record_s": _Key(
        int, _at_least(0), "attested uptime a trusted peer needs to be elected"
    ),
    "supernode_min_record_untrusted_s": _Key(
        int, _at_least(0), "attested uptime an untrusted peer needs to be elected"
    ),
    "supernode_mesh_degree": _Key(int, _at_least(1), "GossipSub mesh degree of a supernode"),
    "relay_max_reservations": _Key(int, _at_least(1), "relay slots a supernode serves at a time"),
    "ip_colocation_threshold": _Key(
        int, _at_least(1), "peers per IP before GossipSub's colocation penalty applies"
    ),
}

_TYPE_NAMES = {
    str: "a string",
    tuple: "a list of strings",
    bool: "true or false",
    int: "an integer",
    float: "a number",
}


def _coerce(key: str, value: Any, source: str) -> Any:
    """``value`` as the Python type of ``key``, or ConfigError naming the key."""
    spec = CONFIG_KEYS[key]
    expected = _TYPE_NAMES[spec.kind]
    if spec.kind is tuple and isinstance(value, list | tuple):
        if all(isinstance(item, str) for item in value):
            return tuple(value)
    elif spec.kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif (spec.kind is int and isinstance(value, int) and not isinstance(value, bool)) or (
        spec.kind in (str, bool) and type(value) is spec.kind
    ):
        return value
    raise ConfigError(f"{source}: key {key!r}: expected {expected}, got {value!r}")


def _check_key(key: str, value: Any, source: str) -> None:
    if key not in CONFIG_KEYS:
        raise ConfigError(f"{source}: unknown key {key!r}; known keys: {', '.join(CONFIG_KEYS)}")
    problem = CONFIG_KEYS[key].check(_coerce(key, value, source))
    if problem:
        raise ConfigError(f"{source}: key {key!r}: {problem}")


def parse_config(text: str, source: str = CONFIG_FILE_NAME) -> NodeConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML ({error})") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        _check_key(key, value, source)
        values[key] = _coerce(key, value, source)
    config = NodeConfig(**values)
    check_consistency(config, source)
    return config


def check_consistency(config: NodeConfig, source: str) -> None:
    """Rules between keys: the watermarks must fit under the connection cap; an untrusted
    candidate never needs a shorter record than a trusted one."""
    if not config.low_watermark <= config.high_watermark <= config.max_connections:
        raise ConfigError(
            f"{source}: keys 'low_watermark' ({config.low_watermark}), 'high_watermark' "
            f"({config.high_watermark}) and 'max_connections' ({config.max_connections}) "
            "must be in that order"
        )
    if config.supernode_min_record_s > config.supernode_min_record_untrusted_s:
        raise ConfigError(
            f"{source}: key 'supernode_min_record_s' ({config.supernode_min_record_s}) must "
            "not exceed 'supernode_min_record_untrusted_s' "
            f"({config.supernode_min_record_untrusted_s})"
        )


def load_config(path: Path) -> NodeConfig:
    """Read ``path``; a missing file means every default."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return NodeConfig()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config file ({error})") from None
    return parse_config(text, str(path))


def default_config_text() -> str:
    """The commented config file that ``threatmesh init`` writes."""
    lines = ["# threatmesh node configuration. Every key is optional; see README.md.", ""]
    defaults = NodeConfig()
    for key, spec in CONFIG_KEYS.items():
        value = getattr(defaults, key)
        if key == "listen":
            value = DEFAULT_LISTEN
        lines.append(f"# {spec.doc}")
        lines.append(f"# {key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
