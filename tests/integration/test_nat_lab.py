"""Facts about the lab's NATs, stated with plain wireguard-go + wg (no HiveMind code), that
the direct-mesh design and its end-to-end test rely on (docs: tests/support/natlab.py).

A public "hub" peer learns every member's endpoint as its NAT maps it, as the real hub
does; then pairs are given each other's hub-observed endpoint and persistent keepalive,
as the agents do:

* an EIM-NATted host keeps its port; a symmetric NAT picks a new one per destination;
* EIM ↔ public: a direct handshake, and traffic over it;
* symmetric ↔ public: the public side alone cannot reach the symmetric host at its
  hub-observed endpoint; once the symmetric side initiates, the handshake forms and the
  public side roams to the new mapping;
* symmetric ↔ EIM: no handshake, whichever side tries (that pair stays relayed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.lab import Host
from tests.support.natlab import (
    NO_HANDSHAKE_SECONDS,
    PROBE_PORT,
    WIREGUARD_PORT,
    NatLab,
    PlainWireGuard,
    handshakes,
    observed_sources,
    plain_wireguard,
    wait_until,
)
from tests.support.prerequisites import require_root_network

pytestmark = pytest.mark.privileged


@dataclass
class World:
    lab: NatLab
    hub: Host
    public: Host
    eim: Host
    symmetric: Host
    wireguard: dict[str, PlainWireGuard]
    observed: dict[str, str]  # name -> endpoint as the hub sees it


def join_hub(hub: PlainWireGuard, member: PlainWireGuard) -> None:
    hub.add_peer(member, allowed_ips=[f"{member.address}/32"])
    member.add_peer(hub, [f"{hub.address}/32"], hub.underlay_endpoint, keepalive=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root_network()
    lab = NatLab(tmp_path_factory.mktemp("natlab"))
    try:
        hub, public = lab.add_host("hub"), lab.add_host("public")
        eim = lab.add_natted_host("eim", "eim")
        symmetric = lab.add_natted_host("sym", "symmetric")
        hosts = {"hub": hub, "public": public, "eim": eim, "sym": symmetric}
        wireguard = {
            name: plain_wireguard(host, f"10.77.0.{n}")
            for n, (name, host) in enumerate(hosts.items(), start=1)
        }
        for name in ("public", "eim", "sym"):
            join_hub(wireguard["hub"], wireguard[name])
            assert handshakes(wireguard["hub"], wireguard[name]), name
        observed = {
            name: wireguard["hub"].endpoint_of(wireguard[name]) for name in ("public", "eim", "sym")
        }
        yield World(lab, hub, public, eim, symmetric, wireguard, observed)
    finally:
        lab.close()


def test_eim_nat_keeps_the_port_for_every_destination(world: World) -> None:
    nat_ip = world.lab.nat_of(world.eim).ip
    sources = observed_sources(world.eim, [world.hub, world.public])
    assert sources == [f"{nat_ip}:{PROBE_PORT}"] * 2
    assert world.observed["eim"] == f"{nat_ip}:{WIREGUARD_PORT}"


def test_symmetric_nat_maps_a_new_port_per_destination(world: World) -> None:
    nat_ip = world.lab.nat_of(world.symmetric).ip
    first, second = observed_sources(world.symmetric, [world.hub, world.public])
    assert first.split(":")[0] == second.split(":")[0] == nat_ip
    assert first != second
    assert world.observed["sym"].split(":")[0] == nat_ip


def test_eim_and_public_form_a_direct_handshake_and_carry_traffic(world: World) -> None:
    eim, public = world.wireguard["eim"], world.wireguard["public"]
    public.add_peer(eim, endpoint=world.observed["eim"], keepalive=1)
    eim.add_peer(public, endpoint=public.underlay_endpoint, keepalive=1)
    assert handshakes(eim, public)
    public.add_peer(eim, allowed_ips=[f"{eim.address}/32"])
    eim.add_peer(public, allowed_ips=[f"{public.address}/32"])
    assert world.public.reaches(eim.address)
    assert world.eim.reaches(public.address)


def test_symmetric_and_public_form_only_when_the_symmetric_side_initiates(world: World) -> None:
    symmetric, public = world.wireguard["sym"], world.wireguard["public"]
    public.add_peer(symmetric, endpoint=world.observed["sym"], keepalive=1)
    assert not wait_until(lambda: bool(public.handshake_with(symmetric)), NO_HANDSHAKE_SECONDS)
    symmetric.add_peer(public, endpoint=public.underlay_endpoint, keepalive=1)
    assert handshakes(symmetric, public)
    roamed = public.endpoint_of(symmetric)
    assert roamed != world.observed["sym"]
    assert roamed.split(":")[0] == world.lab.nat_of(world.symmetric).ip


def test_symmetric_and_eim_never_handshake(world: World) -> None:
    symmetric, eim = world.wireguard["sym"], world.wireguard["eim"]
    eim.add_peer(symmetric, endpoint=world.observed["sym"], keepalive=1)
    symmetric.add_peer(eim, endpoint=world.observed["eim"], keepalive=1)
    assert not wait_until(
        lambda: bool(symmetric.handshake_with(eim) or eim.handshake_with(symmetric)),
        NO_HANDSHAKE_SECONDS,
    )
    # Both kept trying all along: the hub path of each is still alive.
    assert handshakes(world.wireguard["hub"], symmetric)
    assert handshakes(world.wireguard["hub"], eim)
