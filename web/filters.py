"""Template filters: amounts, sizes, ages, CPU shares, times — the way the CLIs print them."""

from __future__ import annotations

import time

from flask import Flask

from hivemind_cluster.client.views import amount_text
from hivemind_cluster.core.console import age
from hivemind_cluster.core.units import format_bytes


def size(value: int | None) -> str:
    return "-" if value is None else format_bytes(value)


def ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{age(seconds)} ago"


def since(timestamp: float | None) -> str:
    return "-" if not timestamp else ago(time.time() - timestamp)


def cores(millis: int) -> str:
    return f"{millis / 1000:g}"


def clock(timestamp: float | None) -> str:
    return "-" if not timestamp else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def init_app(app: Flask) -> None:
    app.add_template_filter(amount_text, "cpt")
    for function in (size, ago, since, cores, clock):
        app.add_template_filter(function)
