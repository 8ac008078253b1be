"""The mesh status page (``/mesh``) and its data (``GET /api/v1/mesh``).

One row per member node, from three sources joined on the node: the registry in Redis
(name, role, overlay IP, WireGuard key), the hub's WireGuard interface (last handshake,
rx/tx) and the pool (connection, heartbeat, capacity, allocation, use, running tasks).
A worker is online while its pool stream is connected; any other node while its last
handshake is recent (WireGuard re-handshakes at least every 2 minutes on a live tunnel).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from hivemind_cluster.core.errors import HiveMindError
from hivemind_cluster.mesh import nodes as registry
from hivemind_cluster.mesh.wireguard import ONLINE_HANDSHAKE_AGE
from hivemind_cluster.web.auth import current_user, login_required
from hivemind_cluster.web.services import services

bp = Blueprint("mesh", __name__)
log = logging.getLogger("hivemind.web.mesh")
RESOURCES = ("cpu_millis", "memory_bytes", "gpus")


def snapshot(account: str) -> dict[str, Any]:
    found = services()
    now = time.time()
    keys = registry.wg_keys_by_node(found.db)
    try:
        peers = {p.public_key: p for p in found.wireguard_peers()}
        wireguard_ok = True
    except HiveMindError as exc:  # the interface is gone: say so, show the rest
        log.warning("cannot read WireGuard peers: %s", exc.message)
        peers, wireguard_ok = {}, False
    rows = [_hub_row(found.settings.name or "hub", found.settings.hub_ip)]
    for node in found.pool(account).nodes():  # the ids of the user's own tasks only
        peer = peers.get(keys.get(node["id"], ""))
        handshake = peer.latest_handshake if peer and peer.latest_handshake else None
        handshake_age = now - handshake if handshake else None
        heartbeat_age = now - node["last_heartbeat"] if node["last_heartbeat"] else None
        worker = node["role"] == "worker"
        fresh = handshake_age is not None and handshake_age < ONLINE_HANDSHAKE_AGE
        rows.append(
            {
                "id": node["id"],
                "name": node["name"],
                "role": node["role"],
                "overlay_ip": node["overlay_ip"],
                "online": bool(node["connected"]) if worker else fresh,
                "state": node["state"] or ("online" if fresh else "offline"),
                "handshake_age": handshake_age,
                "rx_bytes": peer.rx_bytes if peer else None,
                "tx_bytes": peer.tx_bytes if peer else None,
                "heartbeat_age": heartbeat_age,
                "capacity": node["capacity"],
                "allocated": node["allocated"],
                "cpu_percent": node["cpu_percent"],
                "memory_used_bytes": node["memory_used_bytes"],
                "gpus": node["gpus"],
                "running": node["running"],
                "running_tasks": node["running_tasks"],
            }
        )
    return {"time": now, "wireguard": wireguard_ok, "totals": _totals(rows), "nodes": rows}


def _hub_row(name: str, overlay_ip: str) -> dict[str, Any]:
    empty = dict.fromkeys(RESOURCES, 0)
    return {
        "id": "hub",
        "name": name,
        "role": "hub",
        "overlay_ip": overlay_ip,
        "online": True,
        "state": "serving",
        "handshake_age": None,
        "rx_bytes": None,
        "tx_bytes": None,
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
    }


@bp.get("/mesh")
@login_required
def page() -> ResponseReturnValue:
    """The whole page, or with ``?partial=1`` just the live part (the page's script)."""
    template = "_mesh_live.html" if request.args.get("partial") else "mesh.html"
    return render_template(template, mesh=snapshot(current_user().account))
