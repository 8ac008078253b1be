"""``hivemind``'s saved login: where it lives, its file modes, and the rules for using it."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

from hivemind_cluster.client import cli
from hivemind_cluster.client.apiclient import api_url
from hivemind_cluster.client.cli import Config, config_path, load_config, save_config, session
from hivemind_cluster.core.console import run_main
from hivemind_cluster.core.errors import InvalidInput, Unauthenticated, Unavailable

API = "http://100.64.0.1:5001/api/v1"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_config_path_default_xdg_and_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HIVEMIND_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_path() == tmp_path / ".config" / "hivemind" / "config.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == tmp_path / "xdg" / "hivemind" / "config.json"
    monkeypatch.setenv("HIVEMIND_CONFIG", str(tmp_path / "elsewhere.json"))
    assert config_path() == tmp_path / "elsewhere.json"


def test_the_config_is_written_0600_in_a_new_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "new" / "hivemind" / "config.json"
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        save_config(path, Config(API, "secret-token", "alice"))
        save_config(path, Config(API, "another-token", "alice"))  # replaced, still 0600
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert json.loads(path.read_text()) == {
        "api": API,
        "token": "another-token",
        "username": "alice",
    }
    assert load_config(path) == Config(API, "another-token", "alice")
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary left


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    save_config(shared / "c.json", Config(API, "t", "u"))
    assert (mode(shared), mode(shared / "c.json")) == (0o755, 0o600)


def test_a_missing_config_is_an_empty_login(tmp_path: Path) -> None:
    assert load_config(tmp_path / "none.json") == Config()


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'"a string"', b"\xff\xfe"])
def test_a_damaged_config_is_one_clear_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(data)
    with pytest.raises(InvalidInput, match="is not a hivemind config: delete it"):
        load_config(path)


def test_unknown_keys_are_ignored_and_missing_ones_empty(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"api": API, "extra": 1, "token": None}))
    assert load_config(path) == Config(API, "", "")


def args(command: str = "balance", api: str = "") -> argparse.Namespace:
    return argparse.Namespace(command=command, api=api)


def test_commands_need_a_login() -> None:
    with pytest.raises(Unauthenticated, match=r"^not logged in: run hivemind login --api URL$"):
        session(args(), Config())
    with pytest.raises(Unauthenticated, match="not logged in at"):
        session(args(), Config(API, "", "alice"))  # logged out


def test_the_saved_token_goes_only_to_its_own_api() -> None:
    saved = Config(API, "secret-token", "alice")
    assert session(args(), saved).token == "secret-token"
    same = session(args(api="100.64.0.1"), saved)  # the same API, written shorter
    assert (same.api, same.token) == (API, "secret-token")
    other = "http://100.64.0.9:5001/api/v1"
    with pytest.raises(Unauthenticated, match=f"not logged in at {other}: run hivemind login"):
        session(args(api="100.64.0.9:5001"), saved)
    public = session(args("rates", "100.64.0.9"), saved)  # the rate card needs no account
    assert (public.api, public.token) == (other, "")


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("100.64.0.1", API),
        ("100.64.0.1:5001", API),
        ("http://100.64.0.1:5001", API),
        ("http://100.64.0.1:5001/", API),
        ("http://100.64.0.1:5001/api/v1/", API),
        ("https://hub.example.org", "https://hub.example.org/api/v1"),
        ("[fd00::1]:8080", "http://[fd00::1]:8080/api/v1"),
    ],
)
def test_api_urls(given: str, url: str) -> None:
    assert api_url(given) == url


@pytest.mark.parametrize("bad", ["ftp://hub", "http://", "http://hub:notaport", "http://h/?q=1"])
def test_bad_api_urls(bad: str) -> None:
    with pytest.raises(InvalidInput, match="API URL"):
        api_url(bad)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = run_main(cli.main, argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_not_logged_in_is_one_line_and_exit_1(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["list"], capsys) == (1, "", "error: not logged in: run hivemind login --api URL\n")


def test_login_without_a_terminal_says_which_option_is_missing(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    status, _, err = run(["login", "--api", "127.0.0.1:1", "--user", "alice"], capsys)
    assert (status, err) == (
        1,
        "error: password needed: pass --password or --password-stdin (no terminal to ask on)\n",
    )
    status, _, err = run(["login", "--api", "127.0.0.1:1"], capsys)
    assert (status, err) == (1, "error: username needed: pass --user (no terminal to ask on)\n")
    status, _, err = run(["login", "--user", "alice", "--password", "x" * 8], capsys)
    assert (status, err) == (1, "error: login needs --api URL (the hub's web UI, port 5001)\n")
    assert not config_file.exists()


def test_register_asks_twice_on_a_terminal(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter(["first-password", "second-password"])
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    status, _, err = run(["register", "--api", "127.0.0.1:1", "--user", "alice"], capsys)
    assert (status, err) == (1, "error: the two passwords differ\n")


def test_login_to_an_api_that_is_down_names_it(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["login", "--api", "127.0.0.1:1", "--user", "alice", "--password", "x" * 8]
    status, _, err = run(argv, capsys)
    assert status == 1
    assert err == (
        "error: the HiveMind API at http://127.0.0.1:1/api/v1 refused the connection "
        "(is the hub's web server running?)\n"
    )
    assert not config_file.exists()


def test_logout_forgets_the_token_even_when_the_hub_is_down(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_config(config_file, Config("http://127.0.0.1:1/api/v1", "secret-token", "alice"))
    status, _, err = run(["logout"], capsys)
    assert status == 1 and err.startswith("error: the HiveMind API at http://127.0.0.1:1")
    assert err.endswith("the token is forgotten here but stays valid until it expires\n")
    assert load_config(config_file) == Config("http://127.0.0.1:1/api/v1", "", "alice")
    assert run(["logout"], capsys) == (0, "logged out alice\n", "")


def test_the_password_can_come_on_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin.readline", lambda: "s3cret pass\n")
    parsed = cli.build_hivemind_parser().parse_args(["login", "--user", "a", "--password-stdin"])
    assert cli.credentials(parsed) == ("a", "s3cret pass")


def test_unavailable_is_the_error_class_for_a_down_hub(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_config(config_file, Config("http://127.0.0.1:1/api/v1", "t", "alice"))
    with pytest.raises(Unavailable):
        cli.main(["balance"])
