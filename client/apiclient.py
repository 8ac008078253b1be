"""``TaskClient`` over the web's JSON API (``/api/v1``), for the ``hivemind`` CLI.

Plain ``urllib``; proxies from the environment are ignored (the API answers only on the
overlay, which no proxy can reach). An error the API sends, ``{"error": {"code",
"message"}}``, becomes the matching ``HiveMindError`` with the server's message; a server
that cannot be reached or does not answer is one ``Unavailable`` line naming the URL.

Blobs go over ``http.client`` directly, streamed from and to files: an upload's pieces
(``PATCH /uploads/<id>``, ``UPLOAD_REQUEST_BYTES`` each) are read from the file as they are
sent, a result (``GET /tasks/<id>/result``, with ``Range`` to resume) is read in chunks.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

from hivemind_cluster.client.taskclient import CALL_TIMEOUT, TRANSFER_TIMEOUT
from hivemind_cluster.client.transfer import ResultStream, UploadState, upload_state
from hivemind_cluster.client.views import View
from hivemind_cluster.core import errors
from hivemind_cluster.core.errors import HiveMindError, InvalidInput, Unavailable
from hivemind_cluster.core.settings import DEFAULT_WEB_PORT
from hivemind_cluster.core.units import MIB, format_cpt
from hivemind_cluster.model.blobs import CHUNK_BYTES, OnBytes, digest_hex

API_PATH = "/api/v1"
LOG_POLL_SECONDS = 0.5
UPLOAD_REQUEST_BYTES = 8 * MIB  # one PATCH (the web takes up to 16 MiB)
OFFSET_HEADER = "Upload-Offset"
CHUNK_TYPE = "application/offset+octet-stream"
DIGEST_HEADER = "X-Content-SHA256"
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-[0-9]+/[0-9]+")


def api_url(text: str) -> str:
    """``100.64.0.1`` → ``http://100.64.0.1:5001/api/v1``; a full URL keeps its port and path."""
    if not isinstance(text, str):  # a config file edited by hand
        raise InvalidInput(f"the API URL must be text like http://100.64.0.1:{DEFAULT_WEB_PORT}")
    text = text.strip().rstrip("/")
    try:
        if "://" not in text:
            text = f"http://{text}"
            if urlsplit(text).port is None:
                text += f":{DEFAULT_WEB_PORT}"
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise InvalidInput(f"API URL {text[:80]!r} is not a valid URL") from None
    odd = parts.query or parts.fragment or "@" in parts.netloc or not text.isprintable()
    if parts.scheme not in ("http", "https") or not parts.hostname or odd or " " in text:
        raise InvalidInput(f"API URL {text[:80]!r}: use http://HOST:PORT (the hub's web UI)")
    return text if parts.path.endswith(API_PATH) else text + API_PATH


def api_error(status: int, payload: bytes, url: str) -> HiveMindError:
    """The error for an HTTP error answer: the server's own, or one naming the status."""
    try:
        error = json.loads(payload)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return HiveMindError(f"{url} answered HTTP {status} without an API error (not HiveMind?)")
    # An unknown code (Flask's own errors, a newer server) keeps its message, and gets its
    # class from the status.
    return errors.error_for(code, message) or _by_status(status)(message)


def _by_status(status: int) -> type[HiveMindError]:
    if status in (502, 503, 504):
        return Unavailable
    return InvalidInput if 400 <= status < 500 else HiveMindError


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx answer then surfaces as an HTTPError: "not HiveMind?"


