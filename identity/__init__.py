"""Who this node is and whom it trusts.

- ``keys``: the key pair, the peer ID and the key file.
- ``trust``: the trust store (``<home>/trust.json``: peer ID -> highest TLP level it may
  receive), the TLP level constants, and ``effective_level``, the rule that combines explicit
  trust and vouches.
- ``vouches``: signed vouches and revocations, their verification, the book of vouches heard
  from peers and the ones this node issued (``<home>/vouches.json``).

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
    write_key_file,
)
from threatmesh.identity.trust import (
    TLP_AMBER,
    TLP_AMBER_STRICT,
    TLP_CLEAR,
    TLP_GREEN,
    TLP_LEVEL_NAMES,
    TLP_RED,
    TRUST_FILE_NAME,
    TrustBook,
    TrustEntry,
    TrustError,
    TrustReload,
    TrustStore,
    effective_level,
    level_from_name,
    level_name,
    parse_peer_id,
)
from threatmesh.identity.vouches import (
    VOUCHES_FILE_NAME,
    OwnStatements,
    OwnVouches,
    RevocationStatement,
    VouchBook,
    VouchBookSnapshot,
    VouchError,
    VouchFileError,
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
