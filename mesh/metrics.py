"""The mesh's Prometheus metrics (exported by the hub's ``/metrics``).

Labels come from small fixed sets only: an enrollment's outcome is ``accepted`` or the
refusal's error code (core/errors.py), never a message, a name or an address.
"""

from __future__ import annotations

import prometheus_client

from hivemind_cluster.core.errors import HiveMindError

ENROLLMENT_ATTEMPTS = prometheus_client.Counter(
    "hivemind_enrollment_attempts", "Enrollment attempts by outcome", ["outcome"]
)
ACCEPTED = "accepted"
INTERNAL = "internal"  # a refusal that was not a HiveMindError (a bug, or Redis gone)


def outcome_of(error: BaseException | None) -> str:
    """The bounded label of an enrollment's outcome."""
    if error is None:
        return ACCEPTED
    return error.code if isinstance(error, HiveMindError) else INTERNAL
