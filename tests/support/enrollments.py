"""An agent's enrollment as unit tests need it: a lab hub on the documentation ranges."""

from __future__ import annotations

import dataclasses
from typing import Any

from hivemind_cluster.agent.state import Enrollment

LAB_ENROLLMENT = Enrollment(
    node_id="n7",
    name="lab-pc",
    role="worker",
    overlay_ip="100.64.0.7",
    overlay_prefix=16,
    hub_ip="100.64.0.1",
    hub_public_key="hub-key",
    hub_endpoint="198.51.100.1:51820",
    hub_allowed_ips=("100.64.0.0/16",),
    persistent_keepalive=25,
    pool_address="100.64.0.1:50051",
    enroll_endpoint="198.51.100.1:7443",
    interface="hm0",
    backend="userspace",
    enrolled_at=0.0,
)


def lab_enrollment(**changes: Any) -> Enrollment:
    """``LAB_ENROLLMENT`` with ``changes`` (node_id, name, interface, ...)."""
    return dataclasses.replace(LAB_ENROLLMENT, **changes)
