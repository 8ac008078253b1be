"""A local lab of "hosts": network namespaces on one bridge, underlay 198.51.100.0/24.

Used by the end-to-end tests, ``make demo`` and ``make bench``. Traffic stays between
these namespaces: the bridge has no address in the root namespace. ``Lab.close()`` kills
every process in every namespace and deletes namespaces, links and UAPI sockets, also
after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# 192.0.2.0/24 is taken on some machines (this VM's eth0 is 192.0.2.2): use another
# documentation range.
UNDERLAY = "198.51.100"
UAPI_DIR = Path("/var/run/wireguard")


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=check)


@dataclass
class Host:
    lab: Lab
    name: str
    netns: str
    ip: str
    index: int
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def wg_interface(self) -> str:
        """A WireGuard interface name unique on the machine (UAPI sockets are global)."""
        return f"{self.lab.prefix}w{self.index}"

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=env,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"[{self.name}] {' '.join(argv)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def popen(self, *argv: str, log: Path | None = None) -> subprocess.Popen[str]:
        out = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(
            self.command(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def can_ping(self, address: str, timeout: float = 1.0) -> bool:
        """One ping: for checks that something is unreachable (or the moment it becomes so)."""
        result = self.run("ping", "-c", "1", "-W", str(max(int(timeout), 1)), address, check=False)
        return result.returncode == 0

    def reaches(self, address: str, seconds: float = 20) -> bool:
        """Whether pings get through within ``seconds`` (one lost is no verdict)."""
        deadline = time.monotonic() + seconds
        while not self.can_ping(address):
            if time.monotonic() > deadline:
                return False
        return True


class Lab:
    """Hosts are namespaces; the "switch" is a bridge in a namespace of its own.

    Keeping the bridge out of the root namespace keeps it out of the root's iptables: a
    running dockerd sets the FORWARD policy to DROP there and turns on br_netfilter.
    """

    def __init__(self, workdir: Path, prefix: str | None = None) -> None:
        self.prefix = prefix or "hm" + secrets.token_hex(2)
        self.switch = f"{self.prefix}-switch"
        self.workdir = workdir
        self.hosts: list[Host] = []
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        netns = f"{self.prefix}-{name}"
        outer, inner = f"{self.prefix}v{index}", f"{self.prefix}i{index}"
        sh("ip", "netns", "add", netns)
        host = Host(self, name, netns, f"{UNDERLAY}.{index + 1}", index)
        self.hosts.append(host)
        sh(
            "ip",
            "link",
            "add",
            outer,
            "netns",
            self.switch,
            "type",
            "veth",
            "peer",
            "name",
            inner,
            "netns",
            netns,
        )
        sh("ip", "-n", self.switch, "link", "set", outer, "master", "br0", "up")
        host.run("ip", "link", "set", "lo", "up")
        host.run("ip", "address", "add", f"{host.ip}/24", "dev", inner)
        host.run("ip", "link", "set", inner, "up")
        return host

    def close(self) -> None:
        for host in self.hosts:
            for process in host.processes:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            for process in host.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            for pid in sh("ip", "netns", "pids", host.netns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "delete", host.netns, check=False)
        for socket in UAPI_DIR.glob(f"{self.prefix}*.sock"):
            socket.unlink(missing_ok=True)
        sh("ip", "netns", "delete", self.switch, check=False)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of this environment (``ip netns exec`` does not keep our PATH)."""
    return str(BIN / name)


