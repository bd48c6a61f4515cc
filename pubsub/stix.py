"""STIX 2.1 bundles in and out: the ``stix`` format of ``threatmesh.pubsub.formats``.

In (``stix_records``): the text is one JSON bundle (STIX 2.1, or 2.0 as far as the same
properties go). Each ``indicator`` object whose pattern is one comparison of a mapped property
becomes one record for ``indicator_from_record``; anything else of type ``indicator`` is
refused with its 1-based position in ``objects`` as its "line" and a reason naming the STIX
property. Objects of other types are not indicators and are passed over, except that
marking definitions and identities are read so that indicators can refer to them. Each
object is parsed by the ``stix2`` library on its own, so one broken object refuses only itself.

Mapping (indicator -> record):
- pattern ``[ipv4-addr:value = '...']`` and likewise ``ipv6-addr``, ``domain-name``, ``url``,
  ``email-addr``; ``[file:hashes.'SHA-256' = '...']`` (MD5, SHA-1, SHA-256, SHA-512);
  ``[autonomous-system:number = 13335]``; an address with ``/prefix``, or ``ISSUBSET``,
  is a CIDR. Compound patterns (AND, OR, several observations, qualifiers) are refused: they
  do not say one value.
- TLP from ``object_marking_refs``: the TLP 2.0 marking definitions (OASIS CTI, extension
  ``extension-definition--60a3c5c5-...``), the TLP 1.0 ones STIX 2.1 predefines (WHITE is
  CLEAR), and TLP marking definitions the bundle itself carries. Several: the most
  restrictive wins. None: the caller's default. Granular markings are not read.
- ``valid_from`` -> first_seen, the later of ``modified`` and ``valid_from`` -> last_seen,
  ``valid_until`` -> expires, ``labels`` -> tags, ``confidence``, ``description``, the ``url``
  of each external reference -> references, the name of the ``created_by_ref`` identity ->
  provider. Revoked indicators are refused.

Out (``to_stix_bundle``): the inverse mapping, so a bundle we write reads back to the same
indicators. Ids are UUIDv5 from the content (indicator: provider, itype, value; identity:
provider name), so exporting the same indicator twice gives the same object, newer
``modified`` meaning a newer version (STIX 2.1 versioning). Nothing reads the clock.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import stix2  # type: ignore[import-untyped]
from stix2 import patterns as stix_patterns
from stix2.exceptions import STIXError  # type: ignore[import-untyped]
from stix2.pattern_visitor import create_pattern_object  # type: ignore[import-untyped]
from stix2patterns.exceptions import ParseException  # type: ignore[import-untyped]

from threatmesh.pubsub.indicator_values import shown
from threatmesh.pubsub.indicators import (
    IndicatorError,
    itype_name,
    parse_tlp,
    tlp_name,
)
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

# A record, or the reason its object was refused; with the object's 1-based position.
StixItem = tuple[int, Mapping[str, Any] | str]

TLP_EXTENSION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_CREATED = datetime(2022, 10, 1, tzinfo=UTC)  # part of the published objects, like the ids
TLP2_MARKING_IDS: Mapping[int, str] = MappingProxyType(
    {
        pb.TLP_CLEAR: "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
        pb.TLP_GREEN: "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        pb.TLP_AMBER: "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
        pb.TLP_AMBER_STRICT: "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        pb.TLP_RED: "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
    }
)
TLP1_MARKING_IDS: Mapping[str, int] = MappingProxyType(
    {
        "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": pb.TLP_CLEAR,  # WHITE
        "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": pb.TLP_GREEN,
        "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": pb.TLP_AMBER,
        "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": pb.TLP_RED,
    }
)
_TLP_BY_KNOWN_MARKING: Mapping[str, int] = {
    **{marking_id: tlp for tlp, marking_id in TLP2_MARKING_IDS.items()},
    **TLP1_MARKING_IDS,
}
# The level names a TLP marking definition may carry (TLP 2.0 extension, TLP 1.0 definition).
_TLP_NAMES_READ = frozenset(
    {"clear", "white", "green", "amber", "amber+strict", "amber-strict", "red"}
)
_TLP2_LEVEL_NAMES: Mapping[int, str] = {
    pb.TLP_CLEAR: "clear",
    pb.TLP_GREEN: "green",
    pb.TLP_AMBER: "amber",
    pb.TLP_AMBER_STRICT: "amber+strict",
    pb.TLP_RED: "red",
}
# Namespace of our deterministic ids (a fixed random UUID; changing it changes every id).
_ID_NAMESPACE = uuid.UUID("232c6332-3f7c-457d-9fcc-ada7a07d7d70")
# An identity we write has no history of its own; a fixed time keeps it one object version.
_IDENTITY_CREATED = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_STRING_PATHS: Mapping[tuple[str, tuple[str, ...]], int] = {
    ("ipv4-addr", ("value",)): pb.ITYPE_IPV4,
    ("ipv6-addr", ("value",)): pb.ITYPE_IPV6,
    ("domain-name", ("value",)): pb.ITYPE_FQDN,
    ("url", ("value",)): pb.ITYPE_URL,
    ("email-addr", ("value",)): pb.ITYPE_EMAIL,
}
_PATH_BY_ITYPE: Mapping[int, str] = {
    itype: f"{kind}:{path[0]}" for (kind, path), itype in _STRING_PATHS.items()
}
# hashing-algorithm-ov of STIX 2.1, compared without case and hyphens.
_HASH_ALGORITHMS: Mapping[str, int] = {
    "MD5": pb.ITYPE_MD5,
    "SHA1": pb.ITYPE_SHA1,
    "SHA256": pb.ITYPE_SHA256,
    "SHA512": pb.ITYPE_SHA512,
}
_HASH_PATHS: Mapping[int, str] = {
    pb.ITYPE_MD5: "file:hashes.MD5",
    pb.ITYPE_SHA1: "file:hashes.'SHA-1'",
    pb.ITYPE_SHA256: "file:hashes.'SHA-256'",
    pb.ITYPE_SHA512: "file:hashes.'SHA-512'",
}
_PATTERN_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


# In -----------------------------------------------------------------------------------------


def stix_records(text: str) -> Iterator[StixItem]:
    """Records (or reasons for refusal) of the indicator objects of a STIX bundle, in order.

    A text that is not a bundle at all gives one reason at line 1, and nothing else.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        yield (
            1,
            (
                f"not a STIX bundle: not valid JSON ({error.msg} at line {error.lineno}, "
                f"column {error.colno})"
            ),
        )
        return
    except RecursionError:
        yield 1, "not a STIX bundle: JSON nested too deeply"
        return
    if not isinstance(document, dict) or document.get("type") != "bundle":
        yield 1, "not a STIX bundle: the top-level object must have type 'bundle'"
        return
    objects = document.get("objects", [])
    if not isinstance(objects, list):
        yield 1, "not a STIX bundle: 'objects' must be a list"
        return
    context = _BundleContext(objects)
    for position, raw in enumerate(objects, start=1):
        if not isinstance(raw, dict):
            yield position, "not a STIX object (not a JSON object)"
            continue
        if raw.get("type") != "indicator":
            continue
        try:
            yield position, _indicator_record(raw, context)
        except IndicatorError as error:
            yield position, error.reason


