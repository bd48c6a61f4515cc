"""The vouches and revocations this node issued, kept in ``<home>/vouches.json``.

Owns that file and ``OwnVouches``, which signs this node's statements and says which to
(re-)announce. The statements, the bytes they are signed over and how peers verify them live in
``vouches``. DESIGN.md, "Trust and sensitivity".

Rules:
- One statement per subject: a new vouch replaces the earlier vouch and any revocation, and is
  issued after that revocation so receivers take it; a revocation replaces the vouch, and is
  issued even when no vouch is on file (the file may have been lost).
- The file outlives the process so the node re-announces its statements after a restart.
  Vouches are announced until they expire; revocations for ``MAX_VOUCH_LIFETIME_MS``, while
  a vouch they revoke may still be live somewhere or be replayed. Expired statements are
  dropped at each write.
- The node and the CLI both edit the file: an edit re-reads it under an advisory lock
  (``vouches.json.lock``) before changing it, and replaces it atomically (mode 0600), so
  neither loses the other's statements (``private_files``).
- A statement read from the file is checked as peers would check it (but for the time) and
  must carry this node's signature, and a file made by another identity is refused whole:
  a hand-edited or damaged file must never be announced.
- Bounded: 4 MiB, 1,000 vouches and 1,000 revocations; one more is refused, not evicted.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from threatmesh.identity.keys import Identity
from threatmesh.identity.levels import TLP_GREEN, level_from_name, level_name
from threatmesh.identity.private_files import edit_lock, read_bounded_file, write_json_atomically
from threatmesh.identity.vouches import (
    MAX_SIGNATURE_BYTES,
    RevocationStatement,
    VouchError,
    VouchStatement,
    check_vouch_content,
    revocation_matters,
    revocation_signing_bytes,
    sign_revocation,
    sign_vouch,
    vouch_signing_bytes,
)

VOUCHES_FILE_NAME = "vouches.json"
VOUCHES_FILE_VERSION = 1

DEFAULT_VOUCH_LIFETIME_MS = 7 * 24 * 3600 * 1000
MAX_OWN_STATEMENTS = 1_000
MAX_VOUCHES_FILE_BYTES = 4 * 1024 * 1024


class VouchFileError(Exception):
    """The vouches file is unreadable, corrupt or full; the message names the file."""


class OwnStatements(NamedTuple):
    """What to (re-)announce now: live vouches, and revocations of vouches that may still
    be live somewhere (or replayed). A tuple: ``vouches, revocations = own.active(now_ms)``."""

    vouches: tuple[VouchStatement, ...]
    revocations: tuple[RevocationStatement, ...]


class OwnVouches:
    """The vouches and revocations this node issued, in ``<home>/vouches.json``, so that it
    re-announces them after a restart.

    The file (mode 0600, replaced atomically; signatures in base64)::

        {"version": 1, "voucher": "16Uiu2...",
         "vouches": [{"subject": "...", "level": "green", "issued_ms": 1767225600000,
                      "expires_ms": 1767830400000, "signature": "MEUCIQ..."}],
         "revocations": [{"subject": "...", "issued_ms": 1767312000000,
                          "signature": "MEQCIF..."}]}

    ``vouch`` and ``revoke`` re-read the file under a lock before changing it, so two
    processes (the node, the CLI) never lose each other's statements; call ``load`` to see
    another process's changes. Expired statements are dropped at each write.
    """

    def __init__(self, path: Path, identity: Identity) -> None:
        self.path = path
        self.identity = identity
        self._voucher: str = identity.peer_id.to_base58()
        self._vouches: dict[str, VouchStatement] = {}
        self._revocations: dict[str, RevocationStatement] = {}

    def load(self) -> None:
        """Read the file (missing: nothing issued yet); VouchFileError if it is corrupt or
        signed by another identity."""
        read = read_bounded_file(
            self.path, what="vouches file", max_bytes=MAX_VOUCHES_FILE_BYTES, error=VouchFileError
        )
        if read is None:
            self._vouches, self._revocations = {}, {}
            return
        self._vouches, self._revocations = self._parse(read[0])

    def vouch(
        self,
        subject: str,
        level: int = TLP_GREEN,
        *,
        now_ms: int,
        lifetime_ms: int = DEFAULT_VOUCH_LIFETIME_MS,
    ) -> VouchStatement:
        """Sign and keep a vouch for ``subject``, replacing an earlier one and any revocation
        (the new vouch is issued after it, so receivers take it). VouchError for a vouch
        peers would refuse, VouchFileError for a file problem."""
        with edit_lock(self.path, what="vouches file", error=VouchFileError):
            self.load()
            revoked = self._revocations.get(subject)
            issued_ms = now_ms
            if revoked is not None:  # a vouch at or before the revocation would be refused
                issued_ms = max(now_ms, revoked.issued_ms + 1)
            vouch = sign_vouch(self.identity, subject, level, issued_ms, issued_ms + lifetime_ms)
            self._check_room(self._vouches, subject, "vouches")
            self._revocations.pop(subject, None)
            self._vouches[subject] = vouch
            self._save(now_ms)
        return vouch

    def revoke(self, subject: str, *, now_ms: int) -> RevocationStatement:
        """Sign and keep a revocation of our vouches for ``subject``; issued even when no
        vouch is on file (the file may have been lost).

        It is announced for ``MAX_VOUCH_LIFETIME_MS``, not just until the expiry of the vouch
        on file: an earlier vouch it replaced may live longer, and anyone can replay our old
        signed messages once GossipSub's seen-cache forgot them.
        """
        with edit_lock(self.path, what="vouches file", error=VouchFileError):
            self.load()
            vouch = self._vouches.get(subject)
            issued_ms = now_ms if vouch is None else max(now_ms, vouch.issued_ms)
            revocation = sign_revocation(self.identity, subject, issued_ms)
            self._check_room(self._revocations, subject, "revocations")
            self._vouches.pop(subject, None)
            self._revocations[subject] = revocation
            self._save(now_ms)
        return revocation

    def active(self, now_ms: int) -> OwnStatements:
        """The statements to announce now, ordered by subject."""
        return OwnStatements(
            vouches=tuple(
                vouch for _, vouch in sorted(self._vouches.items()) if vouch.expires_ms > now_ms
            ),
            revocations=tuple(
                revocation
                for _, revocation in sorted(self._revocations.items())
                if revocation_matters(revocation, now_ms)
            ),
        )

    def _check_room(self, held: Mapping[str, object], subject: str, kind: str) -> None:
        """VouchFileError if ``subject`` would be a new entry in ``held``, which is full;
        replacing a subject's statement needs no room."""
        if subject not in held and len(held) >= MAX_OWN_STATEMENTS:
            raise VouchFileError(
                f"{self.path}: already {len(held)} {kind}, at most {MAX_OWN_STATEMENTS}"
            )

    def _save(self, now_ms: int) -> None:
        live = self.active(now_ms)
        self._vouches = {vouch.subject: vouch for vouch in live.vouches}
        self._revocations = {revocation.subject: revocation for revocation in live.revocations}
        document: dict[str, Any] = {
            "version": VOUCHES_FILE_VERSION,
            "voucher": self._voucher,
            "vouches": [
                {
                    "subject": vouch.subject,
                    "level": level_name(vouch.level),
                    "issued_ms": vouch.issued_ms,
                    "expires_ms": vouch.expires_ms,
                    "signature": base64.b64encode(vouch.signature).decode("ascii"),
                }
                for vouch in live.vouches
            ],
            "revocations": [
                {
                    "subject": revocation.subject,
                    "issued_ms": revocation.issued_ms,
                    "signature": base64.b64encode(revocation.signature).decode("ascii"),
                }
                for revocation in live.revocations
            ],
        }
        write_json_atomically(self.path, document, what="vouches file", error=VouchFileError)

    def _parse(
        self, data: bytes
    ) -> tuple[dict[str, VouchStatement], dict[str, RevocationStatement]]:
        source = str(self.path)
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise VouchFileError(f"{source}: not valid JSON ({error})") from None
        if not isinstance(document, dict) or set(document) != _OWN_FILE_KEYS:
            raise VouchFileError(
                f"{source}: expected an object with {', '.join(sorted(_OWN_FILE_KEYS))}"
            )
        if document["version"] != VOUCHES_FILE_VERSION:
            raise VouchFileError(f"{source}: 'version' must be {VOUCHES_FILE_VERSION}")
        if document["voucher"] != self._voucher:
            raise VouchFileError(
                f"{source}: the vouches were signed by {document['voucher']!r}, not by this "
                f"node ({self._voucher}); move the file away to start afresh"
            )
        raw_vouches, raw_revocations = document["vouches"], document["revocations"]
        if not isinstance(raw_vouches, list) or not isinstance(raw_revocations, list):
            raise VouchFileError(f"{source}: 'vouches' and 'revocations' must be lists")
        if max(len(raw_vouches), len(raw_revocations)) > MAX_OWN_STATEMENTS:
            raise VouchFileError(f"{source}: more than {MAX_OWN_STATEMENTS} statements")
        vouches: dict[str, VouchStatement] = {}
        for index, raw in enumerate(raw_vouches, start=1):
            vouch = self._vouch_from_json(raw, f"{source}: vouch {index}")
            vouches[vouch.subject] = vouch
        revocations: dict[str, RevocationStatement] = {}
        for index, raw in enumerate(raw_revocations, start=1):
            revocation = self._revocation_from_json(raw, f"{source}: revocation {index}")
            revocations[revocation.subject] = revocation
        return vouches, revocations

    # A statement in the file is checked as peers would check it (but for the time) and must
    # carry this node's signature: a hand-edited or damaged file must not be announced.

    def _vouch_from_json(self, raw: object, where: str) -> VouchStatement:
        fields = _fields(raw, _OWN_VOUCH_KEYS, where)
        try:
            vouch = VouchStatement(
                self._voucher,
                fields["subject"],
                level_from_name(fields["level"]),
                fields["issued_ms"],
                fields["expires_ms"],
                _signature(fields["signature"], where),
            )
            data = vouch_signing_bytes(
                vouch.voucher, vouch.subject, vouch.level, vouch.issued_ms, vouch.expires_ms
            )
            check_vouch_content(
                vouch.voucher, vouch.subject, vouch.level, vouch.issued_ms, vouch.expires_ms
            )
        except (ValueError, VouchError) as error:
            raise VouchFileError(f"{where}: {error}") from None
        self._check_own_signature(data, vouch.signature, where)
        return vouch

    def _revocation_from_json(self, raw: object, where: str) -> RevocationStatement:
        fields = _fields(raw, _OWN_REVOCATION_KEYS, where)
        try:
            revocation = RevocationStatement(
                self._voucher,
                fields["subject"],
                fields["issued_ms"],
                _signature(fields["signature"], where),
            )
            data = revocation_signing_bytes(
                revocation.voucher, revocation.subject, revocation.issued_ms
            )
        except VouchError as error:
            raise VouchFileError(f"{where}: {error}") from None
        self._check_own_signature(data, revocation.signature, where)
        return revocation

    def _check_own_signature(self, data: bytes, signature: bytes, where: str) -> None:
        if not self.identity.key_pair.public_key.verify(data, signature):
            raise VouchFileError(f"{where}: the signature is not this node's")


_OWN_FILE_KEYS = frozenset({"version", "voucher", "vouches", "revocations"})
_OWN_VOUCH_KEYS = frozenset({"subject", "level", "issued_ms", "expires_ms", "signature"})
_OWN_REVOCATION_KEYS = frozenset({"subject", "issued_ms", "signature"})


def _fields(raw: object, names: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) != names:
        raise VouchFileError(f"{where}: expected an object with {', '.join(sorted(names))}")
    return raw


def _signature(raw: object, where: str) -> bytes:
    if not isinstance(raw, str):
        raise VouchFileError(f"{where}: signature must be base64 text")
    try:
        signature = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise VouchFileError(f"{where}: signature is not base64") from None
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise VouchFileError(f"{where}: signature is too long")
    return signature
