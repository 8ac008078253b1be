"""``hivemind-agent join`` against a server that presents the real hub CA in a forged chain:
the pin matches, the verified handshake then fails, and the user sees exactly one line.

gRPC's C core logs such a handshake failure to stderr by itself ("Handshake failed …");
every HiveMind command line must keep it quiet, so the error the command prints is all
there is. The server here is plain TLS (its leaf signed by another CA, the real CA
appended to its chain); the command is the real console script, run as a user would.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.tokens import JoinToken
from tests.support.lab import tool

pytestmark = pytest.mark.privileged


def forged_context(real: CertificateAuthority, directory: Path) -> ssl.SSLContext:
    """A server context whose chain holds the real CA, under a leaf the real CA never signed."""
    impostor = CertificateAuthority.create()
    leaf, key = impostor.issue_server_certificate(["127.0.0.1"])
    (directory / "chain.pem").write_bytes(leaf + real.pem)
    (directory / "key.pem").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "chain.pem", directory / "key.pem")
    context.set_alpn_protocols(["h2"])
    return context


@pytest.fixture
def forged_server(tmp_path: Path) -> Iterator[tuple[str, CertificateAuthority]]:
    """An endpoint on loopback presenting the forged chain, and the CA it pretends to be."""
    real = CertificateAuthority.create()
    context = forged_context(real, tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass  # the client hangs up on the chain (the pin read) or refuses it (gRPC)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", real
    finally:
        stopping.set()
        listener.close()
        thread.join(timeout=10)


def test_join_against_a_forged_chain_prints_one_line(
    forged_server: tuple[str, CertificateAuthority], tmp_path: Path
) -> None:
    endpoint, real = forged_server
    token = JoinToken((endpoint,), real.pin, secrets.token_hex(6), "s" * 43).encode()
    interface = f"hmf{secrets.token_hex(3)}"
    # Whatever the test process has, the command must silence gRPC by itself.
    env = {name: value for name, value in os.environ.items() if not name.startswith("GRPC_")}
    agent = tool("hivemind-agent")
    argv = [agent, "join", token, "--state-dir", str(tmp_path / "agent")]
    joined = subprocess.run(
        [*argv, "--interface", interface, "--no-service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert joined.returncode == 1, (joined.stdout, joined.stderr)
    assert joined.stdout == ""
    lines = joined.stderr.splitlines()
    assert len(lines) == 1, joined.stderr
    assert lines[0].startswith(f"error: enrollment at {endpoint} failed: "), joined.stderr
    assert "Handshake failed" not in joined.stderr
    assert not (tmp_path / "agent" / "agent.json").exists()
