"""web/charts.py and web/pagecharts.py without a server: the SVG parses as XML, draws one
vertex a point (fewer once averaged), escapes every text, shows an empty state; the
ledger's balance worked back from its entries; the task's usage wherever its view has it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from markupsafe import Markup

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.web import charts, pagecharts

SVG = "{http://www.w3.org/2000/svg}"
NOW = 1_700_003_600.0
HOUR_AGO = NOW - 3600


def parsed(markup: Markup) -> ET.Element:
    return ET.fromstring(str(markup))


def vertices(element: ET.Element, tag: str = "polyline") -> list[int]:
    """The number of points of each ``tag`` (polyline or polygon) in the drawing."""
    return [len(e.attrib["points"].split()) for e in element.iter(f"{SVG}{tag}")]


def minute_points(values: list[float], start: float = HOUR_AGO) -> list[charts.Point]:
    return [(start + 60 * n, v) for n, v in enumerate(values)]


def test_a_chart_is_a_figure_of_an_svg_with_a_vertex_a_point() -> None:
    points = minute_points([float(n % 7) * 1e9 for n in range(50)])
    figure = parsed(
        charts.line_chart(points, title="Memory", since=HOUR_AGO, until=NOW, unit=charts.size)
    )
    assert figure.tag == "figure" and figure.attrib["data-points"] == "50"
    svg = figure.find(f"{SVG}svg")
    assert svg is not None
    assert svg.attrib["viewBox"] == f"0 0 {charts.WIDTH} {charts.HEIGHT}"
    assert svg.attrib["width"] == "100%"
    assert vertices(figure) == [50]
    assert vertices(figure, "polygon") == [52]  # the area: the line and two base corners
    texts = [t.text for t in figure.iter(f"{SVG}text")]
    assert "5.59 GiB" in texts and "0 B" in texts  # the scale's top and bottom, in bytes
    assert sum(1 for t in figure.iter(f"{SVG}text") if t.attrib["class"] == "time") >= 3
    caption = "".join(figure.find("figcaption").itertext())  # type: ignore[union-attr]
    assert caption == "Memory min 0 B · max 5.59 GiB · now 0 B"


def test_text_is_escaped_and_still_reads_the_same() -> None:
    title = '<script>alert("x")</script> & co'
    markup = charts.line_chart(
        minute_points([1.0, 2.0]), title=title, since=HOUR_AGO, until=NOW, unit=charts.count
    )
    assert "<script>" not in str(markup)
    figure = parsed(markup)
    assert figure.find("figcaption").text.strip() == title  # type: ignore[union-attr]
    assert figure.find(f"{SVG}svg/{SVG}title").text.startswith(title)  # type: ignore[union-attr]


def test_no_points_is_the_empty_state() -> None:
    for points in ([], [(HOUR_AGO - 10, 1.0)]):  # none, or none in the window
        figure = parsed(
            charts.line_chart(points, title="CPU", since=HOUR_AGO, until=NOW, unit=charts.share)
        )
        assert "empty" in figure.attrib["class"]
        assert [t.text for t in figure.iter(f"{SVG}text")] == ["no data yet"]
        assert vertices(figure) == []


def test_many_points_are_averaged_and_a_pause_breaks_the_line() -> None:
    many = [(HOUR_AGO + n * 0.5, 1.0) for n in range(2000)]
    assert vertices(
        parsed(charts.line_chart(many, title="x", since=HOUR_AGO, until=NOW, unit=charts.count))
    ) == [400]  # runs of 5 averaged: 2000 / 5, the most runs within MAX_POINTS
    paused = minute_points([1.0] * 10) + minute_points([2.0] * 5, start=HOUR_AGO + 1800)
    figure = parsed(
        charts.line_chart(paused, title="x", since=HOUR_AGO, until=NOW, unit=charts.count)
    )
    assert vertices(figure) == [10, 5]
    lone = parsed(
        charts.line_chart([(NOW - 5, 3.0)], title="x", since=HOUR_AGO, until=NOW, unit=charts.count)
    )
    assert len(list(lone.iter(f"{SVG}circle"))) == 1


def test_steps_hold_each_value_until_the_next() -> None:
    figure = parsed(
        charts.line_chart(
            minute_points([1.0, 3.0, 2.0]),
            title="Balance",
            since=HOUR_AGO,
            until=NOW,
            unit=charts.count,
            steps=True,
        )
    )
    assert vertices(figure) == [6]  # 3 points, 2 risers, and the last held until now


def test_a_sparkline_is_a_bare_line_and_empty_says_so() -> None:
    svg = parsed(
        charts.sparkline(
            minute_points([10.0, 50.0, 90.0]), since=HOUR_AGO, until=NOW, ceiling=100, label="a<b"
        )
    )
    assert svg.tag == f"{SVG}svg" and svg.attrib["class"] == "sparkline"
    assert svg.attrib["width"] == "100%" and svg.attrib["aria-label"] == "a<b"
    assert vertices(svg) == [3] and list(svg.iter(f"{SVG}text")) == []
    empty = charts.sparkline([], since=HOUR_AGO, until=NOW, ceiling=100, label="x")
    assert parsed(empty).text == "no data yet"


def test_the_units() -> None:
    assert charts.share(0.256) == "26%"
    assert charts.percent(99.6) == "100%"
    assert charts.cores(1.5) == "1.5 cores" and charts.cores(1.0) == "1 core"
    assert charts.count(3.0) == "3" and charts.count(0.25) == "0.2"
    assert charts.size(1536) == "1.5 KiB"
    assert charts.cpt(1_500_000) == "1.5 CPT"


def entry(time: float, source: str, target: str, amount: int) -> dict[str, object]:
    return {"time": time, "from": source, "to": target, "amount_micro": amount}


def test_the_balance_is_worked_back_from_the_entries() -> None:
    entries = [
        entry(NOW - 300, "", "user:ada", 150_000_000),  # the grant
        entry(NOW - 200, "user:ada", "escrow", 2_000_000),  # a price cap held
        entry(NOW - 100, "escrow", "user:ada", 1_250_000),  # its refund
    ]
    figure = parsed(pagecharts.balance_chart("user:ada", 149_250_000, entries, NOW))
    caption = "".join(figure.find("figcaption").itertext())  # type: ignore[union-attr]
    assert caption == "Balance min 0 CPT · max 150 CPT · now 149.25 CPT"
    assert vertices(figure) == [8]  # before, then 3 movements, each with its riser, now
    empty = parsed(pagecharts.balance_chart("user:ada", 0, [], NOW))
    assert "empty" in empty.attrib["class"]


def test_the_task_charts_draw_its_usage_samples() -> None:
    samples = [
        {"time": NOW - 20 + n, "cpu_cores": 0.5 * n, "memory_bytes": n << 20} for n in range(5)
    ]
    base: dict[str, Any] = {"submitted_at": NOW - 30, "started_at": NOW - 20, "ended_at": NOW - 10}
    base["resources"] = {"cpu_millis": 2000, "memory_bytes": 64 << 20}
    view = {**base, "usage": {"cpu_seconds": 1.0}, "usage_samples": samples}
    cpu, memory = (parsed(chart) for chart in pagecharts.task_charts(view, NOW))
    assert vertices(cpu) == [5] and vertices(memory) == [5]
    assert cpu.attrib["id"] == "chart-task-cpu" and memory.attrib["id"] == "chart-task-memory"
    before = pagecharts.task_charts({**base, "usage": {"cpu_seconds": 0.0}}, NOW)
    assert all("no data yet" in str(chart) for chart in before)


def test_the_mesh_ranges() -> None:
    assert pagecharts.Window.named("") == pagecharts.Window("1h", 3600)
    assert pagecharts.Window.named("24h").seconds == 86400
    with pytest.raises(InvalidInput, match="not one of 1h, 6h, 24h"):
        pagecharts.Window.named("1y")
