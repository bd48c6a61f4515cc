"""The node's home directory and the files in it.

``<home>`` (``--home``, else ``$THREATMESH_HOME``, else ``~/.threatmesh``) holds:

- ``identity.key``  the node's private key (0600; see threatmesh.identity)
- ``config.toml``   the configuration (see threatmesh.node.config)
- ``api.token``     the local API's bearer token (0600)
- ``api.addr``      the running node's API URL; written at start, removed at a clean stop
- ``store.sqlite3`` the indicators this node saw (SQLite, WAL; see threatmesh.node.store)
- ``trust.json``    whom this node trusts, up to which TLP level (0600; see
  threatmesh.identity.trust); edited by ``threatmesh trust``, polled by the running node
- ``vouches.json``  the vouches and revocations this node issued (0600; see
  threatmesh.identity.own_vouches)

The home directory itself is created 0700. Secrets are created with their final mode, never
widened after the fact.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from threatmesh.identity import (
    KEY_FILE_NAME,
    TRUST_FILE_NAME,
    VOUCHES_FILE_NAME,
    Identity,
    KeyType,
    load_key_file,
    load_or_create,
)
from threatmesh.identity.private_files import create_private_file, read_private_file
from threatmesh.node.config import CONFIG_FILE_NAME, default_config_text
from threatmesh.node.errors import HomeError
from threatmesh.node.store import STORE_FILE_NAME

HOME_ENV = "THREATMESH_HOME"
TOKEN_FILE_NAME = "api.token"
API_ADDR_FILE_NAME = "api.addr"
TOKEN_BYTES = 32


def default_home() -> Path:
    from_env = os.environ.get(HOME_ENV)
    return Path(from_env).expanduser() if from_env else Path.home() / ".threatmesh"


@dataclass(frozen=True)
class Home:
    path: Path

    @property
    def key_file(self) -> Path:
        return self.path / KEY_FILE_NAME

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE_NAME

    @property
    def token_file(self) -> Path:
        return self.path / TOKEN_FILE_NAME

    @property
    def store_file(self) -> Path:
        return self.path / STORE_FILE_NAME

    @property
    def api_addr_file(self) -> Path:
        return self.path / API_ADDR_FILE_NAME

    @property
    def trust_file(self) -> Path:
        return self.path / TRUST_FILE_NAME

    @property
    def vouches_file(self) -> Path:
        return self.path / VOUCHES_FILE_NAME

    def exists(self) -> bool:
        return self.path.is_dir()

    def require(self) -> None:
        """Refuse a home that is missing or is not a directory, naming it."""
        if not self.path.exists():
            raise HomeError(f"{self.path}: no such home directory; run `threatmesh init` first")
        if not self.path.is_dir():
            raise HomeError(f"{self.path}: the home is not a directory")

    def init(self, key_type: KeyType = KeyType.SECP256K1) -> tuple[Identity, bool]:
        """Create whatever is missing: directory, key, config, token. Never overwrite.

        Returns the identity and whether the key was created now.
        """
        if self.path.exists() and not self.path.is_dir():
            raise HomeError(f"{self.path}: the home is not a directory")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise HomeError(f"{self.path}: cannot create the home ({error.strerror})") from None
        identity, created = load_or_create(self.path, key_type)
        if not self.config_file.exists():
            self.config_file.write_text(default_config_text(), encoding="utf-8")
        if not self.token_file.exists():
            _write_secret(self.token_file, secrets.token_urlsafe(TOKEN_BYTES))
        return identity, created

    def identity(self) -> Identity:
        self.require()
        return load_key_file(self.key_file)

    def api_token(self) -> str:
        return _read_secret(self.token_file)

    def ensure_api_token(self) -> str:
        if not self.token_file.exists():
            _write_secret(self.token_file, secrets.token_urlsafe(TOKEN_BYTES))
        return self.api_token()

    def write_api_addr(self, url: str) -> None:
        temporary = self.api_addr_file.with_suffix(".tmp")
        temporary.write_text(url + "\n", encoding="utf-8")
        temporary.replace(self.api_addr_file)

    def clear_api_addr(self) -> None:
        self.api_addr_file.unlink(missing_ok=True)

    def api_addr(self) -> str | None:
        try:
            return self.api_addr_file.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None


# An API token is 43 characters; anything much larger is not a token file.
MAX_TOKEN_FILE_BYTES = 1024


def _write_secret(path: Path, text: str) -> None:
    create_private_file(
        path, (text + "\n").encode(), what="API token file", exists="exists", error=HomeError
    )


def _read_secret(path: Path) -> str:
    data = read_private_file(
        path,
        what="API token file",
        secret="API token",
        max_bytes=MAX_TOKEN_FILE_BYTES,
        missing="no API token; run `threatmesh init` first",
        error=HomeError,
    )
    token = data.decode("utf-8", errors="replace").strip()
    if not token:
        raise HomeError(f"{path}: the API token file is empty")
    return token
