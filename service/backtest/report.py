"""The back-test report as one self-contained HTML page.

Everything is in the file: the styles inline, the charts as inline SVG drawn
here, no script, no font, no image fetched, so the page opens the same with
no network (and prints). The page shows what :func:`service.backtest.lab.build_report`
computed; with two scorecards (``--against``) each chart draws both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import Any, Final

__all__ = ["html_report"]

#: Series colours (first scorecard, second scorecard) and bucket colours.
COLORS: Final = ("#2563eb", "#d97706")
BUCKET_COLORS: Final = {"green": "#16a34a", "yellow": "#ca8a04", "red": "#dc2626"}
_STYLE: Final = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2937;
       margin: 0 auto; max-width: 1180px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px;
  border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
.muted { color: #6b7280; } .small { font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #f0f0f0; text-align: left;
         vertical-align: top; }
th { background: #f9fafb; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
.chart { border: 1px solid #e5e7eb; border-radius: 6px; padding: 8px 10px; }
.chart h3 { font-size: 14px; margin: 0 0 4px; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px;
            vertical-align: -1px; }
.good { color: #15803d; } .bad { color: #b91c1c; }
pre { background: #f9fafb; padding: 8px; border-radius: 4px; font-size: 12px; }
dl.method dt { font-weight: 600; margin-top: 6px; } dl.method dd { margin: 0 0 0 16px; }
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _with_ci(figure: dict[str, Any]) -> str:
    text = _fmt(figure.get("value"))
    ci = figure.get("ci")
    if ci:
        text += f' <span class="muted small">[{ci[0]:.3f}, {ci[1]:.3f}]</span>'
    return text


def _name(figures: dict[str, Any]) -> str:
    card = figures["scorecard"]
    return str(card.get("label") or f"{card['name']} v{card['version']}")


# ------------------------------------------------------------------- charts


class _Svg:
    """A chart area with margins and a linear y axis (and x for line charts)."""

    def __init__(self, width: int = 520, height: int = 260, left: int = 48) -> None:
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, 12, 12, 42
        self.parts: list[str] = []

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def x(self, fraction: float) -> float:
        return self.left + fraction * self.plot_w

    def y(self, fraction: float) -> float:
        return self.top + (1.0 - fraction) * self.plot_h

    def add(self, part: str) -> None:
        self.parts.append(part)

    def text(self, x: float, y: float, text: str, anchor: str = "middle", size: int = 11) -> None:
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="#374151">{escape(text)}</text>'
        )

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str = "#d1d5db",
             dash: str = "") -> None:  # fmt: skip
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{color}" stroke-width="1"{extra}/>'
        )

    def y_axis(self, top: float, ticks: int, label: Callable[[float], str]) -> None:
        for i in range(ticks + 1):
            fraction = i / ticks
            y = self.y(fraction)
            self.line(self.left, y, self.width - self.right, y, "#f0f0f0")
            self.text(self.left - 6, y + 4, label(top * fraction), "end", 10)
        self.line(self.left, self.top, self.left, self.y(0), "#9ca3af")
        self.line(self.left, self.y(0), self.width - self.right, self.y(0), "#9ca3af")

    def render(self, title: str) -> str:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
            f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{escape(title)}">' + "".join(self.parts) + "</svg>"
        )


def _nice_top(value: float) -> float:
    if value <= 0:
        return 1.0
    for top in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 20.0, 50.0):
        if value <= top:
            return top
    return value


def _bars(
    categories: Sequence[str],
    series: Sequence[tuple[str, str | Sequence[str], Sequence[float | None]]],
    *,
    intervals: Sequence[Sequence[list[float] | None]] | None = None,
    label: Callable[[float], str] = lambda v: f"{100 * v:.0f}%",
    reference: float | None = None,
    width: int = 520,
) -> str:
    """Grouped vertical bars: one group per category, one bar per series
    (``(name, colour or colour per category, values)``), optional CI whiskers."""
    svg = _Svg(width=width)
    highest = max(
        [v for _, _, values in series for v in values if v is not None]
        + [ci[1] for rows in intervals or [] for ci in rows if ci]
        + [reference or 0.0]
    )
    top = _nice_top(highest)
    svg.y_axis(top, 4, label)
    group_w = svg.plot_w / max(1, len(categories))
    bar_w = group_w * 0.7 / max(1, len(series))
    for c, category in enumerate(categories):
        x0 = svg.left + c * group_w + group_w * 0.15
        for s, (name, color, values) in enumerate(series):
            value = values[c]
            fill = color if isinstance(color, str) else color[c]
            x = x0 + s * bar_w
            if value is not None:
                y = svg.y(value / top)
                svg.add(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" '
                    f'height="{svg.y(0) - y:.1f}" fill="{fill}" opacity="0.85">'
                    f"<title>{escape(name)} {escape(category)}: {escape(label(value))}</title>"
                    "</rect>"
                )
            ci = intervals[s][c] if intervals else None
            if ci:
                mid = x + (bar_w - 2) / 2
                y_low, y_high = svg.y(ci[0] / top), svg.y(ci[1] / top)
                svg.line(mid, y_low, mid, y_high, "#111827")
                svg.line(mid - 3, y_low, mid + 3, y_low, "#111827")
                svg.line(mid - 3, y_high, mid + 3, y_high, "#111827")
        svg.text(svg.left + (c + 0.5) * group_w, svg.y(0) + 15, category)
    if reference is not None:
        y = svg.y(reference / top)
        svg.line(svg.left, y, svg.width - svg.right, y, "#6b7280", "4 3")
    return svg.render("bar chart")


def _roc(reports: Sequence[dict[str, Any]]) -> str:
    svg = _Svg(width=360, height=330)
    svg.y_axis(1.0, 4, lambda v: f"{v:.2f}")
    for i in range(5):
        svg.text(svg.x(i / 4), svg.y(0) + 15, f"{i / 4:.2f}")
    svg.line(svg.x(0), svg.y(0), svg.x(1), svg.y(1), "#9ca3af", "4 3")
    for color, figures in zip(COLORS, reports, strict=False):
        points = figures["roc_curve"]
        if not points:
            continue
        path = " ".join(f"{svg.x(x):.1f},{svg.y(y):.1f}" for x, y in points)
        svg.add(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
    svg.text(svg.x(0.5), svg.height - 8, "non-churners flagged (false-positive rate)")
    svg.add(
        f'<text x="12" y="{svg.y(0.5):.1f}" font-size="11" fill="#374151" text-anchor="middle" '
        f'transform="rotate(-90 12 {svg.y(0.5):.1f})">churners flagged</text>'
    )
    return svg.render("ROC curve")


def _weights_chart(rows: Sequence[dict[str, Any]], current_key: str) -> str:
    """Horizontal bar pairs: the scorecard's weight and the suggested one per metric."""
    row_h, left = 26, 200
    width, height = 560, 30 + row_h * len(rows)
    top_value = _nice_top(
        max([r["suggested"] or 0.0 for r in rows] + [r[current_key] or 0.0 for r in rows])
    )
    plot_w = width - left - 40
    parts = []
    for i, row in enumerate(rows):
        y = 10 + i * row_h
        parts.append(
            f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" font-size="11" '
            f'fill="#374151">{escape(row["metric"])}</text>'
        )
        for j, (key, color) in enumerate(((current_key, "#9ca3af"), ("suggested", COLORS[0]))):
            value = row[key] or 0.0
            w = plot_w * value / top_value
            parts.append(
                f'<rect x="{left}" y="{y + 2 + j * 11}" width="{w:.1f}" height="10" '
                f'fill="{color}"><title>{escape(row["metric"])} {key}: {100 * value:.1f}%'
                "</title></rect>"
            )
            parts.append(
                f'<text x="{left + w + 4:.1f}" y="{y + 11 + j * 11}" font-size="9" '
                f'fill="#6b7280">{100 * value:.1f}%</text>'
            )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="weights">'
        + "".join(parts)
        + "</svg>"
    )


