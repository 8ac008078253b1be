"""URL inputs in the worker's input cache (agent/inputs.py, agent/inputsources.py
``UrlSource``), served on 127.0.0.1: fetched, verified, resumed; kept apart from the blobs
the hub sent (a URL input is never served from one: the hub checks who may have those);
destinations refused; what a URL's server answers (retried, 416, a 206 of another range),
names that resolve anew (DNS rebinding), TLS to the address checked, and a read cancelled
midway.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import ipaddress
import secrets
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hivemind_cluster.agent import inputs
from hivemind_cluster.agent.inputs import InputCache, InputUnavailable, WrongBytes, cache_key
from hivemind_cluster.agent.inputsources import HubSource, UrlSource
from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.units import MIB
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.model.blobs import CHUNK_BYTES, InputRef, digest_hex
from tests.unit.test_input_cache import (
    TASK,
    FakeBlobs,
    digest_of,
    fetched,
    files_in,
    part_in,
    with_a_hub,
)


class Site(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` honouring ``Range`` (416 past the end), and ``/away`` redirects to
    ``redirect``. ``answers``: statuses to answer first, one a request; ``range_from``: a 206
    from that byte whatever was asked; ``stall``: the body stops after CHUNK_BYTES and a
    half until it is set. It notes the ``Range`` and ``Host`` of each request."""

    files: ClassVar[dict[str, bytes]] = {}
    redirect = ""
    ranges: ClassVar[list[str]] = []
    hosts: ClassVar[list[str]] = []
    answers: ClassVar[list[int]] = []
    range_from: ClassVar[int | None] = None
    stall: ClassVar[threading.Event | None] = None

    def do_GET(self) -> None:
        self.hosts.append(self.headers.get("Host", ""))
        if self.path == "/away":
            self.send_response(302)
            self.send_header("Location", self.redirect)
            self.end_headers()
            return
        data = self.files.get(self.path)
        if self.answers or data is None:
            self.send_error(self.answers.pop(0) if self.answers else 404)
            return
        asked = self.headers.get("Range", "")
        self.ranges.append(asked)
        start = int(asked.removeprefix("bytes=").rstrip("-") or 0)
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if asked and self.range_from is not None:
            start = self.range_from
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.stall is not None:
            middle = start + CHUNK_BYTES + CHUNK_BYTES // 2
            self.wfile.write(data[start:middle])
            self.wfile.flush()
            self.stall.wait(30)
            start = middle
        with contextlib.suppress(ConnectionError):  # the reader went away
            self.wfile.write(data[start:])

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def a_site(files: dict[str, bytes], address: tuple[str, int] = ("127.0.0.1", 0)) -> Iterator[str]:
    Site.files, Site.ranges, Site.hosts, Site.answers = files, [], [], []
    Site.range_from = Site.stall = None
    with serving_http(Site, address) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


@contextmanager
def serving_http(
    handler: type[http.server.BaseHTTPRequestHandler],
    address: tuple[str, int],
    context: ssl.SSLContext | None = None,
) -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(address, handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url_ref(data: bytes, url: str) -> InputRef:
    return InputRef("x.csv", digest_of(data), 0, "file", url)


def test_a_url_input_is_fetched_verified_and_resumed(tmp_path: Path) -> None:
    data = secrets.token_bytes(3 * CHUNK_BYTES + 7)
    urls = UrlSource([], allow_loopback=True)
    with a_site({"/x.csv": data}) as site:
        ref = url_ref(data, f"{site}/x.csv")
        part_in(tmp_path, ref).write_bytes(data[:1000])
        cache = InputCache(tmp_path, 64 * MIB)
        assert asyncio.run(fetched(cache, urls.wanted(ref, 64 * MIB))) == {ref.digest: data}
        assert Site.ranges == ["bytes=1000-"]


def test_a_url_input_with_other_content_or_too_large_is_refused(tmp_path: Path) -> None:
    data = secrets.token_bytes(2 * MIB)
    urls = UrlSource([], allow_loopback=True)
    with a_site({"/x.csv": data}) as site:
        cache = InputCache(tmp_path, 64 * MIB)
        wrong = url_ref(b"something else", f"{site}/x.csv")
        with pytest.raises(InputUnavailable, match=r"from 127\.0\.0\.1 has digest"):
            asyncio.run(fetched(cache, urls.wanted(wrong, 64 * MIB)))
        with pytest.raises(InputUnavailable, match="is larger than 1 MiB"):
            asyncio.run(fetched(cache, urls.wanted(url_ref(data, f"{site}/x.csv"), MIB)))
        assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://[::1]:9/x",
        "http://169.254.169.254/latest/meta-data",
        "http://10.77.0.1:8080/x",  # the overlay
        "http://localhost:9/x",
    ],
)
def test_a_url_to_this_machine_link_local_or_the_overlay_is_refused(
    url: str, tmp_path: Path
) -> None:
    urls = UrlSource([ipaddress.ip_network("10.77.0.0/16")])
    with pytest.raises(InputUnavailable, match="which a task's input may not come from"):
        asyncio.run(fetched(InputCache(tmp_path, MIB), urls.wanted(url_ref(b"x", url), MIB)))


