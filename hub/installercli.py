"""``hivemind-hub installer [--role worker|operator] [--token-ttl 1h | --no-token] -o FILE``:
write an agent installer (hub/installer.py) that a new machine runs with ``sh FILE``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hivemind_cluster.core.console import print_json
from hivemind_cluster.core.settings import load_hub_settings
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.hub.installer import find_wheelhouse, utc_minute, write_installer
from hivemind_cluster.mesh import tokens

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def add_installer_command(sub: Subcommands, parents: list[argparse.ArgumentParser]) -> None:
    """``installer`` (``parents``: --state-dir, --json)."""
    text = "write one file that installs and joins a new machine, offline (sh FILE)"
    p = sub.add_parser("installer", parents=parents, help=text)
    p.set_defaults(handler=cmd_installer)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--role", default="worker", choices=tokens.ROLES, help="(default worker)")
    tokens_group = p.add_mutually_exclusive_group()
    tokens_group.add_argument(
        "--token-ttl", default="1h", help="the lifetime of the join token inside (default 1h)"
    )
    tokens_group.add_argument(
        "--no-token",
        action="store_true",
        help="no token inside: the machine joins with `sh FILE <token>`",
    )
    p.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="a label of the node"
    )
    p.add_argument("--wheelhouse", metavar="DIR", help="(default: the one make install keeps)")


def cmd_installer(args: argparse.Namespace) -> int:
    settings = load_hub_settings(args.state_dir)
    labels = tokens.parse_labels(args.label)
    wheelhouse = find_wheelhouse(args.wheelhouse)
    if not args.json:
        print(f"==> packing the agent's wheels from {wheelhouse}", file=sys.stderr)
    made = write_installer(
        settings,
        Path(args.output),
        args.role,
        wheelhouse,
        None if args.no_token else args.token_ttl,
        labels,
    )
    if args.json:
        print_json(
            {
                "path": str(made.path),
                "role": made.role,
                "hivemind": made.version,
                "wheels": made.wheels,
                "bytes": made.size,
                "token_id": made.token_id,
                "token_expires": made.expires,
            }
        )
        return 0
    print(f"wrote {made.path} ({format_bytes(made.size)}, {made.wheels} wheels, {made.role})")
    if made.expires is not None:
        until = utc_minute(made.expires)
        print(f"it holds single-use token {made.token_id}, valid until {until}: keep it private")
    else:
        print("no token inside: run `hivemind-hub token create` and `sh FILE <token>`")
    print(f"on the new machine, as root: sh {made.path.name}")
    return 0