def _legend(entries: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="legend">'
        + "".join(f'<span><i style="background:{c}"></i>{escape(n)}</span>' for n, c in entries)
        + "</div>"
    )


def _chart(title: str, body: str, note: str = "") -> str:
    extra = f'<div class="muted small">{note}</div>' if note else ""
    return f'<div class="chart"><h3>{escape(title)}</h3>{body}{extra}</div>'


# ----------------------------------------------------------------- sections


def _summary(reports: Sequence[dict[str, Any]]) -> str:
    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> str:
        cells = "".join(f'<td class="num">{cell(f)}</td>' for f in reports)
        return f"<tr><th>{escape(label)}</th>{cells}</tr>"

    def judged(f: dict[str, Any], key: str) -> str:
        weights = f["weights"]
        return _with_ci(weights[key]) if weights.get("fitted") else "n/a"

    head = "".join(f"<th>{escape(_name(f))}</th>" for f in reports)
    rows = [
        row("ROC AUC [95% CI]", lambda f: _with_ci(f["roc_auc"])),
        row(
            "PR AUC [95% CI] (chance = churn rate)",
            lambda f: f"{_with_ci(f['pr_auc'])} ({_fmt(f['pr_auc']['baseline'])})",
        ),
        row("labelled snapshots", lambda f: str(f["sample"]["snapshots"])),
        row("accounts", lambda f: str(f["sample"]["accounts"])),
        row(
            "churned snapshots (accounts)",
            lambda f: f"{f['sample']['churned_snapshots']} ({f['sample']['churned_accounts']})",
        ),
        row(
            "churn rate rises green -> yellow -> red",
            lambda f: (
                '<span class="good">yes</span>'
                if f["rises_green_to_red"]
                else '<span class="bad">no</span>'
            ),
        ),
        row(
            "precision among the k lowest scores",
            lambda f: (
                f"{_pct(f['precision_at_k']['precision'])} "
                f'<span class="muted small">(k = {f["precision_at_k"]["k"]}, recall '
                f"{_pct(f['precision_at_k']['recall'])})</span>"
            ),
        ),
        row("later dates: AUC, current weights", lambda f: judged(f, "judge_auc_current")),
        row("later dates: AUC, suggested weights", lambda f: judged(f, "judge_auc_suggested")),
        row(
            "ROC AUC without snapshots after a churn notice",
            lambda f: _fmt(f["leakage"]["roc_auc_without_them"]),
        ),
    ]
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _rate_chart(reports: Sequence[dict[str, Any]], key: str, kind: str) -> str:
    categories = [row[kind] for row in reports[0][key]]
    if len(reports) == 1:
        colors: str | list[str] = [BUCKET_COLORS.get(c, COLORS[0]) for c in categories]
    else:
        colors = COLORS[0]
    series = []
    intervals = []
    for i, figures in enumerate(reports):
        color = colors if i == 0 else COLORS[1]
        series.append((_name(figures), color, [row["rate"] for row in figures[key]]))
        intervals.append([row["ci"] for row in figures[key]])
    labels = [f"{row[kind]}: {row['churned']}/{row['snapshots']}" for row in reports[0][key]]
    return _bars(categories, series, intervals=intervals) + (
        f'<div class="muted small">{escape(", ".join(labels))} (churned/snapshots, '
        f"{escape(_name(reports[0]))}); whiskers: 95% CI over accounts</div>"
    )


