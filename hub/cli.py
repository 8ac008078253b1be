"""``hivemind-hub``: create and run a hub, make join tokens, list and revoke nodes, audit
the CPT ledger."""

from __future__ import annotations

import argparse
import asyncio
import time

from hivemind_cluster import __version__
from hivemind_cluster.core.console import age, print_json, print_table, run_main, setup_logging
from hivemind_cluster.core.names import DEFAULT_HUB_DIR
from hivemind_cluster.core.settings import HubSettings, load_hub_settings
from hivemind_cluster.core.units import format_cpt
from hivemind_cluster.hub.init import init_hub
from hivemind_cluster.hub.serve import serve
from hivemind_cluster.mesh import inventory, nodes, store, tokens
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.enrollment import retire_node
from hivemind_cluster.mesh.wireguard import WireGuardInterface
from hivemind_cluster.pool.ledger import Ledger


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemind-hub", description="Run a HiveMind hub: the overlay's control plane."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir",
        default=DEFAULT_HUB_DIR,
        help=f"hub state directory (default {DEFAULT_HUB_DIR})",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", parents=[state, as_json], help="create a hub (CA, keys, config)")
    p.add_argument(
        "--endpoint",
        required=True,
        help="HOST[:PORT] agents dial for enrollment (port default 7443)",
    )
    p.add_argument("--overlay", default="100.64.0.0/16", help="overlay network (IPv4 CIDR)")
    p.add_argument("--wg-port", type=int, default=51820, help="WireGuard UDP port")
    p.add_argument("--interface", default="hm0", help="WireGuard interface name")
    p.add_argument("--name", default="", help="the hub's name in node lists (default hostname)")
    p.add_argument("--force", action="store_true", help="replace an existing hub")

    p = sub.add_parser("up", parents=[state], help="run the hub in the foreground")
    p.add_argument("--backend", default="auto", choices=["auto", "kernel", "userspace"])
    p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser(
        "web", parents=[state], help="run only the web UI (`up` starts and supervises it)"
    )
    p.add_argument("-v", "--verbose", action="store_true")

    token = sub.add_parser("token", help="join tokens").add_subparsers(dest="action", required=True)
    p = token.add_parser("create", parents=[state, as_json], help="print a new join token")
    p.add_argument("--role", default="worker", choices=tokens.ROLES)
    p.add_argument("--ttl", default="1h", help="lifetime: 90s, 30m, 1h, 7d (default 1h)")
    p.add_argument("--uses", type=int, default=1, help="how many machines may join (default 1)")
    token.add_parser("list", parents=[state, as_json], help="list tokens")
    p = token.add_parser("revoke", parents=[state, as_json], help="revoke a token")
    p.add_argument("id")

    p = sub.add_parser("nodes", parents=[state, as_json], help="list the overlay's members")
    p.add_argument("--all", action="store_true", help="include revoked and departed nodes")
    node = sub.add_parser("node", help="one node").add_subparsers(dest="action", required=True)
    p = node.add_parser(
        "revoke",
        parents=[state, as_json],
        help="cut a node off WireGuard and refuse its certificate",
    )
    p.add_argument("id", help="node id (or unambiguous name)")

    ledger = sub.add_parser("ledger", help="the CPT ledger").add_subparsers(
        dest="action", required=True
    )
    ledger.add_parser(
        "audit", parents=[state, as_json], help="recompute every balance from the journal"
    )
    p = ledger.add_parser("history", parents=[state, as_json], help="an account's movements")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=100)
    account = sub.add_parser("account", help="ledger accounts").add_subparsers(
        dest="action", required=True
    )
    account.add_parser("list", parents=[state, as_json], help="every account with its balance")
    p = account.add_parser(
        "create", parents=[state, as_json], help="open an account (projects receive tips)"
    )
    p.add_argument("name")
    p.add_argument("--kind", default="project", choices=["project", "user"])
    return parser


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


