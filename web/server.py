"""Serving the web UI: ``hivemind-hub web`` (waitress, on the hub's overlay address only).

``hivemind-hub up`` runs this in a child process of its own (``hub/webprocess.py``) so
that page rendering never competes with the pool's event loop for the GIL; the web
reaches the pool over gRPC like any other client.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from hivemind_cluster.core.names import WEB_PARENT_ENV
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.units import MIB
from hivemind_cluster.web.constants import BODY_LIMITS

log = logging.getLogger("hivemind.web")
# Requests served at once. Password hashing holds at most registration_hashes + login_hashes
# + twice waiting_hashes = 9 of them (users.Limits), so a flood of registrations or logins
# always leaves threads to everyone else's requests.
THREADS = 16
# waitress reads a whole request body (to a temporary file) before the app can authenticate
# anyone, so it refuses one over the largest a route takes (web/constants.py: an upload's
# PATCH, 16 MiB; the form's bundle is no bigger), with room for a multipart form's other
# parts, rather than spooling up to its default 1 GiB for anyone, on any route.
MAX_REQUEST_BODY = max(BODY_LIMITS.values()) + MIB
# Bytes waitress reads from a socket at once. Its default (8 KiB) costs about 4 CPU-seconds
# per GiB uploaded in Python-level reads (measured on loopback: 4.2 s against 0.9 s at
# 1 MiB), CPU the hub's WireGuard needs for the same bytes.
RECV_BYTES = MIB


def serve(settings: HubSettings) -> None:
    """Run the web UI in the foreground until killed."""
    import waitress

    from hivemind_cluster.web import create_app

    app = create_app({"SETTINGS": settings})
    parent = os.environ.get(WEB_PARENT_ENV, "")
    if parent.isdigit():
        threading.Thread(target=_exit_with_parent, args=(int(parent),), daemon=True).start()
    log.info("web UI on http://%s:%d", settings.hub_ip, settings.web_port)
    waitress.serve(
        app,
        host=settings.hub_ip,
        port=settings.web_port,
        threads=THREADS,
        ident="hivemind",
        max_request_body_size=MAX_REQUEST_BODY,
        recv_bytes=RECV_BYTES,
    )


def _exit_with_parent(parent: int) -> None:
    """Started by ``up`` in a session of its own: leave when the hub is gone (even kill -9)."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)
