"""The machine installer refuses with one line and changes nothing; the units it writes.

Every case installs into ``tmp_path`` (``--prefix``, ``--bin-dir``, ``--systemd-dir``,
``--state-dir``, ``--service-manager none``) from a fake wheelhouse: refusals need no wheels.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

import pytest

from hivemind_cluster.hub import machine_install, machine_service
from hivemind_cluster.mesh.tokens import JoinToken

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
TOKEN = JoinToken(
    endpoints=("198.51.100.2:7443",), ca_pin="a" * 43, token_id="0123456789ab", secret="s" * 20
).encode()
NOT_A_TOKEN = "that is not a join token (hm1_…)"
# What the installer would create: none of it may exist after a refusal.
PARTS = ("p", "bin", "units", "state")


def make_wheelhouse(tmp_path: Path, **fields: str) -> Path:
    """A wheelhouse for this interpreter and machine, unless ``fields`` say otherwise."""
    directory = tmp_path / "wheels"
    directory.mkdir()
    manifest = {"python": PYTHON, "machine": platform.machine(), "hivemind": "0.1.0"}
    (directory / "wheelhouse.json").write_text(json.dumps({**manifest, **fields, "wheels": []}))
    return directory


def argv(tmp_path: Path, *extra: str, role: str = "worker") -> list[str]:
    return [
        *extra,
        *("--role", role, "--wheelhouse", str(tmp_path / "wheels")),
        *("--prefix", str(tmp_path / "p"), "--bin-dir", str(tmp_path / "bin")),
        *("--systemd-dir", str(tmp_path / "units"), "--state-dir", str(tmp_path / "state")),
        *("--service-manager", "none"),
    ]


def assert_nothing_created(tmp_path: Path, *existing: str) -> None:
    created = [part for part in PARTS if part not in existing and (tmp_path / part).exists()]
    assert created == []


def assert_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert machine_install.main(args) == 1
    captured = capsys.readouterr()
    assert (captured.err, captured.out) == (f"error: {message}\n", "")


def target(tmp_path: Path, role: str) -> machine_service.Target:
    args = machine_install.build_parser().parse_args(argv(tmp_path, role=role))
    return machine_service.Target(args, {})


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass the root check, also when the tests do not run as root."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def bare_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine with no command the install needs, no WireGuard module and no apt-get."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setattr(machine_install, "SYSTEM_PATH", str(empty))
    monkeypatch.setattr(machine_install, "wireguard_module_available", lambda: False)
    return empty


def test_a_user_who_is_not_root_is_sent_to_sudo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    make_wheelhouse(tmp_path)
    assert_refused(tmp_path, capsys, argv(tmp_path), "run this as root (sudo)")
    assert_nothing_created(tmp_path)


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "python",
            "3.99",
            f"these wheels are for Python 3.99 and this machine's python3 is {PYTHON}: "
            f"make the installer on a hub with Python {PYTHON}",
        ),
        (
            "machine",
            "sparc64",
            f"these wheels are for sparc64 and this machine is {platform.machine()}",
        ),
    ],
    ids=["another-python", "another-machine"],
)
def test_wheels_for_another_python_or_machine_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: str, message: str
) -> None:
    make_wheelhouse(tmp_path, **{field: value})
    assert_refused(tmp_path, capsys, argv(tmp_path), message)
    assert_nothing_created(tmp_path)


@pytest.mark.usefixtures("as_root")
def test_a_directory_without_a_manifest_is_not_a_wheelhouse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    message = (
        f"{wheels} is not a HiveMind wheelhouse "
        f"([Errno 2] No such file or directory: '{wheels / 'wheelhouse.json'}')"
    )
    assert_refused(tmp_path, capsys, argv(tmp_path), message)
    assert_nothing_created(tmp_path)


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("token", ["hm1_nonsense", "hm1_\x1b[31mxx"], ids=["short", "control"])
def test_a_garbled_token_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token: str
) -> None:
    make_wheelhouse(tmp_path)
    assert_refused(tmp_path, capsys, argv(tmp_path, token), NOT_A_TOKEN)
    assert_nothing_created(tmp_path)


def test_a_real_token_looks_like_one() -> None:
    assert machine_install.looks_like_a_token(TOKEN)
    assert machine_install.looks_like_a_token(f"  {TOKEN}\n")


def one_character_changed(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]


@pytest.mark.parametrize(
    "text",
    [one_character_changed(TOKEN), TOKEN[:-2], TOKEN[:40], TOKEN.removeprefix("hm1_"), "hm1_"],
    ids=["changed", "truncated", "half", "no-prefix", "prefix-only"],
)
def test_a_damaged_token_does_not_look_like_one(text: str) -> None:
    assert not machine_install.looks_like_a_token(text)


@pytest.mark.usefixtures("as_root")
def test_a_token_one_character_short_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_wheelhouse(tmp_path)
    assert_refused(tmp_path, capsys, argv(tmp_path, TOKEN[:-1]), NOT_A_TOKEN)
    assert_nothing_created(tmp_path)


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("kind", ["file", "foreign-link"])
def test_a_console_script_that_is_not_ours_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    make_wheelhouse(tmp_path)
    link = tmp_path / "bin" / "hivemind-agent"
    link.parent.mkdir()
    if kind == "file":
        link.write_text("#!/bin/sh\necho not HiveMind\n")
    else:  # beside the prefix, not inside it
        link.symlink_to(tmp_path / "p-old" / "venv" / "bin" / "hivemind-agent")
    before = os.readlink(link) if link.is_symlink() else link.read_text()
    message = f"{link} exists and was not installed here: remove it first"
    assert_refused(tmp_path, capsys, argv(tmp_path), message)
    assert (os.readlink(link) if link.is_symlink() else link.read_text()) == before
    assert sorted(p.name for p in link.parent.iterdir()) == ["hivemind-agent"]
    assert_nothing_created(tmp_path, "bin")


@pytest.mark.usefixtures("as_root", "bare_machine")
@pytest.mark.parametrize(
    ("role", "extra", "packages"),
    [
        ("worker", [TOKEN], "wireguard-tools iproute2 docker.io"),
        ("hub", [], "wireguard-tools iproute2 nftables redis-server"),
    ],
)
def test_missing_commands_without_apt_get_are_named(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    role: str,
    extra: list[str],
    packages: str,
) -> None:
    make_wheelhouse(tmp_path)
    venv = "" if importlib.util.find_spec("ensurepip") else " python3-venv"
    message = (
        f"this machine needs {packages} wireguard-go{venv} and has no apt-get: "
        "install them, then run this again"
    )
    assert_refused(tmp_path, capsys, argv(tmp_path, *extra, role=role), message)
    assert_nothing_created(tmp_path)


def test_uninstalling_nothing_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert machine_install.main(argv(tmp_path, "--uninstall")) == 0
    captured = capsys.readouterr()
    expected = f"nothing to remove: HiveMind is not installed in {tmp_path / 'p'}\n"
    assert (captured.out, captured.err) == (expected, "")
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize(
    ("role", "command", "marker", "restart"),
    [
        ("worker", "hivemind-agent run", "agent.json", "always"),
        ("hub", "hivemind-hub up", "hub.toml", "on-failure"),
    ],
)
def test_the_unit_runs_the_service_once_the_machine_is_set_up(
    tmp_path: Path, role: str, command: str, marker: str, restart: str
) -> None:
    unit = configparser.ConfigParser(interpolation=None)
    unit.read_string(machine_service.unit_text(target(tmp_path, role)))
    state = tmp_path / "state"
    assert unit["Service"]["ExecStart"] == f"{tmp_path}/p/venv/bin/{command} --state-dir {state}"
    assert unit["Unit"]["ConditionPathExists"] == str(state / marker)
    assert unit["Service"]["Restart"] == restart
    assert ("docker.service" in unit["Unit"]["After"]) is (role == "worker")


def test_ensure_unit_writes_the_unit_only_when_it_differs(tmp_path: Path) -> None:
    worker = target(tmp_path, "worker")
    path = tmp_path / "units" / "hivemind-agent.service"
    assert machine_service.ensure_unit(worker) is True
    assert path.read_text() == machine_service.unit_text(worker)
    written = path.stat().st_mtime_ns
    assert machine_service.ensure_unit(worker) is False
    assert path.stat().st_mtime_ns == written
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    path.write_text("# edited by hand\n")
    assert machine_service.ensure_unit(worker) is True
    assert path.read_text() == machine_service.unit_text(worker)


@pytest.mark.usefixtures("as_root")
def test_a_manifest_that_is_not_an_object_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir(exist_ok=True)
    (wheelhouse / "wheelhouse.json").write_text("[]")
    message = f"{wheelhouse} is not a HiveMind wheelhouse (not an object)"
    assert_refused(tmp_path, capsys, argv(tmp_path), message)
    assert_nothing_created(tmp_path)


@pytest.mark.usefixtures("as_root")
def test_an_endpoint_is_for_a_hub_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_wheelhouse(tmp_path)
    message = "--endpoint is for a hub (an agent's hub is in its token)"
    assert_refused(tmp_path, capsys, argv(tmp_path, "--endpoint", "h:7443"), message)
    assert_nothing_created(tmp_path)


def test_uninstall_removes_only_what_an_install_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prefix holding another tool's environment and unit (Ansible's, say): untouched."""
    (tmp_path / "p" / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "p" / "wheelhouse").mkdir()
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "hivemind-agent.service").write_text("[Service]\nExecStart=x\n")
    assert machine_install.main([*argv(tmp_path), "--uninstall"]) == 0
    assert capsys.readouterr().out.startswith("nothing to remove")
    assert (tmp_path / "p" / "venv" / "bin").is_dir() and (tmp_path / "p" / "wheelhouse").is_dir()
    assert (tmp_path / "units" / "hivemind-agent.service").exists()
