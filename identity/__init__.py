"""Who this node is: its key pair, its peer ID and the key file.

Later issues add the trust store and vouches here. This package imports nothing of ours.
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

__all__ = [
    "KEY_FILE_NAME",
    "Identity",
    "IdentityError",
    "KeyType",
    "generate_identity",
    "load_key_file",
    "load_or_create",
    "write_key_file",
]
