"""Self-contained HTML reports with inline SVG charts (no JavaScript, no files beside them).

Stages write ``report.html`` next to their outputs; KFP shows it as an HTML artifact and a person can open
it from a laptop. Charts are plain SVG so the report renders anywhere, offline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


MARKED_POINTS = 60


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_label: str, y_label: str,
               width: int = 640, height: int = 280, log_y: bool = False) -> str:
    """An SVG line chart of named ``(x, y)`` series; non-finite points are skipped."""
    pad_l, pad_r, pad_t, pad_b = 56, 16, 28, 40
    clean = {name: [(float(x), float(y)) for x, y in pts if math.isfinite(x) and math.isfinite(y)
                    and (not log_y or y > 0)] for name, pts in series.items()}
    points = [p for pts in clean.values() for p in pts]
    if not points:
        return f"<p>{html.escape(title)}: no data points were recorded.</p>"
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs, ys = [p[0] for p in points], [fy(p[1]) for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y: float) -> float:
        return height - pad_b - (fy(y) - y0) / (y1 - y0) * (height - pad_t - pad_b)

    parts = [f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="#444"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="#444"/>']
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        label = 10 ** yv if log_y else yv
        ypix = height - pad_b - (height - pad_t - pad_b) * i / 4
        parts.append(f'<text x="{pad_l - 4}" y="{ypix + 4:.1f}" text-anchor="end" font-size="10">{label:.3g}</text>')
        xv = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{sx(xv):.1f}" y="{height - pad_b + 14}" text-anchor="middle" font-size="10">'
                     f"{xv:.3g}</text>")
    parts.append(f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle" font-size="11">{html.escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{height / 2}" font-size="11" transform="rotate(-90 12 {height / 2})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        if len(pts) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{path}"/>')
        if len(pts) <= MARKED_POINTS:  # few points: each recorded one is marked, so none hides in a line
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts]
        parts.append(f'<text x="{width - pad_r - 4}" y="{pad_t + 14 * (i + 1)}" text-anchor="end" font-size="11" '
                     f'fill="{color}">{html.escape(name)}</text>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{"".join(parts)}</svg>'


def table(rows: Mapping[str, object] | Sequence[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """An HTML table from a mapping (two columns) or from rows."""
    body = rows.items() if isinstance(rows, Mapping) else rows
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in body:
        cells = [f"{c:.4g}" if isinstance(c, float) else str(c) for c in row]
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A whole HTML document: a title, then ``(heading, html)`` sections."""
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:900px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}")
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