def test_a_redirect_to_a_refused_place_is_refused(tmp_path: Path) -> None:
    urls = UrlSource([], allow_loopback=True)
    Site.redirect = "http://169.254.169.254/latest/meta-data"
    with a_site({}) as site:
        ref = url_ref(b"x", f"{site}/away")
        with pytest.raises(InputUnavailable, match=r"169\.254\.169\.254"):
            asyncio.run(fetched(InputCache(tmp_path, MIB), urls.wanted(ref, MIB)))


# ---- a URL input is never served from a blob the hub sent --------------------------------


def test_a_url_input_is_fetched_from_its_url_though_the_hub_s_copy_is_cached(
    tmp_path: Path,
) -> None:
    """The hub sent the blob for its owner's task; a task that names its digest in a URL
    has shown nobody it holds those bytes, so it gets what its URL serves, or nothing."""
    data = secrets.token_bytes(2 * CHUNK_BYTES)
    urls = UrlSource([], allow_loopback=True)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        cache = InputCache(tmp_path, 64 * MIB)
        owned = hub.hold(data)
        await fetched(cache, source.wanted(owned, *TASK))
        with a_site({"/x.csv": data}) as site:
            ref = url_ref(data, f"{site}/x.csv")
            assert await fetched(cache, urls.wanted(ref, 64 * MIB)) == {ref.digest: data}
            assert Site.ranges == [""]
        assert files_in(tmp_path) == sorted([cache.path(owned).name, cache.path(ref).name])

    with_a_hub(body)


def test_a_url_serving_other_bytes_than_the_hub_s_cached_copy_is_refused(
    tmp_path: Path,
) -> None:
    data = secrets.token_bytes(CHUNK_BYTES)
    urls = UrlSource([], allow_loopback=True)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        cache = InputCache(tmp_path, 64 * MIB)
        owned = hub.hold(data)
        await fetched(cache, source.wanted(owned, *TASK))
        with a_site({"/x.csv": b"what the URL really holds"}) as site:
            ref = url_ref(data, f"{site}/x.csv")
            refused = rf"from 127\.0\.0\.1 has digest .*, not {ref.digest}: refused"
            with pytest.raises(WrongBytes, match=refused):
                await fetched(cache, urls.wanted(ref, 64 * MIB))
        assert files_in(tmp_path) == [cache.path(owned).name]

    with_a_hub(body)


def test_a_hub_input_is_the_hub_s_copy_but_one_task_wanting_both_fetches_once(
    tmp_path: Path,
) -> None:
    """A hub input is fetched from the hub though a URL's copy of its digest is cached (the
    copies live apart); a task wanting a digest both ways fetches it once, from the URL (its
    owner holds the blob: the pool checked, so that copy serves both)."""
    data, both = secrets.token_bytes(CHUNK_BYTES), secrets.token_bytes(CHUNK_BYTES)
    urls = UrlSource([], allow_loopback=True)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        cache = InputCache(tmp_path, 64 * MIB)
        with a_site({"/x.csv": data, "/both.csv": both}) as site:
            await fetched(cache, urls.wanted(url_ref(data, f"{site}/x.csv"), 64 * MIB))
            owned = hub.hold(data)
            assert await fetched(cache, source.wanted(owned, *TASK)) == {owned.digest: data}
            assert len(hub.reads) == 1
            twice = [source.wanted(hub.hold(both), *TASK)]
            twice.append(urls.wanted(url_ref(both, f"{site}/both.csv"), 64 * MIB))
            assert await fetched(cache, *twice) == {digest_of(both): both}
            assert Site.ranges == ["", ""]
        assert len(hub.reads) == 1
        names = files_in(tmp_path)
        assert digest_hex(owned.digest) in names  # the hub's copy, beside the URLs'
        assert sum(name.startswith(inputs.FROM_URL) for name in names) == 2

    with_a_hub(body)