class _BundleContext:
    """What indicators of a bundle refer to: TLP marking definitions and identities."""

    def __init__(self, objects: list[Any]) -> None:
        self.tlp_by_marking: dict[str, int] = dict(_TLP_BY_KNOWN_MARKING)
        self.name_by_identity: dict[str, str] = {}
        for raw in objects:
            if not isinstance(raw, dict) or raw.get("type") not in (
                "marking-definition",
                "identity",
            ):
                continue
            try:
                parsed = _parse_object(raw)
            except IndicatorError:
                continue  # an indicator that refers to it gets no TLP or provider from it
            object_id = str(parsed["id"])
            if parsed["type"] == "identity":
                self.name_by_identity[object_id] = str(parsed["name"])
            elif object_id not in _TLP_BY_KNOWN_MARKING:
                level = _marking_tlp_name(parsed)
                # A marking whose level is not a TLP level we know is no TLP marking for us.
                if level is not None and level.strip().lower() in _TLP_NAMES_READ:
                    self.tlp_by_marking[object_id] = parse_tlp(level)

    def tlp_of(self, marking_refs: Iterable[str]) -> int | None:
        levels = [self.tlp_by_marking[ref] for ref in marking_refs if ref in self.tlp_by_marking]
        return max(levels) if levels else None  # TLP enum values rise with restriction


def _marking_tlp_name(marking: Any) -> str | None:
    extension = marking.get("extensions", {}).get(TLP_EXTENSION_ID)
    if extension is not None and isinstance(extension.get("tlp_2_0"), str):
        return str(extension["tlp_2_0"])
    definition = marking.get("definition")
    if marking.get("definition_type") == "tlp" and definition is not None:
        level = definition.get("tlp")
        return str(level) if isinstance(level, str) else None
    return None


# The stix2 library raises its own errors for objects it understands to be invalid, and,
# fed malformed JSON (a list where a string belongs), whatever Python raises on the way.
_STIX_PARSE_ERRORS = (STIXError, ValueError, TypeError, AttributeError, KeyError)
_STIX_CLASSES = {
    "indicator": (stix2.v21.Indicator, stix2.v20.Indicator),
    "identity": (stix2.v21.Identity, stix2.v20.Identity),
    "marking-definition": (stix2.v21.MarkingDefinition, stix2.v20.MarkingDefinition),
}