def _lift_chart(reports: Sequence[dict[str, Any]]) -> str:
    if not reports[0]["lift_by_decile"]:
        return '<p class="muted">Fewer than ten labelled snapshots.</p>'
    categories = [str(row["decile"]) for row in reports[0]["lift_by_decile"]]
    series = [
        (_name(f), COLORS[i], [row["lift"] for row in f["lift_by_decile"]])
        for i, f in enumerate(reports)
        if f["lift_by_decile"]
    ]
    return _bars(categories, series, label=lambda v: f"{v:.1f}x", reference=1.0)


def _lead_chart(figures: dict[str, Any]) -> str:
    lead = figures["lead_time"]
    red, yellow = lead["red"], lead["yellow"]
    categories = [f"{row['from_days']:g}-" for row in red["histogram"]]
    series = [
        ("first red", BUCKET_COLORS["red"], [float(r["accounts"]) for r in red["histogram"]]),
        (
            "first yellow or red",
            BUCKET_COLORS["yellow"],
            [float(r["accounts"]) for r in yellow["histogram"]],
        ),
    ]
    chart = _bars(categories, series, label=lambda v: f"{v:.0f}", width=560)

    def line(name: str, part: dict[str, Any]) -> str:
        q = part["quartiles_days"]
        spread = f"median {q[1]:g} days (quartiles {q[0]:g}-{q[2]:g})" if q else "no lead time"
        return (
            f"{name}: {part['reached']} of {part['accounts']} churned accounts, {spread}; "
            f"{part['never']} never (before the churn became known); "
            f"{part['already_at_start']} already at the window's start"
        )

    return (
        _legend([("first red", BUCKET_COLORS["red"]), ("first yellow or red", "#ca8a04")])
        + chart
        + f'<div class="muted small">days before the churn, weekly bins; '
        f"{escape(line('red', red))}. {escape(line('yellow or red', yellow))}.</div>"
    )


