"""The wire schema: committed bindings match the .proto, and field numbers never move.

Staleness: ``scripts/gen-proto <tmpdir>`` regenerates the bindings with the pinned
grpcio-tools (protoc) and mypy-protobuf, and both files must equal the committed ones byte for
byte. The comparison is sound because the generator's output depends only on the .proto and
the pinned tool versions: protoc is given ``--proto_path`` and names the file relative to it
(``source: threatmesh.proto``), so neither the output directory nor the working directory
appears in the output (the test runs from a different directory to keep it that way), and
nothing is timestamped. The plugin is taken from this interpreter's environment, not from
whatever ``protoc-gen-mypy`` comes first on PATH, which could be another version.

Field numbers: the table below is the record of every (message, field, number, type) and
(enum, value, number) of version 1. A renumbered, retyped or renamed field fails; a removed
one must be ``reserved`` (number and name); a new one must be added to the table, and may
not take a number the table already gave to another field.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from threatmesh.pubsub.proto import threatmesh_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "pubsub" / "proto"
GENERATED = ("threatmesh_pb2.py", "threatmesh_pb2.pyi")

FIELD_NUMBERS: tuple[tuple[str, str, int, str], ...] = (
    ("Indicator", "value", 1, "string"),
    ("Indicator", "itype", 2, "IndicatorType"),
    ("Indicator", "tlp", 3, "Tlp"),
    ("Indicator", "confidence", 4, "uint32"),
    ("Indicator", "tags", 5, "repeated string"),
    ("Indicator", "provider", 6, "string"),
    ("Indicator", "first_seen_ms", 7, "int64"),
    ("Indicator", "last_seen_ms", 8, "int64"),
    ("Indicator", "expires_ms", 9, "int64"),
    ("Indicator", "description", 10, "string"),
    ("Indicator", "references", 11, "repeated string"),
    ("Batch", "seq", 1, "uint64"),
    ("Batch", "sent_ms", 2, "int64"),
    ("Batch", "tlp", 3, "Tlp"),
    ("Batch", "indicators", 4, "repeated Indicator"),
    ("Sighting", "itype", 1, "IndicatorType"),
    ("Sighting", "value", 2, "string"),
    ("Sighting", "seen_ms", 3, "int64"),
    ("Sighting", "count", 4, "uint32"),
    ("Sighting", "false_positive", 5, "bool"),
    ("Sighting", "note", 6, "string"),
    ("Vouch", "voucher", 1, "bytes"),
    ("Vouch", "subject", 2, "bytes"),
    ("Vouch", "level", 3, "Tlp"),
    ("Vouch", "issued_ms", 4, "int64"),
    ("Vouch", "expires_ms", 5, "int64"),
    ("Vouch", "signature", 6, "bytes"),
    ("Revocation", "voucher", 1, "bytes"),
    ("Revocation", "subject", 2, "bytes"),
    ("Revocation", "issued_ms", 3, "int64"),
    ("Revocation", "signature", 4, "bytes"),
    ("Status", "uptime_s", 1, "int64"),
    ("Status", "addrs", 2, "repeated string"),
    ("Status", "degree", 3, "uint32"),
    ("Status", "roles", 4, "repeated string"),
    ("Status", "version", 5, "string"),
    ("Status", "started_ms", 6, "int64"),
    ("Status", "seq", 7, "uint64"),
    ("Status", "views", 8, "repeated PeerView"),
    ("Status", "reachable_verified", 9, "repeated bytes"),
    ("Status", "supernodes", 10, "repeated bytes"),
    ("PeerView", "peer_id", 1, "bytes"),
    ("PeerView", "reputation_permille", 2, "uint32"),
    ("PeerView", "heard_for_s", 3, "uint32"),
    ("PeerView", "heard_ago_ms", 4, "uint32"),
    ("Control", "sent_ms", 1, "int64"),
    ("Control", "status", 10, "Status"),
    ("Control", "vouch", 11, "Vouch"),
    ("Control", "revocation", 12, "Revocation"),
    ("Control", "sighting", 13, "Sighting"),
    ("SealedBatch", "tlp", 1, "Tlp"),
    ("SealedBatch", "nonce", 2, "bytes"),
    ("SealedBatch", "ciphertext", 3, "bytes"),
    ("SealedBatch", "ephemeral_secp256k1", 4, "bytes"),
    ("SealedBatch", "ephemeral_x25519", 5, "bytes"),
    ("SealedBatch", "keys", 6, "repeated WrappedKey"),
    ("WrappedKey", "key_id", 1, "bytes"),
    ("WrappedKey", "wrapped", 2, "bytes"),
    ("SyncRequest", "request_id", 1, "uint64"),
    ("SyncRequest", "heads", 10, "SyncHeads"),
    ("SyncRequest", "range", 11, "SyncRange"),
    ("SyncRange", "origin", 1, "bytes"),
    ("SyncRange", "from_seq", 2, "uint64"),
    ("SyncRange", "to_seq", 3, "uint64"),
    ("OriginHead", "origin", 1, "bytes"),
    ("OriginHead", "highest_seq", 2, "uint64"),
    ("SyncResponse", "request_id", 1, "uint64"),
    ("SyncResponse", "heads", 2, "repeated OriginHead"),
    ("SyncResponse", "messages", 3, "repeated bytes"),
    ("SyncResponse", "withheld", 4, "repeated uint64"),
    ("SyncResponse", "next_seq", 5, "uint64"),
    ("SyncResponse", "error", 6, "string"),
)

ENUM_NUMBERS: tuple[tuple[str, str, int], ...] = (
    ("Tlp", "TLP_UNSPECIFIED", 0),
    ("Tlp", "TLP_CLEAR", 1),
    ("Tlp", "TLP_GREEN", 2),
    ("Tlp", "TLP_AMBER", 3),
    ("Tlp", "TLP_AMBER_STRICT", 4),
    ("Tlp", "TLP_RED", 5),
    ("IndicatorType", "ITYPE_UNSPECIFIED", 0),
    ("IndicatorType", "ITYPE_IPV4", 1),
    ("IndicatorType", "ITYPE_IPV6", 2),
    ("IndicatorType", "ITYPE_CIDR", 3),
    ("IndicatorType", "ITYPE_FQDN", 4),
    ("IndicatorType", "ITYPE_URL", 5),
    ("IndicatorType", "ITYPE_EMAIL", 6),
    ("IndicatorType", "ITYPE_MD5", 7),
    ("IndicatorType", "ITYPE_SHA1", 8),
    ("IndicatorType", "ITYPE_SHA256", 9),
    ("IndicatorType", "ITYPE_SHA512", 10),
    ("IndicatorType", "ITYPE_ASN", 11),
)

ONEOF_MEMBERS = {
    ("Control", "body"): {"status", "vouch", "revocation", "sighting"},
    ("SyncRequest", "query"): {"heads", "range"},
}


# Staleness ----------------------------------------------------------------------------------


def _generate(out_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto"), str(out_dir)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("gen-proto-out")
    elsewhere = tmp_path_factory.mktemp("gen-proto-cwd")
    result = _generate(out_dir, cwd=elsewhere)
    assert result.returncode == 0, (
        "scripts/gen-proto failed (are the test extras installed: grpcio-tools, "
        f"mypy-protobuf?)\n{result.stdout}{result.stderr}"
    )
    return out_dir


@pytest.mark.parametrize("name", GENERATED)
def test_committed_bindings_are_what_gen_proto_writes(regenerated: Path, name: str) -> None:
    fresh = (regenerated / name).read_bytes()
    committed = (PROTO_DIR / name).read_bytes()
    if fresh != committed:
        diff = difflib.unified_diff(
            committed.decode(errors="replace").splitlines(),
            fresh.decode(errors="replace").splitlines(),
            f"committed/{name}",
            f"regenerated/{name}",
            lineterm="",
        )
        shown = "\n".join(list(diff)[:40])
        pytest.fail(
            f"pubsub/proto/{name} is stale: run `PYTHON={sys.executable} scripts/gen-proto` "
            f"and commit the result\n{shown}"
        )


def test_gen_proto_writes_only_the_two_bindings(regenerated: Path) -> None:
    assert sorted(path.name for path in regenerated.iterdir()) == sorted(GENERATED)


def test_generated_code_names_no_local_path(regenerated: Path) -> None:
    # What makes the byte comparison sound on any checkout: no directory of this machine.
    for name in GENERATED:
        text = (regenerated / name).read_text()
        assert str(ROOT) not in text
        assert str(regenerated) not in text
        assert "home/" not in text


# Field numbers ------------------------------------------------------------------------------


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    return proto


def _type_text(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type_name:
        kind = field.type_name.rpartition(".")[2]
    else:
        kind = descriptor_pb2.FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_")
        kind = kind.lower()
    repeated = field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    return f"repeated {kind}" if repeated else kind


def _is_reserved(message: descriptor_pb2.DescriptorProto, number: int, name: str) -> bool:
    in_range = any(span.start <= number < span.end for span in message.reserved_range)
    return in_range and name in message.reserved_name


def test_package_is_version_one() -> None:
    assert _file_proto().package == "threatmesh.v1"


def field_number_problems(file_proto: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """What in ``file_proto`` breaks the frozen table; empty when nothing does."""
    problems: list[str] = []
    messages = {message.name: message for message in file_proto.message_type}
    current = {
        (message.name, field.name): (field.number, _type_text(field))
        for message in messages.values()
        for field in message.field
    }
    frozen = {(message, name): (number, kind) for message, name, number, kind in FIELD_NUMBERS}
    for (message, name), (number, kind) in frozen.items():
        if (message, name) in current:
            if current[message, name] != (number, kind):
                now_number, now_kind = current[message, name]
                problems.append(
                    f"{message}.{name} was field {number} ({kind}), is {now_number} ({now_kind})"
                )
        elif message not in messages:
            problems.append(f"message {message} was removed")
        elif not _is_reserved(messages[message], number, name):
            problems.append(
                f"{message}.{name} (field {number}) was removed without "
                f'`reserved {number}; reserved "{name}";`'
            )
    taken = {(message, number) for message, _, number, _ in FIELD_NUMBERS}
    for (message, name), (number, _) in current.items():
        if (message, name) in frozen:
            continue
        if (message, number) in taken:
            problems.append(f"{message}.{name} reuses field number {number}")
        else:
            problems.append(f"new field {message}.{name} = {number}: add it to FIELD_NUMBERS")
    return problems


def test_field_numbers_are_the_frozen_ones() -> None:
    assert field_number_problems(_file_proto()) == [], (
        "field numbers and types are never changed (DESIGN.md, Wire protocol)"
    )


def _field(proto: descriptor_pb2.FileDescriptorProto, message: str, name: str) -> Any:
    found = next(item for item in proto.message_type if item.name == message)
    return found, next(field for field in found.field if field.name == name)


def test_the_check_catches_a_renumbered_field() -> None:
    proto = _file_proto()
    _, field = _field(proto, "Indicator", "tlp")
    field.number = 30
    assert field_number_problems(proto) == ["Indicator.tlp was field 3 (Tlp), is 30 (Tlp)"]


def test_the_check_catches_a_retyped_field() -> None:
    proto = _file_proto()
    _, field = _field(proto, "Batch", "seq")
    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
    assert field_number_problems(proto) == ["Batch.seq was field 1 (uint64), is 1 (int32)"]


def test_the_check_wants_a_removed_field_reserved() -> None:
    proto = _file_proto()
    message, field = _field(proto, "Sighting", "note")
    message.field.remove(field)
    assert field_number_problems(proto) == [
        'Sighting.note (field 6) was removed without `reserved 6; reserved "note";`'
    ]
    message.reserved_range.add(start=6, end=7)
    message.reserved_name.append("note")
    assert field_number_problems(proto) == []


def test_the_check_catches_a_reused_number_and_a_new_field() -> None:
    proto = _file_proto()
    message, field = _field(proto, "Status", "version")
    field.name = "software"
    message.field.add(name="region", number=99, type=field.type, label=field.label)
    assert field_number_problems(proto) == [
        'Status.version (field 5) was removed without `reserved 5; reserved "version";`',
        "Status.software reuses field number 5",
        "new field Status.region = 99: add it to FIELD_NUMBERS",
    ]


def test_enum_numbers_are_the_frozen_ones() -> None:
    current = {
        (enum.name, value.name): value.number
        for enum in _file_proto().enum_type
        for value in enum.value
    }
    assert current == {(enum, name): number for enum, name, number in ENUM_NUMBERS}


def test_oneof_members_are_unchanged() -> None:
    for message in _file_proto().message_type:
        for index, oneof in enumerate(message.oneof_decl):
            members = {
                field.name
                for field in message.field
                if field.HasField("oneof_index") and field.oneof_index == index
            }
            assert ONEOF_MEMBERS.get((message.name, oneof.name)) == members


def test_the_table_is_what_the_generated_module_uses() -> None:
    # The live classes agree with the serialized descriptor the test reads.
    for message, name, number, _ in FIELD_NUMBERS:
        assert getattr(pb, message).DESCRIPTOR.fields_by_name[name].number == number
    for enum, name, number in ENUM_NUMBERS:
        assert getattr(pb, enum).Value(name) == number