def test_a_url_input_is_not_served_from_another_url_s_copy(tmp_path: Path) -> None:
    """A copy fetched from one URL (another user's signed link, say) serves that URL only:
    naming its digest with another allowed URL fetches from there."""
    data = secrets.token_bytes(3000)
    urls = UrlSource([], allow_loopback=True)
    cache = InputCache(tmp_path, MIB)
    with a_site({"/private.csv": data, "/public.csv": data, "/other.csv": b"x" * 3000}) as site:
        asyncio.run(fetched(cache, urls.wanted(url_ref(data, f"{site}/private.csv"), MIB)))
        same = url_ref(data, f"{site}/public.csv")
        assert asyncio.run(fetched(cache, urls.wanted(same, MIB))) == {same.digest: data}
        assert Site.ranges == ["", ""]  # fetched again, from its own URL
        lying = InputRef("x.csv", same.digest, 0, url=f"{site}/other.csv")
        with pytest.raises(WrongBytes):
            asyncio.run(fetched(cache, urls.wanted(lying, MIB)))


def test_the_two_kinds_are_found_again_after_a_restart_and_kept_apart(tmp_path: Path) -> None:
    data, held = secrets.token_bytes(3000), secrets.token_bytes(2000)
    urls = UrlSource([], allow_loopback=True)
    with a_site({"/x.csv": data, "/held.csv": held}) as site:
        ref, cached = url_ref(data, f"{site}/x.csv"), url_ref(held, f"{site}/held.csv")
        from_the_hub = InputRef("data.bin", ref.digest, len(data))
        part_in(tmp_path, from_the_hub).write_bytes(data[:1000])  # the hub's: not for a URL
        (tmp_path / cache_key(cached)).write_bytes(held)
        cache = InputCache(tmp_path, MIB)  # the agent, started again
        assert set(cache.entries) == {cache_key(cached)}
        assert set(cache.parts) == {cache_key(from_the_hub)}
        wanted = [urls.wanted(cached, MIB), urls.wanted(ref, MIB)]
        assert asyncio.run(fetched(cache, *wanted)) == {cached.digest: held, ref.digest: data}
        assert Site.ranges == [""]  # held.csv from the cache, x.csv from its start
        assert part_in(tmp_path, from_the_hub).exists()


def test_two_tasks_wanting_a_url_input_at_once_share_one_fetch(tmp_path: Path) -> None:
    data = secrets.token_bytes(3 * CHUNK_BYTES)
    urls = UrlSource([], allow_loopback=True)
    with a_site({"/x.csv": data}) as site:
        ref = url_ref(data, f"{site}/x.csv")
        cache = InputCache(tmp_path, 64 * MIB)

        async def together() -> list[dict[str, bytes]]:
            wanted = [urls.wanted(ref, 64 * MIB) for _ in range(2)]
            return list(await asyncio.gather(*(fetched(cache, want) for want in wanted)))

        assert asyncio.run(together()) == [{ref.digest: data}] * 2
        assert Site.ranges == [""]


# ---- what a URL's server answers, and where a URL's name leads ----------------------------


@pytest.fixture
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "RETRY_PAUSES", (0.0,) * len(inputs.RETRY_PAUSES))


