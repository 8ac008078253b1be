"""The web's own errors, and the one place that maps every HiveMind error to HTTP.

API routes answer ``{"error": {"code": ..., "message": ...}}``; pages show the message.
"""

from __future__ import annotations

from hivemind_cluster.core import errors
from hivemind_cluster.core.errors import HiveMindError


class Unauthenticated(HiveMindError):
    code = "unauthenticated"


class RateLimited(HiveMindError):
    code = "rate_limited"


# The web's own errors, for clients rebuilding them from an answer's code.
WEB_ERRORS: tuple[type[HiveMindError], ...] = (Unauthenticated, RateLimited)

_HTTP_STATUS: dict[type[HiveMindError], int] = {
    errors.InvalidInput: 400,
    errors.Unschedulable: 409,
    errors.TooLarge: 413,
    Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.TokenRejected: 403,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.Conflict: 409,
    RateLimited: 429,
    errors.Unavailable: 503,
}


def http_status(error: HiveMindError) -> int:
    for cls in type(error).__mro__:
        status = _HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500