def _parse_object(raw: Mapping[str, Any]) -> Any:
    """One STIX object of a type in ``_STIX_CLASSES``, parsed and checked by ``stix2``."""
    kind = raw.get("type")
    version = raw.get("spec_version", "2.0")
    if version not in ("2.0", "2.1"):
        raise IndicatorError("spec_version", f"{shown(version)} is not 2.0 or 2.1")
    try:
        parsed = stix2.parse(raw, allow_custom=True)
    except _STIX_PARSE_ERRORS as error:
        field = getattr(error, "prop_name", None) or ", ".join(getattr(error, "properties", []))
        raise IndicatorError(str(field or "object"), f"not valid STIX: {error}") from None
    if not isinstance(parsed, _STIX_CLASSES.get(str(kind), ())):
        raise IndicatorError("type", f"not a valid STIX {shown(kind)} object")
    return parsed


def _indicator_record(raw: Mapping[str, Any], context: _BundleContext) -> dict[str, Any]:
    pattern = raw.get("pattern")
    if isinstance(pattern, str) and not pattern.strip():
        # stix2-patterns 2.1.2 fails on an empty pattern with UnboundLocalError.
        raise IndicatorError("pattern", "is empty")
    indicator = _parse_object(raw)
    if indicator.get("revoked", False):
        raise IndicatorError("revoked", "the indicator is revoked")
    pattern_type = str(indicator.get("pattern_type", "stix"))
    if pattern_type != "stix":
        raise IndicatorError("pattern_type", f"{shown(pattern_type)} patterns are not mapped")
    version = str(indicator.get("spec_version", "2.0"))
    itype, value = pattern_value(str(indicator["pattern"]), version=version)
    first_seen: datetime = indicator["valid_from"]
    last_seen: datetime = max(indicator["modified"], first_seen)
    record: dict[str, Any] = {
        "value": value,
        "itype": itype_name(itype),
        "first_seen": first_seen.isoformat(),
        "last_seen": last_seen.isoformat(),
        "tags": [str(label) for label in indicator.get("labels", [])],
        "description": str(indicator.get("description", "")),
        "references": [
            str(reference["url"])
            for reference in indicator.get("external_references", [])
            if "url" in reference
        ],
    }
    tlp = context.tlp_of(indicator.get("object_marking_refs", []))
    if tlp is not None:
        record["tlp"] = tlp_name(tlp)
    if "confidence" in indicator:
        record["confidence"] = int(indicator["confidence"])
    if "valid_until" in indicator:
        record["expires"] = indicator["valid_until"].isoformat()
    creator = indicator.get("created_by_ref")
    if creator is not None and str(creator) in context.name_by_identity:
        record["provider"] = context.name_by_identity[str(creator)]
    return record


def pattern_value(pattern: str, *, version: str = "2.1") -> tuple[int, str]:
    """The (itype, value) a simple STIX pattern names; IndicatorError (field "pattern")."""
    try:
        expression = create_pattern_object(pattern, version=version)
    except (ParseException, ValueError) as error:
        raise IndicatorError("pattern", f"cannot be parsed: {error}") from None
    if type(expression) is not stix_patterns.ObservationExpression:
        raise IndicatorError("pattern", "only one observation [...] maps to one indicator")
    comparison = expression.operand
    simple = (
        stix_patterns.EqualityComparisonExpression,
        stix_patterns.IsSubsetComparisonExpression,
    )
    if type(comparison) not in simple or comparison.negated:
        raise IndicatorError(
            "pattern", "only [object:property = 'value'] (or ISSUBSET for a CIDR) is mapped"
        )
    components = comparison.lhs.property_path
    if not all(type(part) is stix_patterns.BasicObjectPathComponent for part in components):
        raise IndicatorError("pattern", "list indexes and references are not mapped")
    kind = str(comparison.lhs.object_type_name)
    names = tuple(str(part.property_name) for part in components)
    path = f"{kind}:{'.'.join(names)}"
    constant = comparison.rhs
    if (kind, names) == ("autonomous-system", ("number",)):
        if type(constant) is not stix_patterns.IntegerConstant:
            raise IndicatorError("pattern", f"{path} must be compared with an integer")
        return pb.ITYPE_ASN, f"AS{int(constant.value)}"
    if not isinstance(constant, stix_patterns.StringConstant):
        raise IndicatorError("pattern", f"{path} must be compared with a string")
    text = _PATTERN_ESCAPE.sub(r"\1", str(constant.value))
    if kind == "file" and len(names) == 2 and names[0] == "hashes":
        itype = _HASH_ALGORITHMS.get(names[1].upper().replace("-", ""))
        if itype is None:
            raise IndicatorError(
                "pattern", f"hash {shown(names[1])} is not one of MD5, SHA-1, SHA-256, SHA-512"
            )
        return itype, text
    itype = _STRING_PATHS.get((kind, names))
    if itype is None:
        raise IndicatorError("pattern", f"{path} is not a property we map to an indicator")
    is_subset = type(comparison) is stix_patterns.IsSubsetComparisonExpression
    if itype in (pb.ITYPE_IPV4, pb.ITYPE_IPV6) and (is_subset or "/" in text):
        return pb.ITYPE_CIDR, text
    if is_subset:
        raise IndicatorError("pattern", f"ISSUBSET is only mapped for addresses, not {path}")
    return itype, text


