"""``hivemind-agent``: join the overlay, run the agent service, show status, leave.

Each subcommand names its handler (``set_defaults(handler=...)``) and ``main`` calls only that:
a command without one is an error, never whatever an if-chain happened to end with (``leave``
deregisters the node and deletes its state).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from importlib import resources
from typing import Any

from hivemind_cluster.agent import join as membership
from hivemind_cluster.agent.service import run_service
from hivemind_cluster.agent.state import AgentSettings, load_settings
from hivemind_cluster.core.console import (
    age,
    options,
    print_json,
    printable,
    program,
    run_handler,
    run_main,
    setup_logging,
)
from hivemind_cluster.core.names import DEFAULT_AGENT_DIR
from hivemind_cluster.core.units import format_bytes


def build_parser() -> argparse.ArgumentParser:
    parser = program("hivemind-agent", "Join this machine to a HiveMind overlay.")
    common = options(DEFAULT_AGENT_DIR, "agent")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("join", parents=[common], help="enroll with a join token and come up")
    p.add_argument("token", help="the token printed by `hivemind-hub token create` ('-': stdin)")
    p.add_argument("--interface", help="WireGuard interface name (default hm0)")
    p.add_argument("--backend", choices=["auto", "kernel", "userspace"])
    p.add_argument("--name", help="node name shown on the hub (default: hostname)")
    p.add_argument("--timeout", type=int, help="seconds to wait for the hub (default 20)")
    p.add_argument(
        "--foreground",
        action="store_true",
        help="run the service in this process after joining (for systemd)",
    )
    p.add_argument(
        "--no-service",
        action="store_true",
        help="do not start the service (a supervisor such as systemd will run it)",
    )
    p.set_defaults(handler=cmd_join)
    p = sub.add_parser("run", parents=[common], help="run the agent service (foreground)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("status", parents=[common], help="identity and overlay state")
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("leave", parents=[common], help="deregister and remove the interface")
    p.set_defaults(handler=cmd_leave)
    p = sub.add_parser(
        "images", help="build the local task images (hivemind/busybox, hivemind/python:3.11)"
    )
    p.set_defaults(handler=cmd_images)
    return parser


def settings_for(args: argparse.Namespace) -> AgentSettings:
    """The state directory's settings, with what the command line overrides."""
    overrides = {k: getattr(args, k, None) for k in ("interface", "backend")}
    overrides["join_timeout"] = getattr(args, "timeout", None)
    return load_settings(args.state_dir, **overrides)


def cmd_images(args: argparse.Namespace) -> int:
    """Build the missing task images with the script shipped in this package."""
    script = resources.files("hivemind_cluster.agent").joinpath("images.sh")
    with resources.as_file(script) as path:
        return subprocess.run(["bash", str(path)], check=False).returncode


def cmd_join(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    token = sys.stdin.read() if args.token == "-" else args.token
    started = time.monotonic()
    if not args.json and sys.stderr.isatty():
        print("joining…", file=sys.stderr)
    enrollment, new = membership.join(
        settings, token, args.name, start_service=not (args.foreground or args.no_service)
    )
    elapsed = time.monotonic() - started
    if args.json:
        print_json(
            {
                "node_id": enrollment.node_id,
                "overlay_ip": enrollment.overlay_ip,
                "hub_ip": enrollment.hub_ip,
                "role": enrollment.role,
                "interface": enrollment.interface,
                "backend": enrollment.backend,
                "already_enrolled": not new,
                "seconds": round(elapsed, 3),
            }
        )
    elif new:
        print(
            f"joined as {enrollment.node_id} ({enrollment.role}) at {enrollment.overlay_ip} "
            f"on {enrollment.interface} ({enrollment.backend} WireGuard); "
            f"hub {enrollment.hub_ip} reachable in {elapsed:.2f}s"
        )
    else:
        print(f"already enrolled as {enrollment.node_id} at {enrollment.overlay_ip}; nothing to do")
    if args.foreground:
        setup_logging()
        run_service(settings)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    setup_logging(args.verbose)
    run_service(settings)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    info = membership.status(settings_for(args))
    if args.json:
        print_json(info)
        return 0
    handshake = info["last_handshake"]
    serving = info["service_pid"] and info["status_page"]
    page = f", status page {info['status_page']}" if serving else ""
    print(
        f"node       {info['node_id']} ({info['name']}, {info['role']})\n"
        f"overlay    {info['overlay_ip']} on {info['interface']} ({info['backend']}), "
        f"{'up' if info['interface_up'] else 'DOWN'}\n"
        f"hub        {info['hub_ip']} via {info['hub_endpoint']}, "
        f"{'reachable' if info['hub_reachable'] else 'NOT reachable'}\n"
        f"handshake  {ago(handshake, time.time())}, "
        f"rx {info['rx_bytes']} B, tx {info['tx_bytes']} B\n"
        f"service    {'pid ' + str(info['service_pid']) if info['service_pid'] else 'stopped'}"
        f"{page}"
    )
    print(peers_table(info["peers"], info["peers_revision"], time.time()))
    return 0


def ago(then: float | None, now: float) -> str:
    return f"{age(now - then)} ago" if then else "never"


def peers_table(peers: list[dict[str, Any]], revision: int, now: float) -> str:
    """The ``peers`` line (how many go direct) and one line per peer. Names, roles and
    endpoints come from the hub: ``printable`` keeps their control characters (a newline
    included) off the terminal."""
    if not revision and not peers:
        return "peers      none known yet (the service has not heard from the hub)"
    direct = sum(p["path"] == "direct" for p in peers)
    lines = [
        f"peers      {len(peers)} ({direct} direct, {len(peers) - direct} relayed), "
        f"revision {revision}"
    ]
    for p in peers:
        name, role, overlay_ip, endpoint = (
            printable(str(p[key]), newlines=False)
            for key in ("name", "role", "overlay_ip", "endpoint")
        )
        lines.append(
            f"  {name:<16} {role:<8} {overlay_ip:<15} {p['path']:<7}  "
            f"{endpoint or '-':<21} "
            f"handshake {ago(p['last_handshake'], now)}, "
            f"rx {format_bytes(p['rx_bytes'])}, tx {format_bytes(p['tx_bytes'])}"
        )
    return "\n".join(lines)


def cmd_leave(args: argparse.Namespace) -> int:
    result = membership.leave(settings_for(args))
    if args.json:
        print_json(result)
    else:
        if result["warning"]:
            print(
                f"warning: could not deregister with the hub: {result['warning']}; "
                f"ask the operator to run `hivemind-hub node revoke {result['node_id']}`",
                file=sys.stderr,
            )
        print(f"left: node {result['node_id']} removed from this machine")
    return 0


def main(argv: list[str]) -> int:
    return run_handler(build_parser(), argv)


def entry() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(entry())
