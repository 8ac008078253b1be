"""``hivemind-hub``: create and run a hub, make join tokens, list and revoke nodes, audit
the CPT ledger, read and verify the audit log (hub/auditcli.py).

Every command's parser names its own handler (``set_defaults(handler=...)``) and ``main`` calls
only that: a command without one is an error, never another command (revoke, say).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hivemind_cluster.core.audit import HUB_ADMIN, LOCAL, AuditLog, Event
from hivemind_cluster.core.console import (
    age,
    options,
    print_json,
    print_table,
    program,
    run_handler,
    run_main,
    setup_logging,
)
from hivemind_cluster.core.names import DEFAULT_HUB_DIR
from hivemind_cluster.core.settings import (
    DEFAULT_INTERFACE,
    DEFAULT_OVERLAY,
    DEFAULT_WG_PORT,
    ENROLL_PORT,
    load_hub_settings,
)
from hivemind_cluster.core.units import format_bytes, format_cpt
from hivemind_cluster.hub.auditcli import add_audit_command
from hivemind_cluster.hub.init import init_hub
from hivemind_cluster.hub.installer import issue_token
from hivemind_cluster.hub.installercli import add_installer_command
from hivemind_cluster.hub.policycli import add_policy_commands
from hivemind_cluster.hub.serve import serve
from hivemind_cluster.mesh import audits, inventory, nodes, store, tokens
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.enrollment import retire_node
from hivemind_cluster.mesh.wireguard import WireGuardInterface
from hivemind_cluster.pool import store as pool_store
from hivemind_cluster.pool.ledger import Ledger

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
Command = Callable[[argparse.Namespace], int]
HUB_NODE_COLUMNS = [
    *("id", "name", "role", "overlay_ip", "status", "handshake", "rx", "tx"),
    *("direct", "relayed", "via_hub"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = program("hivemind-hub", "Run a HiveMind hub: the overlay's control plane.")
    state, as_json = options(DEFAULT_HUB_DIR, "hub", as_json=False), options()
    sub = parser.add_subparsers(dest="command", required=True)
    add_hub_commands(sub, [state], [state, as_json])
    add_mesh_commands(sub, [state, as_json])
    add_policy_commands(sub, [state, as_json])
    add_ledger_commands(sub, [state, as_json])
    add_audit_command(sub, [state, as_json])
    add_installer_command(sub, [state, as_json])
    return parser


def command(
    sub: Subcommands, name: str, run: Command, parents: list[argparse.ArgumentParser], text: str
) -> argparse.ArgumentParser:
    """A subcommand that runs ``run``, and nothing else."""
    parser = sub.add_parser(name, parents=parents, help=text)
    parser.set_defaults(handler=run)
    return parser


def group(sub: Subcommands, name: str, text: str) -> Subcommands:
    """A command of actions (``token create``): it runs nothing itself."""
    return sub.add_parser(name, help=text).add_subparsers(dest="action", required=True)


def add_hub_commands(
    sub: Subcommands, state: list[argparse.ArgumentParser], both: list[argparse.ArgumentParser]
) -> None:
    p = command(sub, "init", cmd_init, both, "create a hub (CA, keys, config)")
    p.add_argument(
        "--endpoint",
        required=True,
        help=f"HOST[:PORT] agents dial for enrollment (port default {ENROLL_PORT})",
    )
    p.add_argument("--overlay", default=DEFAULT_OVERLAY, help="overlay network (IPv4 CIDR)")
    p.add_argument("--wg-port", type=int, default=DEFAULT_WG_PORT, help="WireGuard UDP port")
    p.add_argument("--interface", default=DEFAULT_INTERFACE, help="WireGuard interface name")
    p.add_argument("--name", default="", help="the hub's name in node lists (default hostname)")
    p.add_argument("--force", action="store_true", help="replace an existing hub")
    p = command(sub, "up", cmd_up, state, "run the hub in the foreground")
    p.add_argument("--backend", default="auto", choices=["auto", "kernel", "userspace"])
    p.add_argument("-v", "--verbose", action="store_true")
    p = command(sub, "web", cmd_web, state, "run only the web UI (`up` starts and supervises it)")
    p.add_argument("-v", "--verbose", action="store_true")


def add_mesh_commands(sub: Subcommands, parents: list[argparse.ArgumentParser]) -> None:
    token = group(sub, "token", "join tokens")
    p = command(token, "create", cmd_token_create, parents, "print a new join token")
    p.add_argument("--role", default="worker", choices=tokens.ROLES)
    p.add_argument("--ttl", default="1h", help="lifetime: 90s, 30m, 1h, 7d (default 1h)")
    p.add_argument("--uses", type=int, default=1, help="how many machines may join (default 1)")
    text = "a label of the nodes it enrols, for the policy's label:KEY=VALUE (repeatable)"
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help=text)
    command(token, "list", cmd_token_list, parents, "list tokens")
    command(token, "revoke", cmd_token_revoke, parents, "revoke a token").add_argument("id")
    p = command(sub, "nodes", cmd_nodes, parents, "list the overlay's members")
    p.add_argument("--all", action="store_true", help="include revoked and departed nodes")
    node = group(sub, "node", "one node")
    text = "cut a node off WireGuard and refuse its certificate"
    p = command(node, "revoke", cmd_node_revoke, parents, text)
    p.add_argument("id", help="node id (or unambiguous name)")


def add_ledger_commands(sub: Subcommands, parents: list[argparse.ArgumentParser]) -> None:
    ledger = group(sub, "ledger", "the CPT ledger")
    command(ledger, "audit", cmd_ledger_audit, parents, "recompute every balance from the journal")
    p = command(ledger, "history", cmd_ledger_history, parents, "an account's movements")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=100)
    account = group(sub, "account", "ledger accounts")
    command(account, "list", cmd_account_list, parents, "every account with its balance")
    text = "open an account (projects receive tips)"
    p = command(account, "create", cmd_account_create, parents, text)
    p.add_argument("name")
    p.add_argument("--kind", default="project", choices=["project", "user"])


def cmd_init(args: argparse.Namespace) -> int:
    settings = init_hub(
        args.state_dir,
        args.endpoint,
        args.overlay,
        args.wg_port,
        args.interface,
        args.force,
        args.name,
    )
    pin = CertificateAuthority.load(settings.path).pin
    if args.json:
        print_json(
            {
                "state_dir": settings.state_dir,
                "endpoint": settings.endpoint,
                "overlay": settings.overlay,
                "hub_ip": settings.hub_ip,
                "ca_pin": pin,
            }
        )
    else:
        print(
            f"hub created in {settings.state_dir}\n  endpoint {settings.endpoint}\n"
            f"  overlay  {settings.overlay} (hub {settings.hub_ip})\n  CA pin   {pin}\n"
            f"next: hivemind-hub up --state-dir {settings.state_dir}"
        )
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    asyncio.run(serve(load_hub_settings(args.state_dir), args.backend))
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    from hivemind_cluster.web import server  # Flask only for this command

    server.serve(load_hub_settings(args.state_dir))
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    settings = load_hub_settings(args.state_dir)
    labels = tokens.parse_labels(args.label)
    token = issue_token(settings, args.role, args.ttl, args.uses, labels)
    if args.json:
        print_json(
            {"token": token.encode(), "id": token.token_id, "role": args.role, "labels": labels}
        )
    else:
        print(token.encode())
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    client = store.connect_hub(load_hub_settings(args.state_dir))
    records = [r.as_json() for r in tokens.list_tokens(client)]
    if args.json:
        print_json(records)
        return 0
    now = time.time()
    for r in records:
        left = float(r["expires_at"]) - now  # type: ignore[arg-type]
        r["expires"] = f"in {age(left)}" if left > 0 else f"{age(-left)} ago"
    print_table(records, ["id", "role", "uses_left", "expires", "state"])
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    client = store.connect_hub(load_hub_settings(args.state_dir))
    tokens.revoke_token(client, args.id)
    AuditLog(client).record(Event(HUB_ADMIN, LOCAL, "token.revoke", f"token:{args.id}"))
    print_json({"id": args.id, "state": "revoked"}) if args.json else print(
        f"token {args.id} revoked"
    )
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    settings = load_hub_settings(args.state_dir)
    rows = inventory.describe(settings, store.connect_hub(settings), include_retired=args.all)
    if args.json:
        print_json(rows)
    else:
        print_table([node_line(row) for row in rows], HUB_NODE_COLUMNS)
    return 0


def node_line(row: dict[str, Any]) -> dict[str, Any]:
    """A row of ``inventory.describe`` as the table shows it: unknown figures are "-"."""
    active = row["state"] == nodes.ACTIVE
    return row | {
        "status": ("online" if row["online"] else "offline") if active else row["state"],
        "handshake": "-" if row["role"] == "hub" else age(row["handshake_age"]),
        "rx": known_size(row["rx_bytes"]),
        "tx": known_size(row["tx_bytes"]),
        "direct": known_count(row["direct_peers"]),
        "relayed": known_count(row["relayed_peers"]),
        "via_hub": known_size(row["relayed_bytes"]),
    }


def known_size(value: int | None) -> str:
    return "-" if value is None else format_bytes(value)


def known_count(names: list[str] | None) -> str:
    """How many peers, "-" without a fresh path report (``--json`` lists their names)."""
    return "-" if names is None else str(len(names))


def cmd_node_revoke(args: argparse.Namespace) -> int:
    settings = load_hub_settings(args.state_dir)
    client = store.connect_hub(settings)
    node = nodes.get_node(client, args.id)
    if node.state != nodes.ACTIVE:
        message = f"node {node.id} is already {node.state}"
    else:
        retire_node(client, WireGuardInterface(settings.interface), node, nodes.REVOKED)
        audits.node_revoked(client, node, HUB_ADMIN, LOCAL)
        message = f"node {node.id} ({node.name}, {node.overlay_ip}) revoked"
    if args.json:
        print_json({"id": node.id, "state": nodes.get_node(client, node.id).state})
    else:
        print(message)
    return 0


def ledger_of(args: argparse.Namespace) -> Ledger:
    """The ledger over a connection with the pool's Lua (the ledger's functions) loaded."""
    return Ledger(pool_store.connect_hub(load_hub_settings(args.state_dir)))


def cmd_ledger_audit(args: argparse.Namespace) -> int:
    report = ledger_of(args).audit()
    if args.json:
        print_json(report)
        return 0 if report["ok"] else 1
    verdict = "ok" if report["ok"] else "NOT OK"
    print(
        f"{verdict}: {report['journal_entries']} journal entries, "
        f"{report['accounts']} accounts, balances sum to "
        f"{format_cpt(report['sum_of_balances'])} of "
        f"{format_cpt(report['total_supply'])} CPT"
    )
    for problem in ("mismatched_accounts", "mismatched_earnings", "negative_accounts"):
        if report[problem]:
            print(f"{problem.replace('_', ' ')}: {', '.join(report[problem])}")
    return 0 if report["ok"] else 1


def cmd_ledger_history(args: argparse.Namespace) -> int:
    entries = [e.as_json() for e in ledger_of(args).history(args.account, args.limit)]
    if args.json:
        print_json(entries)
    else:
        print_table(entries, ["id", "from", "to", "amount_cpt", "reason", "task"])
    return 0


def cmd_account_list(args: argparse.Namespace) -> int:
    rows = ledger_of(args).accounts()
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["account", "kind", "balance_cpt"])
    return 0


def cmd_account_create(args: argparse.Namespace) -> int:
    book = ledger_of(args)
    book.open_account(args.name, args.kind)
    row = next(a for a in book.accounts() if a["account"] == args.name)
    print_json(row) if args.json else print(
        f"account {args.name} ({row['kind']}): {row['balance_cpt']} CPT"
    )
    return 0


def main(argv: list[str]) -> int:
    return run_handler(build_parser(), argv)


def entry() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(entry())
