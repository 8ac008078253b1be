"""Prerequisites of the privileged tests (root, WireGuard, redis-server, Docker…) and what
happens when one is missing: a skip on a laptop, a failure with CI=true.

Tests that need them carry the ``privileged`` marker, so that ``pytest -m "not
privileged"`` runs without root; conftest.py also turns any skip into a failure in CI.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import docker
import docker.errors
import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, reason: str) -> None:
    """Skip when a privileged prerequisite is missing; with CI=true, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a privileged prerequisite is missing: {reason}")
    pytest.skip(reason)


def require_redis_server() -> None:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")


def require_root_network() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces, WireGuard)")
    for tool in ("ip", "wg", "wireguard-go", "redis-server", "nft", "ping"):
        require(shutil.which(tool) is not None, f"{tool} is not installed (make setup)")


def require_docker_images(*images: str) -> docker.DockerClient:
    """A client of the Docker daemon, once it answers and holds every image (``make images``)."""
    from hivemind_cluster.agent.executor import DockerExecutor  # only the Docker tests need it

    available, why = DockerExecutor.probe()
    require(available, f"docker is not available: {why}")
    client = docker.from_env()
    for image in images:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            client.close()
            require(False, f"image {image} is missing: run make images")
    return client
