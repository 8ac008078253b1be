"""Tables of ours in nftables (``inet hivemind_…``): loaded in one transaction, deleted,
looked for.

The hub's underlay guard (mesh/guard.py) and a worker's rules for tasks with network
(agent/tasknet.py) each own one table and touch nothing else of the ruleset.
"""

from __future__ import annotations

import shutil

from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.system import run


def table_name(owner: str) -> str:
    """``hivemind_`` and ``owner`` (an interface name, say) with anything but letters and
    digits made ``_``: a name nft accepts whatever the interface is called."""
    return "hivemind_" + "".join(c if c.isalnum() else "_" for c in owner)


def load_table(table: str, rules: str, without_nft: str) -> None:
    """Replace the inet table ``table`` with ``rules`` in one nft transaction: there is no
    moment without rules, and rules nft refuses leave the old table as it was. Without nft,
    SystemFailure(``without_nft``): the caller says what goes unprotected."""
    if shutil.which("nft") is None:
        raise SystemFailure(without_nft)
    replace = f"table inet {table} {{}}\ndelete table inet {table}\n{rules}"
    run(["nft", "-f", "-"], stdin=replace)


def delete_table(table: str) -> None:
    if shutil.which("nft") is not None:
        run(["nft", "delete", "table", "inet", table], check=False)


def table_exists(table: str) -> bool:
    if shutil.which("nft") is None:
        return False
    try:
        run(["nft", "list", "table", "inet", table])
    except SystemFailure:
        return False
    return True
