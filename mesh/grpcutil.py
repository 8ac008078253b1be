"""gRPC plumbing shared by HiveMind servers and clients: error mapping in one interceptor."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from hivemind_cluster.mesh.errors import (
    HiveMindError,
    Unavailable,
    from_grpc_details,
    grpc_details,
    grpc_status,
)

log = logging.getLogger(__name__)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turn HiveMindError into its gRPC status; never leak a traceback to the caller."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner: Any = handler.unary_unary  # an async callable on a grpc.aio server
        method = handler_call_details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await inner(request, context)
            except HiveMindError as exc:
                log.info("%s refused: %s", method, exc.message)
                await context.abort(grpc_status(exc), grpc_details(exc))
            except Exception:
                log.exception("%s failed", method)
                await context.abort(
                    grpc.StatusCode.INTERNAL, "internal: unexpected server error (see the hub log)"
                )

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
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
    return HiveMindError(f"{what}: {code.name.lower()}: {details}")
