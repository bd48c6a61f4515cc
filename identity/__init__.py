"""Who this node is and whom it trusts.

- ``keys``: the key pair, the peer ID (and ``parse_peer_id``, the check of one written as
  text) and the key file.
- ``levels``: the TLP level constants and their names.
- ``trust``: the trust store (``<home>/trust.json``: peer ID -> highest TLP level it may
  receive) and ``effective_level``, the rule that combines explicit trust and vouches.
- ``vouches``: signed vouches and revocations, their verification, and the book of vouches
  heard from peers.
- ``own_vouches``: the vouches and revocations this node issued (``<home>/vouches.json``).
- ``private_files``: how the files above are read and written: secrets created once with
  mode 0600, JSON state files replaced atomically under a lock.

This package imports nothing of ours (DESIGN.md, "Layout").
"""

from threatmesh.identity.keys import (
    KEY_FILE_NAME,
    Identity,
    IdentityError,
    KeyType,
    generate_identity,
    load_key_file,
    load_or_create,
    parse_peer_id,
    write_key_file,
)
from threatmesh.identity.levels import (
    TLP_AMBER,
    TLP_AMBER_STRICT,
    TLP_CLEAR,
    TLP_GREEN,
    TLP_LEVEL_NAMES,
    TLP_RED,
    level_from_name,
    level_name,
)
from threatmesh.identity.own_vouches import (
    VOUCHES_FILE_NAME,
    OwnStatements,
    OwnVouches,
    VouchFileError,
)
from threatmesh.identity.trust import (
    TRUST_FILE_NAME,
    TrustBook,
    TrustEntry,
    TrustError,
    TrustReload,
    TrustStore,
    effective_level,
)
from threatmesh.identity.vouches import (
    RevocationStatement,
    VouchBook,
    VouchBookSnapshot,
    VouchError,
    VouchProblem,
    VouchStatement,
    revocation_signing_bytes,
    sign_revocation,
    sign_vouch,
    verify_revocation,
    verify_vouch,
    vouch_signing_bytes,
)

__all__ = [
    "KEY_FILE_NAME",
    "TLP_AMBER",
    "TLP_AMBER_STRICT",
    "TLP_CLEAR",
    "TLP_GREEN",
    "TLP_LEVEL_NAMES",
    "TLP_RED",
    "TRUST_FILE_NAME",
    "VOUCHES_FILE_NAME",
    "Identity",
    "IdentityError",
    "KeyType",
    "OwnStatements",
    "OwnVouches",
    "RevocationStatement",
    "TrustBook",
    "TrustEntry",
    "TrustError",
    "TrustReload",
    "TrustStore",
    "VouchBook",
    "VouchBookSnapshot",
    "VouchError",
    "VouchFileError",
    "VouchProblem",
    "VouchStatement",
    "effective_level",
    "generate_identity",
    "level_from_name",
    "level_name",
    "load_key_file",
    "load_or_create",
    "parse_peer_id",
    "revocation_signing_bytes",
    "sign_revocation",
    "sign_vouch",
    "verify_revocation",
    "verify_vouch",
    "vouch_signing_bytes",
    "write_key_file",
]
