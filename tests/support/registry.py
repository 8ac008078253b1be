"""A container registry of its own on loopback, for the pull tests and the pull benchmark.

``lab_registry`` runs Debian's ``docker-registry`` (the distribution registry) on a free
127.0.0.1 port with its storage in a directory of the caller's; dockerd treats registries
on 127.0.0.0/8 as insecure-allowed, so plain HTTP is enough. ``LabRegistry.publish`` pushes
an image built for the occasion (a layer of its own on top of a local image) and removes it
from the engine, so that whoever names it next must pull it. On the way out every image
pushed, built or pulled under the registry's name is removed and the registry stopped.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from tests.support.scratch import free_port

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


@dataclass
class LabRegistry:
    address: str  # 127.0.0.1:PORT
    client: docker.DockerClient
    workdir: Path
    # Every reference under this registry's name that may be in the engine, removed at the end.
    references: list[str] = field(default_factory=list)

    def reference(self, repository: str, tag: str) -> str:
        """``address/repository:tag``, removed from the engine at the end if pulled."""
        reference = f"{self.address}/{repository}:{tag}"
        self.references.append(reference)
        return reference

    def publish(self, base: str, repository: str, tag: str, payload: bytes = b"") -> str:
        """Push ``base`` plus a layer of its own (``/token``: ``payload``, or random bytes) as
        ``address/repository:tag``, then remove it from the engine; returns the reference."""
        reference = self.reference(repository, tag)
        context = self.workdir / f"build-{secrets.token_hex(4)}"
        context.mkdir()
        (context / "token").write_bytes(payload or secrets.token_bytes(1 << 20))
        (context / "Dockerfile").write_text(f"FROM {base}\nCOPY token /token\n")
        try:
            self.client.images.build(path=str(context), tag=reference, rm=True, forcerm=True)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        subprocess.run(["docker", "push", reference], check=True, capture_output=True, timeout=120)
        self.remove(reference)
        return reference

    def manifest_digest(self, reference: str) -> str:
        """The digest the registry itself gives for the reference's manifest."""
        name, _, tag = reference.removeprefix(f"{self.address}/").rpartition(":")
        request = urllib.request.Request(
            f"http://{self.address}/v2/{name}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": MANIFEST_TYPES},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(answer.headers["Docker-Content-Digest"])

    def remove(self, reference: str) -> None:
        """The reference is no longer in the engine (its image goes once nothing names it)."""
        with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.NotFound):
            self.client.images.remove(reference, force=True)

    def has(self, reference: str) -> bool:
        return has_image(self.client, reference)


def has_image(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


def wait_until_serving(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError(f"docker-registry did not answer on {address}: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def lab_registry(directory: Path, client: docker.DockerClient) -> Iterator[LabRegistry]:
    """A started registry on 127.0.0.1 (storage in ``directory``), stopped on the way out
    after every image under its name has been removed from the engine."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise FileNotFoundError("docker-registry is not installed (make setup)")
    address = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(directory / "storage")}},
        "http": {"addr": address},
    }
    (directory / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = directory / "registry.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [binary, "serve", str(directory / "config.yml")],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    registry = LabRegistry(address, client, directory)
    try:
        wait_until_serving(address, process, log)
        yield registry
    finally:
        for reference in registry.references:
            registry.remove(reference)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
