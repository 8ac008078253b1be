"""Every error a user can see, and the one place that maps them to gRPC and HTTP status.

Each error carries a stable ``code`` (for ``--json`` output and scripts) and a one-line
message. Nothing here ever shows a traceback to a user: the CLIs print ``error: <message>``.
"""

from __future__ import annotations

from typing import TypeVar

import grpc

T = TypeVar("T")


class HiveMindError(Exception):
    """Base class: a problem we can explain to the user in one line."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(HiveMindError):
    code = "invalid_input"


class TokenMalformed(InvalidInput):
    code = "token_malformed"


class TokenRejected(HiveMindError):
    """The hub refused a well-formed token (unknown, expired, revoked, used up, bad secret)."""

    code = "token_rejected"


class CsrRejected(InvalidInput):
    code = "csr_rejected"


class AddressRangeExhausted(HiveMindError):
    code = "overlay_exhausted"


class PinMismatch(HiveMindError):
    code = "ca_pin_mismatch"


class TooLarge(InvalidInput):
    """An upload or message over its size limit."""

    code = "too_large"


class NotFound(HiveMindError):
    code = "not_found"


class AlreadyExists(HiveMindError):
    code = "already_exists"


class PermissionDenied(HiveMindError):
    code = "permission_denied"


class Unavailable(HiveMindError):
    """A service we need is not reachable (hub not running, Redis down, no route)."""

    code = "unavailable"


class Conflict(HiveMindError):
    """The request is valid but the object is not in a state that allows it."""

    code = "conflict"


class StaleAttempt(Conflict):
    """A message from a task attempt the pool has superseded (fencing)."""

    code = "stale_attempt"


class Unschedulable(InvalidInput):
    """No node of the pool could ever run this task."""

    code = "unschedulable"


class Unauthenticated(HiveMindError):
    """No valid login or API token (the web)."""

    code = "unauthenticated"


class RateLimited(HiveMindError):
    code = "rate_limited"


class SystemFailure(HiveMindError):
    """A privileged system operation failed (interface, WireGuard, process)."""

    code = "system"


_GRPC_STATUS: dict[type[HiveMindError], grpc.StatusCode] = {
    TokenMalformed: grpc.StatusCode.INVALID_ARGUMENT,
    CsrRejected: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    TooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    TokenRejected: grpc.StatusCode.PERMISSION_DENIED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    AddressRangeExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    StaleAttempt: grpc.StatusCode.FAILED_PRECONDITION,
    Unschedulable: grpc.StatusCode.FAILED_PRECONDITION,
}
_HTTP_STATUS: dict[type[HiveMindError], int] = {
    InvalidInput: 400,
    Unschedulable: 409,
    TooLarge: 413,
    Unauthenticated: 401,
    PermissionDenied: 403,
    TokenRejected: 403,
    NotFound: 404,
    AlreadyExists: 409,
    Conflict: 409,
    RateLimited: 429,
    Unavailable: 503,
}
_KNOWN: tuple[type[HiveMindError], ...] = (
    *_GRPC_STATUS,
    *_HTTP_STATUS,
    PinMismatch,
    SystemFailure,
    HiveMindError,
)
_ERROR_FOR_CODE: dict[str, type[HiveMindError]] = {cls.code: cls for cls in _KNOWN}


def _status(error: HiveMindError, table: dict[type[HiveMindError], T], default: T) -> T:
    """The status of the most specific class of ``error`` that ``table`` names."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return default


def grpc_status(error: HiveMindError) -> grpc.StatusCode:
    return _status(error, _GRPC_STATUS, grpc.StatusCode.INTERNAL)


def http_status(error: HiveMindError) -> int:
    return _status(error, _HTTP_STATUS, 500)


def error_for(code: str, message: str) -> HiveMindError | None:
    """Rebuild the error a HiveMind server sent as ``code`` and message, None if unknown."""
    cls = _ERROR_FOR_CODE.get(code)
    return None if cls is None else cls(message)


def grpc_details(error: HiveMindError) -> str:
    """The status details sent on the wire: ``<code>: <message>``."""
    return f"{error.code}: {error.message}"


def from_grpc_details(details: str | None) -> HiveMindError | None:
    """Rebuild the error a HiveMind server sent, or None if the details are not ours."""
    code, sep, message = (details or "").partition(": ")
    return error_for(code, message) if sep else None
