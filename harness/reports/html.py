"""The report as one self-contained HTML file: the Markdown's tables, run metadata, and a trend plot
per (case, metric) with the baseline and its tolerance band. Inline CSS and SVG only, no script and
no external asset, so the file can be archived as a CI artifact and opened anywhere."""

from __future__ import annotations

import math
from html import escape

from harness.records import Verdict
from harness.reports.render import Table, run_facts, tables
from harness.reports.trends import Analysis, Series, run_label

WIDTH, HEIGHT, PAD_LEFT, PAD_RIGHT, PAD_Y = 360, 130, 58, 10, 16
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.plots { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; border: 1px solid #ddd; padding: 4px; }
figcaption { font-size: 12px; max-width: 360px; overflow-wrap: anywhere; }
.bad { color: #b00020; font-weight: bold; }
.note { font-style: italic; color: #555; }
"""


def _table(table: Table) -> str:
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    if not table.rows:
        return f"<h2>{escape(table.title)}</h2>{note}<p>none</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    return f"<h2>{escape(table.title)}</h2>{note}<table><tr>{head}</tr>{body}</table>"


def trend_svg(series: Series) -> str:
    """Measured values (points red where the run failed the metric), the baseline (dashed) and the
    tolerance band around it (shaded; one-sided for a directional tolerance)."""
    points = [(run, m) for run, m in series.points if m.measured is not None]
    if not points:
        return ""
    bands = []
    for _, m in points:
        if m.baseline is None or math.isinf(m.tolerance.abs):
            bands.append(None)
            continue
        low, high = m.tolerance.band(m.baseline)
        bands.append((low, m.baseline, high))
    values = [m.measured for _, m in points] + [v for band in bands if band for v in band]
    lo, hi = min(values), max(values)
    span = hi - lo or (abs(hi) or 1.0) * 1e-3
    lo, hi = lo - 0.08 * span, hi + 0.08 * span

    def x(i: int) -> float:
        return PAD_LEFT + (WIDTH - PAD_LEFT - PAD_RIGHT) * (i / (len(points) - 1) if len(points) > 1 else 0.5)

    def y(v: float) -> float:
        return PAD_Y + (HEIGHT - 2 * PAD_Y) * (hi - v) / (hi - lo)

    parts = [
        f'<svg class="trend" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 '
        f'{WIDTH} {HEIGHT}">',
        f'<rect x="{PAD_LEFT}" y="{PAD_Y}" width="{WIDTH - PAD_LEFT - PAD_RIGHT}" height="{HEIGHT - 2 * PAD_Y}" '
        'fill="#fafafa" stroke="#ccc"/>',
    ]
    banded = [(i, band) for i, band in enumerate(bands) if band]
    if banded:
        edge = [(x(i), y(b[2])) for i, b in banded] + [(x(i), y(b[0])) for i, b in reversed(banded)]
        if len(banded) == 1:  # a single run: draw the band across the plot
            edge = [
                (PAD_LEFT, edge[0][1]),
                (WIDTH - PAD_RIGHT, edge[0][1]),
                (WIDTH - PAD_RIGHT, edge[1][1]),
                (PAD_LEFT, edge[1][1]),
            ]
        parts.append(
            '<polygon class="band" fill="#2ca02c" fill-opacity="0.18" stroke="none" points="'
            + " ".join(f"{px:.1f},{py:.1f}" for px, py in edge)
            + '"><title>baseline tolerance band</title></polygon>'
        )
        base = (
            [(x(i), y(b[1])) for i, b in banded]
            if len(banded) > 1
            else [(PAD_LEFT, y(banded[0][1][1])), (WIDTH - PAD_RIGHT, y(banded[0][1][1]))]
        )
        parts.append(
            '<polyline class="baseline" fill="none" stroke="#2ca02c" stroke-width="1.5" stroke-dasharray="5,3" points="'
            + " ".join(f"{px:.1f},{py:.1f}" for px, py in base)
            + '"/>'
        )
    parts.append(
        '<polyline class="measured" fill="none" stroke="#1f77b4" stroke-width="2" points="'
        + " ".join(f"{x(i):.1f},{y(m.measured):.1f}" for i, (_, m) in enumerate(points))
        + '"/>'
    )
    for i, (run, m) in enumerate(points):
        colour = "#d62728" if m.verdict == Verdict.FAIL.value else "#1f77b4"
        parts.append(
            f'<circle cx="{x(i):.1f}" cy="{y(m.measured):.1f}" r="3.5" '
            f'fill="{colour}"><title>{escape(run_label(run))}: '
            f"{m.measured:.6g} (baseline {m.baseline}, {m.verdict})</title></circle>"
        )
    parts.append(
        f'<text x="{PAD_LEFT - 4}" y="{PAD_Y + 4}" font-size="10" text-anchor="end">{hi:.4g}</text>'
        f'<text x="{PAD_LEFT - 4}" y="{HEIGHT - PAD_Y}" font-size="10" text-anchor="end">{lo:.4g}</text>'
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 3}" font-size="10">#{points[0][0].id}</text>'
        f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 3}" font-size="10" '
        f'text-anchor="end">#{points[-1][0].id}</text></svg>'
    )
    return "".join(parts)


def html(analysis: Analysis, extra: tuple[Table, ...] = ()) -> str:
    facts = "".join(f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in run_facts(analysis))
    flagged = {s.key for s in analysis.cases if s.status not in ("passing", "skipped", "known defect")} | {
        d.key for d in analysis.drifts
    }
    by_case: dict[str, list[Series]] = {}
    for series in analysis.series:
        by_case.setdefault(series.key, []).append(series)
    plots = []
    for key in sorted(by_case, key=lambda k: (k not in flagged, k)):
        figures = "".join(
            f"<figure><figcaption>{escape(s.metric)} ({escape(s.environment)})</figcaption>{trend_svg(s)}</figure>"
            for s in by_case[key]
        )
        mark = ' class="bad"' if key in flagged else ""
        plots.append(
            f"<details{' open' if key in flagged else ''}><summary{mark}>{escape(key)} ({len(by_case[key])} "
            "metrics)</summary>"
            f'<div class="plots">{figures}</div></details>'
        )
    title = f"posttrain-harness report: {run_label(analysis.latest)}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>posttrain-harness nightly report</h1><table>{facts}</table>"
        + "".join(_table(t) for t in (*tables(analysis), *extra))
        + f"<h2>Trends over the last {len(analysis.runs)} run(s)</h2>"
        '<p class="note">blue: measured (red points failed their baseline); dashed green: baseline; shaded: its '
        "tolerance band. "
        "Flagged cases first and unfolded.</p>" + "".join(plots) + "</body></html>\n"
    )
