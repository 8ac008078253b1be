"""Settings loading, address parsing, WireGuard config rendering and dump parsing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hivemind_cluster.core.errors import InvalidInput, SystemFailure
from hivemind_cluster.core.keys import (
    check_wireguard_key,
    generate_wireguard_keypair,
    wireguard_public_key,
)
from hivemind_cluster.core.settings import HubSettings, dump, load, split_host_port
from hivemind_cluster.mesh.wireguard import (
    PeerConfig,
    check_interface_name,
    parse_dump_line,
    render_quick_config,
)
from tests.support.prerequisites import require


def test_settings_defaults_file_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hub.toml"
    assert load(HubSettings, path, state_dir="x").wg_port == 51820
    path.write_text('wg_port = 51900\noverlay = "100.65.0.0/24"\nguard_underlay = false\n')
    settings = load(HubSettings, path, state_dir="x")
    assert (settings.wg_port, settings.hub_ip, settings.guard_underlay) == (
        51900,
        "100.65.0.1",
        False,
    )
    monkeypatch.setenv("HIVEMIND_WG_PORT", "51999")
    assert load(HubSettings, path, state_dir="x").wg_port == 51999
    assert load(HubSettings, path, state_dir="x", wg_port=1).wg_port == 1


def test_settings_round_trip_through_toml(tmp_path: Path) -> None:
    settings = HubSettings(state_dir=str(tmp_path), endpoint='h"x:7443')
    (tmp_path / "hub.toml").write_text(dump(settings))
    assert load(HubSettings, tmp_path / "hub.toml", state_dir=str(tmp_path)) == settings


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wg_port = 'many'", "must be a int"),
        ("nonsense = 1", "unknown setting"),
        ("wg_port = ", "not valid TOML"),
        ("guard_underlay = 'maybe'", "must be a bool"),
    ],
)
def test_bad_settings_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "hub.toml").write_text(text)
    with pytest.raises(InvalidInput, match=message):
        load(HubSettings, tmp_path / "hub.toml", state_dir="x")


def test_bad_env_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVEMIND_REDIS_PORT", "six")
    with pytest.raises(InvalidInput, match="HIVEMIND_REDIS_PORT"):
        load(HubSettings, tmp_path / "none.toml", state_dir="x")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.2:7443", ("198.51.100.2", 7443)),
        ("hub.example", ("hub.example", 7443)),
        ("[2001:db8::1]:9", ("2001:db8::1", 9)),
        ("2001:db8::1", ("2001:db8::1", 7443)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, 7443) == expected


@pytest.mark.parametrize("text", ["", ":7443", "h:0", "h:70000", "h:x"])
def test_split_host_port_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        split_host_port(text, 7443)


def test_wireguard_keys() -> None:
    private, public = generate_wireguard_keypair()
    assert wireguard_public_key(private) == public
    assert check_wireguard_key(public) == public
    for bad in ["", "abc", public[:-2], public + "A", "!" * 44]:
        with pytest.raises(InvalidInput):
            check_wireguard_key(bad)


@pytest.mark.privileged  # `wg-quick strip` runs only as root (it re-executes itself with sudo)
def test_quick_config_is_parsed_by_wg(tmp_path: Path) -> None:
    require(shutil.which("wg-quick") is not None, "wg-quick is not installed (make setup)")
    private, _ = generate_wireguard_keypair()
    _, hub = generate_wireguard_keypair()
    text = render_quick_config(
        private,
        "100.64.0.2/16",
        [PeerConfig(hub, ("100.64.0.0/16",), "198.51.100.2:51820", 25)],
        comment="node n1",
    )
    assert "Address = 100.64.0.2/16" in text and "PersistentKeepalive = 25" in text
    (tmp_path / "hm0.conf").write_text(text)
    # `wg-quick strip` turns a wg-quick file into what `wg setconf` reads: it must accept it.
    result = subprocess.run(
        ["wg-quick", "strip", str(tmp_path / "hm0.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"PublicKey = {hub}" in result.stdout and "Address" not in result.stdout


def test_parse_dump_line() -> None:
    line = "PUB=\t(none)\t198.51.100.3:51820\t100.64.0.2/32\t1700000000\t532\t572\t25"
    status = parse_dump_line(line)
    assert (
        status.endpoint,
        status.allowed_ips,
        status.latest_handshake,
        status.rx_bytes,
        status.tx_bytes,
    ) == ("198.51.100.3:51820", ("100.64.0.2/32",), 1700000000, 532, 572)
    assert parse_dump_line("P\t(none)\t(none)\t(none)\t0\t0\t0\toff").endpoint == ""
    with pytest.raises(SystemFailure):
        parse_dump_line("garbage")


@pytest.mark.parametrize("name", ["", "a" * 16, "hm 0", "hm/0"])
def test_interface_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_interface_name(name)


def test_generated_protobuf_code_is_current(repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