def _metrics_table(figures: dict[str, Any]) -> str:
    rows = []
    for m in figures["metrics"]:
        verdict = m["verdict"]
        css = "bad" if "wrong" in verdict or "not as" in verdict else ""
        rows.append(
            "<tr>"
            f"<td>{escape(m['metric'])}</td>"
            f'<td class="num">{m["snapshots_known"]}</td>'
            f'<td class="num">{_fmt(m["auc_of_value"])}</td>'
            f"<td>{_fmt(m['direction_in_data'])}</td>"
            f'<td class="num">{_fmt(m["auc_of_metric_score"])}</td>'
            f"<td>{_fmt(m['scorecard_direction'])}</td>"
            f'<td class="num">{_pct(m["mean_weight"])}</td>'
            f'<td class="{css}">{escape(verdict)}</td>'
            "</tr>"
        )
    return (
        "<table><tr><th>metric</th><th>snapshots known</th><th>AUC of its value</th>"
        "<th>in the data</th><th>AUC of its score</th><th>scorecard</th>"
        "<th>mean weight</th><th>verdict</th></tr>" + "".join(rows) + "</table>"
    )


def _weights_section(figures: dict[str, Any]) -> str:
    weights = figures["weights"]
    if not weights.get("fitted"):
        return f'<p class="muted">No suggestion: {escape(weights.get("reason", ""))}.</p>'
    current_key = "scorecard" if weights["weights"][0]["scorecard"] is not None else "carried"
    current_name = (
        f"scorecard ({weights['profile']} profile)"
        if current_key == "scorecard"
        else "carried (mean share of the score)"
    )
    rows = sorted(weights["weights"], key=lambda r: -(r["suggested"] or 0.0))
    text = (
        f"Fitted on {weights['fit_snapshots']} snapshots ({weights['fit_churned']} churned) of "
        f"{len(weights['fit_dates'])} earlier dates; judged on {weights['judge_snapshots']} "
        f"({weights['judge_churned']} churned) of {len(weights['judge_dates'])} later dates. "
        f"AUC on the later dates: current {_with_ci(weights['judge_auc_current'])}, "
        f"suggested {_with_ci(weights['judge_auc_suggested'])} (on the earlier dates: "
        f"{_fmt(weights['fit_auc_current'])} and {_fmt(weights['fit_auc_suggested'])})."
    )
    yaml = weights.get("groups_yaml")
    return (
        f"<p>{text}</p>"
        + _legend([(current_name, "#9ca3af"), ("suggested", COLORS[0])])
        + _weights_chart(rows, current_key)
        + (f"<pre>{escape(yaml)}</pre>" if yaml else "")
    )


