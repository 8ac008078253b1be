"""A Docker daemon of a lab host's own, in that host's network namespace.

The root daemon's containers leave through the root namespace, whichever lab host asked for
them. This daemon's bridge, NAT and containers live in the host's namespace, so a
container's traffic really leaves through that host (its routes, its WireGuard interface,
its nftables). It is started with ``nsenter --net`` only: ``ip netns exec`` remounts /sys,
which hides /sys/fs/cgroup from dockerd. Its containerd is its own (dockerd starts one under
its exec root). ``close()`` removes its containers, stops it, unmounts what it left behind
and deletes its directories, also after a failure; close it before the lab (``Lab.close``
kills every process of the namespace).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.lab import Host


class NamespaceDocker:
    def __init__(self, host: Host, root: Path) -> None:
        self.host = host
        self.root = root
        self.socket = root / "docker.sock"
        self.log = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def environment(self) -> dict[str, str]:
        """This environment, with Docker's clients (the agent's too) pointed at the daemon."""
        return {**os.environ, "DOCKER_HOST": self.url}

    def start(self, timeout: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [
            "nsenter",
            f"--net=/var/run/netns/{self.host.netns}",
            "dockerd",
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.root / "docker.pid"),
            "--host",
            self.url,
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while self.docker("info", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dockerd in {self.host.name} did not start:\n{self.logs()}")
            time.sleep(0.2)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this daemon."""
        result = subprocess.run(
            ["docker", "--host", self.url, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: {result}")
        return result

    def load_images(self, *images: str) -> None:
        """Copy images from the root daemon (``docker save | docker load``): no registry."""
        for image in images:
            saved = subprocess.run(["docker", "save", image], capture_output=True, check=True)
            subprocess.run(
                ["docker", "--host", self.url, "load"],
                input=saved.stdout,
                capture_output=True,
                check=True,
            )

    def logs(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            listed = self.docker("ps", "--all", "--quiet", check=False).stdout.split()
            if listed:
                self.docker("rm", "--force", *listed, check=False)
            self.process.terminate()  # dockerd stops its containerd too
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for mount in mounts_under(self.root):
            subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (a daemon killed left them)."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


@contextmanager
def namespace_docker(
    host: Host, root: Path, images: tuple[str, ...] = ()
) -> Iterator[NamespaceDocker]:
    """A running daemon in ``host``'s namespace holding ``images``; closed on the way out."""
    daemon = NamespaceDocker(host, root)
    try:
        daemon.start()
        daemon.load_images(*images)
        yield daemon
    finally:
        daemon.close()
