"""The TLP 2.0 levels, as the integers on the wire, and their names in files and on the CLI.

Rules:
- A level is the wire's integer (``pb.Tlp``): CLEAR < GREEN < AMBER < AMBER+STRICT < RED, so
  "may receive up to L" is a comparison. ``identity`` imports nothing else of ours
  (DESIGN.md, "Layout"), so the values are written out here; tests/test_trust.py checks that
  they equal ``pb.Tlp`` and the names in ``pubsub.topics.TLP_LEVELS``.
- A name is the one canonical lowercase spelling (``"amber-strict"``); anything else, and any
  unknown level, is a ValueError that names the offending value.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# TLP 2.0 levels, equal to the wire's ``pb.Tlp`` values (checked by tests/test_trust.py).
TLP_CLEAR = 1
TLP_GREEN = 2
TLP_AMBER = 3
TLP_AMBER_STRICT = 4
TLP_RED = 5
TLP_LEVEL_NAMES: Mapping[int, str] = MappingProxyType(
    {
        TLP_CLEAR: "clear",
        TLP_GREEN: "green",
        TLP_AMBER: "amber",
        TLP_AMBER_STRICT: "amber-strict",
        TLP_RED: "red",
    }
)
_LEVEL_BY_NAME = {name: level for level, name in TLP_LEVEL_NAMES.items()}


def level_name(level: int) -> str:
    """The name of a TLP level (``"amber-strict"``); ValueError if unknown."""
    try:
        return TLP_LEVEL_NAMES[level]
    except KeyError:
        raise ValueError(f"unknown TLP level {level!r}") from None


def level_from_name(name: str) -> int:
    """The TLP level of a canonical name (``"amber-strict"``); ValueError if unknown."""
    try:
        return _LEVEL_BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"{name!r} is not one of {', '.join(TLP_LEVEL_NAMES.values())}") from None