# Out ----------------------------------------------------------------------------------------


def stix_pattern(itype: int, value: str) -> str:
    """The STIX pattern for a canonical value: ``[ipv4-addr:value = '1.2.3.4']``."""
    if itype == pb.ITYPE_ASN:
        return f"[autonomous-system:number = {int(value.removeprefix('AS'))}]"
    if itype == pb.ITYPE_CIDR:
        path = "ipv6-addr:value" if ":" in value else "ipv4-addr:value"
    else:
        path = _HASH_PATHS.get(itype) or _PATH_BY_ITYPE.get(itype) or ""
    if not path:
        raise IndicatorError("itype", f"unknown indicator type {itype}")
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"[{path} = '{escaped}']"


def _moment(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _tlp_marking(tlp: int) -> Any:
    level = _TLP2_LEVEL_NAMES[tlp]
    return stix2.v21.MarkingDefinition(
        id=TLP2_MARKING_IDS[tlp],
        created=TLP2_CREATED,
        name=f"TLP:{level.upper()}",
        extensions={TLP_EXTENSION_ID: {"extension_type": "property-extension", "tlp_2_0": level}},
    )


def _content_id(kind: str, *parts: str) -> str:
    """A STIX id that is the same for the same content: ``kind--<UUIDv5>``."""
    name = "\n".join((kind, *parts))
    return f"{kind}--{uuid.uuid5(_ID_NAMESPACE, name)}"


def _identity(provider: str) -> Any:
    return stix2.v21.Identity(
        id=_content_id("identity", provider),
        created=_IDENTITY_CREATED,
        modified=_IDENTITY_CREATED,
        name=provider,
    )


def _stix_indicator(indicator: pb.Indicator, marking_id: str, creator_id: str | None) -> Any:
    properties: dict[str, Any] = {
        "id": _content_id(
            "indicator", indicator.provider, itype_name(indicator.itype), indicator.value
        ),
        "created": _moment(indicator.first_seen_ms),
        "modified": _moment(indicator.last_seen_ms),
        "name": indicator.value,
        "pattern": stix_pattern(indicator.itype, indicator.value),
        "pattern_type": "stix",
        "valid_from": _moment(indicator.first_seen_ms),
        "confidence": indicator.confidence,
        "object_marking_refs": [marking_id],
    }
    if indicator.expires_ms:
        properties["valid_until"] = _moment(indicator.expires_ms)
    if indicator.tags:
        properties["labels"] = list(indicator.tags)
    if indicator.description:
        properties["description"] = indicator.description
    if indicator.references:
        properties["external_references"] = [
            {"source_name": "reference", "url": reference} for reference in indicator.references
        ]
    if creator_id is not None:
        properties["created_by_ref"] = creator_id
    return stix2.v21.Indicator(**properties)


def to_stix_bundle(indicators: Iterable[pb.Indicator]) -> str:
    """A STIX 2.1 bundle (JSON text) of ``indicators``, with TLP 2.0 markings and providers.

    Holds the whole bundle in memory: callers bound how many indicators they pass.
    """
    markings: dict[int, Any] = {}
    identities: dict[str, Any] = {}
    stix_indicators: list[Any] = []
    for indicator in indicators:
        tlp_name(indicator.tlp)  # IndicatorError for an unknown level
        if indicator.tlp not in markings:
            markings[indicator.tlp] = _tlp_marking(indicator.tlp)
        creator_id = None
        if indicator.provider:
            if indicator.provider not in identities:
                identities[indicator.provider] = _identity(indicator.provider)
            creator_id = identities[indicator.provider]["id"]
        stix_indicators.append(
            _stix_indicator(indicator, markings[indicator.tlp]["id"], creator_id)
        )
    objects = [*(markings[tlp] for tlp in sorted(markings)), *identities.values(), *stix_indicators]
    contents = "\n".join(f"{item['id']} {item.get('modified', '')}" for item in objects)
    bundle = stix2.v21.Bundle(objects=objects, id=_content_id("bundle", contents))
    return str(bundle.serialize(pretty=True))
