"""Who is calling the pool: the one place that turns a TLS peer into a ``Caller``.

TLS itself (``require_client_auth``) already refused clients without a certificate
chaining to the hub CA. On every call ``PoolAuthorizer`` then checks that the
certificate is not revoked, that the overlay address bound in it is the address the call
comes from, that the node is active, and that its role may use the method.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis
from cryptography import x509

from hivemind_cluster.core.errors import PermissionDenied
from hivemind_cluster.core.grpcutil import Caller, current_caller, set_current_caller
from hivemind_cluster.core.names import HUB_NODE_ID, NODE_URI_PREFIX
from hivemind_cluster.mesh import membership

_USERS = frozenset({"operator", "hub"})
# Who may call what: a whole service ("/package.Service/") or one method of it
# ("/package.Service/Method"); a method's own entry overrides its service's. Workers use
# the pool stream, and may read their own account (the agent's status page shows their
# earnings; ``own_account`` in pool/service.py refuses anyone else's) but nothing else of
# the tasks API. Blobs is the workers' too: their attempts' inputs and results, each call
# fenced to the caller's current attempt (pool/blobservice.py).
ROLES_FOR_METHOD = {
    "/hivemind.pool.Pool/": frozenset({"worker"}),
    "/hivemind.pool.Blobs/": frozenset({"worker"}),
    "/hivemind.pool.Tasks/": _USERS,
    "/hivemind.pool.Tasks/Balance": _USERS | {"worker"},
    "/hivemind.pool.Tasks/History": _USERS | {"worker"},
    "/hivemind.pool.Tasks/OpenAccount": frozenset({"hub"}),
    "/grpc.health.v1.Health/": frozenset({"worker", "operator", "hub"}),
    # Every member's agent holds the mesh's peer stream (mesh/peerservice.py).
    "/hivemind.mesh.Mesh/": frozenset({"worker", "operator"}),
}
__all__ = ["Caller", "PoolAuthorizer", "acting_for", "current_caller", "roles_for"]


@dataclass(frozen=True)
class CertificateIdentity:
    node_id: str
    overlay_ip: str
    serial: int


@functools.lru_cache(maxsize=4096)
def identity_of(pem: bytes) -> CertificateIdentity:
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        raise PermissionDenied("client certificate carries no HiveMind identity") from None
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    ips = sans.get_values_for_type(x509.IPAddress)
    node_ids = [u.removeprefix(NODE_URI_PREFIX) for u in uris if u.startswith(NODE_URI_PREFIX)]
    if len(node_ids) != 1 or len(ips) != 1:
        raise PermissionDenied("client certificate carries no HiveMind identity")
    return CertificateIdentity(node_ids[0], str(ips[0]), certificate.serial_number)


def roles_for(method: str) -> frozenset[str]:
    """The roles that may call ``/package.Service/Method``; none for anything unlisted."""
    if method in ROLES_FOR_METHOD:
        return ROLES_FOR_METHOD[method]
    return ROLES_FOR_METHOD.get(method.rpartition("/")[0] + "/", frozenset())


def peer_address(peer: str) -> str:
    """``ipv4:100.64.0.2:41234`` → ``100.64.0.2`` (also ``ipv6:[::1]:5``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return str(ipaddress.ip_address(rest.rpartition(":")[0].strip("[]")))
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    raise PermissionDenied(f"calls must come over TCP from an overlay address, not {kind}")


class PoolAuthorizer:
    def __init__(self, db: aioredis.Redis, hub_ip: str) -> None:
        self.db = db
        self.hub_ip = hub_ip

    async def __call__(
        self, context: grpc.aio.ServicerContext[object, object], method: str
    ) -> None:
        caller = await self.authenticate(context)
        if caller.role not in roles_for(method):
            raise PermissionDenied(f"a {caller.role} node may not call {method}")
        set_current_caller(caller)

    async def authenticate(self, context: grpc.aio.ServicerContext[object, object]) -> Caller:
        certificates = list(context.auth_context().get("x509_pem_cert") or [])
        if not certificates:
            raise PermissionDenied("a client certificate from this hub is required")
        identity = identity_of(bytes(certificates[0]))
        source = peer_address(context.peer())
        if source != identity.overlay_ip:
            raise PermissionDenied(
                f"the certificate of {identity.node_id} is bound to {identity.overlay_ip}, "
                f"but the call comes from {source}"
            )
        member = await membership.standing(self.db, identity.node_id, identity.serial)
        role, state, name = member.role, member.state, member.name
        if member.revoked:
            raise PermissionDenied(f"the certificate of {identity.node_id} has been revoked")
        if identity.node_id == HUB_NODE_ID and identity.overlay_ip == self.hub_ip:
            role, state, name = "hub", membership.ACTIVE, "hub"
        if state != membership.ACTIVE:
            raise PermissionDenied(f"node {identity.node_id} is not an active member")
        return Caller(identity.node_id, name or "", role, identity.overlay_ip, identity.serial)


def acting_for(caller: Caller, account: str, what: str) -> str:
    """The account a call acts for: the caller's own, or — only the hub may — ``account``."""
    if account and account != caller.node_id and caller.role != "hub":
        raise PermissionDenied(f"only the hub may {what}")
    return account or caller.node_id
