"""Small inline-SVG charts for the HTML report: heatmap, line chart with CI bands, bar charts.

Every function returns one `<svg>` element as a string; all text is escaped here. No external resources.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

DASHES = ("", "6 3", "2 2", "8 3 2 3")
PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#718096", "#b7791f")
CHAR_W = 6.6  # rough width of one 11px sans-serif character


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _svg(width: float, height: float, title: str, body: Sequence[str]) -> str:
    return (f'<svg class="chart" role="img" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11">'
            f"<title>{escape(title)}</title>{''.join(body)}</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def _blend(share: float) -> str:
    """White to dark blue as share goes from 0 to 1."""
    s = min(max(share, 0.0), 1.0)
    r, g, b = (round(255 + (t - 255) * s) for t in (26, 82, 158))
    return f"rgb({r},{g},{b})"


def heatmap(rows: Sequence[str], columns: Sequence[str], matrix: Sequence[Sequence[int]], *, title: str,
            row_title: str = "gold", column_title: str = "predicted") -> str:
    """Counts in cells, coloured by the share of the row (row-normalised)."""
    cell_w, cell_h = 52.0, 26.0
    left = 16 + CHAR_W * max((len(r) for r in rows), default=4)
    top = 24 + CHAR_W * max((len(c) for c in columns), default=4) * 0.75
    width = left + cell_w * len(columns) + 10
    height = top + cell_h * len(rows) + 10
    body = [_text(left + cell_w * len(columns) / 2, 12, column_title, "middle", ' font-weight="bold"'),
            _text(4, top - 6, row_title, "start", ' font-weight="bold"')]
    for j, col in enumerate(columns):
        x = left + cell_w * (j + 0.5)
        body.append(_text(x, top - 6, col, "start", f' transform="rotate(-45 {x:.1f} {top - 6:.1f})"'))
    for i, (label, row) in enumerate(zip(rows, matrix, strict=True)):
        total = sum(row)
        y = top + cell_h * i
        body.append(_text(left - 6, y + cell_h * 0.65, label, "end"))
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            x = left + cell_w * j
            diag = ' stroke="#222" stroke-width="1.5"' if j < len(columns) and columns[j] == label else \
                ' stroke="#ddd"'
            tip = f"gold {label}, predicted {columns[j]}: {count} ({share:.0%} of row)"
            body.append(f'<rect class="cell" x="{x:.1f}" y="{y:.1f}" width="{cell_w}" height="{cell_h}" '
                        f'fill="{_blend(share)}"{diag}><title>{escape(tip)}</title></rect>')
            colour = "#fff" if share > 0.55 else "#222"
            body.append(_text(x + cell_w / 2, y + cell_h * 0.65, str(count), "middle", f' fill="{colour}"'))
    return _svg(width, height, title, body)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


Point = tuple[float, float | None]
Band = tuple[float, float, float]  # x, low, high


def line_chart(series: Sequence[tuple[str, Sequence[Point]]], *, title: str, x_label: str, y_label: str,
               y_range: tuple[float, float] | None = (0.0, 1.0),
               bands: Sequence[Sequence[Band]] | None = None) -> str:
    """Lines over x (points with y None are left out); optional shaded CI band per series."""
    width, height, left, right, top, bottom = 460.0, 250.0, 48.0, 130.0, 16.0, 40.0
    xs = [x for _, pts in series for x, y in pts if y is not None]
    ys = [y for _, pts in series for _, y in pts if y is not None]
    ys += [v for band in bands or () for _, lo, hi in band for v in (lo, hi)]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = y_range if y_range else ((min(ys), max(ys)) if ys else (0.0, 1.0))
    if not y_range:
        pad = (y_hi - y_lo) * 0.08
        y_lo, y_hi = y_lo - pad, y_hi + pad
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    body = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>']
    for t in _ticks(y_lo, y_hi):
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>')
        body.append(_text(left - 4, py(t) + 4, _fmt(t), "end"))
    for x in sorted(set(xs)) if len(set(xs)) <= 12 else _ticks(x_lo, x_hi):
        body.append(_text(px(x), top + plot_h + 14, _fmt(x), "middle"))
    body.append(_text(left + plot_w / 2, height - 6, x_label, "middle"))
    body.append(_text(12, top + plot_h / 2, y_label, "middle", f' transform="rotate(-90 12 {top + plot_h / 2:.1f})"'))
    for i, (name, pts) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        band = bands[i] if bands and i < len(bands) else ()
        if band:
            upper = " ".join(f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in band)
            lower = " ".join(f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(band))
            body.append(f'<polygon points="{upper} {lower}" fill="{colour}" fill-opacity="0.15" stroke="none"/>')
        known = [(x, y) for x, y in pts if y is not None]
        if len(known) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in known)
            dash = DASHES[i % len(DASHES)]
            body.append(f'<polyline class="line" points="{path}" fill="none" stroke="{colour}" stroke-width="2"'
                        + (f' stroke-dasharray="{dash}"/>' if dash else "/>"))
        for x, y in known:
            body.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}">'
                        f"<title>{escape(f'{name} at {_fmt(x)}: {y:.3f}')}</title></circle>")
        ly = top + 10 + 16 * i
        body.append(f'<rect x="{width - right + 10}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        body.append(_text(width - right + 24, ly + 1, name))
    return _svg(width, height, title, body)


def bar_chart(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *, title: str,
              max_value: float | None = None, value_format: str = "{:g}") -> str:
    """Horizontal bars: one group per label, one bar per series (a legend when there are several)."""
    bar_h, gap, plot_w = 14.0, 8.0, 260.0
    left = 12 + CHAR_W * max((len(label) for label in labels), default=4)
    values = [v for _, vals in series for v in vals if v is not None]
    top_value = max_value if max_value is not None else max(values, default=0.0)
    top_value = top_value or 1.0
    group_h = bar_h * len(series) + gap
    legend = 18.0 if len(series) > 1 else 0.0
    width = left + plot_w + 70
    height = legend + group_h * len(labels) + 8
    body: list[str] = []
    if len(series) > 1:
        for k, (name, _) in enumerate(series):
            x = left + 110 * k
            body.append(f'<rect x="{x:.1f}" y="3" width="10" height="10" fill="{PALETTE[k % len(PALETTE)]}"/>')
            body.append(_text(x + 14, 12, name))
    for i, label in enumerate(labels):
        y0 = legend + group_h * i
        body.append(_text(left - 6, y0 + group_h / 2 + 2, label, "end"))
        for k, (name, vals) in enumerate(series):
            value = vals[i] if i < len(vals) else None
            y = y0 + bar_h * k
            w = 0.0 if value is None else max(0.0, value) / top_value * plot_w
            shown = "n/a" if value is None else value_format.format(value)
            body.append(f'<rect class="bar" x="{left:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h - 2}" '
                        f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(f"{label} {name}: {shown}")}</title>'
                        "</rect>")
            body.append(_text(left + w + 4, y + bar_h - 4, shown))
    return _svg(width, height, title, body)


def stacked_bars(labels: Sequence[str], segments: Sequence[str], rows: Sequence[Sequence[float]], *,
                 title: str, colours: Sequence[str] = PALETTE) -> str:
    """One horizontal bar per label split into segments (as shares of the row total), with a legend."""
    bar_h, plot_w = 20.0, 360.0
    left = 12 + CHAR_W * max((len(label) for label in labels), default=4)
    width = max(left + plot_w + 20, 20 + 120 * min(len(segments), 5))
    legend_rows = math.ceil(len(segments) / 5)
    top = 18.0 * legend_rows + 6
    height = top + (bar_h + 8) * len(labels) + 4
    body: list[str] = []
    for k, name in enumerate(segments):
        x, y = 10.0 + 120 * (k % 5), 3.0 + 18 * (k // 5)
        body.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{colours[k % len(colours)]}"/>')
        body.append(_text(x + 14, y + 9, name))
    for i, (label, row) in enumerate(zip(labels, rows, strict=True)):
        y = top + (bar_h + 8) * i
        total = sum(row) or 1.0
        body.append(_text(left - 6, y + bar_h * 0.7, label, "end"))
        x = float(left)
        for k, value in enumerate(row):
            w = value / total * plot_w
            if w > 0:
                tip = f"{label} {segments[k]}: {_fmt(value)} ({value / total:.0%})"
                body.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h}" '
                            f'fill="{colours[k % len(colours)]}"><title>{escape(tip)}</title></rect>')
                if w > 18:
                    body.append(_text(x + w / 2, y + bar_h * 0.7, _fmt(value), "middle", ' fill="#fff"'))
            x += w
    return _svg(width, height, title, body)
