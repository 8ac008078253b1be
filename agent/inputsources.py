"""Where a worker's inputs come from: the hub (``Blobs.Read`` on the pool channel, mTLS over
the overlay) or the input's URL (plain HTTP(S) from the worker).

Both read a blob from an offset to its end, so that agent/inputs.py can resume a fetch that
was cut. A URL is fetched with ``requests`` streaming, with no proxy or credentials from the
environment, following at most a few redirects by hand, and never from a destination that
resolves to this machine (loopback), a link-local address (cloud metadata services live
there) or the overlay (the hub and other workers): a task's submitter chose the URL, and
must not reach through the worker what the worker alone may reach. Every address a name
resolves to is checked, and so is the address the connection actually reached.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from urllib.parse import urljoin, urlsplit

import grpc
import requests

from hivemind_cluster.agent.inputs import InputUnavailable, Wanted, shown_name
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

Chunks = Generator[bytes, None, None]
PoolChannel = Callable[[], Awaitable[grpc.aio.Channel]]


class HubSource:
    """Blobs of this worker's attempts, read from the pool on its current channel (a read
    cut by a reconnect is resumed on the next one)."""

    def __init__(self, channel: PoolChannel) -> None:
        self.channel = channel

    def wanted(self, ref: InputRef, task_id: str, attempt: int) -> Wanted:
        async def read(offset: int) -> AsyncIterator[bytes]:
            stub = pb_grpc.BlobsStub(await self.channel())
            request = pb.BlobRead(
                digest=ref.digest, offset=offset, task_id=task_id, attempt=attempt
            )
            try:
                async for chunk in stub.Read(request):
                    yield chunk.data
            except grpc.aio.AioRpcError as error:
                if error.code() in REFUSALS:
                    raise InputUnavailable(
                        f"{shown_name(ref)}: the hub refused it: {one_line(error.details() or '')}"
                    ) from None
                raise

        return Wanted(ref, read, "the hub")


class UrlSource:
    """Inputs fetched from their URL, checked against the destinations refused."""

    def __init__(self, refused: list[IPNetwork], allow_loopback: bool = False) -> None:
        self.refused = list(refused) + list(LINK_LOCAL)
        self.allow_loopback = allow_loopback  # tests serve their URLs on 127.0.0.1

    @classmethod
    def for_overlay(cls, address: str, allow_loopback: bool = False) -> UrlSource:
        """Refusing the overlay network of an enrollment's ``ip/prefix``."""
        return cls([ipaddress.ip_interface(address).network], allow_loopback)

    def wanted(self, ref: InputRef, bound: int) -> Wanted:
        """A URL input of at most ``bound`` bytes (its size is not known before)."""

        async def read(offset: int) -> AsyncIterator[bytes]:
            chunks = await asyncio.to_thread(self.open, ref, offset, bound)
            try:
                while data := await asyncio.to_thread(next, chunks, b""):
                    yield data
            finally:
                chunks.close()

        return Wanted(ref, read, urlsplit(ref.url).hostname or "its URL")

    def check_destination(self, ref: InputRef, url: str) -> None:
        """Refuse a URL whose host resolves to a refused address (any of them)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputUnavailable(f"{shown_name(ref)}: {url[:80]!r} is not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            found = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
        except OSError as error:
            raise InputUnavailable(
                f"{shown_name(ref)}: cannot resolve {parts.hostname}: {error}"
            ) from None
        for *_, sockaddr in found:
            self.check_address(ref, parts.hostname, str(sockaddr[0]))

    def check_address(self, ref: InputRef, host: str, address: str) -> None:
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        loopback = ip.is_loopback or ip.is_unspecified
        refused = any(ip in network for network in self.refused) or ip.is_multicast
        if refused or (loopback and not self.allow_loopback):
            raise InputUnavailable(
                f"{shown_name(ref)}: {host} resolves to {ip}, which a task's input may not "
                "come from (this machine, link-local or the overlay)"
            )

    def open(self, ref: InputRef, offset: int, bound: int) -> Chunks:
        """The response's chunks from ``offset`` (a server ignoring ``Range`` has its
        first bytes skipped), after the checks; redirects followed, each checked."""
        session = requests.Session()
        session.trust_env = False  # no proxies, netrc or CA bundle from the environment
        url = ref.url
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            for _ in range(MAX_REDIRECTS + 1):
                self.check_destination(ref, url)
                response = session.get(
                    url,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(CONNECT_SECONDS, READ_SECONDS),
                )
                if not response.is_redirect:
                    self.check_peer(ref, url, response)
                    break
                url = urljoin(url, response.headers.get("location", ""))
                response.close()
            else:
                raise InputUnavailable(f"{shown_name(ref)}: more than {MAX_REDIRECTS} redirects")
        except requests.RequestException as error:
            session.close()
            raise ConnectionError(one_line(str(error))) from error
        except BaseException:
            session.close()
            raise
        return self.body(ref, session, response, offset, bound)

    def check_peer(self, ref: InputRef, url: str, response: requests.Response) -> None:
        """The address the connection reached (a name may resolve anew between the check
        and the connection); a connection we cannot see into is refused, to be safe."""
        peer = peer_address(response)
        if peer is None and response.headers.get("content-length") == "0":
            return  # nothing to read: http.client has let go of the socket already
        if peer is None:
            raise InputUnavailable(f"{shown_name(ref)}: cannot tell where {url[:80]} leads")
        self.check_address(ref, urlsplit(url).hostname or "", peer)

    def body(
        self,
        ref: InputRef,
        session: requests.Session,
        response: requests.Response,
        offset: int,
        bound: int,
    ) -> Chunks:
        try:
            if response.status_code not in (200, 206):
                raise InputUnavailable(
                    f"{shown_name(ref)}: {ref.url[:80]} answered {response.status_code}"
                )
            skip = offset if response.status_code == 200 else 0
            length = int(response.headers.get("content-length") or 0)
            if length - skip > bound - offset:
                raise InputUnavailable(
                    f"{shown_name(ref)}: {ref.url[:80]} is larger than {format_bytes(bound)}"
                )
            for data in response.iter_content(CHUNK_BYTES):
                if skip:
                    data, skip = data[skip:], max(skip - len(data), 0)
                if data:
                    yield data
        except requests.RequestException as error:
            raise ConnectionError(one_line(str(error))) from error
        finally:
            response.close()
            session.close()


def peer_address(response: requests.Response) -> str | None:
    """The remote address of a streamed response's socket (urllib3 2 keeps it in the
    http.client response it reads from), None when it cannot be found."""
    reader = getattr(getattr(response.raw, "_fp", None), "fp", None)
    sock = getattr(getattr(reader, "raw", None), "_sock", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else None
    except (OSError, AttributeError, TypeError, IndexError):
        return None