def _green_table(figures: dict[str, Any]) -> str:
    at_churn = figures["at_churn"]
    counts = at_churn["by_bucket"]
    head = (
        f"<p>Bucket of the {at_churn['accounts']} churned accounts just before the churn "
        f"became known ({at_churn['known_by_notice']} by a churn notice): "
        f"green {counts['green']}, yellow {counts['yellow']}, red {counts['red']}.</p>"
    )
    if not at_churn["churned_while_green"]:
        return head
    rows = []
    for entry in at_churn["churned_while_green"]:

        def parts(components: Sequence[dict[str, Any]]) -> str:
            return ", ".join(
                f"{escape(c['metric'])} {c['score']:.0f} ({_fmt(c['value'], 2)})"
                for c in components
            )

        missing = ", ".join(entry["missing"]) or "none"
        rows.append(
            "<tr>"
            f"<td>{escape(entry['account_id'])}</td>"
            f"<td>{escape(entry['known_at'][:10])}</td>"
            f'<td class="num">{entry["score"]:.1f} {escape(entry["grade"])}</td>'
            f"<td>{escape(str(entry['stage']))}</td>"
            f"<td>{parts(entry['weakest'])}</td>"
            f"<td>{parts(entry['strongest'])}</td>"
            f'<td class="small">{escape(missing)}</td>'
            "</tr>"
        )
    return (
        head + "<table><tr><th>account</th><th>known</th><th>score</th><th>stage</th>"
        "<th>weakest metrics: score (value)</th><th>strongest</th><th>missing</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def html_report(report: dict[str, Any]) -> str:
    """The report (:func:`service.backtest.lab.build_report`) as one HTML page."""
    reports: list[dict[str, Any]] = report["scorecards"]
    settings = report["settings"]
    names = [(_name(f), COLORS[i]) for i, f in enumerate(reports)]
    dates = settings["dates"]
    outcomes = report["outcomes"]
    source = report["source"]
    origin = source.get("from_db") or source.get("events") or ""
    sections = [
        "<h1>vitals back-test: does the health score predict churn?</h1>",
        f'<div class="muted">{escape(str(origin))}: {len(dates)} snapshot dates '
        f"{escape(dates[0][:10] if dates else '')} to {escape(dates[-1][:10] if dates else '')}"
        f", every {settings['every_days']:g} days; horizon {settings['horizon_days']:g} days; "
        f"outcomes known until {escape(settings['observed_until'][:10])}; "
        f"{outcomes['churned_accounts']} accounts churned, {outcomes['renewed_accounts']} "
        f"renewed. Generated {escape(report['generated_at'])}.</div>",
        "<h2>Summary</h2>",
        _summary(reports),
    ]
    for figures in reports:
        for note in figures.get("notes", []):
            sections.append(f'<p class="muted">Note ({escape(_name(figures))}): {escape(note)}</p>')
    charts = [
        _chart("ROC curve", _legend(names) + _roc(reports), "dashed: chance"),
        _chart(
            "Churn rate by bucket",
            _legend(names) + _rate_chart(reports, "churn_rate_by_bucket", "bucket"),
        ),
        _chart(
            "Churn rate by grade",
            _legend(names) + _rate_chart(reports, "churn_rate_by_grade", "grade"),
        ),
        _chart(
            "Lift by score decile (1 = lowest scores)",
            _legend(names) + _lift_chart(reports),
            "churn rate of the decile over the overall rate; dashed: 1 (random)",
        ),
    ]
    sections += [
        "<h2>How well the score ranks</h2>",
        f'<div class="charts">{"".join(charts)}</div>',
    ]
    for figures in reports:
        title = f" ({_name(figures)})" if len(reports) > 1 else ""
        k = figures["precision_at_k"]["k"]
        lead = _chart("Days from first red / first yellow to churn", _lead_chart(figures))
        sections += [
            f"<h2>Lead time: first warning to churn{escape(title)}</h2>",
            f'<div class="charts">{lead}</div>',
            f"<h2>Churned while green{escape(title)}</h2>",
            _green_table(figures),
            f"<h2>Metrics: predictive, and weighed the right way round?{escape(title)}</h2>",
            _metrics_table(figures),
            f"<h2>Suggested weights{escape(title)}</h2>",
            _weights_section(figures),
            f"<h2>Precision among the {k} lowest scores, by date{escape(title)}</h2>",
            _precision_table(figures),
        ]
    method = "".join(
        f"<dt>{escape(key)}</dt><dd>{escape(text)}</dd>" for key, text in report["method"].items()
    )
    sections += [
        "<h2>Method</h2>",
        f'<dl class="method">{method}</dl>',
        '<p class="muted small">How to read each figure and its pitfalls: docs/backtest.md.</p>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>vitals back-test</title>"
        f"<style>{_STYLE}</style></head><body>" + "\n".join(sections) + "</body></html>\n"
    )


def _precision_table(figures: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{escape(row['date'][:10])}</td><td class='num'>{row['flagged']}</td>"
        f"<td class='num'>{row['churned']}</td><td class='num'>{row['churners']}</td></tr>"
        for row in figures["precision_at_k"]["by_date"]
    )
    return (
        "<table><tr><th>date</th><th>flagged</th><th>churners among them</th>"
        "<th>churners that date</th></tr>" + rows + "</table>"
    )
