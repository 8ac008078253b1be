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
from hivemind_cluster.web.constants import FORM_BUNDLE_BYTES

log = logging.getLogger("hivemind.web")
# Requests served at once. Password hashing holds at most registration_hashes + login_hashes
# + twice waiting_hashes = 9 of them (users.Limits), so a flood of registrations or logins
# always leaves threads to everyone else's requests.
THREADS = 16
# The largest body a route takes (web/constants.py: the form's bundle), with room for the
# rest of the form: waitress refuses more before buffering it, rather than spooling up to
# its default 1 GiB to disk for the app to refuse.
MAX_REQUEST_BODY = FORM_BUNDLE_BYTES + MIB


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
    )


def _exit_with_parent(parent: int) -> None:
    """Started by ``up`` in a session of its own: leave when the hub is gone (even kill -9)."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)
