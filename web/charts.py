"""Charts drawn on the server as SVG: they show without JavaScript, and the pages' live
refresh (static/live.js re-fetching a fragment) redraws them with the rest.

``line_chart`` is a titled figure: a line (with the area under it) over a time axis with
ticks in UTC, the scale's bottom and top labelled in the series' unit, and the data's
minimum, maximum and latest value in the caption; "no data yet" when there is nothing.
``sparkline`` is a tiny line without axes, for a table cell. Both scale to their
container (a ``viewBox``, width 100%), so they fit a phone. Every text goes through
markupsafe, and the drawing is classes only (the site's CSP allows no inline style):
colours and strokes are in static/style.css.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence

from markupsafe import Markup

from hivemind_cluster.core.units import format_bytes, format_cpt

Point = tuple[float, float]
Formatter = Callable[[float], str]

WIDTH, HEIGHT = 480, 170  # the chart's own units (viewBox); it is drawn at any size
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 10, 24  # room for the value labels and the time ticks
MAX_POINTS = 480  # about one a unit of width: more are averaged together
# Spacings of time ticks (seconds): the smallest that gives at most MAX_TICKS.
TICK_SPACINGS = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
MAX_TICKS = 6
GAP_STEPS = 3  # a pause longer than this many usual spacings breaks the line
SVG_NS = "http://www.w3.org/2000/svg"


# ---- units -------------------------------------------------------------------------------


def percent(value: float) -> str:
    return f"{value:.0f}%"


def share(value: float) -> str:
    """A fraction (0-1) as a percentage."""
    return f"{value * 100:.0f}%"


def count(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def size(value: float) -> str:
    return format_bytes(max(0, round(value)))


def cores(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text + (" core" if text == "1" else " cores")


def cpt(value: float) -> str:
    """Micro-CPT as CPT."""
    return format_cpt(round(value)) + " CPT"


# ---- charts ------------------------------------------------------------------------------


def line_chart(
    points: Sequence[Point],
    *,
    title: str,
    since: float,
    until: float,
    unit: Formatter,
    chart_id: str = "",
    ceiling: float | None = None,
    steps: bool = False,
) -> Markup:
    """A figure with ``title``: ``points`` (time, value) between ``since`` and ``until``.

    The scale runs from 0 (or the lowest value, if negative) to the highest value, or to
    ``ceiling`` when that is higher (100 for a percentage). ``steps`` draws each value as
    held until the next one (a balance), continued to ``until``.
    """
    shown = sorted((t, v) for t, v in points if since <= t <= until and math.isfinite(v))
    caption = _caption(title, shown, unit)
    ident = Markup(' id="{}"').format(chart_id) if chart_id else Markup("")
    if not shown:
        body = _frame() + Markup(
            '<text class="empty" x="{:.1f}" y="{:.1f}" text-anchor="middle">no data yet</text>'
        ).format(LEFT + _plot_width() / 2, TOP + _plot_height() / 2)
        svg = _svg("plot empty", f"{title}: no data yet", body)
        return Markup('<figure class="chart empty"{}>{}{}</figure>').format(ident, caption, svg)
    low = min(0.0, min(v for _, v in shown))
    high = max(ceiling or 0.0, max(v for _, v in shown))
    if high <= low:
        high = low + 1.0
    scale = _Scale(since, until, low, high)
    drawn = _held(shown, until) if steps else _averaged(shown)
    body = _frame() + _time_ticks(scale) + _value_labels(scale, unit)
    for segment in [drawn] if steps else _segments(drawn):
        body += _line(scale, segment)
    label = f"{title}: {len(shown)} points, latest {unit(shown[-1][1])}"
    svg = _svg("plot", label, body)
    return Markup('<figure class="chart" data-points="{}"{}>{}{}</figure>').format(
        len(shown), ident, caption, svg
    )


def sparkline(
    points: Sequence[Point], *, since: float, until: float, ceiling: float, label: str
) -> Markup:
    """A tiny line of ``points`` over [since, until], scaled 0..ceiling, without axes;
    ``label`` is what a screen reader (and a hover) says."""
    shown = sorted((t, v) for t, v in points if since <= t <= until and math.isfinite(v))
    if len(shown) < 1:
        return Markup('<span class="sparkline empty">no data yet</span>')
    high = max(ceiling, max(v for _, v in shown)) or 1.0
    span = max(until - since, 1e-9)
    coordinates = " ".join(
        f"{(t - since) / span * 100:.2f},{20 - max(v, 0.0) / high * 20:.2f}"
        for t, v in _averaged(shown, 100)
    )
    return Markup(
        '<svg class="sparkline" xmlns="{}" viewBox="0 0 100 20" preserveAspectRatio="none" '
        'width="100%" role="img" aria-label="{}"><title>{}</title>'
        '<polyline class="line" points="{}"/></svg>'
    ).format(SVG_NS, label, label, coordinates)


# ---- drawing -----------------------------------------------------------------------------


class _Scale:
    def __init__(self, since: float, until: float, low: float, high: float) -> None:
        self.since, self.until = since, max(until, since + 1e-9)
        self.low, self.high = low, high

    def x(self, t: float) -> float:
        return LEFT + (t - self.since) / (self.until - self.since) * _plot_width()

    def y(self, v: float) -> float:
        return TOP + (self.high - v) / (self.high - self.low) * _plot_height()


def _plot_width() -> float:
    return WIDTH - LEFT - RIGHT


def _plot_height() -> float:
    return HEIGHT - TOP - BOTTOM


def _svg(classes: str, label: str, body: Markup) -> Markup:
    return Markup(
        '<svg class="{}" xmlns="{}" viewBox="0 0 {} {}" width="100%" role="img" '
        'aria-label="{}"><title>{}</title>{}</svg>'
    ).format(classes, SVG_NS, WIDTH, HEIGHT, label, label, body)


def _caption(title: str, shown: Sequence[Point], unit: Formatter) -> Markup:
    if not shown:
        return Markup("<figcaption>{}</figcaption>").format(title)
    values = [v for _, v in shown]
    figures = f"min {unit(min(values))} · max {unit(max(values))} · now {unit(values[-1])}"
    return Markup('<figcaption>{} <span class="figures">{}</span></figcaption>').format(
        title, figures
    )


def _frame() -> Markup:
    """The axes: a baseline and the left edge of the plot."""
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    return Markup('<path class="axis" d="M{} {} V{} H{}"/>').format(LEFT, TOP, bottom, right)


def _time_ticks(scale: _Scale) -> Markup:
    span = scale.until - scale.since
    spacing = next((s for s in TICK_SPACINGS if span / s <= MAX_TICKS), 86400)
    shape = "%H:%M:%S" if spacing < 60 else ("%H:%M" if spacing < 86400 else "%m-%d")
    ticks = Markup("")
    tick = math.ceil(scale.since / spacing) * spacing
    while tick <= scale.until:
        x = scale.x(tick)
        # A label at an edge reaches inwards, so that it is never cut off.
        anchor = "end" if x > WIDTH - 30 else ("start" if x < LEFT + 20 else "middle")
        ticks += Markup(
            '<line class="tick" x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}"/>'
            '<text class="time" x="{:.1f}" y="{}" text-anchor="{}">{}</text>'
        ).format(
            x,
            HEIGHT - BOTTOM,
            x,
            HEIGHT - BOTTOM + 4,
            x,
            HEIGHT - 6,
            anchor,
            time.strftime(shape, time.gmtime(tick)),
        )
        tick += spacing
    return ticks


def _value_labels(scale: _Scale, unit: Formatter) -> Markup:
    """The scale's top and bottom, in the unit, with a grid line at the top."""
    top, bottom = scale.y(scale.high), scale.y(scale.low)
    return Markup(
        '<line class="grid" x1="{}" y1="{:.1f}" x2="{}" y2="{:.1f}"/>'
        '<text class="value" x="{}" y="{:.1f}" text-anchor="end">{}</text>'
        '<text class="value" x="{}" y="{:.1f}" text-anchor="end">{}</text>'
    ).format(
        LEFT,
        top,
        WIDTH - RIGHT,
        top,
        LEFT - 6,
        top + 10,
        unit(scale.high),
        LEFT - 6,
        bottom,
        unit(scale.low),
    )