class ApiClient:
    def __init__(self, api: str, token: str = "", timeout: float = CALL_TIMEOUT) -> None:
        self.api = api_url(api)
        self.token = token
        self.timeout = timeout
        # No proxies (the overlay is not behind one) and no redirects (urllib would resend
        # the Authorization header to wherever a redirect points).
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        timeout: float = 0,
    ) -> bytes:
        """The body of a successful answer; an error answer raises its ``HiveMindError``."""
        url = self.api + path + (f"?{urlencode(query, doseq=True)}" if query else "")
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        call = urllib.request.Request(url, data=data, headers=headers, method=method)
        timeout = timeout or self.timeout
        try:
            with self.opener.open(call, timeout=timeout) as answer:
                payload: bytes = answer.read()
                return payload
        except urllib.error.HTTPError as exc:
            try:
                payload = exc.read()
            except (OSError, http.client.HTTPException):
                payload = b""
            raise api_error(exc.code, payload, self.api) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason, timeout) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc, timeout) from None

    def _unreachable(self, reason: object, timeout: float) -> Unavailable:
        if isinstance(reason, TimeoutError):
            what = f"did not answer within {timeout:g}s"
        elif isinstance(reason, ConnectionRefusedError):
            what = "refused the connection (is the hub's web server running?)"
        else:
            what = f"cannot be reached: {getattr(reason, 'strerror', None) or reason}"
        return Unavailable(f"the HiveMind API at {self.api} {what}")

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """A JSON answer (``None`` for an empty one)."""
        payload = self.request(method, path, body, {k: v for k, v in query.items() if v})
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            raise HiveMindError(f"{self.api}{path} did not answer JSON (not HiveMind?)") from None

    # Accounts

    def register(self, username: str, password: str) -> View:
        found: View = self.call("POST", "/register", {"username": username, "password": password})
        return found

    def login(self, username: str, password: str) -> str:
        """A new API token for the account."""
        found = self.call("POST", "/tokens", {"username": username, "password": password})
        token: str = found["token"]
        return token

    def logout(self) -> None:
        self.call("DELETE", "/tokens/current")

    # TaskClient

    def submit(self, body: View) -> View:
        found: View = self.call("POST", "/tasks", body)
        return found

    def get(self, task_id: str) -> View:
        found: View = self.call("GET", task_path(task_id))
        return found

    def cancel(self, task_id: str) -> View:
        found: View = self.call("POST", task_path(task_id, "/cancel"))
        return found

    def tasks(self, statuses: list[str], limit: int) -> list[View]:
        found: list[View] = self.call("GET", "/tasks", status=statuses, limit=limit)["tasks"]
        return found

    def logs(self, task_id: str, follow: bool) -> Iterator[View]:
        """Pages of ``GET /tasks/{id}/logs?after=ID``: all there is now, or with ``follow``
        until ``done`` (the status is read before the entries, so nothing is missed)."""
        after = ""
        while True:
            page = self.call("GET", task_path(task_id, "/logs"), after=after)
            yield from page["entries"]
            after = str(page["next"])
            if page["done"] or (not follow and not page["entries"]):
                return
            if not page["entries"]:
                time.sleep(LOG_POLL_SECONDS)

    # Blobs (client/transfer.py runs the algorithms)

    def begin_upload(self, digest: str, size: int) -> UploadState:
        return upload_state(self.call("POST", "/uploads", {"size": size, "digest": digest}))

    def send_upload(
        self, upload_id: str, offset: int, source: BinaryIO, length: int, on_bytes: OnBytes
    ) -> UploadState:
        """One ``PATCH`` of up to UPLOAD_REQUEST_BYTES, its body read from ``source`` as it
        goes out; 409 (someone else's offset) is ``Conflict``."""
        length = min(length, UPLOAD_REQUEST_BYTES)
        headers = self._headers() | {
            OFFSET_HEADER: str(offset),
            "Content-Type": CHUNK_TYPE,
            "Content-Length": str(length),
        }
        connection = self._connection()
        try:
            path = self._path(f"/uploads/{quote(upload_id, safe='')}")
            connection.request("PATCH", path, _Body(source, length, on_bytes), headers)
            answer = connection.getresponse()
            payload = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc, TRANSFER_TIMEOUT) from None
        finally:
            connection.close()
        if answer.status >= 300:
            raise api_error(answer.status, payload, self.api)
        try:
            return upload_state(json.loads(payload))
        except ValueError:
            raise HiveMindError(f"{self.api} did not answer an upload with JSON") from None

    def read_result(self, task_id: str, offset: int, digest: str) -> ResultStream:
        """``GET /tasks/<id>/result``; from ``offset`` with ``Range``, ``If-Range`` naming
        the digest (the hub's ETag): a result that is another blob comes whole (200)."""
        headers = self._headers()
        if offset:
            headers |= {"Range": f"bytes={offset}-", "If-Range": f'"{digest_hex(digest)}"'}
        connection = self._connection()
        try:
            connection.request("GET", self._path(task_path(task_id, "/result")), None, headers)
            answer = connection.getresponse()
            payload = b"" if answer.status in (200, 206) else answer.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._unreachable(exc, TRANSFER_TIMEOUT) from None
        if answer.status not in (200, 206):
            connection.close()
            if answer.status == 416 and offset:  # the part is longer than the result
                return self.read_result(task_id, 0, digest)
            if answer.status == 204:  # the task wrote nothing
                return ResultStream(0, iter(()))
            raise api_error(answer.status, payload, self.api)
        try:
            start = self._result_start(answer, offset, digest)
        except HiveMindError:
            connection.close()
            raise
        return ResultStream(start, self._chunks(connection, answer))

    def _result_start(self, answer: http.client.HTTPResponse, offset: int, digest: str) -> int:
        sent = answer.getheader(DIGEST_HEADER)
        if sent and sent != digest:
            raise HiveMindError(f"{self.api} sent the result {sent}, but the task's is {digest}")
        if answer.status == 200:
            return 0
        found = _CONTENT_RANGE.fullmatch(answer.getheader("Content-Range") or "")
        if found is None or int(found[1]) != offset:
            raise HiveMindError(f"{self.api} answered bytes={offset}- with another range")
        return offset

    def _chunks(
        self, connection: http.client.HTTPConnection, answer: http.client.HTTPResponse
    ) -> Iterator[bytes]:
        try:
            while chunk := answer.read(CHUNK_BYTES):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc, TRANSFER_TIMEOUT) from None
        finally:
            connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        """A new connection for one transfer request (no proxy, like the JSON calls)."""
        parts = urlsplit(self.api)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        return kind(
            parts.hostname or "", parts.port, timeout=TRANSFER_TIMEOUT, blocksize=CHUNK_BYTES
        )

    def _path(self, path: str) -> str:
        return urlsplit(self.api).path + path

    def nodes(self) -> list[View]:
        found: list[View] = self.call("GET", "/nodes")["nodes"]
        return found

    def balance(self, account: str) -> View:
        if account:
            raise InvalidInput("the API shows your own balance only (no --account)")
        found: View = self.call("GET", "/balance")
        return found

    def history(self, account: str, limit: int) -> list[View]:
        if account:
            raise InvalidInput("the API shows your own history only (no --account)")
        found: list[View] = self.call("GET", "/history", limit=limit)["entries"]
        return found

    def tip(self, project: str, amount_micro: int) -> View:
        body = {"project": project, "amount": format_cpt(amount_micro)}
        found: View = self.call("POST", "/tips", body)
        return found

    def rates(self) -> View:
        found: View = self.call("GET", "/rates")
        return found


class _Body:
    """``length`` bytes of ``source`` as a request body, read as http.client sends them; a
    file that ends early (it shrank) stops the request."""

    def __init__(self, source: BinaryIO, length: int, on_bytes: OnBytes) -> None:
        self.source, self.left, self.on_bytes = source, length, on_bytes

    def read(self, size: int = -1) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        data = self.source.read(want) if want else b""
        if len(data) < want:
            raise InvalidInput("the file got shorter while it was being sent")
        self.left -= len(data)
        self.on_bytes(len(data))
        return data


def task_path(task_id: str, rest: str = "") -> str:
    if not task_id:
        raise InvalidInput("a task id is required")
    return f"/tasks/{quote(task_id, safe='')}{rest}"
