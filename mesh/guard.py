"""The underlay guard: nftables rules so overlay addresses answer only through WireGuard.

Linux accepts a packet for any local address on any interface, so without this a host on
the underlay could route 100.64.0.0/16 via the hub and reach Redis or the pool directly.
"""

from __future__ import annotations

from hivemind_cluster.core import nftables
from hivemind_cluster.core.nftables import table_name


def ruleset(interface: str, overlay: str) -> str:
    table = table_name(interface)
    return f"""table inet {table} {{
  chain input {{
    type filter hook input priority -10; policy accept;
    ip daddr {overlay} iifname != {{ "{interface}", "lo" }} drop
  }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    oifname "{interface}" iifname != "{interface}" drop
    iifname "{interface}" oifname != "{interface}" drop
  }}
}}
"""


def install(interface: str, overlay: str) -> None:
    nftables.load_table(
        table_name(interface),
        ruleset(interface, overlay),
        "nft is not installed, so overlay services would answer on the underlay; "
        "install nftables (`make setup`) or set guard_underlay = false",
    )


def remove(interface: str) -> None:
    nftables.delete_table(table_name(interface))
