"""The HTML of the agent's status page, rendered from its JSON document (statuspage.py).

No templates and no JavaScript: a few tables, every value escaped, a meta refresh.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from hivemind_cluster.core.console import age
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.mesh.wireguard import ONLINE_HANDSHAKE_AGE

REFRESH_SECONDS = 5
JSON_PATH = "/status.json"


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0 auto;padding:.75rem;max-width:46rem;"
    "line-height:1.4}h1{font-size:1.3rem}h2{font-size:1.05rem;margin:1.2rem 0 .3rem}"
    "table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25rem .4rem;"
    "border-bottom:1px solid #ddd;vertical-align:top}th{font-weight:600;color:#444;"
    "white-space:nowrap}.id{overflow-wrap:anywhere}.ok{color:#06702f}.bad{color:#b00020}"
    "footer{margin-top:1.5rem;color:#666;font-size:.85rem}"
)


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _utc(then: float) -> datetime:
    return datetime.fromtimestamp(then, UTC)


def _when(then: float | None, now: float) -> str:
    """``<time>`` with the age as text and the UTC time as its title."""
    if then is None:
        return "never"
    iso, shown = _utc(then).strftime("%Y-%m-%dT%H:%M:%SZ"), _utc(then).strftime("%c UTC")
    return f'<time datetime="{iso}" title="{_e(shown)}">{_e(age(now - then))} ago</time>'


def _flag(good: bool, markup: str) -> str:
    """``markup`` (already escaped) in green or red."""
    return f'<span class="{"ok" if good else "bad"}">{markup}</span>'


def _rows(rows: list[tuple[str, str]]) -> str:
    """A two-column table; the values are HTML already escaped by the caller."""
    body = "".join(f'<tr><th>{_e(k)}</th><td class="id">{v}</td></tr>' for k, v in rows)
    return f"<table>{body}</table>"


def _table(headers: list[str], rows: list[list[str]], long: int) -> str:
    """Rows of escaped cells; the first ``long`` columns hold long unbroken values (ids,
    image names) that may wrap anywhere on a narrow screen."""
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    cells = ['<td class="id">'] * long + ["<td>"] * (len(headers) - long)
    body = "".join(
        "<tr>" + "".join(f"{td}{c}</td>" for td, c in zip(cells, row, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _hub_rows(hub: dict[str, Any], now: float) -> list[tuple[str, str]]:
    rows = [("pool", _e(hub["pool_address"]))]
    if hub["connected"] is None:
        return [*rows, ("stream", "none (this node runs no tasks)")]
    state = "connected" if hub["connected"] else "disconnected"
    since = f" since {_when(hub['since'], now)}" if hub["since"] is not None else " (never yet)"
    return [
        *rows,
        ("stream", _flag(hub["connected"], state) + since),
        ("last from pool", _when(hub["last_received"], now)),
        ("last to pool", _when(hub["last_sent"], now)),
        *([("draining", "yes: taking no new tasks")] if hub["draining"] else []),
    ]


def _ledger_html(ledger: dict[str, Any]) -> str:
    if not ledger["available"]:
        return f"<p>{_flag(False, 'unavailable')}: {_e(ledger['error'])}</p>"
    return _rows(
        [
            ("account", f"{_e(ledger['account'])} ({_e(ledger['kind'])})"),
            ("balance", f"{_e(ledger['balance_cpt'])} CPT"),
            ("earned", f"{_e(ledger['earned_cpt'])} CPT"),
        ]
    )


def _peer_table(peers: list[dict[str, Any]], now: float) -> str:
    """The other members: direct (green) or through the hub, with WireGuard's figures."""
    rows = [
        [
            _e(p["name"]),
            _e(p["role"]),
            _e(p["overlay_ip"]),
            _flag(p["path"] == "direct", _e(p["path"])),
            _e(p["endpoint"] or "-"),
            _when(p["last_handshake"], now),
            _e(format_bytes(p["rx_bytes"])),
            _e(format_bytes(p["tx_bytes"])),
        ]
        for p in peers
    ]
    headers = ["peer", "role", "overlay IP", "path", "endpoint", "handshake", "rx", "tx"]
    return _table(headers, rows, long=1)


def render_html(document: dict[str, Any]) -> str:
    """The page for a ``status_json`` document; every value escaped."""
    now = document["generated_at"]
    node, overlay, hub = document["node"], document["overlay"], document["hub"]
    tasks = document["tasks"]
    running = [
        [_e(t["task_id"]), _e(t["image"]), _e(t["attempt"]), _when(t["started_at"], now)]
        for t in tasks["running"]
    ]
    recent = [
        [
            _e(t["task_id"]),
            _e(t["attempt"]),
            _flag(t["status"] == "succeeded", _e(t["status"])),
            _e(t["exit_code"]),
            _when(t["ended_at"], now),
            _e(t["earned_cpt"] or "-"),
        ]
        for t in tasks["recent"]
    ]
    handshake = overlay["last_handshake"]
    fresh = handshake is not None and now - handshake < ONLINE_HANDSHAKE_AGE
    node_rows = [
        ("id", _e(node["id"])),
        ("name", _e(node["name"])),
        ("role", _e(node["role"])),
        ("overlay IP", _e(node["overlay_ip"])),
    ]
    link = _flag(overlay["up"], "up" if overlay["up"] else "DOWN")
    overlay_rows = [
        ("interface", f"{_e(overlay['interface'])} {link}"),
        ("hub peer", f"{_e(hub['ip'])} via {_e(overlay['hub_endpoint'] or '?')}"),
        ("handshake", _flag(fresh, _when(handshake, now))),
        ("received", _e(format_bytes(overlay["rx_bytes"]))),
        ("sent", _e(format_bytes(overlay["tx_bytes"]))),
    ]
    sections = [
        ("Node", _rows(node_rows)),
        ("Overlay", _rows(overlay_rows)),
        ("Hub", _rows(_hub_rows(hub, now))),
        ("Peers", _peer_table(document["peers"], now)),
        ("Running tasks", _table(["task", "image", "try", "started"], running, long=2)),
        (
            "Recent tasks",
            _table(["task", "try", "status", "exit", "ended", "CPT"], recent, long=1),
        ),
        ("CPT", _ledger_html(document["ledger"])),
    ]
    body = "".join(f"<section><h2>{_e(name)}</h2>{part}</section>" for name, part in sections)
    title = f"HiveMind agent {node['name'] or node['id']}"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>{body}"
        f"<footer>generated {_utc(now).strftime('%H:%M:%S UTC')}, "
        f"refreshes every {REFRESH_SECONDS} s · "
        f'<a href="{JSON_PATH}">{JSON_PATH}</a></footer></body></html>'
    )
