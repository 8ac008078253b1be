"""What a client makes of a gRPC error (core/grpcutil.py ``error_from_rpc``)."""

from __future__ import annotations

import grpc

from hivemind_cluster.core.errors import NotFound, Unavailable
from hivemind_cluster.core.grpcutil import error_from_rpc


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_servers_internal_error_names_its_status_once() -> None:
    details = "internal: unexpected server error (see the hub log)"
    error = error_from_rpc(Failed(grpc.StatusCode.INTERNAL, details), "submit")
    assert error.message == "submit: internal: unexpected server error (see the hub log)"


def test_other_statuses_are_named_before_their_details() -> None:
    error = error_from_rpc(Failed(grpc.StatusCode.UNIMPLEMENTED, "no such method"), "list")
    assert error.message == "list: unimplemented: no such method"


def test_our_own_errors_come_back_as_they_were_sent() -> None:
    error = error_from_rpc(Failed(grpc.StatusCode.NOT_FOUND, "not_found: no such task"), "x")
    assert isinstance(error, NotFound) and error.message == "no such task"
    down = error_from_rpc(Failed(grpc.StatusCode.UNAVAILABLE, "connection refused"), "logs")
    assert isinstance(down, Unavailable) and down.message == "logs: connection refused"
