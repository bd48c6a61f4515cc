from __future__ import annotations

from pathlib import Path

import pytest

from threatmesh.node.config import (
    CONFIG_KEYS,
    DEFAULT_LISTEN,
    DEFAULT_PRIVATE_LISTEN,
    NodeConfig,
    default_config_text,
    load_config,
    parse_config,
)
from threatmesh.node.errors import ConfigError

PEER = "16Uiu2HAmC7ntFGrBGYn5Mz5Pp5RXfg9kCrx6MYRiZVAgHSBYT6jf"


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "config.toml")
    assert config == NodeConfig()
    assert config.listen_addrs() == DEFAULT_LISTEN


def test_default_file_written_by_init_parses_to_defaults() -> None:
    # Every key is present, commented out; uncommenting all of them changes nothing.
    text = default_config_text()
    for key in CONFIG_KEYS:
        assert f"# {key} = " in text
    uncommented = "\n".join(line[2:] if " = " in line else line for line in text.splitlines())
    config = parse_config(uncommented)
    assert config.listen_addrs() == DEFAULT_LISTEN
    assert config == NodeConfig(listen=DEFAULT_LISTEN)


def test_values_are_read() -> None:
    config = parse_config(
        'swarm = "acme-cert"\n'
        'listen = ["/ip4/127.0.0.1/tcp/4002", "/ip4/127.0.0.1/tcp/4003/ws"]\n'
        f'bootstrap = ["/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"]\n'
        'security = ["noise", "tls"]\n'
        "max_connections = 50\n"
        "high_watermark = 40\n"
        "dial_timeout_s = 3\n"
        "mdns = false\n"
        'mdns_interfaces = ["192.0.2.1"]\n'
        'dht_mode = "client"\n'
    )
    assert config.swarm == "acme-cert"
    assert config.listen_addrs() == ("/ip4/127.0.0.1/tcp/4002", "/ip4/127.0.0.1/tcp/4003/ws")
    assert config.security == ("noise", "tls")
    assert config.max_connections == 50
    assert config.dial_timeout_s == 3.0
    assert (config.mdns, config.mdns_interfaces, config.dht_mode) == (
        False,
        ("192.0.2.1",),
        "client",
    )


def test_watermarks_must_fit_under_the_connection_cap() -> None:
    with pytest.raises(ConfigError, match=r"'high_watermark'.*'max_connections'"):
        parse_config("max_connections = 50\n")
    with pytest.raises(ConfigError, match="command line"):
        NodeConfig().with_overrides(low_watermark=100)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("swarn = 'x'", ["'swarn'", "unknown key"]),
        ("swarm = 3", ["'swarm'", "expected a string"]),
        ("swarm = 'Has Spaces'", ["'swarm'", "a-z"]),
        ("listen = '/ip4/0.0.0.0/tcp/1'", ["'listen'", "list of strings"]),
        ("listen = ['/ip4/0.0.0.0/udp/1']", ["'listen'", "unsupported transport"]),
        ("listen = ['/ip4/300.0.0.1/tcp/1']", ["'listen'", "not a valid multiaddr"]),
        ("bootstrap = ['/ip4/10.0.0.1/tcp/4001']", ["'bootstrap'", "/p2p/<peer id>"]),
        ("bootstrap = ['/ip4/10.0.0.1/tcp/4001/p2p/nope']", ["'bootstrap'"]),
        ("api = '0.0.0.0:8080'", ["'api'", "loopback"]),
        ("api = 'localhost'", ["'api'", "HOST:PORT"]),
        ("security = ['plaintext']", ["'security'", "noise"]),
        ("security = []", ["'security'"]),
        ("log_level = 'loud'", ["'log_level'", "debug"]),
        ("log_json = 'yes'", ["'log_json'", "true or false"]),
        ("max_connections = 0", ["'max_connections'", ">= 1"]),
        ("max_connections = 1.5", ["'max_connections'", "an integer"]),
        ("max_connections = true", ["'max_connections'", "an integer"]),
        ("key_type = 'rsa'", ["'key_type'", "secp256k1"]),
        ("dht_mode = 'both'", ["'dht_mode'", "server"]),
        ("mdns_interfaces = ['eth0']", ["'mdns_interfaces'", "not an IP address"]),
        ("swarm = ", ["not valid TOML"]),
    ],
)
def test_bad_config_names_the_key(text: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text, "/home/x/config.toml")
    message = str(error.value)
    assert message.startswith("/home/x/config.toml: ")
    for name in names:
        assert name in message
    assert "\n" not in message


def test_flags_override_the_file() -> None:
    config = parse_config("swarm = 'from-file'\napi = '127.0.0.1:7000'\n")
    overridden = config.with_overrides(swarm="from-flag", api=None, listen=None)
    assert overridden.swarm == "from-flag"
    assert overridden.api == "127.0.0.1:7000"


def test_bad_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match="command line: key 'api'"):
        NodeConfig().with_overrides(api="8.8.8.8:80")


def test_private_swarm_default_listen_has_no_quic(tmp_path: Path) -> None:
    config = NodeConfig(psk_file="swarm.key")
    assert config.listen_addrs() == DEFAULT_PRIVATE_LISTEN
    assert config.psk_path(tmp_path) == tmp_path / "swarm.key"
    assert NodeConfig(psk_file="/etc/swarm.key").psk_path(tmp_path) == Path("/etc/swarm.key")
