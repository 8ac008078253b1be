"""The mesh status page (``/mesh``) and its data (``GET /api/v1/mesh``).

One row per member node, from three sources joined on the node: the registry in Redis
(WireGuard key), the hub's WireGuard interface (last handshake, rx/tx) and the pool (name,
role, overlay IP, connection, heartbeat, capacity, allocation, use, running tasks). The
rows are ``mesh/inventory.py``'s, the same ``hivemind-hub nodes`` prints, with the pool's
figures added; ``pool_state`` is a worker's live state there (ready, draining, offline,
lost). A worker is online while its pool stream is connected; any other node while its
last handshake is recent. Each node's direct and relayed peers come from its agent's last
report, the bytes the hub relayed from the hub's counters (``totals.relayed_bytes``: all).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from hivemind_cluster.client.views import View
from hivemind_cluster.core.errors import HiveMindError
from hivemind_cluster.mesh import inventory
from hivemind_cluster.mesh import nodes as registry
from hivemind_cluster.web import pagecharts
from hivemind_cluster.web.auth import current_user, login_required
from hivemind_cluster.web.services import Services, services

bp = Blueprint("mesh", __name__)
log = logging.getLogger("hivemind.web.mesh")
RESOURCES = ("cpu_millis", "memory_bytes", "gpus")


def snapshot(account: str) -> dict[str, Any]:
    found = services()
    now = time.time()
    keys = registry.wg_keys_by_node(found.db)
    peers = _peers(found)
    members = [
        _member(node, keys.get(node["id"], ""), now)
        for node in found.pool(account).nodes()  # the ids of the user's own tasks only
    ]
    paths = inventory.read_paths(found.db, found.settings.interface, [m.id for m in members])
    rows = inventory.node_rows(found.settings, members, peers, now, _hub_figures(), paths)
    return {"time": now, "wireguard": peers is not None, "totals": _totals(rows), "nodes": rows}


def _peers(found: Services) -> inventory.Peers:
    """The hub's WireGuard peers; None when the interface is gone (say so, show the rest)."""
    try:
        return inventory.peers_by_key(found.wireguard_peers())
    except HiveMindError as exc:
        log.warning("cannot read WireGuard peers: %s", exc.message)
        return None


def _member(node: View, wg_public_key: str, now: float) -> inventory.Member:
    """A node of the pool's list (active members only), with its figures from the pool."""
    figures = {
        "pool_state": node["state"],
        "heartbeat_age": now - node["last_heartbeat"] if node["last_heartbeat"] else None,
        "capacity": node["capacity"],
        "allocated": node["allocated"],
        "cpu_percent": node["cpu_percent"],
        "memory_used_bytes": node["memory_used_bytes"],
        "gpus": node["gpus"],
        "running": node["running"],
        "running_tasks": node["running_tasks"],
    }
    return inventory.Member(
        id=node["id"],
        name=node["name"],
        role=node["role"],
        overlay_ip=node["overlay_ip"],
        wg_public_key=wg_public_key,
        connected=bool(node["connected"]) if node["role"] == "worker" else None,
        details=figures,
    )


def _hub_figures() -> dict[str, Any]:
    """The hub runs no tasks: its pool figures are empty."""
    empty = dict.fromkeys(RESOURCES, 0)
    return {
        "pool_state": "",
        "heartbeat_age": None,
        "capacity": empty,
        "allocated": dict(empty),
        "cpu_percent": 0.0,
        "memory_used_bytes": 0,
        "gpus": [],
        "running": [],
        "running_tasks": 0,
    }


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    workers = [r for r in rows if r["role"] == "worker"]
    online = [r for r in workers if r["online"]]
    return {
        "nodes": len(rows),
        "online": sum(1 for r in rows if r["online"]),
        "workers": len(workers),
        "workers_online": len(online),
        "capacity": {k: sum(r["capacity"][k] for r in online) for k in RESOURCES},
        "allocated": {k: sum(r["allocated"][k] for r in online) for k in RESOURCES},
        "running_tasks": sum(r["running_tasks"] for r in rows),
        "relayed_bytes": next(r["relayed_bytes"] for r in rows if r["role"] == "hub"),
    }


@bp.get("/mesh")
@login_required
def page() -> ResponseReturnValue:
    """The whole page, or with ``?partial=1`` just the live part (the page's script); the
    cluster's charts span ``?range=`` (1h, 6h or 24h; web/pagecharts.py)."""
    window = pagecharts.Window.named(request.args.get("range", ""))
    template = "_mesh_live.html" if request.args.get("partial") else "mesh.html"
    mesh = snapshot(current_user().account)
    workers = [row["id"] for row in mesh["nodes"] if row["role"] == "worker"]
    charts = pagecharts.mesh_charts(services().db, workers, window, mesh["time"])
    return render_template(
        template, mesh=mesh, charts=charts, window=window, ranges=pagecharts.RANGES
    )
