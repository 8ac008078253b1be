"""The web's Prometheus metrics: requests by route, method and status, and their latency.

The route label is the URL rule (``/tasks/<task_id>``), never the path: a bounded set
whatever URLs are asked for (a path no rule matches counts as ``unmatched``). Under
``hivemind-hub up`` the web is a child process that runs with prometheus-client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by hub/webprocess.py): its figures are
written to files there and served by the hub's own ``/metrics`` (hub/metrics.py), so the
web answers no metrics request itself.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "hivemind_web_requests",
    "Web requests by route, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "hivemind_web_request_duration_seconds",
    "Web request handling time by route",
    ["route"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def init_app(app: Flask) -> None:
    app.before_request(_started)
    app.after_request(_count)


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _count(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in METHODS else "other"
    REQUESTS.labels(route, method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        LATENCY.labels(route).observe(time.perf_counter() - started)
    return response
