"""Files in the node's home that only its owner may read: secrets, and the JSON state files.

Owns how they are read and written; what is in them belongs to their modules (``keys``,
``trust``, ``own_vouches``, and outside this package the swarm key and the API token).

Rules:
- Secret files (the node key, the swarm key, the API token), as ssh does for its keys: one is
  created with mode 0600 and O_EXCL, so it never exists with wider rights and is never
  overwritten, and its data is fsynced; reading one refuses a file that group or others can
  read or write, anything that is not a regular file, and anything larger than its bound.
- State files (``trust.json``, ``vouches.json``), which the node and the CLI both edit: reading
  one refuses anything that is not a regular file or is larger than its bound, and returns a
  stamp with the bytes so a poller notices the next change with one stat. Writing replaces it
  atomically: a temporary file (mode 0600) in the same directory, fsynced, then
  ``os.replace`` and a best-effort fsync of the directory, so a reader sees the old file or
  the new one, never half of one. An edit holds an advisory lock on ``<file>.lock`` so that
  of two concurrent editors neither loses the other's change. A state file holds no secret,
  so a hand-made one with wider rights is still read.
- Every failure is one line that names the file (and, for a secret, what to do); the caller
  chooses the exception type and the words, so each package keeps its own errors.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ErrorType = Callable[[str], Exception]

# Secret files -------------------------------------------------------------------------------


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
        _write_synced(fd, data)
    except OSError as failure:
        path.unlink(missing_ok=True)
        raise error(f"{path}: cannot write the {what}: {failure.strerror}") from None


# State files --------------------------------------------------------------------------------

# What identifies one version of a file: (device, inode, size, mtime in ns). A rewrite through
# os.replace makes a new inode; an edit in place changes the mtime (and usually the size).
# Two writes of the same size within the file system's timestamp granularity (a few ms) under
# a reused inode would look alike: editors and ``threatmesh trust`` are not that fast.
FileStamp = tuple[int, int, int, int]
MISSING_FILE_STAMP: FileStamp = (-1, -1, -1, -1)


def read_bounded_file(
    path: Path, *, what: str, max_bytes: int, error: ErrorType
) -> tuple[bytes, FileStamp] | None:
    """The bytes of the regular file at ``path`` and its stamp; None when it does not exist.

    Anything that is not a regular file, larger than ``max_bytes`` or unreadable is
    ``error(message)``, naming the file. The stamp comes from the open file, so it describes
    exactly the bytes returned.
    """
    try:
        info = path.stat()  # before opening: opening a FIFO would block
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: the {what} is not a regular file")
        with path.open("rb") as opened:
            info = os.fstat(opened.fileno())
            if info.st_size > max_bytes:
                raise error(
                    f"{path}: {info.st_size} bytes is too large for the {what} "
                    f"(at most {max_bytes})"
                )
            data = opened.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as failure:
        raise error(f"{path}: cannot read the {what}: {failure.strerror}") from None
    if len(data) > max_bytes:
        raise error(f"{path}: too large for the {what} (at most {max_bytes} bytes)")
    return data, _stamp_of(info)


def file_stamp(path: Path) -> FileStamp:
    """The stamp of ``path`` now (``MISSING_FILE_STAMP`` when absent or unreadable)."""
    try:
        return _stamp_of(path.stat())
    except OSError:
        return MISSING_FILE_STAMP


def _stamp_of(info: os.stat_result) -> FileStamp:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def write_json_atomically(path: Path, document: object, *, what: str, error: ErrorType) -> None:
    """Replace ``path`` with ``document`` as JSON: a temporary file (mode 0600) in the same
    directory, fsynced, then ``os.replace``; a reader sees the old file or the new one."""
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as failure:
        raise error(f"{path}: cannot write the {what}: {failure.strerror}") from None
    try:
        _write_synced(fd, data)
        os.replace(temporary, path)
    except OSError as failure:
        Path(temporary).unlink(missing_ok=True)
        raise error(f"{path}: cannot write the {what}: {failure.strerror}") from None
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; best effort (some file systems refuse a directory fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def edit_lock(path: Path, *, what: str, error: ErrorType) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (created 0600) while editing."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as failure:
        raise error(f"{lock_path}: cannot lock the {what}: {failure.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_synced(fd: int, data: bytes) -> None:
    """Write ``data`` to the new file ``fd``, flush it to the disk and close it."""
    with os.fdopen(fd, "wb") as written:
        written.write(data)
        written.flush()
        os.fsync(written.fileno())
