"""The store's merge rules, pure: what one batch says about an indicator, and how two such
reports of the same (itype, value) combine. No I/O.

Each indicator of a batch is a *report*; its level is the stricter of its own ``tlp`` and the
batch's (an unset indicator level takes the batch's). Every rule is commutative, associative
and idempotent, so nodes that receive the same batches in any order (live, or replayed during
catch-up) hold the same view:

- ``tlp``: the least restrictive level seen (the widest audience it is known to have);
  ``max_tlp``: the most restrictive (so it is never re-published below an AMBER/RED sighting);
- ``first_seen_ms``: the earliest known (0, unknown, never wins); ``last_seen_ms``: the latest;
- ``confidence``: the highest any reporter gave (each report is a reporter's belief; the
  strongest is what an analyst triages by, and "latest" would depend on arrival order);
- ``expires_ms``: the latest, and 0 (never expires) beats any time;
- ``description``: the non-empty one of the report with the latest ``last_seen_ms`` (ties: the
  greater text), rather than the last to arrive: a replayed old batch does not overwrite a
  newer text;
- ``tags``, ``references``, ``providers`` and (in the store) origin peer IDs: unions, each
  bounded to its smallest ``MAX_*`` members in text order. Keeping the smallest keeps the merge
  order-independent; "first come" would not;
- ``sightings`` (in the store): the number of distinct (origin, seq) batches that carried it;
  a batch naming it twice counts once.

The rules are written twice, on purpose. ``Report`` and ``merge_reports`` state them plainly,
with sets as frozensets. The store applies them to the form it keeps a report in, a
``ReportRow`` (each set as one text, ``encode_members``): ``report_rows`` builds those
directly, as the store does so for every indicator it receives and building frozensets first
and converting them costs 1.8 times as much (measured in instructions); across batches its
SQL merges the scalars (``store._MERGE``) and ``union_members`` the sets. Tests check both
against ``merge_reports`` (``tests/test_store_rows.py``, ``tests/test_store.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b
from operator import attrgetter
from typing import NamedTuple

from threatmesh.pubsub.proto import threatmesh_pb2 as pb

# Bounds on the sets kept per indicator (the smallest members in text order are kept).
MAX_TAGS = 64
MAX_REFERENCES = 64
MAX_PROVIDERS = 64
MAX_ORIGINS = 256
# One batch is one transaction; the batcher closes batches at 2,000 indicators by default.
MAX_BATCH_INDICATORS = 50_000
# A libp2p peer ID in base58 is ~46-53 characters.
MAX_ORIGIN_CHARS = 128
# SQLite stores signed 64-bit integers; a uint64 seq above this cannot be stored.
MAX_SEQ = 2**63 - 1

TLP_CLEAR = 1
TLP_RED = 5

_NOTHING: frozenset[str] = frozenset()


class Report(NamedTuple):
    """What one batch says about one (itype, value), its sets as frozensets: the rules stated
    plainly (``merge_reports``). The store keeps the same fields as a ``ReportRow``."""

    itype: int
    value: str
    tlp: int
    max_tlp: int
    confidence: int
    first_seen_ms: int
    last_seen_ms: int
    expires_ms: int
    description: str
    description_seen_ms: int
    tags: frozenset[str]
    references: frozenset[str]
    providers: frozenset[str]

    @classmethod
    def of(cls, indicator: pb.Indicator, batch_tlp: int) -> Report:
        """What a batch at ``batch_tlp`` says about ``indicator`` (see ``merge_batch``)."""
        (report,) = merge_batch((indicator,), batch_tlp).values()
        return report


def merge_reports(a: Report, b: Report) -> Report:
    """The merge of two reports of the same (itype, value); see the module docstring."""
    description, description_seen_ms = a.description, a.description_seen_ms
    if b.description and (b.description_seen_ms, b.description) > (
        description_seen_ms,
        description,
    ):
        description, description_seen_ms = b.description, b.description_seen_ms
    return Report(
        itype=a.itype,
        value=a.value,
        tlp=min(a.tlp, b.tlp),
        max_tlp=max(a.max_tlp, b.max_tlp),
        confidence=max(a.confidence, b.confidence),
        first_seen_ms=_earliest_known(a.first_seen_ms, b.first_seen_ms),
        last_seen_ms=max(a.last_seen_ms, b.last_seen_ms),
        expires_ms=0 if 0 in (a.expires_ms, b.expires_ms) else max(a.expires_ms, b.expires_ms),
        description=description,
        description_seen_ms=description_seen_ms,
        tags=_smallest(a.tags | b.tags, MAX_TAGS),
        references=_smallest(a.references | b.references, MAX_REFERENCES),
        providers=_smallest(a.providers | b.providers, MAX_PROVIDERS),
    )


def merge_batch(
    indicators: Iterable[pb.Indicator], batch_tlp: int
) -> dict[tuple[int, str], Report]:
    """The reports of one batch, one per (itype, value).

    A report's level is the stricter of the indicator's and the batch's (unset: the batch's);
    ``ValueError`` for an indicator level that is not one. The store builds the same reports
    in their stored form, ``report_rows``.
    """
    reports: dict[tuple[int, str], Report] = {}
    build = Report._make
    for indicator in indicators:
        level: int = indicator.tlp
        if level == 0:
            level = batch_tlp
        elif not TLP_CLEAR <= level <= TLP_RED:
            raise ValueError(f"indicator {indicator.value!r}: unknown tlp {level}")
        elif level < batch_tlp:
            level = batch_tlp
        key = (indicator.itype, indicator.value)
        description = indicator.description
        last_seen_ms = indicator.last_seen_ms
        tags = frozenset(indicator.tags[:])
        references = indicator.references
        provider = indicator.provider
        report = build(
            (
                *key,
                level,
                level,
                indicator.confidence,
                indicator.first_seen_ms,
                last_seen_ms,
                indicator.expires_ms,
                description,
                last_seen_ms if description else 0,
                tags if len(tags) <= MAX_TAGS else _smallest(tags, MAX_TAGS),
                _smallest(references[:], MAX_REFERENCES) if references else _NOTHING,
                frozenset((provider,)) if provider else _NOTHING,
            )
        )
        earlier = reports.get(key)
        reports[key] = report if earlier is None else merge_reports(earlier, report)
    return reports


def _earliest_known(a_ms: int, b_ms: int) -> int:
    if a_ms == 0 or b_ms == 0:
        return a_ms or b_ms
    return min(a_ms, b_ms)


def _smallest(items: Iterable[str], bound: int) -> frozenset[str]:
    """The ``bound`` smallest of ``items`` in text order (all of them, usually)."""
    members = frozenset(items)
    return members if len(members) <= bound else frozenset(sorted(members)[:bound])


# The stored form --------------------------------------------------------------------------------

# Between the members of a set kept as one text: ASCII's unit separator. Validation refuses
# empty members and control characters in tags, references and providers
# (``indicator_fields``); ``report_rows`` refuses them too, as the text could not keep them (a
# member holding the separator would come back split, an empty one lost).
MEMBER_SEPARATOR = "\x1f"

# A report as the store keeps it: ``Report``'s fields in order, each set as one text of its
# members in text order joined by MEMBER_SEPARATOR ("" for none), then ``value_hash(value)``.
# A member may appear twice in a text only when an unvalidated caller named it twice in one
# indicator (validation refuses that, and removing repeats costs 2.5 times what sorting
# does); ``decode_members`` drops them.
ReportRow = tuple[int, str, int, int, int, int, int, int, str, int, str, str, str, int]

# The fields report_rows reads, in one C call per indicator (13% fewer instructions than
# reading each attribute in Python).
_INDICATOR_FIELDS = attrgetter(
    "tlp",
    "itype",
    "value",
    "confidence",
    "first_seen_ms",
    "last_seen_ms",
    "expires_ms",
    "description",
    "tags",
    "references",
    "provider",
)


def value_hash(value: str) -> int:
    """The key the store finds ``value`` by (``store_schema``'s ``indicators_by_value``): the
    first 8 bytes of the BLAKE2b of its UTF-8, as a signed 64-bit integer (SQLite's INTEGER).

    Part of the file format: a store's rows keep the hashes they were written with. Not a
    unique key (values of one hash are compared), but not one anybody can aim at either:
    CRC-32, first used here and a fifth of the cost, is linear, so a publisher could make any
    number of valid values share one hash, and every batch of them would read all the rows
    stored under it (quadratic). Many values of one 64-bit BLAKE2b cost ~2^57 work and more.
    Measured cost of the change (bench/store_validate.py --repeat 0): add_batch 6.9 -> 7.5 us
    per new indicator, 8.4 -> 10.5 per merged one (wider index entries).
    """
    return int.from_bytes(blake2b(value.encode(), digest_size=8).digest(), "big", signed=True)


def encode_members(members: Iterable[str]) -> str:
    """A set's stored text."""
    return MEMBER_SEPARATOR.join(sorted(members))


def decode_members(text: str) -> frozenset[str]:
    """The set a stored text holds."""
    return frozenset(text.split(MEMBER_SEPARATOR)) if text else _NOTHING


def report_row(report: Report) -> ReportRow:
    """``report`` in the stored form."""
    return (
        *report[:10],
        encode_members(report.tags),
        encode_members(report.references),
        encode_members(report.providers),
        value_hash(report.value),
    )


def row_report(row: ReportRow) -> Report:
    """The ``Report`` a stored row holds."""
    return Report(
        *row[:10], decode_members(row[10]), decode_members(row[11]), decode_members(row[12])
    )


def report_rows(
    indicators: Iterable[pb.Indicator], batch_tlp: int
) -> dict[tuple[int, str], ReportRow]:
    """``merge_batch`` in the stored form: the row of each (itype, value) of one batch.

    ``ValueError`` for an indicator level that is not one, or a set member that is empty or
    holds MEMBER_SEPARATOR. It runs for every indicator a node stores, so it is written inline: each
    protobuf field read once, a repeated field copied out with a slice (a third of what
    iterating it costs), a set within its bound sorted and joined, not made a frozenset
    (measured: 19,500 instructions per indicator, ``merge_batch`` 23,100). An (itype, value)
    named twice in the batch is merged by the plain rules (``merge_reports``): that is rare.
    """
    rows: dict[tuple[int, str], ReportRow] = {}
    separator = MEMBER_SEPARATOR
    join = separator.join
    for (
        level,
        itype,
        value,
        confidence,
        first_seen_ms,
        last_seen_ms,
        expires_ms,
        description,
        tags,
        references,
        provider,
    ) in map(_INDICATOR_FIELDS, indicators):
        if level < batch_tlp:  # unset (0) or less strict: the batch's (check_batch checked it)
            if level != 0 and level < TLP_CLEAR:
                _refuse(value, f"unknown tlp {level}")
            level = batch_tlp
        elif level > TLP_RED:
            _refuse(value, f"unknown tlp {level}")
        tags = tags[:]
        if len(tags) > 1:
            if len(tags) > MAX_TAGS:
                tags = sorted(_smallest(tags, MAX_TAGS))
            else:
                tags.sort()
        tag_text = join(tags)  # sorted, an empty member comes first
        if tags and (
            not tags[0] or (separator in tag_text and tag_text.count(separator) >= len(tags))
        ):
            _refuse(value, _UNSTORABLE_MEMBER.format(field="tags"))
        reference_text = ""
        if references:
            references = references[:]
            if len(references) > 1:
                references = sorted(_smallest(references, MAX_REFERENCES))
            reference_text = join(references)
            if not references[0] or (
                separator in reference_text and reference_text.count(separator) >= len(references)
            ):
                _refuse(value, _UNSTORABLE_MEMBER.format(field="references"))
        if separator in provider:  # "" is no provider
            _refuse(value, _UNSTORABLE_MEMBER.format(field="provider"))
        row: ReportRow = (
            itype,
            value,
            level,
            level,
            confidence,
            first_seen_ms,
            last_seen_ms,
            expires_ms,
            description,
            last_seen_ms if description else 0,
            tag_text,
            reference_text,
            provider,
            value_hash(value),
        )
        key = (itype, value)
        if key in rows:
            row = report_row(merge_reports(row_report(rows[key]), row_report(row)))
        rows[key] = row
    return rows


# See MEMBER_SEPARATOR.
_UNSTORABLE_MEMBER = "a member of {field} is empty or holds a control character (U+001F)"


def _refuse(value: str, problem: str) -> None:
    raise ValueError(f"indicator {value!r}: {problem}")


def union_members(a_text: str, b_text: str, bound: int) -> str:
    """The stored text of the union of two stored sets, cut to its ``bound`` smallest."""
    if not a_text:
        return b_text
    if not b_text:
        return a_text
    members = set(a_text.split(MEMBER_SEPARATOR))
    added = b_text.split(MEMBER_SEPARATOR)
    if members.issuperset(added):  # nothing new: a replay, or a report of fewer members
        return a_text
    members.update(added)
    return MEMBER_SEPARATOR.join(sorted(members)[:bound])


def check_batch(origin: str, seq: int, tlp: int, count: int) -> None:
    """``ValueError`` for batch arguments that no valid batch has."""
    if not origin or len(origin) > MAX_ORIGIN_CHARS:
        raise ValueError(f"origin must be 1..{MAX_ORIGIN_CHARS} characters, got {origin!r}")
    if not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"seq must be 1..{MAX_SEQ}, got {seq}")
    if not TLP_CLEAR <= tlp <= TLP_RED:
        raise ValueError(f"batch tlp must be {TLP_CLEAR}..{TLP_RED}, got {tlp}")
    if count > MAX_BATCH_INDICATORS:
        raise ValueError(f"a batch holds at most {MAX_BATCH_INDICATORS} indicators, got {count}")
