"""Error handlers: JSON under /api, a page elsewhere; never a traceback.

A ``HiveMindError`` raised by a view is answered with its HTTP status (errors.py);
Flask's own HTTP errors (404, 405, 413, a failed CSRF check) get the same JSON shape.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, flash, render_template, request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from hivemind_cluster.core.errors import HiveMindError, Unavailable, http_status
from hivemind_cluster.core.units import format_bytes

log = logging.getLogger("hivemind.web")


def init_app(app: Flask) -> None:
    app.register_error_handler(HiveMindError, _hivemind_error)
    app.register_error_handler(redis.RedisError, _redis_error)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def respond(status: int, code: str, message: str) -> ResponseReturnValue:
    if request.path.startswith("/api/"):
        return {"error": {"code": code, "message": message}}, status
    return render_template("error.html", status=status, message=message), status


def _hivemind_error(error: HiveMindError) -> ResponseReturnValue:
    status = http_status(error)
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.path, error.message)
    return respond(status, error.code, error.message)


def form_failed(error: HiveMindError, template: str, **context: Any) -> ResponseReturnValue:
    """A form that was refused: shown again, with what was typed and the reason."""
    flash(error.message, "error")
    return render_template(template, **context), http_status(error)


def _redis_error(error: redis.RedisError) -> ResponseReturnValue:
    log.warning("%s %s: Redis: %s", request.method, request.path, error)
    return _hivemind_error(Unavailable("the hub's database is not answering; try again shortly"))


def _csrf_error(error: CSRFError) -> ResponseReturnValue:
    return respond(400, "csrf_failed", f"{error.description} Reload the page and try again.")


def _too_large(error: RequestEntityTooLarge) -> ResponseReturnValue:
    limit = request.max_content_length or 0  # this route's limit (web/constants.BODY_LIMITS)
    return respond(413, "too_large", f"the request is larger than {format_bytes(limit, True)}")


def _http_error(error: HTTPException) -> ResponseReturnValue:
    code = (error.name or "error").lower().replace(" ", "_")
    return respond(error.code or 500, code, error.description or error.name)


def _unexpected(error: Exception) -> ResponseReturnValue:
    log.exception("%s %s failed", request.method, request.path)
    return respond(500, "internal", "an internal error happened; it has been logged")
