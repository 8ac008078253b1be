"""Pages for money: ledger history with the balance, tipping a project, the rate card."""

from __future__ import annotations

import time

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hivemind_cluster.client.views import amount_text
from hivemind_cluster.core.errors import HiveMindError
from hivemind_cluster.core.units import parse_cpt
from hivemind_cluster.model.accounts import check_account
from hivemind_cluster.web.auth import current_user, login_required
from hivemind_cluster.web.errorpages import form_failed
from hivemind_cluster.web.pagecharts import balance_chart
from hivemind_cluster.web.services import services

bp = Blueprint("ledger", __name__)


@bp.get("/ledger")
@login_required
def history() -> ResponseReturnValue:
    """The account's movements, and its balance over their time (a chart)."""
    pool = services().pool(current_user().account)
    balance, entries = pool.balance(""), pool.history("", 200)
    chart = balance_chart(balance["account"], balance["balance_micro"], entries, time.time())
    return render_template("ledger.html", balance=balance, entries=entries, chart=chart)


@bp.route("/tip", methods=["GET", "POST"])
@login_required
def tip() -> ResponseReturnValue:
    if request.method == "GET":
        return render_template("tip.html", form={})
    form = request.form
    try:
        project = check_account(form.get("project", "").strip())
        amount = parse_cpt(form.get("amount", "").strip())
        address = request.remote_addr or "unknown"  # the browser's (auth.client_address)
        pool = services().pool(current_user().account).from_address(address)
        entry = pool.tip(project, amount)
    except HiveMindError as exc:
        return form_failed(exc, "tip.html", form=form)
    flash(f"Thank you: {amount_text(entry['amount_micro'])} sent to {entry['to']}.", "info")
    return redirect(url_for("ledger.history"))


@bp.get("/rates")
def rates() -> ResponseReturnValue:
    return render_template("rates.html", rates=services().pool().rates())