class Mesh:
    """A hub on one lab host and agents on others, driven through the real CLIs."""

    def __init__(self, lab: Lab, hub: Host, overlay: str = "100.64.0.0/16") -> None:
        self.lab = lab
        self.hub = hub
        self.overlay = overlay
        self.hub_dir = lab.workdir / "hub"
        self.hub_process: subprocess.Popen[str] | None = None

    def hub_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.hub.run(
            tool("hivemind-hub"), *args, "--state-dir", str(self.hub_dir), check=check
        )

    def init_hub(self) -> None:
        """``hivemind-hub init`` unless done: a test may change hub.toml before ``up``."""
        if not (self.hub_dir / "hub.toml").exists():
            self.hub_cli(
                "init",
                "--endpoint",
                f"{self.hub.ip}:7443",
                "--overlay",
                self.overlay,
                "--interface",
                self.hub.wg_interface,
                "--name",
                self.hub.name,
            )

    def start_hub(self) -> None:
        self.init_hub()
        self.hub_process = self.hub.popen(
            tool("hivemind-hub"),
            "up",
            "--state-dir",
            str(self.hub_dir),
            log=self.lab.workdir / "hub.log",
        )
        deadline = time.monotonic() + 20
        while not (self.hub_dir / "run.json").exists():
            if self.hub_process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("hub did not start:\n" + self.hub_log())
            time.sleep(0.02)

    def stop_hub(self) -> int:
        assert self.hub_process is not None
        self.hub_process.send_signal(signal.SIGTERM)
        return self.hub_process.wait(timeout=30)

    def hub_log(self) -> str:
        log = self.lab.workdir / "hub.log"
        return log.read_text() if log.exists() else ""

    def token(self, role: str = "worker", ttl: str = "1h", uses: int = 1) -> str:
        return self.hub_cli(
            "token", "create", "--role", role, "--ttl", ttl, "--uses", str(uses)
        ).stdout.strip()

    def agent_dir(self, host: Host) -> Path:
        return self.lab.workdir / f"agent-{host.name}"

    def agent(
        self, host: Host, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        state_dir = str(self.agent_dir(host))
        return host.run(
            tool("hivemind-agent"), *args, "--state-dir", state_dir, check=check, env=env
        )

    def join(
        self,
        host: Host,
        token: str,
        check: bool = True,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self.agent(
            host,
            "join",
            token,
            "--interface",
            host.wg_interface,
            "--name",
            host.name,
            *extra,
            check=check,
            env=env,
        )

    def nodes(self, *extra: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.hub_cli("nodes", "--json", *extra).stdout)
        return rows

    def pool_cli(
        self, host: Host, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``hivemind-pool COMMAND --identity <host's state dir> ARGS…`` in the host's namespace."""
        identity = self.hub_dir if host is self.hub else self.agent_dir(host)
        command, *rest = args
        return host.run(
            tool("hivemind-pool"),
            command,
            "--identity",
            str(identity),
            *rest,
            check=check,
            timeout=timeout,
        )

    def pool_json(self, host: Host, *args: str) -> Any:
        return json.loads(self.pool_cli(host, args[0], "--json", *args[1:]).stdout)

    def wait_for_workers(
        self, count: int, timeout: float = 30, agents: Sequence[Host] = ()
    ) -> list[dict[str, Any]]:
        """The pool's connected workers once there are ``count``; on a timeout the error
        carries the hub's log and the ``agents``' logs."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.pool_json(self.hub, "nodes")
            ready = [n for n in nodes if n["role"] == "worker" and n["connected"]]
            if len(ready) >= count:
                return ready
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not connected: {nodes}\n{self.logs(*agents)}")
            time.sleep(0.2)

    def logs(self, *agents: Host) -> str:
        """The end of the hub's log and of each agent's."""
        texts = [self.hub_log()[-4000:]]
        for host in agents:
            log = self.agent_dir(host) / "agent.log"
            if log.exists():
                texts.append(f"--- {host.name}\n" + log.read_text()[-4000:])
        return "\n".join(texts)


class CliUser:
    """The ``hivemind`` CLI on ``host`` with a config file of its own (its API token)."""

    def __init__(self, host: Host, config: Path) -> None:
        self.host = host
        self.config = config
        self.env = {**os.environ, "HIVEMIND_CONFIG": str(config)}

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.host.run(
            tool("hivemind"), *args, env=self.env, input=stdin, check=check, timeout=180
        )

    def json(self, *args: str) -> Any:
        return json.loads(self.run(args[0], "--json", *args[1:]).stdout)

    def settled(self, task_id: str, timeout: float = 20) -> dict[str, Any]:
        """The task once it has been paid for (settlement is asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            task: dict[str, Any] = self.json("status", task_id)
            if task["settled"]:
                return task
            assert time.monotonic() < deadline, task
            time.sleep(0.3)
