"""Register, log in, log out (pages), and who the current user is.

A browser session is a login id in a signed cookie with its record in Redis, so logging
out ends it for good; forms are CSRF-protected. The API also takes ``Authorization:
Bearer <token>`` (api.py). Failed logins are rate limited per username and per address.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from hivemind_cluster.core.errors import HiveMindError, InvalidInput, http_status
from hivemind_cluster.web.errorpages import form_failed, respond
from hivemind_cluster.web.services import services
from hivemind_cluster.web.users import HashingBusy, User

bp = Blueprint("auth", __name__)
P = ParamSpec("P")
R = TypeVar("R")


def init_app(app: Flask) -> None:
    app.before_request(load_session_user)
    app.context_processor(lambda: {"user": g.get("user")})
    app.register_error_handler(HashingBusy, _busy)


def _busy(error: HashingBusy) -> ResponseReturnValue:
    """503 with ``Retry-After``: the hashing slots are full (users.HashingGate)."""
    response = make_response(respond(http_status(error), error.code, error.message))
    response.headers["Retry-After"] = str(error.retry_after)
    return response


def load_session_user() -> None:
    if request.endpoint == "static":  # style and script: nobody's business who asks
        return
    session_id = session.get("id")
    g.user = services().users.user_of_session(session_id) if isinstance(session_id, str) else None


def current_user() -> User:
    user: User | None = g.get("user")
    assert user is not None, "use @login_required"
    return user


def login_required(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
        if g.get("user") is None:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped


def client_address() -> str:
    return request.remote_addr or "unknown"


def _safe_next(target: str | None) -> str:
    """Only local paths: a login link must not send anyone to another site."""
    parts = urlsplit(target or "")
    local = target and target.startswith("/") and not target.startswith("//")
    if not local or "\\" in (target or "") or parts.scheme or parts.netloc:
        return url_for("tasks.dashboard")
    return str(target)


def _form_page(template: str, action: Callable[[str, str], User]) -> ResponseReturnValue:
    """Register and log in: the form, or the user's session and on to ``next``."""
    if request.method == "GET":
        return render_template(template)
    username = request.form.get("username", "")
    try:
        user = action(username, request.form.get("password", ""))
    except HiveMindError as exc:
        return form_failed(exc, template, username=username.strip()[:64])
    session.clear()  # a new session for the new login (no fixation)
    session["id"] = services().users.start_session(user)
    return redirect(_safe_next(request.args.get("next")))


@bp.route("/register", methods=["GET", "POST"])
def register() -> ResponseReturnValue:
    users = services().users

    def create(username: str, password: str) -> User:
        if password != request.form.get("confirm", ""):
            raise InvalidInput("the two passwords differ")
        return users.register(username, password, client_address())

    return _form_page("register.html", create)


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    users = services().users
    return _form_page("login.html", lambda u, p: users.authenticate(u, p, client_address()))


@bp.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    session_id = session.get("id")
    if isinstance(session_id, str):
        services().users.end_session(session_id)
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
