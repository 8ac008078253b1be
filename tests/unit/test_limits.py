"""Limits set in different modules that must fit together."""

from __future__ import annotations

from hivemind_cluster.core.grpcutil import POOL_MESSAGE_BYTES
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.bundles import MAX_INPUT_BYTES


def test_a_pool_message_carries_the_largest_bundle_with_room_to_spare() -> None:
    # A submission carries its bundle and the rest of the request; gRPC refuses a message
    # over the limit before the pool can say which bundle limit was exceeded.
    assert POOL_MESSAGE_BYTES >= MAX_INPUT_BYTES + MIB
