"""The master web UI and JSON API, a Flask app (docs/architecture.md: the web).

``create_app(test_config=None)`` builds it from the hub's state directory
(``HIVEMIND_STATE_DIR``, default /var/lib/hivemind-hub): the hub's Redis for users, the
pool over gRPC with the hub's own certificate, the hub's blob store. Tests pass
``SETTINGS``, ``REDIS``, ``CHANNEL`` (to the pool) and maybe ``BLOBS`` in ``test_config``
instead. One blueprint per area: ``auth`` (register, log in and out), ``tasks``,
``ledger``, ``mesh`` (pages), ``api`` and ``uploads`` (/api/v1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from flask_wtf.csrf import CSRFProtect

from hivemind_cluster.blobs.store import BlobStore
from hivemind_cluster.client.channel import Identity, sync_channel
from hivemind_cluster.client.grpcclient import GrpcTaskClient
from hivemind_cluster.core import redisdb
from hivemind_cluster.core.files import write_private
from hivemind_cluster.core.names import DEFAULT_HUB_DIR, WEB_SECRET
from hivemind_cluster.core.settings import load_hub_settings
from hivemind_cluster.mesh.wireguard import WireGuardInterface
from hivemind_cluster.web import metrics
from hivemind_cluster.web.constants import BODY_LIMITS, MAX_BODY
from hivemind_cluster.web.services import Services
from hivemind_cluster.web.users import UserStore

csrf = CSRFProtect()
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # tokens live as long as the session
        JSON_SORT_KEYS=False,
    )
    if test_config is not None:
        app.config.update(test_config)
    app.extensions["hivemind"] = _services(app)
    metrics.init_app(app)  # first: its clock starts before any other hook runs
    app.before_request(_body_limit)  # before CSRFProtect's check reads a form
    csrf.init_app(app)

    from hivemind_cluster.web import api, auth, errorpages, filters, ledger, mesh, tasks, uploads

    errorpages.init_app(app)
    filters.init_app(app)
    auth.init_app(app)
    for blueprint in (auth.bp, tasks.bp, ledger.bp, mesh.bp, api.bp, uploads.bp):
        app.register_blueprint(blueprint)
    for checks_itself in (api.bp, uploads.bp):  # CSRF for browser sessions: api.authenticate
        csrf.exempt(checks_itself)
    app.after_request(_security_headers)
    return app


def _body_limit() -> None:
    """The few routes that take data allow bodies larger than MAX_BODY (their own limit):
    the submit form only as multipart (its bundle file; werkzeug spools that to disk, while
    a urlencoded form is read into memory whole)."""
    limit = BODY_LIMITS.get(request.endpoint or "")
    form_without_file = request.endpoint == "tasks.new_task" and request.mimetype != (
        "multipart/form-data"
    )
    if limit is not None and not form_without_file:
        request.max_content_length = limit


def _security_headers(response: Response) -> Response:
    """Scripts, styles and frames from this origin only: no injected script would run, and
    no other site can frame a page to trick a click on its buttons."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _services(app: Flask) -> Services:
    """The hub's real services, unless the test config brings its own."""
    config = app.config
    state_dir = config.get("STATE_DIR") or os.environ.get("HIVEMIND_STATE_DIR", DEFAULT_HUB_DIR)
    settings = config.get("SETTINGS") or load_hub_settings(state_dir)
    if "SECRET_KEY" not in config or not config["SECRET_KEY"]:
        config["SECRET_KEY"] = _secret_key(Path(settings.state_dir))
    db = config.get("REDIS") or redisdb.connect_hub(settings)
    channel = config.get("CHANNEL") or sync_channel(Identity.load(settings.state_dir))
    interface = WireGuardInterface(settings.interface)
    peers = config.get("WIREGUARD_PEERS") or interface.peers
    users = UserStore(
        db,
        lambda account: GrpcTaskClient(channel).open_account(account, "user"),
        config.get("PASSWORD_HASHER"),
        config.get("LIMITS"),
    )
    given: BlobStore | None = config.get("BLOBS")
    blobs = (lambda: given) if given is not None else (lambda: BlobStore.for_hub(settings, db))
    return Services(settings, db, users, channel, peers, blobs)


def _secret_key(state_dir: Path) -> str:
    """The session signing key, created once per hub (sessions survive restarts)."""
    path = state_dir / WEB_SECRET
    if not path.exists():
        import secrets

        write_private(path, secrets.token_hex(32) + "\n")
    return path.read_text().strip()
