"""The client side of enrollment: pin the hub CA, then redeem the token over verified TLS."""

from __future__ import annotations

import _ssl
import socket
import ssl
import time

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_der_x509_certificate

from hivemind_cluster.core.errors import PinMismatch, Unavailable
from hivemind_cluster.core.grpcutil import error_from_rpc
from hivemind_cluster.core.keys import TlsKey
from hivemind_cluster.core.names import HUB_SERVER_NAME
from hivemind_cluster.core.settings import ENROLL_PORT, split_host_port
from hivemind_cluster.mesh.ca import leave_message, pin_of
from hivemind_cluster.protos import enrollment_pb2 as pb
from hivemind_cluster.protos import enrollment_pb2_grpc as pb_grpc

CONNECT_TIMEOUT = 5.0
RPC_TIMEOUT = 15.0


def fetch_pinned_ca(endpoint: str, pin: str) -> bytes:
    """Return the CA certificate (PEM) the server presents whose SHA-256 matches ``pin``.

    This first TLS connection verifies nothing and sends nothing: it only reads the chain.
    The real channel then verifies the server against this CA before the secret is sent.
    """
    host, port = split_host_port(endpoint, ENROLL_PORT)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=HUB_SERVER_NAME) as tls,
        ):
            chain = tls._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot reach the enrollment service at {endpoint}: {exc}") from None
    for certificate in chain:
        der = certificate.public_bytes(_ssl.ENCODING_DER)
        if pin_of(der) == pin:
            return load_der_x509_certificate(der).public_bytes(Encoding.PEM)
    raise PinMismatch(
        f"the server at {endpoint} does not present the hub CA pinned in the token "
        "(wrong hub, or an altered token); nothing was sent"
    )


def _stub(endpoint: str, ca_pem: bytes) -> tuple[grpc.Channel, pb_grpc.EnrollmentStub]:
    channel = grpc.secure_channel(
        endpoint,
        grpc.ssl_channel_credentials(root_certificates=ca_pem),
        options=[("grpc.ssl_target_name_override", HUB_SERVER_NAME)],
    )
    return channel, pb_grpc.EnrollmentStub(channel)


def enroll(endpoint: str, ca_pem: bytes, request: pb.EnrollRequest) -> pb.EnrollResponse:
    channel, stub = _stub(endpoint, ca_pem)
    with channel:
        try:
            response: pb.EnrollResponse = stub.Enroll(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"enrollment at {endpoint} failed") from None
    return response


def leave(endpoint: str, ca_pem: bytes, node_id: str, key: TlsKey) -> None:
    now = int(time.time())
    signature = key.sign(leave_message(node_id, now), ec.ECDSA(hashes.SHA256()))
    channel, stub = _stub(endpoint, ca_pem)
    with channel:
        try:
            stub.Leave(
                pb.LeaveRequest(node_id=node_id, unix_time=now, signature=signature),
                timeout=RPC_TIMEOUT,
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"deregistration at {endpoint} failed") from None
