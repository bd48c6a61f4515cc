"""The store's merge rules, pure: what one batch says about an indicator, and how two such
reports of the same (itype, value) combine. No I/O; ``threatmesh.node.store`` applies the same
rules in SQL across batches (its ``_UPSERT`` mirrors ``merge_reports``).

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
"""

from __future__ import annotations

from collections.abc import Iterable
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
    """What one batch says about one (itype, value); merged in Python within a batch and in
    SQL (``store._UPSERT``) across batches, by the same rules.

    A named tuple (cheap to build, one per indicator): its first ``SCALAR_FIELDS`` fields are
    the parameters of the store's upsert, in order.
    """

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

    def sets(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """The text sets, in ``store_schema.SET_TABLES``' order."""
        return (self.tags, self.references, self.providers)

    @classmethod
    def of(cls, indicator: pb.Indicator, batch_tlp: int) -> Report:
        """What a batch at ``batch_tlp`` says about ``indicator`` (see ``merge_batch``)."""
        (report,) = merge_batch((indicator,), batch_tlp).values()
        return report


# Report's first fields are its scalars: the parameters of the store's upsert.
SCALAR_FIELDS = Report._fields.index("tags")


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
    ``ValueError`` for an indicator level that is not one. This runs for every indicator a
    node stores, so the report is built here, inline: each protobuf field read once, a repeated
    field copied out with a slice (a third of what iterating it costs), no call per field.
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
