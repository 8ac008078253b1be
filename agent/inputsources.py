"""Where a worker's inputs come from: the hub (``Blobs.Read`` on the pool channel, mTLS over
the overlay) or the input's URL (plain HTTP(S) from the worker).

Both read a blob from an offset to its end, so that agent/inputs.py can resume a fetch that
was cut. A URL is fetched with ``requests`` streaming, with no proxy or credentials from the
environment, following at most a few redirects by hand, and never from a destination that
resolves to this machine (loopback), a link-local address (cloud metadata services live
there) or the overlay (the hub and other workers): a task's submitter chose the URL, and
must not reach through the worker what the worker alone may reach. Each request's host
(the URL's, then each redirect's) is resolved once, every address it resolves to is
checked, and the connection dials the address checked (``VettedAdapter``): a name that
resolves anew meanwhile (DNS rebinding) leads nowhere else. What a server answers that a
retry may change (5xx, 429, a name that does not resolve now) is a failure to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import Any, NamedTuple, cast
from urllib.parse import urljoin, urlsplit

import grpc
import requests
import requests.adapters
from urllib3.util.connection import allowed_gai_family

from hivemind_cluster.agent.inputs import (
    InputUnavailable,
    RangeRefused,
    Wanted,
    WrongBytes,
    shown_name,
)
from hivemind_cluster.core.console import one_line
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.model.blobs import CHUNK_BYTES, InputRef
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# The pool's answers that no retry changes: the attempt is not (or no longer) ours, or the
# blob is not one of its inputs.
REFUSALS = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
)
MAX_REDIRECTS = 5
CONNECT_SECONDS, READ_SECONDS = 10.0, 60.0
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
TOO_MANY_REQUESTS = 429
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(?:\d+|\*)", re.IGNORECASE)

PoolChannel = Callable[[], Awaitable[grpc.aio.Channel]]


class HubSource:
    """Blobs of this worker's attempts, read from the pool on its current channel (a read
    cut by a reconnect is resumed on the next one)."""

    def __init__(self, channel: PoolChannel) -> None:
        self.channel = channel

    def wanted(self, ref: InputRef, task_id: str, attempt: int) -> Wanted:
        async def read(offset: int) -> AsyncGenerator[bytes, None]:
            stub = pb_grpc.BlobsStub(await self.channel())
            request = pb.BlobRead(
                digest=ref.digest, offset=offset, task_id=task_id, attempt=attempt
            )
            call = stub.Read(request)
            try:
                async for chunk in call:
                    yield chunk.data
            except grpc.aio.AioRpcError as error:
                if error.code() in REFUSALS:
                    raise InputUnavailable(
                        f"{shown_name(ref)}: the hub refused it: {one_line(error.details() or '')}"
                    ) from None
                raise
            finally:
                call.cancel()  # a reader that stops early ends the stream (no-op once it ended)

        return Wanted(ref, read, "the hub")


class Opened(NamedTuple):
    """A response whose body is the blob from the offset asked, once ``skip`` bytes are
    dropped (a server that ignored ``Range``), and the socket it is read from."""

    session: requests.Session
    response: requests.Response
    skip: int
    sock: socket.socket | None

    def cut(self) -> None:
        """End a read of the body under way on another thread, at once: its socket is shut
        down (closing the response would wait for that read, which holds its buffer's
        lock). The plain socket's shutdown, also for TLS: the SSL object stays the reader's."""
        if self.sock is not None:
            with contextlib.suppress(OSError):  # closed already
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        self.response.close()
        self.session.close()


class UrlSource:
    """Inputs fetched from their URL, checked against the destinations refused."""

    def __init__(
        self, refused: list[IPNetwork], allow_loopback: bool = False, trusted: str = ""
    ) -> None:
        self.refused = list(refused) + list(LINK_LOCAL)
        self.allow_loopback = allow_loopback  # tests serve their URLs on 127.0.0.1
        self.trusted = trusted  # a CA bundle to trust instead of the usual ones (tests)

    @classmethod
    def for_overlay(cls, address: str, allow_loopback: bool = False) -> UrlSource:
        """Refusing the overlay network of an enrollment's ``ip/prefix``."""
        return cls([ipaddress.ip_interface(address).network], allow_loopback)

    def wanted(self, ref: InputRef, bound: int) -> Wanted:
        """A URL input of at most ``bound`` bytes (its size is not known before)."""

        async def read(offset: int) -> AsyncGenerator[bytes, None]:
            opened = await asyncio.to_thread(self.open, ref, offset, bound)
            chunks, on_thread = body(opened), False
            try:
                while True:
                    on_thread = True
                    data = await asyncio.to_thread(next, chunks, b"")
                    on_thread = False
                    if not data:
                        return
                    yield data
            finally:
                if on_thread:  # cancelled while ``chunks`` runs on its thread (or it failed):
                    opened.cut()  # it ends there, and closes the response as it ends
                else:
                    chunks.close()  # not running: closes the response here

        return Wanted(ref, read, urlsplit(ref.url).hostname or "its URL")

    def vetted_address(self, ref: InputRef, host: str, port: int) -> str:
        """The address to dial for ``host``: it resolves now, and to no refused address."""
        try:
            found = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
        except OSError as error:  # perhaps not now only: retried
            raise ConnectionError(f"cannot resolve {host}: {error}") from None
        if not found:
            raise ConnectionError(f"cannot resolve {host}: no address")
        addresses = [str(sockaddr[0]).split("%", 1)[0] for *_, sockaddr in found]
        for address in addresses:
            self.check_address(ref, host, address)
        return addresses[0]

    def check_address(self, ref: InputRef, host: str, address: str) -> None:
        ip: Address = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        loopback = ip.is_loopback or ip.is_unspecified
        refused = any(ip in network for network in self.refused) or ip.is_multicast
        if refused or (loopback and not self.allow_loopback):
            raise InputUnavailable(
                f"{shown_name(ref)}: {host} resolves to {ip}, which a task's input may not "
                "come from (this machine, link-local or the overlay)"
            )

    def open(self, ref: InputRef, offset: int, bound: int) -> Opened:
        """The response with the blob from ``offset``, after the checks; redirects followed,
        each checked."""
        session = requests.Session()
        session.trust_env = False  # no proxies, netrc or CA bundle from the environment
        adapter = VettedAdapter(lambda host, port: self.vetted_address(ref, host, port))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        url = ref.url
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response: requests.Response | None = None
        try:
            for _ in range(MAX_REDIRECTS + 1):
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise InputUnavailable(f"{shown_name(ref)}: {url[:80]!r} is not an http(s) URL")
                response = session.get(
                    url,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(CONNECT_SECONDS, READ_SECONDS),
                    verify=self.trusted or True,
                )
                if not response.is_redirect:
                    break
                url = urljoin(url, response.headers.get("location", ""))
                response.close()
            else:
                raise InputUnavailable(f"{shown_name(ref)}: more than {MAX_REDIRECTS} redirects")
            skip = answered(ref, response, offset, bound)
        except BaseException as error:
            if response is not None:
                response.close()
            session.close()
            if isinstance(error, requests.RequestException):
                raise ConnectionError(one_line(str(error))) from error
            raise
        return Opened(session, response, skip, socket_of(response))