def cmd_token(args: argparse.Namespace, settings: HubSettings) -> int:
    client = store.connect_hub(settings)
    if args.action == "create":
        token = tokens.create_token(
            client,
            [settings.endpoint],
            CertificateAuthority.load(settings.path).pin,
            role=args.role,
            ttl_seconds=tokens.parse_duration(args.ttl),
            uses=args.uses,
        )
        if args.json:
            print_json({"token": token.encode(), "id": token.token_id, "role": args.role})
        else:
            print(token.encode())
    elif args.action == "list":
        records = [r.as_json() for r in tokens.list_tokens(client)]
        if args.json:
            print_json(records)
        else:
            now = time.time()
            for r in records:
                left = float(r["expires_at"]) - now  # type: ignore[arg-type]
                r["expires"] = f"in {age(left)}" if left > 0 else f"{age(-left)} ago"
            print_table(records, ["id", "role", "uses_left", "expires", "state"])
    else:
        tokens.revoke_token(client, args.id)
        print_json({"id": args.id, "state": "revoked"}) if args.json else print(
            f"token {args.id} revoked"
        )
    return 0


def cmd_nodes(args: argparse.Namespace, settings: HubSettings) -> int:
    rows = inventory.describe(settings, store.connect_hub(settings), include_retired=args.all)
    if args.json:
        print_json(rows)
        return 0
    now = time.time()
    for row in rows:
        row["handshake"] = (
            "-"
            if row["role"] == "hub"
            else age(now - row["last_handshake"] if row["last_handshake"] else None)
        )
        row["status"] = (
            ("online" if row["online"] else "offline") if row["state"] == "active" else row["state"]
        )
    print_table(
        rows, ["id", "name", "role", "overlay_ip", "status", "handshake", "rx_bytes", "tx_bytes"]
    )
    return 0


def cmd_node_revoke(args: argparse.Namespace, settings: HubSettings) -> int:
    client = store.connect_hub(settings)
    node = nodes.get_node(client, args.id)
    if node.state != nodes.ACTIVE:
        message = f"node {node.id} is already {node.state}"
    else:
        retire_node(client, WireGuardInterface(settings.interface), node, nodes.REVOKED)
        message = f"node {node.id} ({node.name}, {node.overlay_ip}) revoked"
    if args.json:
        print_json({"id": node.id, "state": nodes.get_node(client, node.id).state})
    else:
        print(message)
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "init":
        return cmd_init(args)
    if args.command == "up":
        return cmd_up(args)
    if args.command == "web":
        setup_logging(args.verbose)
        from hivemind_cluster.web import server  # Flask only for this command

        server.serve(load_hub_settings(args.state_dir))
        return 0
    settings = load_hub_settings(args.state_dir)
    if args.command == "token":
        return cmd_token(args, settings)
    if args.command == "nodes":
        return cmd_nodes(args, settings)
    if args.command in ("ledger", "account"):
        return cmd_ledger(args, settings)
    return cmd_node_revoke(args, settings)


def cmd_ledger(args: argparse.Namespace, settings: HubSettings) -> int:
    book = Ledger(store.connect_hub(settings))
    if args.command == "ledger" and args.action == "audit":
        report = book.audit()
        if args.json:
            print_json(report)
        else:
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
    if args.command == "ledger":
        entries = [e.as_json() for e in book.history(args.account, args.limit)]
        if args.json:
            print_json(entries)
        else:
            print_table(entries, ["id", "from", "to", "amount_cpt", "reason", "task"])
        return 0
    if args.action == "create":
        book.open_account(args.name, args.kind)
        row = next(a for a in book.accounts() if a["account"] == args.name)
        print_json(row) if args.json else print(
            f"account {args.name} ({row['kind']}): {row['balance_cpt']} CPT"
        )
        return 0
    rows = book.accounts()
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["account", "kind", "balance_cpt"])
    return 0


def entry() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(entry())
