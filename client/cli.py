"""``hivemind``: the user's command line, over the hub's web API with an account.

``register`` and ``login`` save an API token in ``$HIVEMIND_CONFIG`` (default
``~/.config/hivemind/config.json``: JSON ``{api, token, username}``, mode 0600, its
directory 0700 when created here); ``logout`` revokes it on the hub and forgets it. Every
other command is a task command of ``client/poolcli.py`` over ``ApiClient``. ``--api URL`` picks
another hub than the saved one; the saved token is only ever sent to the API it came from.
Passwords: ``--password`` (visible to other local users in ``ps``), ``--password-stdin``
(scripts), or a prompt on the terminal.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from hivemind_cluster.client.apiclient import ApiClient, api_url
from hivemind_cluster.client.poolcli import build_parser, run_command
from hivemind_cluster.client.views import amount_text
from hivemind_cluster.core.console import print_json, run_main
from hivemind_cluster.core.errors import HiveMindError, InvalidInput, Unauthenticated
from hivemind_cluster.core.files import write_private
from hivemind_cluster.core.settings import DEFAULT_WEB_PORT

CONFIG_ENV = "HIVEMIND_CONFIG"


@dataclass(frozen=True)
class Config:
    api: str = ""
    token: str = ""
    username: str = ""


def config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "hivemind" / "config.json"


def load_config(path: Path) -> Config:
    """The saved login; an empty ``Config`` when there is none yet."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise HiveMindError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} is not a hivemind config: delete it and log in again")
    return Config(**{k: str(data.get(k) or "") for k in ("api", "token", "username")})


def save_config(path: Path, config: Config) -> None:
    """Write the config readable by its owner only (0600, atomically; new directory 0700)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, json.dumps(asdict(config), indent=2) + "\n")
    except OSError as exc:
        raise HiveMindError(f"cannot write {path}: {exc.strerror}") from None


def session(args: argparse.Namespace, config: Config) -> ApiClient:
    """The API client for a task command: the saved token, if it belongs to this API."""
    if not args.api and not config.api:
        raise Unauthenticated("not logged in: run hivemind login --api URL")
    api = api_url(args.api or config.api)
    token = config.token if api == config.api else ""
    if not token and args.command != "rates":  # the rate card is public
        raise Unauthenticated(f"not logged in at {api}: run hivemind login --api {api}")
    return ApiClient(api, token)


def ask(prompt: str, secret: bool = False) -> str:
    if not sys.stdin.isatty():
        what = "--password or --password-stdin" if secret else "--user"
        raise InvalidInput(f"{prompt.rstrip(': ')} needed: pass {what} (no terminal to ask on)")
    try:
        answer = getpass.getpass(prompt) if secret else input(prompt)
    except EOFError:
        answer = ""
    if not answer.strip():
        raise InvalidInput(f"no {prompt.rstrip(': ')} given")
    return answer.strip() if not secret else answer


def credentials(args: argparse.Namespace) -> tuple[str, str]:
    username = args.user or ask("username: ")
    if args.password is not None:
        password = args.password
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = ask("password: ", secret=True)
        if args.command == "register" and ask("password again: ", secret=True) != password:
            raise InvalidInput("the two passwords differ")
    if not password:
        raise InvalidInput("the password is empty")
    return username, password


def cmd_login(args: argparse.Namespace, path: Path, config: Config) -> int:
    if not args.api and not config.api:
        raise InvalidInput(
            f"{args.command} needs --api URL (the hub's web UI, port {DEFAULT_WEB_PORT})"
        )
    client = ApiClient(args.api or config.api)
    username, password = credentials(args)
    account = client.register(username, password) if args.command == "register" else {}
    token = client.login(username, password)
    save_config(path, Config(client.api, token, username))
    if args.json:
        print_json({"username": username, "api": client.api, "config": str(path)} | account)
        return 0
    if account:
        grant = amount_text(account["balance_micro"])
        print(f"registered {username}: account {account['account']}, {grant}")
    print(f"logged in as {username} at {client.api} (token saved in {path})")
    return 0


def cmd_logout(args: argparse.Namespace, path: Path, config: Config) -> int:
    if config.token:
        save_config(path, replace(config, token=""))
        try:
            ApiClient(config.api, config.token).logout()
        except Unauthenticated:
            pass  # expired or revoked already
        except HiveMindError as exc:
            raise type(exc)(
                f"{exc.message}; the token is forgotten here but stays valid until it expires"
            ) from None
    if args.json:
        print_json({"logged_out": True, "username": config.username})
    else:
        print(f"logged out {config.username}".rstrip())
    return 0


# register, login and logout: they handle the saved login, not a task (``login_command``).
LoginCommand = Callable[[argparse.Namespace, Path, Config], int]


def build_hivemind_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api",
        default="",
        metavar="URL",
        help=f"the hub's web API, http://HUB:{DEFAULT_WEB_PORT} (default: the saved one)",
    )
    parser, sub = build_parser(
        "hivemind", "Run tasks on a HiveMind cluster with your account.", common, False
    )
    for name, text in (("register", "create an account, then log in"), ("login", "log in")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.set_defaults(login_command=cmd_login)
        p.add_argument("--user", default="", help="username (default: ask)")
        secret = p.add_mutually_exclusive_group()
        secret.add_argument("--password", help="visible to other local users; prefer the prompt")
        secret.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    p = sub.add_parser("logout", parents=[common], help="revoke the saved token and forget it")
    p.set_defaults(login_command=cmd_logout)
    return parser


def main(argv: list[str]) -> int:
    args = build_hivemind_parser().parse_args(argv)
    path = config_path()
    config = load_config(path)
    login_command: LoginCommand | None = getattr(args, "login_command", None)
    try:
        if login_command is not None:
            return login_command(args, path, config)
        return run_command(args, session(args, config))
    except (KeyError, TypeError, AttributeError) as exc:
        # The one place a well-formed answer of the wrong shape lands (another server
        # on the port, or a hub of another version): one line, not a traceback.
        api = args.api or config.api
        raise HiveMindError(
            f"{api} answered something unexpected ({exc!r}; not HiveMind?)"
        ) from None


def entry() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(entry())
