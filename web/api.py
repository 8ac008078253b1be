"""The JSON API under /api/v1 (the ``hivemind`` CLI uses it; see openapi.py); uploads are
in uploads.py.

Callers authenticate with ``Authorization: Bearer <token>`` (from ``POST /tokens``) or,
from the UI's own scripts, with the browser session — then a state-changing request
must carry the CSRF token (``X-CSRFToken``), exactly like the forms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from flask import Blueprint, Response, g, request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms import ValidationError

from hivemind_cluster.client.grpcclient import GrpcTaskClient
from hivemind_cluster.client.views import cpt
from hivemind_cluster.core.audit import AuditLog, Event
from hivemind_cluster.core.errors import InvalidInput, Unauthenticated
from hivemind_cluster.core.units import parse_cpt
from hivemind_cluster.mesh.tokens import secret_hash as token_digest
from hivemind_cluster.model import submission
from hivemind_cluster.model.accounts import REGISTRATION_GRANT, check_account
from hivemind_cluster.model.states import ALL_STATES, MAX_ROWS
from hivemind_cluster.model.submission import check_text, whole_number
from hivemind_cluster.web import mesh, openapi
from hivemind_cluster.web.auth import client_address
from hivemind_cluster.web.downloads import result_download
from hivemind_cluster.web.services import services
from hivemind_cluster.web.users import User

bp = Blueprint("api", __name__, url_prefix="/api/v1")
P = ParamSpec("P")
R = TypeVar("R")
MAX_FIELD = 256  # usernames, passwords, project names


def authenticate() -> User:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("use Authorization: Bearer <token>")
        return services().users.user_of_token(token.strip())
    user: User | None = g.get("user")
    if user is None:
        raise Unauthenticated("log in first: POST /api/v1/tokens, then send the token")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        try:
            validate_csrf(request.headers.get("X-CSRFToken", ""))
        except ValidationError as exc:
            raise CSRFError(str(exc)) from None
    return user


def authenticated(view: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        g.api_user = authenticate()
        return view(*args, **kwargs)

    return wrapped


def api_user() -> User:
    user: User = g.api_user
    return user


def my_pool() -> GrpcTaskClient:
    """The pool as the caller's account, told the caller's address (for its audit log)."""
    return services().pool(api_user().account).from_address(client_address())


def read_json() -> Any:
    """The parsed body, or None when it is not JSON (or nested past Python's recursion)."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        raise InvalidInput("the request body is nested too deeply") from None


def json_body() -> dict[str, Any]:
    body = read_json()
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body


def text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name}: required text")
    return check_text(value, name, MAX_FIELD)


def limit_arg(default: int) -> int:
    text = request.args.get("limit", "")
    limit = whole_number(text, "limit", MAX_ROWS) if text else default
    if limit < 1:
        raise InvalidInput(f"limit: a whole number from 1 to {MAX_ROWS}")
    return limit


# Accounts and tokens


@bp.post("/register")
def register() -> ResponseReturnValue:
    body = json_body()
    users = services().users
    user = users.register(
        text_field(body, "username"), text_field(body, "password"), client_address()
    )
    # The grant, not a pool call: a pool that is down must not turn a done registration
    # into an error that a retry then reports as "taken".
    return {
        "username": user.name,
        "account": user.account,
        "balance": cpt(REGISTRATION_GRANT),
        "balance_micro": REGISTRATION_GRANT,
    }, 201


@bp.post("/tokens")
def login() -> ResponseReturnValue:
    body = json_body()
    user = services().users.authenticate(
        text_field(body, "username"), text_field(body, "password"), client_address()
    )
    token = services().users.issue_token(user)
    audited_token("api_token.issue", user, token)
    return {"token": token, "username": user.name}, 201


@bp.delete("/tokens/current")
@authenticated
def logout() -> ResponseReturnValue:
    _scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not token:
        raise InvalidInput("only an API token can be revoked here (browsers: POST /logout)")
    services().users.revoke_token(token.strip())
    audited_token("api_token.revoke", api_user(), token.strip())
    return Response(status=204)


def audited_token(action: str, user: User, token: str) -> None:
    """An API token issued or revoked, named by its digest's start (never the token)."""
    target = f"api_token:{token_digest(token)[:12]}"
    AuditLog(services().db).record(Event(user.account, client_address(), action, target))


@bp.get("/me")
@authenticated
def me() -> ResponseReturnValue:
    user = api_user()
    balance = services().pool(user.account).balance("")
    return {"username": user.name, "account": user.account} | {
        k: balance[k] for k in ("balance", "balance_micro")
    }


# Tasks


@bp.get("/tasks")
@authenticated
def list_tasks() -> ResponseReturnValue:
    statuses = request.args.getlist("status")
    unknown = [s for s in statuses if s not in ALL_STATES]
    if unknown:
        raise InvalidInput(f"status {unknown[0][:30]!r}: one of {', '.join(ALL_STATES)}")
    return {"tasks": my_pool().tasks(statuses, limit_arg(100))}


@bp.post("/tasks")
@authenticated
def submit() -> ResponseReturnValue:
    submitted = submission.from_json(read_json())
    return my_pool().submit_request(submitted), 201


@bp.post("/tasks/quote")
@authenticated
def quote() -> ResponseReturnValue:
    submitted = submission.from_json(read_json())
    found = services()
    bundle = found.bundle_file(api_user().account, submitted.bundle_digest)
    cap = submission.price_cap(submitted, found.settings, bundle)
    return {"price_cap": cpt(cap), "price_cap_micro": cap}


@bp.get("/tasks/<task_id>")
@authenticated
def task(task_id: str) -> ResponseReturnValue:
    return my_pool().get(task_id)


@bp.post("/tasks/<task_id>/cancel")
@authenticated
def cancel(task_id: str) -> ResponseReturnValue:
    return my_pool().cancel(task_id)


@bp.get("/tasks/<task_id>/logs")
@authenticated
def logs(task_id: str) -> ResponseReturnValue:
    """A page of entries after the entry id ``after`` (``next`` of the previous page)."""
    after = request.args.get("after", "")
    entries, done = my_pool().log_page(task_id, after, MAX_ROWS)
    return {"entries": entries, "next": entries[-1]["id"] if entries else after, "done": done}


@bp.get("/tasks/<task_id>/result")
@authenticated
def result(task_id: str) -> ResponseReturnValue:
    return result_download(my_pool(), task_id)


# Ledger


@bp.get("/balance")
@authenticated
def balance() -> ResponseReturnValue:
    return my_pool().balance("")


@bp.get("/history")
@authenticated
def history() -> ResponseReturnValue:
    return {"entries": my_pool().history("", limit_arg(100))}


@bp.post("/tips")
@authenticated
def tip() -> ResponseReturnValue:
    body = json_body()
    project = check_account(text_field(body, "project"))
    amount = body.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, str | int | float):
        raise InvalidInput('amount: CPT, as a number or text like "2.5"')
    return my_pool().tip(project, parse_cpt(str(amount))), 201


@bp.get("/rates")
def rates() -> ResponseReturnValue:
    return services().pool().rates()


# The pool and the mesh


@bp.get("/nodes")
@authenticated
def nodes() -> ResponseReturnValue:
    return {"nodes": my_pool().nodes()}


@bp.get("/mesh")
@authenticated
def mesh_status() -> ResponseReturnValue:
    return mesh.snapshot(api_user().account)


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    document: dict[str, object] = openapi.DOCUMENT
    return document
