"""Limits set in different modules that must fit together."""

from __future__ import annotations

from hivemind_cluster.core.grpcutil import POOL_MESSAGE_BYTES
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.blobs import CHUNK_BYTES
from hivemind_cluster.pool.messages import MAX_LOG_CHUNK


def test_a_pool_message_carries_a_blob_chunk_or_a_log_chunk_with_room_to_spare() -> None:
    # gRPC refuses a message over the limit before the pool can say what was wrong with it.
    largest = max(CHUNK_BYTES, MAX_LOG_CHUNK)
    assert largest + MIB <= POOL_MESSAGE_BYTES
