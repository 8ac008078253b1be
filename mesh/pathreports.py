"""Members' path reports as the hub keeps them (Redis ``PATHS``, TTL ``PATHS_TTL``), for
``hivemind-hub nodes`` and the web's mesh page (mesh/inventory.py).

A report as a member sends it lists every peer with its figures: ~100 KB at 500 members,
written every second or two by each. What the hub keeps is compact, and only what it can
vouch for: the node ids of the peers the member reaches direct and through the hub (paths
whose key is no known member are dropped), the member's own endpoints once checked, and the
per-peer figures only while there are few peers (FIGURES_UP_TO). The records are built
and encoded in a thread (``encoded_records``), off the event loop the streams run on::

    {"time": t, "applied_revision": r, "endpoints": ["198.51.100.7:51820"],
     "direct": ["n1a2b3c4d5e"], "relayed": ["n6f7a8b9c0d"],
     "figures": {"n1a2b3c4d5e": {"endpoint": "...", "last_handshake": t, "rx_bytes": n,
                                 "tx_bytes": n}}}
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import redis

from hivemind_cluster.core import redisdb
from hivemind_cluster.mesh import constants
from hivemind_cluster.mesh.peermembers import checked_endpoints, endpoint_problem
from hivemind_cluster.protos import mesh_pb2

log = logging.getLogger(__name__)
FIGURES_UP_TO = 16  # a report with more peers than this keeps their paths, not their figures


def path_record(
    node_id: str,
    report: mesh_pb2.MemberReport,
    ids_by_key: Mapping[str, str],
    overlay: ipaddress.IPv4Network,
    now: float,
) -> dict[str, Any]:
    """What the hub keeps of ``node_id``'s report (``ids_by_key``: the members' keys)."""
    direct: set[str] = set()
    relayed: set[str] = set()
    figures: dict[str, dict[str, Any]] = {}
    small = len(report.paths) <= FIGURES_UP_TO
    for path in report.paths:
        peer = ids_by_key.get(path.public_key)
        if peer is None or peer == node_id:
            continue
        (direct if path.direct else relayed).add(peer)
        if small:
            figures[peer] = {
                "endpoint": "" if endpoint_problem(path.endpoint, overlay) else path.endpoint,
                "last_handshake": path.last_handshake,
                "rx_bytes": path.rx_bytes,
                "tx_bytes": path.tx_bytes,
            }
    return {
        "time": now,
        "applied_revision": report.applied_revision,
        "endpoints": list(checked_endpoints(report.endpoints, overlay)[0]),
        "direct": sorted(direct),
        "relayed": sorted(relayed - direct),
        "figures": figures,
    }


def encoded_records(
    reports: Mapping[str, mesh_pb2.MemberReport],
    ids_by_key: Mapping[str, str],
    overlay: ipaddress.IPv4Network,
) -> dict[str, str]:
    """node id -> its ``PATHS`` value (run in a thread: the reports are no one else's now)."""
    now = time.time()
    return {
        node_id: redisdb.dumps(path_record(node_id, report, ids_by_key, overlay, now))
        for node_id, report in reports.items()
    }


def reported_paths(db: redis.Redis, node_ids: list[str]) -> dict[str, dict[str, Any]]:
    """node id -> its last path record, for the nodes that reported lately."""
    if not node_ids:
        return {}
    values = db.mget([constants.PATHS.format(id=n) for n in node_ids])
    found: dict[str, dict[str, Any]] = {}
    for node_id, value in zip(node_ids, values, strict=True):
        if not value:
            continue
        try:
            found[node_id] = json.loads(value)
        except ValueError:
            log.warning("the path record of node %s is not JSON: ignored", node_id)
    return found
