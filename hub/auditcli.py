"""``hivemind-hub audit [--since WHEN] [--action NAME] [--json] [--verify]``: read the hub's
audit log (core/audit.py), or check its hash chain.

``--since`` takes an ISO time (``2026-12-02T14:00``, local time unless it names a zone) or
a duration back from now (``90s``, ``30m``, ``1h``, ``2d``). ``--action`` takes an action
(``token.create``) or a group of them (``token.`` or ``token``). ``--verify`` exits 1
naming the first entry altered or removed, 0 with "N entries, chain intact" otherwise.
Everything an entry holds came from someone else (a user name, a node's host name), so the
table shows it through the console's guard; ``--json`` escapes it itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import re
import time
from typing import TYPE_CHECKING, Any

from hivemind_cluster.core import redisdb
from hivemind_cluster.core.audit import AuditLog, Entry, check_action_filter
from hivemind_cluster.core.console import print_json, print_table
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.settings import load_hub_settings

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
COLUMNS = ["seq", "time", "actor", "source", "action", "target", "outcome", "detail"]
_AGO = re.compile(r"^(\d{1,9})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DETAIL_CHARS = 80  # of an entry's detail in the table


def add_audit_command(sub: Subcommands, parents: list[argparse.ArgumentParser]) -> None:
    """``audit`` (``parents``: --state-dir, --json)."""
    text = "who did what: the hub's audit log, or --verify its hash chain"
    p = sub.add_parser("audit", parents=parents, help=text)
    p.set_defaults(handler=cmd_audit)
    p.add_argument("--since", metavar="WHEN", help="an ISO time, or a duration ago: 30m, 1h, 2d")
    p.add_argument("--action", metavar="NAME", help="token.create, or a group: token.")
    text = "check the chain: exit 1 naming the first entry altered or removed"
    p.add_argument("--verify", action="store_true", help=text)


def since_time(text: str, now: float | None = None) -> float:
    """``--since``: a Unix time from an ISO time or a duration back from ``now``."""
    now = time.time() if now is None else now
    if match := _AGO.match(text.strip()):
        return now - int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise InvalidInput(
            f"--since {text[:40]!r}: an ISO time (2026-12-02T14:00) or a duration like 30m, 1h, 2d"
        ) from None


def cmd_audit(args: argparse.Namespace) -> int:
    # Both filters are checked before anything is asked of the hub.
    since = since_time(args.since) if args.since is not None else None
    action = check_action_filter(args.action) if args.action else None
    audit = AuditLog(redisdb.connect_hub(load_hub_settings(args.state_dir)))
    if args.verify:
        return verify(audit, args.json)
    entries = audit.entries(since, action)
    if args.json:
        print_json([entry.as_json() for entry in entries])
    else:
        print_table([row(entry) for entry in entries], COLUMNS)
    return 0


def verify(audit: AuditLog, as_json: bool) -> int:
    count, problem = audit.verify()
    if as_json:
        found = None if problem is None else dataclasses.asdict(problem)
        print_json({"entries": count, "intact": problem is None, "problem": found})
    else:
        print(problem.message if problem else f"{count} entries, chain intact")
    return 0 if problem is None else 1


def row(entry: Entry) -> dict[str, Any]:
    """An entry as the table shows it: the time in UTC, to the second; a long detail (the
    first settings change names every setting) cut short (``--json`` has it whole)."""
    when = datetime.datetime.fromtimestamp(entry.time, datetime.UTC)
    detail = (
        entry.detail if len(entry.detail) <= DETAIL_CHARS else entry.detail[:DETAIL_CHARS] + "…"
    )
    return entry.as_json() | {"time": when.strftime("%Y-%m-%d %H:%M:%SZ"), "detail": detail}
