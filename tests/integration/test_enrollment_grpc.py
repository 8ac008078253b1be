"""The enrollment service over real gRPC/TLS on loopback, with a real Redis.

The WireGuard side is left out here (interface=None); the end-to-end tests cover it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from hivemind_cluster.agent import enroll as client_side
from hivemind_cluster.core.errors import (
    CsrRejected,
    HiveMindError,
    InvalidInput,
    PermissionDenied,
    PinMismatch,
    TokenMalformed,
    TokenRejected,
    Unavailable,
)
from hivemind_cluster.core.keys import build_csr, generate_tls_key, generate_wireguard_keypair
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh import constants, nodes, tokens
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.enrollment import Enroller, create_server
from hivemind_cluster.protos import enrollment_pb2 as pb
from tests.support.scratch import sorted_set

pytestmark = pytest.mark.privileged


class CountingEnroller(Enroller):
    """The hub's side of enrollment, counting the requests that reach it."""

    calls = 0

    def enroll(self, request: pb.EnrollRequest) -> pb.EnrollResponse:
        self.calls += 1
        return super().enroll(request)


class Server:
    """An enrollment server on 127.0.0.1:<random port>, run on its own event loop thread."""

    def __init__(self, enroller: CountingEnroller, ca: CertificateAuthority) -> None:
        self.loop = asyncio.new_event_loop()
        self.enroller = enroller
        cert, key = ca.issue_server_certificate(["127.0.0.1"])
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = asyncio.run_coroutine_threadsafe(
            create_server(enroller, "127.0.0.1:0", cert + ca.pem, key), self.loop
        ).result()

    @property
    def calls(self) -> int:
        return self.enroller.calls

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture
def server(client: redis.Redis, ca: CertificateAuthority, tmp_path: Path) -> Iterator[Server]:
    settings = HubSettings(state_dir=str(tmp_path), endpoint="198.51.100.2:7443")
    enroller = CountingEnroller(settings, ca, client, None, generate_wireguard_keypair()[1])
    running = Server(enroller, ca)
    yield running
    running.close()


def request_for(
    token: tokens.JoinToken,
    hostname: str = "worker-1",
    csr: bytes | None = None,
    wg_key: str | None = None,
) -> pb.EnrollRequest:
    return pb.EnrollRequest(
        token_id=token.token_id,
        token_secret=token.secret,
        wireguard_public_key=wg_key or generate_wireguard_keypair()[1],
        csr_pem=build_csr(generate_tls_key(), hostname) if csr is None else csr,
        hostname=hostname,
        facts=pb.HardwareFacts(cpu_cores=2, memory_bytes=1 << 30),
    )


def state(client: redis.Redis) -> tuple[object, ...]:
    return (
        client.get(constants.IPAM_NEXT),
        client.zcard(constants.NODES),
        [client.hget(f"hm:token:{t}", "uses_left") for t in sorted_set(client, constants.TOKENS)],
    )


def test_enroll_over_pinned_tls(
    server: Server, client: redis.Redis, ca: CertificateAuthority
) -> None:
    endpoint = f"127.0.0.1:{server.port}"
    token = tokens.create_token(client, [endpoint], ca.pin)
    ca_pem = client_side.fetch_pinned_ca(endpoint, token.ca_pin)
    assert ca_pem == ca.pem
    response = client_side.enroll(endpoint, ca_pem, request_for(token))
    assert response.overlay_ip == "100.64.0.2" and response.hub_overlay_ip == "100.64.0.1"
    assert response.hub.endpoint == "198.51.100.2:51820"
    assert list(response.hub.allowed_ips) == ["100.64.0.0/16"]
    assert response.pool_address == "100.64.0.1:50051"
    node = nodes.get_node(client, response.node_id)
    assert node.state == nodes.ACTIVE and node.facts["cpu_cores"] == 2
    assert response.certificate_pem.decode() == node.cert_pem


def test_wrong_pin_sends_nothing(server: Server, client: redis.Redis) -> None:
    other_pin = CertificateAuthority.create().pin
    with pytest.raises(PinMismatch, match="does not present the hub CA"):
        client_side.fetch_pinned_ca(f"127.0.0.1:{server.port}", other_pin)
    assert server.calls == 0


def test_unreachable_endpoint() -> None:
    with pytest.raises(Unavailable, match="cannot reach"):
        client_side.fetch_pinned_ca("127.0.0.1:1", "A" * 43)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda r: setattr(r, "csr_pem", b"junk"), CsrRejected, "not a PEM CSR"),
        (
            lambda r: setattr(r, "csr_pem", build_csr(generate_tls_key(), "other")),
            CsrRejected,
            "common name",
        ),
        (lambda r: setattr(r, "wireguard_public_key", "short"), InvalidInput, "WireGuard"),
        (lambda r: setattr(r, "hostname", "bad host"), InvalidInput, "hostname"),
        (lambda r: setattr(r, "token_secret", "x" * 43), TokenRejected, "does not match"),
        (lambda r: setattr(r, "token_id", "nothex"), TokenMalformed, "malformed"),
        (lambda r: setattr(r, "token_id", "ffffffffffff"), TokenRejected, "not known"),
        (lambda r: setattr(r.facts, "os", "x" * 100_000), HiveMindError, "resource_exhausted"),
    ],
    ids=[
        "csr-garbage",
        "csr-name",
        "wg-key",
        "hostname",
        "secret",
        "token-id",
        "unknown",
        "oversized",
    ],
)
def test_bad_requests_are_refused_and_change_nothing(
    server: Server,
    client: redis.Redis,
    ca: CertificateAuthority,
    mutate: Callable[[pb.EnrollRequest], None],
    error: type[HiveMindError],
    message: str,
) -> None:
    endpoint = f"127.0.0.1:{server.port}"
    token = tokens.create_token(client, [endpoint], ca.pin)
    request = request_for(token)
    mutate(request)
    before = state(client)
    with pytest.raises(error, match=message):
        client_side.enroll(endpoint, ca.pem, request)
    assert state(client) == before


def test_leave_needs_the_node_key(
    server: Server, client: redis.Redis, ca: CertificateAuthority
) -> None:
    endpoint = f"127.0.0.1:{server.port}"
    token = tokens.create_token(client, [endpoint], ca.pin)
    key = generate_tls_key()
    request = request_for(token)
    request.csr_pem = build_csr(key, "worker-1")
    response = client_side.enroll(endpoint, ca.pem, request)
    with pytest.raises(PermissionDenied, match="signature"):
        client_side.leave(endpoint, ca.pem, response.node_id, generate_tls_key())
    assert nodes.get_node(client, response.node_id).state == nodes.ACTIVE
    client_side.leave(endpoint, ca.pem, response.node_id, key)
    node = nodes.get_node(client, response.node_id)
    assert node.state == nodes.LEFT and nodes.is_serial_revoked(client, int(node.cert_serial))
    with pytest.raises(PermissionDenied, match="not active"):
        client_side.leave(endpoint, ca.pem, response.node_id, key)