def resolving(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> None:
    """Each name resolves to its addresses in turn (the last one ever after); "" fails."""
    real = socket.getaddrinfo

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        answers = names.get(host)
        if answers is None:
            return real(host, port, *args, **kwargs)
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        if not address:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.usefixtures("no_pauses")
def test_a_url_answer_a_retry_may_change_is_retried(status: int, tmp_path: Path) -> None:
    data = secrets.token_bytes(1000)
    with a_site({"/x.csv": data}) as site:
        Site.answers = [status, status]
        urls = UrlSource([], allow_loopback=True)
        wanted = urls.wanted(url_ref(data, f"{site}/x.csv"), MIB)
        assert asyncio.run(fetched(InputCache(tmp_path, MIB), wanted)) == {wanted.ref.digest: data}


@pytest.mark.usefixtures("no_pauses")
def test_a_url_whose_name_does_not_resolve_for_now_is_retried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = secrets.token_bytes(1000)
    resolving(monkeypatch, {"files.test": ["", "127.0.0.1"]})
    with a_site({"/x.csv": data}) as site:
        url = site.replace("127.0.0.1", "files.test") + "/x.csv"
        wanted = UrlSource([], allow_loopback=True).wanted(url_ref(data, url), MIB)
        assert asyncio.run(fetched(InputCache(tmp_path, MIB), wanted)) == {wanted.ref.digest: data}


@pytest.mark.parametrize("whole", [True, False])
@pytest.mark.usefixtures("no_pauses")
def test_a_partial_copy_a_url_has_nothing_past_is_checked_or_fetched_again(
    whole: bool, tmp_path: Path
) -> None:
    """A 416 (the copy ends at or past the blob's end): whole, it is kept as it is; else it
    is fetched again from 0."""
    data = secrets.token_bytes(3000)
    held = data if whole else secrets.token_bytes(len(data) + 5)
    with a_site({"/x.csv": data}) as site:
        ref = url_ref(data, f"{site}/x.csv")
        part_in(tmp_path, ref).write_bytes(held)
        wanted = UrlSource([], allow_loopback=True).wanted(ref, MIB)
        assert asyncio.run(fetched(InputCache(tmp_path, MIB), wanted)) == {ref.digest: data}
        assert Site.ranges == [f"bytes={len(held)}-"] + ([] if whole else [""])


@pytest.mark.usefixtures("no_pauses")
def test_a_206_from_another_byte_than_asked_is_fetched_again_from_0(tmp_path: Path) -> None:
    data = secrets.token_bytes(3000)
    with a_site({"/x.csv": data}) as site:
        Site.range_from = 0  # a 206 of the whole blob, to a request from byte 1000
        ref = InputRef("x.csv", digest_of(data), len(data), "file", f"{site}/x.csv")
        part_in(tmp_path, ref).write_bytes(data[:1000])
        wanted = UrlSource([], allow_loopback=True).wanted(ref, MIB)
        assert asyncio.run(fetched(InputCache(tmp_path, MIB), wanted)) == {ref.digest: data}
        assert Site.ranges == ["bytes=1000-", ""]


class Elsewhere(http.server.BaseHTTPRequestHandler):
    """Where a name resolving anew would lead: it notes any request."""

    reached: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.reached.append(self.path)
        self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_name_that_resolves_anew_after_its_check_leads_nowhere_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """DNS rebinding: the connection goes to the address that was checked, naming the host."""
    data = secrets.token_bytes(1000)
    resolving(monkeypatch, {"files.test": ["127.0.0.1", "127.0.0.2"]})
    urls = UrlSource([ipaddress.ip_network("127.0.0.2/32")], allow_loopback=True)
    Elsewhere.reached = []
    with a_site({"/x.csv": data}) as site:
        port = int(site.rsplit(":", 1)[1])
        with serving_http(Elsewhere, ("127.0.0.2", port)):
            wanted = urls.wanted(url_ref(data, f"http://files.test:{port}/x.csv"), MIB)
            assert asyncio.run(fetched(InputCache(tmp_path, MIB), wanted)) == {
                wanted.ref.digest: data
            }
    assert Elsewhere.reached == []
    assert Site.hosts == [f"files.test:{port}"]


@pytest.mark.usefixtures("no_pauses")
def test_https_to_the_checked_address_still_names_the_host_and_checks_its_certificate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = secrets.token_bytes(1000)
    ca = CertificateAuthority.create("inputs test CA")
    cert, key = ca.issue_server_certificate(["files.test"])
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "server.pem").write_bytes(cert + key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.pem")
    names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: names.append(name)
    resolving(monkeypatch, {"files.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    Site.files, Site.ranges, Site.hosts, Site.answers = {"/x.csv": data}, [], [], []
    urls = UrlSource([], allow_loopback=True, trusted=str(tmp_path / "ca.pem"))
    cache = InputCache(tmp_path / "cache", MIB)
    with serving_http(Site, ("127.0.0.1", 0), context) as server:
        port = server.server_address[1]
        wanted = urls.wanted(url_ref(data, f"https://files.test:{port}/x.csv"), MIB)
        assert asyncio.run(fetched(cache, wanted)) == {wanted.ref.digest: data}
        assert names[0] == "files.test" and Site.hosts == [f"files.test:{port}"]
        other = urls.wanted(url_ref(data, f"https://other.test:{port}/x.csv"), MIB)
        with pytest.raises(SystemFailure, match=r"hostname 'other\.test' doesn't match"):
            asyncio.run(fetched(InputCache(tmp_path / "other", MIB), other))


def test_a_url_read_cancelled_while_its_thread_waits_ends_cancelled(tmp_path: Path) -> None:
    """Not in a ValueError (a generator already running on its thread), taken for a cut."""
    data = secrets.token_bytes(3 * CHUNK_BYTES)
    with a_site({"/x.csv": data}) as site:
        stall = Site.stall = threading.Event()

        async def main() -> None:
            urls = UrlSource([], allow_loopback=True)
            stream = urls.wanted(url_ref(data, f"{site}/x.csv"), 64 * MIB).read(0)
            assert await anext(stream) == data[:CHUNK_BYTES]
            reading = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.3)  # its thread waits for bytes held back
            reading.cancel()
            try:
                with pytest.raises(asyncio.CancelledError):
                    await reading
            finally:
                stall.set()
            await stream.aclose()

        try:
            asyncio.run(main())
        finally:
            stall.set()
