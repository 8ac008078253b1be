"""The enrollment service: redeem a join token for an overlay identity (gRPC over TLS).

``Enroller`` holds the logic (synchronous, testable without gRPC); ``EnrollmentService``
exposes it; ``create_server`` returns ``(server, port)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
import redis

from hivemind_cluster.core.audit import LOCAL, peer_ip
from hivemind_cluster.core.errors import InvalidInput, NotFound, PermissionDenied
from hivemind_cluster.core.grpcutil import ENROLLMENT_MESSAGE_BYTES, ErrorInterceptor
from hivemind_cluster.core.keys import check_wireguard_key
from hivemind_cluster.core.settings import ENROLL_PORT, HubSettings, split_host_port
from hivemind_cluster.mesh import audits, nodes
from hivemind_cluster.mesh.ca import (
    CertificateAuthority,
    check_csr,
    check_hostname,
    leave_message,
    verify_signature,
)
from hivemind_cluster.mesh.tokens import check_credentials, token_labels
from hivemind_cluster.mesh.wireguard import PeerConfig, WireGuardInterface
from hivemind_cluster.protos import enrollment_pb2 as pb
from hivemind_cluster.protos import enrollment_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

LEAVE_CLOCK_SKEW = 300


@dataclass
class Enroller:
    settings: HubSettings
    ca: CertificateAuthority
    client: redis.Redis
    interface: WireGuardInterface | None
    hub_public_key: str

    def hub_peer(self) -> pb.Peer:
        host, _ = split_host_port(self.settings.endpoint, ENROLL_PORT)
        endpoint = (
            f"[{host}]:{self.settings.wg_port}"
            if ":" in host
            else f"{host}:{self.settings.wg_port}"
        )
        return pb.Peer(
            public_key=self.hub_public_key,
            endpoint=endpoint,
            allowed_ips=[self.settings.overlay],
            persistent_keepalive=self.settings.persistent_keepalive,
        )

    def attempt(self, request: pb.EnrollRequest, source: str) -> pb.EnrollResponse:
        """``enroll``, the attempt from ``source`` counted and audited once, whatever its end."""
        try:
            response = self.enroll(request)
        except Exception as exc:
            audits.enrollment(self.client, request.token_id, source, None, exc)
            raise
        what = f"{request.hostname} as {response.role} at {response.overlay_ip}"
        audits.enrollment(self.client, request.token_id, source, (response.node_id, what))
        return response

    def enroll(self, request: pb.EnrollRequest) -> pb.EnrollResponse:
        # Check everything we can before touching the token, so a bad request uses nothing.
        check_credentials(request.token_id, request.token_secret)
        hostname = check_hostname(request.hostname)
        wg_key = check_wireguard_key(request.wireguard_public_key)
        if wg_key == self.hub_public_key:
            raise InvalidInput("WireGuard public key is the hub's own")
        csr = check_csr(request.csr_pem, hostname)
        facts = {
            "cpu_cores": request.facts.cpu_cores,
            "memory_bytes": request.facts.memory_bytes,
            "os": request.facts.os[:64],
            "arch": request.facts.arch[:32],
        }
        node = nodes.redeem(
            self.client,
            self.settings.network,
            request.token_id,
            request.token_secret,
            hostname,
            wg_key,
            facts,
        )
        issued = self.ca.sign_node(csr, node.id, node.overlay_ip)
        if self.interface is not None:
            self.interface.add_peer(PeerConfig(wg_key, (f"{node.overlay_ip}/32",)))
        labels = token_labels(self.client, request.token_id)  # the hub's, never the agent's
        nodes.activate(self.client, node.id, issued.serial, issued.pem.decode(), labels)
        log.info("enrolled %s (%s) as %s at %s", node.id, hostname, node.role, node.overlay_ip)
        return pb.EnrollResponse(
            node_id=node.id,
            role=node.role,
            overlay_ip=node.overlay_ip,
            overlay_prefix=self.settings.network.prefixlen,
            certificate_pem=issued.pem,
            ca_pem=self.ca.pem,
            hub=self.hub_peer(),
            hub_overlay_ip=self.settings.hub_ip,
            pool_address=self.settings.pool_address,
        )

    def leave(self, request: pb.LeaveRequest, source: str = LOCAL) -> None:
        try:
            node = nodes.get_node(self.client, request.node_id)
        except NotFound:
            raise PermissionDenied("unknown node") from None
        if node.id != request.node_id or node.state != nodes.ACTIVE or not node.cert_pem:
            raise PermissionDenied("node is not active")
        if abs(time.time() - request.unix_time) > LEAVE_CLOCK_SKEW:
            raise PermissionDenied("leave request is too old or from the future (check clocks)")
        message = leave_message(node.id, request.unix_time)
        if not verify_signature(node.cert_pem.encode(), request.signature, message):
            raise PermissionDenied("leave request signature does not match the node certificate")
        retire_node(self.client, self.interface, node, nodes.LEFT)
        audits.node_left(self.client, node, source)
        log.info("node %s (%s) left", node.id, node.name)


def retire_node(
    client: redis.Redis, interface: WireGuardInterface | None, node: nodes.Node, state: str
) -> None:
    """Refuse the node's certificate, then cut it off WireGuard."""
    nodes.retire(client, node, state)
    if interface is not None and interface.exists():
        interface.remove_peer(node.wg_public_key)


class EnrollmentService(pb_grpc.EnrollmentServicer):
    def __init__(self, enroller: Enroller) -> None:
        self.enroller = enroller

    async def Enroll(
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EnrollResponse:
        return await asyncio.to_thread(self.enroller.attempt, request, peer_ip(context.peer()))

    async def Leave(
        self, request: pb.LeaveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LeaveResponse:
        await asyncio.to_thread(self.enroller.leave, request, peer_ip(context.peer()))
        return pb.LeaveResponse()


async def create_server(
    enroller: Enroller, listen: str, cert_pem: bytes, key_pem: bytes
) -> tuple[grpc.aio.Server, int]:
    """The enrollment server (TLS, no client certificate: the token authenticates)."""
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[("grpc.max_receive_message_length", ENROLLMENT_MESSAGE_BYTES)],
    )
    pb_grpc.add_EnrollmentServicer_to_server(EnrollmentService(enroller), server)
    credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    return server, port
