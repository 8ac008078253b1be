"""The status page's HTTP server (agent/statuspage.py makes what it serves): ``/``,
``/status.json`` and the agent's ``/metrics`` (agent/metricspage.py), on ``status_listen``.

The stdlib ``ThreadingHTTPServer`` in a daemon thread: one small read-only page does not
justify a web framework on every agent. Requests whose ``Host`` is a DNS name other than
``localhost`` are refused (DNS rebinding); ``/metrics`` answers over loopback or the
overlay only, whatever the page binds.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from hivemind_cluster.agent.metricspage import METRICS_PATH, metrics_text, serves_metrics
from hivemind_cluster.agent.state import Enrollment
from hivemind_cluster.agent.statushtml import JSON_PATH, render_html
from hivemind_cluster.agent.statuspage import DEFAULT_PORT, Source, StatusPage, status_json
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.client.channel import Identity
from hivemind_cluster.core.errors import HiveMindError
from hivemind_cluster.core.exposition import CONTENT_TYPE
from hivemind_cluster.core.settings import split_host_port

log = logging.getLogger("hivemind.agent.status")


def host_allowed(header: str) -> bool:
    """A ``Host`` that is an IP literal or ``localhost`` (or none): DNS rebinding, the way a
    web site could read a page on 127.0.0.1, needs a DNS name of the attacker's."""
    if not header:
        return True
    name = header[1:].partition("]")[0] if header.startswith("[") else header.rpartition(":")[0]
    name = name or header  # no port given
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], page: Source) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.page = page
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "hivemind-agent"
    sys_version = ""
    timeout = 10  # seconds a client may take to send its request (no idle sockets held)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        if not host_allowed(self.headers.get("Host", "")):
            self._send(HTTPStatus.MISDIRECTED_REQUEST, "text/plain", b"unknown host\n", send_body)
            return
        path = urlsplit(self.path).path
        if path not in ("/", JSON_PATH, METRICS_PATH):
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n", send_body)
            return
        try:
            status = cast(_Server, self.server).page.status()
            if path == METRICS_PATH:  # never on the underlay, whatever the page binds
                local, client = str(self.connection.getsockname()[0]), self.client_address[0]
                if not serves_metrics(local, str(client), status.enrollment):
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n", send_body)
                else:
                    self._send(HTTPStatus.OK, CONTENT_TYPE, metrics_text(status), send_body)
                return
            document = status_json(status)
        except Exception:  # a bug must cost one page, not the agent's thread
            log.exception("the status page failed")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", b"error\n", send_body)
            return
        if path == JSON_PATH:
            data = json.dumps(document, indent=2, sort_keys=True) + "\n"
            self._send(HTTPStatus.OK, "application/json", data.encode(), send_body)
        else:
            page = render_html(document).encode()
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page, send_body)

    def _send(self, code: HTTPStatus, kind: str, body: bytes, send_body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        )
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class StatusServer:
    """The page's HTTP server on ``host:port`` (port 0 picks one), served by a daemon
    thread from ``start()`` until ``stop()``."""

    def __init__(self, page: Source, host: str, port: int) -> None:
        self.host = host
        self.page = page
        self._httpd = _Server((host, port), page)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="status-page", daemon=True
        )

    @property
    def port(self) -> int:
        """The port listened on (the one picked, for port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return page_url(self.host, self.port)

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
        self.page.close()


def page_url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def configured_url(listen: str) -> str | None:
    """Where ``status_listen`` puts the page (None: turned off or not an address)."""
    try:
        return page_url(*split_host_port(listen, DEFAULT_PORT)) if listen else None
    except HiveMindError:
        return None


def start_status_server(
    listen: str, enrollment: Enrollment, worker: Worker | None, state_dir: Path
) -> StatusServer | None:
    """The agent service's status page, or None when turned off or it cannot be served
    (the address is taken, say): the page is a convenience and must never keep the
    overlay or the worker down."""
    if not listen:
        return None
    page: StatusPage | None = None
    try:
        identity = worker.identity if worker is not None else Identity.load(state_dir)
        host, port = split_host_port(listen, DEFAULT_PORT)
        page = StatusPage(enrollment, identity, worker, state_dir=state_dir)
        server = StatusServer(page, host, port)
    except (OSError, HiveMindError) as exc:
        if page is not None:
            page.close()
        message = exc.message if isinstance(exc, HiveMindError) else str(exc)
        log.error("no status page on %s: %s", listen, message)
        return None
    log.info("status page at %s", server.url)
    return server.start()
