"""A member's side of the overlay policy: an nftables table on its WireGuard interface.

The hub enforces the policy on what it relays; this table enforces it on what reaches the
member directly (a direct peer's packets never pass the hub). The rules come from
mesh/policyrules.py, rendered for this member and the peers it knows, and are loaded only
when their text changed: an update that changes nothing the policy looks at costs no nft
run. Before the first policy arrives no table is loaded, and the last one loaded stays
while the hub is unreachable: the policy does not lapse when the hub is down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from hivemind_cluster.mesh import policyrules
from hivemind_cluster.mesh.policy import Party, Policy

log = logging.getLogger("hivemind.agent.firewall")


class MemberFirewall:
    """The member's policy table on ``interface``; ``load`` and ``unload`` are nft
    (mesh/policyrules.apply/remove), replaceable in tests."""

    def __init__(
        self,
        interface: str,
        load: Callable[[str, str], None] = policyrules.apply,
        unload: Callable[[str], None] = policyrules.remove,
    ) -> None:
        self.interface = interface
        self._load = load
        self._unload = unload
        self.loaded = ""  # the ruleset text in nft ("" = none loaded by us)

    def apply(self, policy: Policy, me: Party, others: Iterable[Party]) -> bool:
        """Load the ruleset for ``policy`` unless nft has it already; True if it loaded.
        When nft refuses it, the previous table stays (one nft transaction) and the
        error propagates."""
        ruleset = policyrules.member_ruleset(self.interface, policy, me, others)
        if ruleset == self.loaded:
            return False
        self._load(self.interface, ruleset)
        self.loaded = ruleset
        log.info("policy %s loaded on %s", policy.digest()[:12], self.interface)
        return True

    def remove(self) -> None:
        """Take the table away (the service stops; the interface goes with it)."""
        self._unload(self.interface)
        self.loaded = ""
