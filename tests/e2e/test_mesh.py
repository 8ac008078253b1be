"""End to end, as root: a hub and hosts in network namespaces over a real WireGuard overlay.

Hosts: ``hub``, workers ``w1`` and ``w2``, operator ``op``, ``fresh`` (joins nothing: bad
tokens are tried there) and ``outsider`` (never a member: scans the hub's underlay). The
tests share one mesh and run in file order; the destructive ones come last.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.tokens import JoinToken
from tests.support.hostprocesses import pids_matching
from tests.support.lab import Host, Lab, Mesh
from tests.support.prerequisites import require_root_network

pytestmark = pytest.mark.privileged


class World:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.hub, self.w1, self.w2, self.op, self.fresh, self.outsider = (
            lab.add_host(name) for name in ("hub", "w1", "w2", "op", "fresh", "outsider")
        )
        self.mesh = Mesh(lab, self.hub)
        self.used_token = ""

    def members(self) -> list[Host]:
        return [self.w1, self.w2, self.op]

    def overlay_ip(self, host: Host) -> str:
        status = json.loads(self.mesh.agent(host, "status", "--json").stdout)
        return str(status["overlay_ip"])

    def ipam_next(self) -> str:
        code = (
            "import sys; from hivemind_cluster.mesh import store;"
            "from hivemind_cluster.core.settings import load_hub_settings;"
            "s = load_hub_settings(sys.argv[1]);"
            "print(store.connect_hub(s).get('hm:ipam:next'))"
        )
        return self.hub.run(sys.executable, "-c", code, str(self.mesh.hub_dir)).stdout.strip()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root_network()
    lab = Lab(tmp_path_factory.mktemp("lab"))
    try:
        world = World(lab)
        world.mesh.start_hub()
        yield world
    finally:
        lab.close()


def test_workers_and_operator_join(world: World) -> None:
    mesh = world.mesh
    world.used_token = mesh.token()
    joined = mesh.join(world.w1, world.used_token, True, "--json")
    assert json.loads(joined.stdout)["overlay_ip"] == "100.64.0.2"
    mesh.join(world.w2, mesh.token())
    operator = json.loads(mesh.join(world.op, mesh.token(role="operator"), True, "--json").stdout)
    assert operator["role"] == "operator"
    for host in world.members():
        status = json.loads(mesh.agent(host, "status", "--json").stdout)
        assert status["interface"] == host.wg_interface
        assert status["backend"] in {"kernel", "userspace"}
        assert status["hub_ip"] == "100.64.0.1"
        assert status["last_handshake"] and status["hub_reachable"]
        assert status["service_pid"]
        config = mesh.agent_dir(host) / f"{host.wg_interface}.conf"
        assert config.stat().st_mode & 0o777 == 0o600
        for key in ("wg.key", "tls.key"):
            assert (mesh.agent_dir(host) / key).stat().st_mode & 0o777 == 0o600


def test_every_member_reaches_every_other_over_the_overlay(world: World) -> None:
    addresses = {host.name: world.overlay_ip(host) for host in world.members()}
    addresses["hub"] = "100.64.0.1"
    for source in [*world.members(), world.hub]:
        for name, address in addresses.items():
            if name != source.name:
                assert source.reaches(address), f"{source.name} -> {name}"


def test_hub_lists_nodes_with_live_wireguard_state(world: World) -> None:
    rows = {row["name"]: row for row in world.mesh.nodes()}
    assert {r["role"] for r in rows.values()} == {"hub", "worker", "operator"}
    assert [r["role"] for r in rows.values()].count("worker") == 2
    for name in ("w1", "w2", "op"):
        row = rows[name]
        for field in (
            "id",
            "name",
            "role",
            "overlay_ip",
            "online",
            "last_handshake",
            "rx_bytes",
            "tx_bytes",
        ):
            assert field in row
        assert row["online"] is True and row["rx_bytes"] > 0 and row["tx_bytes"] > 0
    hub_row = next(r for r in rows.values() if r["role"] == "hub")
    assert hub_row["overlay_ip"] == "100.64.0.1"
    human = world.mesh.hub_cli("nodes").stdout
    assert "online" in human and "w1" in human


def test_rejoining_an_enrolled_node_is_a_no_op(world: World) -> None:
    before = world.mesh.nodes()
    result = world.mesh.join(world.w1, world.used_token)
    assert "already enrolled" in result.stdout
    assert world.mesh.nodes() == before or len(world.mesh.nodes()) == len(before)


def test_only_enrollment_answers_on_the_hub_underlay(world: World) -> None:
    scan = world.outsider.run(
        sys.executable, "-m", "tests.support.portscan", world.hub.ip, timeout=300
    )
    assert json.loads(scan.stdout) == [7443]


def test_overlay_services_refuse_underlay_traffic_even_when_routed(world: World) -> None:
    """An underlay neighbour that routes the overlay via the hub still reaches nothing."""
    outsider = world.outsider
    outsider.run("ip", "route", "add", "100.64.0.0/16", "via", world.hub.ip)
    probe = (
        "import socket, sys\n"
        "for target in sys.argv[1:]:\n"
        "    host, port = target.split(':')\n"
        "    try:\n"
        "        socket.create_connection((host, int(port)), timeout=1).close()\n"
        "        print('open', target)\n"
        "    except OSError as exc:\n"
        "        print('closed', target, exc)\n"
    )
    try:
        result = outsider.run(
            sys.executable,
            "-c",
            probe,
            "100.64.0.1:6379",
            "100.64.0.1:7443",
            "100.64.0.1:9464",  # the hub's /metrics
            f"{world.overlay_ip(world.w1)}:22",
        )
    finally:
        outsider.run("ip", "route", "del", "100.64.0.0/16", check=False)
    assert "open" not in [line.split()[0] for line in result.stdout.splitlines()]
    assert not outsider.can_ping("100.64.0.1")


def bad_tokens(world: World) -> dict[str, tuple[str, str]]:
    """name -> (token text, the message the user must see)."""
    mesh = world.mesh
    good = JoinToken.parse(mesh.token())
    revoked = mesh.token()
    mesh.hub_cli("token", "revoke", JoinToken.parse(revoked).token_id)
    text = good.encode()
    flipped = text[:30] + ("A" if text[30] != "A" else "B") + text[31:]
    other_pin = CertificateAuthority.create().pin
    return {
        "empty": ("", "join token is empty"),
        "malformed": ("hello-world", "must start with 'hm1_'"),
        "truncated": (text[:-12], "checksum does not match"),
        "tampered": (flipped, "checksum does not match"),
        "forged-secret": (
            JoinToken(good.endpoints, good.ca_pin, good.token_id, "f" * 43).encode(),
            "secret does not match",
        ),
        "unknown-id": (
            JoinToken(good.endpoints, good.ca_pin, "abcdefabcdef", good.secret).encode(),
            "not known to this hub",
        ),
        "wrong-ca-pin": (
            JoinToken(good.endpoints, other_pin, good.token_id, good.secret).encode(),
            "does not present the hub CA",
        ),
        "revoked": (revoked, "has been revoked"),
        "used-up": (world.used_token, "no uses left"),
        "expired": (mesh.token(ttl="1s"), "has expired"),
    }


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


def links(host: Host) -> list[str]:
    out = host.run("ip", "-o", "link", "show").stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def test_bad_tokens_are_refused_and_create_nothing(world: World) -> None:
    cases = bad_tokens(world)
    nodes_before = world.mesh.nodes("--all")
    ipam_before = world.ipam_next()
    links_before = links(world.fresh)
    time.sleep(1.2)  # let the 1 s token expire
    for name, (token, message) in cases.items():
        result = world.mesh.join(world.fresh, token, False)
        assert result.returncode == 1, f"{name}: {result.stdout} {result.stderr}"
        assert message in result.stderr, f"{name}: {result.stderr}"
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, name
        assert links(world.fresh) == links_before, name
        assert not world.mesh.agent_dir(world.fresh).exists(), name
    assert world.mesh.nodes("--all") == nodes_before or [
        n["id"] for n in world.mesh.nodes("--all")
    ] == [n["id"] for n in nodes_before]
    assert world.ipam_next() == ipam_before


def test_revoked_node_is_cut_off_at_once(world: World) -> None:
    w2_id = json.loads(world.mesh.agent(world.w2, "status", "--json").stdout)["node_id"]
    assert world.w2.reaches("100.64.0.1")
    revoked = json.loads(world.mesh.hub_cli("node", "revoke", w2_id, "--json").stdout)
    assert revoked == {"id": w2_id, "state": "revoked"}
    # No waiting: the peer is gone from WireGuard before the command returns.
    assert not world.w2.can_ping("100.64.0.1", timeout=1)
    assert world.w1.reaches("100.64.0.1")
    assert w2_id not in [n["id"] for n in world.mesh.nodes()]
    states = {n["id"]: n["state"] for n in world.mesh.nodes("--all")}
    assert states[w2_id] == "revoked"
    again = world.mesh.hub_cli("node", "revoke", "no-such-node", check=False)
    assert again.returncode == 1 and "no node 'no-such-node'" in again.stderr


def test_leave_deregisters_and_removes_everything(world: World) -> None:
    op = world.op
    op_id = json.loads(world.mesh.agent(op, "status", "--json").stdout)["node_id"]
    result = json.loads(world.mesh.agent(op, "leave", "--json").stdout)
    assert result == {"node_id": op_id, "deregistered": True, "warning": ""}
    assert op.wg_interface not in links(op)
    assert not world.mesh.agent_dir(op).exists()
    assert {n["id"]: n["state"] for n in world.mesh.nodes("--all")}[op_id] == "left"
    assert pids_matching(op, str(world.mesh.agent_dir(op))) == []
    status = world.mesh.agent(op, "status", check=False)
    assert status.returncode == 1 and "not enrolled" in status.stderr


def test_hub_restart_restores_the_overlay_and_stop_cleans_up(world: World) -> None:
    mesh, hub = world.mesh, world.hub
    assert mesh.stop_hub() == 0
    assert hub.wg_interface not in links(hub)
    assert not (mesh.hub_dir / "run.json").exists()
    # Only the hub's Redis (its title shows its address; other instances, other labs' hubs
    # among them, may run on the machine: only the hub's namespace is searched).
    assert pids_matching(hub, "redis-server 100.64.0.1:") == []
    assert "hivemind" not in hub.run("nft", "list", "tables").stdout
    assert not world.w1.can_ping("100.64.0.1")
    mesh.start_hub()  # peers come back from Redis (AOF)
    # The agent notices the silent hub and re-handshakes (probe every 5 s, 2 misses).
    assert wait_for(lambda: world.w1.can_ping("100.64.0.1"), seconds=40)
    assert [n["name"] for n in mesh.nodes() if n["role"] == "worker"] == ["w1"]
    assert mesh.stop_hub() == 0
    assert hub.wg_interface not in links(hub)
