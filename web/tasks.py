"""Pages for tasks: the dashboard, the list, submitting (with the price cap shown first),
and a task's detail page with live status and logs (its script polls the API).

The submit form's script uploads the bundle in pieces (uploads.py) and sends its digest in
the ``bundle`` field; without the script, the file itself comes in ``bundle_file``."""

from __future__ import annotations

import time

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hivemind_cluster.client.views import amount_text, charge_lines, charge_view
from hivemind_cluster.core.errors import HiveMindError, InvalidInput
from hivemind_cluster.model import submission
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.spec import DEFAULT_PYTHON_IMAGE
from hivemind_cluster.model.states import ALL_STATES
from hivemind_cluster.web.auth import client_address, current_user, login_required
from hivemind_cluster.web.constants import FORM_BUNDLE_BYTES, SLICE_BYTES
from hivemind_cluster.web.downloads import result_download
from hivemind_cluster.web.errorpages import form_failed
from hivemind_cluster.web.pagecharts import task_charts
from hivemind_cluster.web.services import services
from hivemind_cluster.web.uploads import store_file

bp = Blueprint("tasks", __name__)
IMAGES = (DEFAULT_PYTHON_IMAGE, "hivemind/busybox:latest")
# What the submit page shows besides the form (its script uploads in slices of this size).
FORM_PAGE = {"images": IMAGES, "slice_bytes": SLICE_BYTES, "form_limit": FORM_BUNDLE_BYTES}


@bp.get("/")
@login_required
def dashboard() -> ResponseReturnValue:
    pool = services().pool(current_user().account)
    return render_template("dashboard.html", balance=pool.balance(""), tasks=pool.tasks([], 10))


@bp.get("/tasks")
@login_required
def task_list() -> ResponseReturnValue:
    status = request.args.get("status", "")
    if status and status not in ALL_STATES:
        raise InvalidInput(f"unknown status {status[:30]!r}")
    tasks = services().pool(current_user().account).tasks([status] if status else [], 200)
    return render_template("tasks.html", tasks=tasks, status=status, states=ALL_STATES)


def _uploaded_bundle(account: str) -> str:
    """The digest of the bundle file the form sent (stored now), "" if it sent none."""
    upload = request.files.get("bundle_file")
    if upload is None or not upload.filename:
        return ""
    return store_file(account, upload.stream)


@bp.route("/tasks/new", methods=["GET", "POST"])
@login_required
def new_task() -> ResponseReturnValue:
    found, account = services(), current_user().account
    form = request.form
    if request.method == "GET":
        default = submission.price_cap(submission.from_form({}), found.settings, None)
        return render_template("task_new.html", form={}, price_cap=default, **FORM_PAGE)
    shown = form.to_dict()  # the page again keeps what was typed, and the uploaded bundle
    try:
        shown["bundle"] = _uploaded_bundle(account) or shown.get("bundle", "")
        submitted = submission.from_form(shown)
        bundle = found.bundle_file(account, submitted.bundle_digest)
        price_cap = submission.price_cap(submitted, found.settings, bundle)
        if form.get("action") == "quote":  # without JavaScript: show the price, then submit
            return render_template("task_new.html", form=shown, price_cap=price_cap, **FORM_PAGE)
        task = found.pool(account).from_address(client_address()).submit_request(submitted)
    except HiveMindError as exc:
        return form_failed(exc, "task_new.html", form=shown, price_cap=None, **FORM_PAGE)
    held = amount_text(task["price_cap_micro"])
    flash(f"Task {task['id']} submitted; {held} held in escrow.", "info")
    return redirect(url_for("tasks.detail", task_id=task["id"]))


@bp.get("/tasks/<task_id>")
@login_required
def detail(task_id: str) -> ResponseReturnValue:
    """The page, or with ``?partial=1`` only its live status panel (the page's script);
    a settled task shows how its cost came about, at the hub's rate card."""
    found = services()
    task = found.pool(current_user().account).get(task_id)
    charge = charge_view(task, RateCard.from_settings(found.settings))
    template = "_task_live.html" if request.args.get("partial") else "task.html"
    billed = charge_lines(charge) if charge else []
    usage = task_charts(task, time.time())  # its CPU and memory over its run
    return render_template(template, task=task, billed=billed, usage_charts=usage)


@bp.post("/tasks/<task_id>/cancel")
@login_required
def cancel(task_id: str) -> ResponseReturnValue:
    services().pool(current_user().account).from_address(client_address()).cancel(task_id)
    flash(f"Cancel requested for {task_id}.", "info")
    return redirect(url_for("tasks.detail", task_id=task_id))


@bp.get("/tasks/<task_id>/result")
@login_required
def result(task_id: str) -> ResponseReturnValue:
    return result_download(services().pool(current_user().account), task_id)
