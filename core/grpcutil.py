"""gRPC plumbing shared by HiveMind servers and clients: error mapping in one interceptor."""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from hivemind_cluster.core.errors import (
    HiveMindError,
    Unavailable,
    from_grpc_details,
    grpc_details,
    grpc_status,
)
from hivemind_cluster.core.names import HUB_SERVER_NAME
from hivemind_cluster.core.units import MIB

log = logging.getLogger(__name__)

# Message limits. Data travels in chunks of 1 MiB (model/blobs.py CHUNK_BYTES), so the
# pool's messages are small: 4 MiB leaves room; enrollment messages are smaller still.
POOL_MESSAGE_BYTES = 4 * MIB
ENROLLMENT_MESSAGE_BYTES = 64 * 1024
POOL_MESSAGE_LIMITS = [
    ("grpc.max_receive_message_length", POOL_MESSAGE_BYTES),
    ("grpc.max_send_message_length", POOL_MESSAGE_BYTES),
]
# Both ends of a pool connection ping every 10 s and give up on it after 5 s unanswered.
POOL_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
# Every client of the pool: the hub's certificate name, the limits, keepalives.
POOL_CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", HUB_SERVER_NAME),
    *POOL_MESSAGE_LIMITS,
    *POOL_KEEPALIVE,
]
# The pool's server: the same limits and keepalives, and it lets clients ping it as often
# as every 5 s, even between calls.
POOL_SERVER_OPTIONS = [
    *POOL_MESSAGE_LIMITS,
    *POOL_KEEPALIVE,
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True)
class Caller:
    """An authenticated caller of a hub service (the pool's interceptor sets it)."""

    node_id: str
    name: str
    role: str
    overlay_ip: str
    serial: int


_current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("hivemind_caller")


def current_caller() -> Caller:
    """The authenticated caller of the RPC being handled (set by the interceptor)."""
    return _current_caller.get()


def set_current_caller(caller: Caller) -> None:
    _current_caller.set(caller)


Authorize = Callable[[grpc.aio.ServicerContext[Any, Any], str], Awaitable[None]]
Context = grpc.aio.ServicerContext[Any, Any]


async def refuse(context: Context, method: str, exc: Exception) -> None:
    """Abort the call with the status of ``exc``: its own for a HiveMindError, else INTERNAL
    with a generic message (the traceback goes to the log, never to the caller)."""
    if isinstance(exc, HiveMindError):
        log.info("%s refused: %s", method, exc.message)
        await context.abort(grpc_status(exc), grpc_details(exc))
    log.error("%s failed", method, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, "internal: unexpected server error (see the hub log)"
    )


def guard_unary(inner: Any, method: str, authorize: Authorize | None) -> Any:
    """``inner`` (a coroutine answering once) authorised first, its errors mapped."""

    async def guarded(request: Any, context: Context) -> Any:
        try:
            if authorize is not None:
                await authorize(context, method)
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await refuse(context, method, exc)

    return guarded


def guard_streaming(inner: Any, method: str, authorize: Authorize | None) -> Any:
    """``inner`` (an async generator of responses) authorised first, its errors mapped."""
    if not inspect.isasyncgenfunction(inner):
        return guard_unary(inner, method, authorize)  # a coroutine writing with context.write()

    async def guarded(request: Any, context: Context) -> Any:
        try:
            if authorize is not None:
                await authorize(context, method)
            async for response in inner(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await refuse(context, method, exc)

    return guarded


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turn HiveMindError into its gRPC status; never leak a traceback to the caller.

    With ``authorize``, every call of every kind (unary or streaming) is first checked by
    it: it raises a HiveMindError to refuse, so authentication also lives in one place.
    """

    def __init__(self, authorize: Authorize | None = None) -> None:
        self.authorize = authorize

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method, authorize = handler_call_details.method, self.authorize
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        for kind, guard, make in _HANDLER_KINDS:
            inner = getattr(handler, kind)
            if inner is not None:
                return make(guard(inner, method, authorize), **codec)
        return handler


# Each kind of handler: the attribute holding it, its guard, and how to rebuild it.
_HANDLER_KINDS = (
    ("unary_unary", guard_unary, grpc.unary_unary_rpc_method_handler),
    ("stream_unary", guard_unary, grpc.stream_unary_rpc_method_handler),
    ("unary_stream", guard_streaming, grpc.unary_stream_rpc_method_handler),
    ("stream_stream", guard_streaming, grpc.stream_stream_rpc_method_handler),
)


def error_from_rpc(exc: grpc.RpcError, what: str) -> HiveMindError:
    """The HiveMindError a server sent, or Unavailable/HiveMindError describing the failure."""
    code = exc.code()
    details = exc.details()
    rebuilt = from_grpc_details(details)
    if rebuilt is not None:
        return rebuilt
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"{what}: {details or code.name.lower()}")
    status = code.name.lower()
    # Our own servers' INTERNAL details already start with the status ("internal: ...").
    text = details if (details or "").startswith(f"{status}: ") else f"{status}: {details}"
    return HiveMindError(f"{what}: {text}")
