"""Ledger accounts every side names: the treasury, escrow, account names, the grant."""

from __future__ import annotations

import re

from hivemind_cluster.core import errors
from hivemind_cluster.core.units import MICRO

TOTAL_SUPPLY = 1_000_000_000_000 * MICRO
REGISTRATION_GRANT = 150 * MICRO
TREASURY = "treasury"
ESCROW = "escrow"
ACCOUNT_KINDS = ("user", "worker", "project")  # treasury and escrow exist from genesis
PAYMENT_PREFIX = "pay:"  # idempotency key of a task's payment to its worker: pay:<task>
_ACCOUNT = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")


def check_account(name: str) -> str:
    if not _ACCOUNT.match(name):
        raise errors.InvalidInput(
            f"account {name[:40]!r}: lowercase letters, digits and ._:- (up to 64)"
        )
    return name