class VettedAdapter(requests.adapters.HTTPAdapter):
    """Dials the address ``vet`` gives for the request's host (resolved and checked), never
    the name itself, which could resolve elsewhere by the time it is dialed. The request
    still names its host (``Host``), and TLS the server name (SNI) and checks the
    certificate against it."""

    def __init__(self, vet: Callable[[str, int], str]) -> None:
        super().__init__(max_retries=0)
        self.vet = vet

    def build_connection_pool_key_attributes(
        self,
        request: requests.PreparedRequest,
        verify: bool | str,
        cert: str | tuple[str, str] | None = None,
    ) -> tuple[Any, Any]:
        params, kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        host_params, pool_kwargs = cast(dict[str, Any], params), cast(dict[str, Any], kwargs)
        host, scheme = str(host_params["host"]), str(host_params["scheme"])
        port = host_params["port"] or (443 if scheme == "https" else 80)
        host_params["host"] = self.vet(host, port)
        if scheme == "https":
            pool_kwargs["server_hostname"] = pool_kwargs["assert_hostname"] = host
        return host_params, pool_kwargs

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        request.headers["Host"] = urlsplit(str(request.url)).netloc.rpartition("@")[2]


def socket_of(response: requests.Response) -> socket.socket | None:
    """The socket a streamed response is read from (urllib3 2 keeps its connection)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def answered(ref: InputRef, response: requests.Response, offset: int, bound: int) -> int:
    """The bytes of the body to skip to reach ``offset``, if the answer serves the blob:
    a refusal raises InputUnavailable, an answer a retry may change ConnectionError, a range
    other than the one asked (or none past the end) RangeRefused."""
    status, where = response.status_code, f"{shown_name(ref)}: {ref.url[:80]}"
    if status == 416 and offset:
        raise RangeRefused(f"{where} has nothing from byte {offset} (416)")
    if status == 206:
        found = CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
        if found is None or int(found.group(1)) != offset:
            raise RangeRefused(f"{where} answered a range other than from byte {offset}")
    if status >= 500 or status == TOO_MANY_REQUESTS:
        raise ConnectionError(f"{where} answered {status}")
    if status not in (200, 206):
        raise InputUnavailable(f"{where} answered {status}")
    skip = offset if status == 200 else 0
    length = int(response.headers.get("content-length") or 0)
    if length - skip > bound - offset:
        raise WrongBytes(f"{where} is larger than {format_bytes(bound)}")
    return skip


def body(opened: Opened) -> Generator[bytes, None, None]:
    """The blob's bytes in the response (read on a thread, one chunk a call); the response
    closed when it ends."""
    skip = opened.skip
    try:
        for data in opened.response.iter_content(CHUNK_BYTES):
            if skip:
                data, skip = data[skip:], max(skip - len(data), 0)
            if data:
                yield data
    except requests.RequestException as error:
        raise ConnectionError(one_line(str(error))) from error
    finally:
        opened.close()
