"""``hivemind.mesh.Mesh``: every member's stream of its peers (protos/mesh.proto).

It runs on the pool's server, behind its mutual TLS and interceptor: the caller is an
active worker or operator (``current_caller()``). The stream sends what the member's
``Subscription`` hands out and reads the member's reports at the same time; it ends when
the member is no longer an active member (revoked, left), with PERMISSION_DENIED, and
with FAILED_PRECONDITION when the same node opened another stream (one per node: the
newer one stays). What a report may hold is checked and cut to size by the distributor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from hivemind_cluster.core.errors import PermissionDenied
from hivemind_cluster.core.grpcutil import Context, current_caller
from hivemind_cluster.mesh.peering import PeerDistributor
from hivemind_cluster.protos import mesh_pb2, mesh_pb2_grpc

log = logging.getLogger(__name__)


class MeshService(mesh_pb2_grpc.MeshServicer):
    def __init__(self, distributor: PeerDistributor) -> None:
        self.distributor = distributor

    async def Peers(
        self, request_iterator: AsyncIterator[mesh_pb2.MemberReport], context: Context
    ) -> AsyncIterator[mesh_pb2.PeerUpdate]:
        node_id = current_caller().node_id
        subscription = self.distributor.subscribe(node_id)
        reader = asyncio.create_task(self.read_reports(node_id, request_iterator))
        try:
            while (update := await subscription.next_update()) is not None:
                yield update
        finally:
            subscription.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError, Exception):
                await reader
        raise PermissionDenied(f"node {node_id} is no longer an active member of the mesh")

    async def read_reports(
        self, node_id: str, reports: AsyncIterator[mesh_pb2.MemberReport]
    ) -> None:
        """The member's reports, as they come, until it stops sending."""
        try:
            async for report in reports:
                await self.distributor.report(node_id, report)
        except (asyncio.CancelledError, grpc.RpcError):
            raise
        except Exception:
            log.exception("reports from %s failed", node_id)


def add_to(server: grpc.aio.Server, distributor: PeerDistributor) -> None:
    """The composition root's hook (``PoolRuntime(extra=...)``)."""
    mesh_pb2_grpc.add_MeshServicer_to_server(MeshService(distributor), server)
