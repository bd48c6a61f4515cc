"""The exceptions of ``threatmesh.reputation``.

Every error names what is wrong: the announcing peer, the field (``views[3].peer_id``) and the
bound it broke, so a log line is enough to find the offender.
"""

from __future__ import annotations


class ReputationError(ValueError):
    """Base of this package's errors; a ValueError, so a validator that catches ValueError
    (as the control-topic validator does) also rejects what this package rejects."""


class ObservationError(ReputationError):
    """An ``Observation`` with an impossible figure (a negative count, a score that is NaN)."""


class AnnouncementError(ReputationError):
    """A received ``Status`` that breaks a bound or is not self-consistent."""


class ElectionConfigError(ReputationError):
    """An ``ElectionConfig`` whose values cannot work together (say, 0 seats)."""