def _line(scale: _Scale, segment: Sequence[Point]) -> Markup:
    """The segment's line, and the area between it and the scale's bottom."""
    coordinates = [(scale.x(t), scale.y(v)) for t, v in segment]
    if len(coordinates) == 1:  # a lone sample: a dot, as a line of one point is invisible
        x, y = coordinates[0]
        return Markup('<circle class="dot" cx="{:.1f}" cy="{:.1f}" r="2.5"/>').format(x, y)
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coordinates)
    base = scale.y(scale.low)
    area = f"{coordinates[0][0]:.1f},{base:.1f} {line} {coordinates[-1][0]:.1f},{base:.1f}"
    return Markup('<polygon class="area" points="{}"/><polyline class="line" points="{}"/>').format(
        area, line
    )


# ---- points ------------------------------------------------------------------------------


def _averaged(points: Sequence[Point], most: int = MAX_POINTS) -> list[Point]:
    """At most ``most`` points: runs of consecutive points averaged (time and value)."""
    if len(points) <= most:
        return list(points)
    run = math.ceil(len(points) / most)
    averaged = []
    for start in range(0, len(points), run):
        chunk = points[start : start + run]
        averaged.append(
            (sum(t for t, _ in chunk) / len(chunk), sum(v for _, v in chunk) / len(chunk))
        )
    return averaged


def _held(points: Sequence[Point], until: float) -> list[Point]:
    """Each value held until the next point, the last until ``until``."""
    held: list[Point] = []
    for t, v in points:
        if held and v != held[-1][1]:
            held.append((t, held[-1][1]))  # the riser
        if not held or (t, v) != held[-1]:
            held.append((t, v))
    if held[-1][0] < until:
        held.append((until, held[-1][1]))
    return held


def _segments(points: Sequence[Point]) -> list[list[Point]]:
    """The points split where samples paused (longer than GAP_STEPS usual spacings)."""
    if len(points) < 3:
        return [list(points)]
    spacings = sorted(b[0] - a[0] for a, b in itertools.pairwise(points))
    limit = GAP_STEPS * spacings[len(spacings) // 2]
    segments: list[list[Point]] = [[points[0]]]
    for before, point in itertools.pairwise(points):
        if point[0] - before[0] > limit > 0:
            segments.append([])
        segments[-1].append(point)
    return segments
