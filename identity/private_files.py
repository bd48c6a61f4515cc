"""Files that hold secrets: the node key, the swarm key, the API token.

Rules (as ssh does for its keys): a secret file is created with mode 0600 and O_EXCL, so it
never exists with wider rights and is never overwritten; reading one refuses a file that group
or others can read or write, anything that is not a regular file, and anything larger than
its bound, each with one line that names the file and what to do. The caller chooses the
exception type and the words, so each package keeps its own errors.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

ErrorType = Callable[[str], Exception]


def read_private_file(
    path: Path, *, what: str, secret: str, max_bytes: int, missing: str, error: ErrorType
) -> bytes:
    """The bytes of the secret file at ``path``, or ``error(message)`` raised.

    ``what`` names the file ("swarm key file"), ``secret`` what it holds ("swarm key"),
    ``missing`` the message for a file that does not exist.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except OSError as failure:
        raise error(f"{path}: cannot read the {what}: {failure.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: the {what} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise error(
            f"{path}: permissions {mode:04o} are too open; the {secret} must be readable by "
            f"its owner only (run: chmod 600 {path})"
        )
    if info.st_size > max_bytes:
        raise error(
            f"{path}: {info.st_size} bytes is too large for a {what} (at most {max_bytes}); "
            "it is corrupt or not a key"
        )
    try:
        with path.open("rb") as private_file:
            return private_file.read(max_bytes + 1)
    except OSError as failure:
        raise error(f"{path}: cannot read the {what}: {failure.strerror}") from None


def create_private_file(
    path: Path, data: bytes, *, what: str, exists: str, error: ErrorType
) -> None:
    """Create ``path`` holding ``data``, mode 0600 from the start; never overwrite.

    ``exists`` is the message for a file already there. The data is fsynced: a secret that
    is lost at a crash changes the node's identity or locks it out of its swarm.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise error(f"{path}: {exists}; refusing to overwrite it") from None
    except OSError as failure:
        raise error(f"{path}: cannot create the {what}: {failure.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as private_file:
            private_file.write(data)
            private_file.flush()
            os.fsync(private_file.fileno())
    except OSError as failure:
        path.unlink(missing_ok=True)
        raise error(f"{path}: cannot write the {what}: {failure.strerror}") from None
