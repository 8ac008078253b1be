"""Pages for tasks: the dashboard, the list, submitting (with the price cap shown first),
and a task's detail page with live status and logs (its script polls the API)."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hivemind_cluster.client.views import amount_text, charge_lines, charge_view
from hivemind_cluster.core.errors import HiveMindError, InvalidInput, TooLarge
from hivemind_cluster.model import submission
from hivemind_cluster.model.bundles import MAX_INPUT_BYTES
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.spec import DEFAULT_PYTHON_IMAGE
from hivemind_cluster.model.states import ALL_STATES
from hivemind_cluster.web.auth import current_user, login_required
from hivemind_cluster.web.downloads import zip_download
from hivemind_cluster.web.errorpages import form_failed
from hivemind_cluster.web.services import services

bp = Blueprint("tasks", __name__)
IMAGES = (DEFAULT_PYTHON_IMAGE, "hivemind/busybox:latest")


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


def _uploaded_bundle() -> bytes:
    upload = request.files.get("bundle")
    if upload is None or not upload.filename:
        return b""
    data: bytes = upload.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise TooLarge(f"the bundle is larger than {MAX_INPUT_BYTES >> 20} MiB")
    return data


@bp.route("/tasks/new", methods=["GET", "POST"])
@login_required
def new_task() -> ResponseReturnValue:
    found = services()
    form = request.form
    if request.method == "GET":
        default = submission.price_cap(submission.from_form({}, b""), found.settings)
        return render_template("task_new.html", form={}, images=IMAGES, price_cap=default)
    try:
        submitted = submission.from_form(form, _uploaded_bundle())
        price_cap = submission.price_cap(submitted, found.settings)
        if form.get("action") == "quote":  # without JavaScript: show the price, then submit
            return render_template("task_new.html", form=form, images=IMAGES, price_cap=price_cap)
        task = found.pool(current_user().account).submit_request(submitted)
    except HiveMindError as exc:
        return form_failed(exc, "task_new.html", form=form, images=IMAGES, price_cap=None)
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
    return render_template(template, task=task, billed=charge_lines(charge) if charge else [])


@bp.post("/tasks/<task_id>/cancel")
@login_required
def cancel(task_id: str) -> ResponseReturnValue:
    services().pool(current_user().account).cancel(task_id)
    flash(f"Cancel requested for {task_id}.", "info")
    return redirect(url_for("tasks.detail", task_id=task_id))


@bp.get("/tasks/<task_id>/result")
@login_required
def result(task_id: str) -> ResponseReturnValue:
    return zip_download(task_id, services().pool(current_user().account).result(task_id))
