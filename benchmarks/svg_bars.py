"""A grouped bar chart with error bars as a standalone SVG (no plotting dependency: the
benchmarks run on the CI image, which installs only what the tests need)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#7f7f7f", "#bcbd22", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
Panel = tuple[str, Sequence[str], Mapping[str, Sequence[tuple[float, float]]]]


def grouped_bars(panels: Sequence[Panel], *, panel_width: int = 420, height: int = 260) -> str:
    """One panel per (title, groups, {series: [(mean, std) per group]}), values in [0, 1]."""
    margin, top, bottom = 40, 30, 40
    legend_h = 20
    width = panel_width * len(panels)
    total_h = height + legend_h
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_h}" '
             f'font-family="sans-serif" font-size="11" role="img">', '<rect width="100%" height="100%" fill="white"/>']
    series_names: list[str] = []
    for k, (title, groups, series) in enumerate(panels):
        x0 = k * panel_width + margin
        plot_w, plot_h = panel_width - margin - 10, height - top - bottom
        parts.append(f'<text x="{x0}" y="{top - 12}" font-weight="bold">{escape(title)}</text>')
        for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = top + plot_h * (1 - tick)
            parts.append(f'<line x1="{x0}" x2="{x0 + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                         f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
        names = list(series)
        series_names = series_names or names
        group_w = plot_w / max(1, len(groups))
        bar_w = group_w * 0.8 / max(1, len(names))
        for g, group in enumerate(groups):
            gx = x0 + g * group_w + group_w * 0.1
            parts.append(f'<text x="{x0 + (g + 0.5) * group_w:.1f}" y="{top + plot_h + 16}" '
                         f'text-anchor="middle">{escape(group)}</text>')
            for s, name in enumerate(names):
                mean, std = series[name][g]
                mean = min(max(mean, 0.0), 1.0)
                bx, by = gx + s * bar_w, top + plot_h * (1 - mean)
                colour = PALETTE[s % len(PALETTE)]
                parts.append(f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bar_w * 0.9:.1f}" '
                             f'height="{plot_h * mean:.1f}" fill="{colour}"><title>{escape(name)} {escape(group)}: '
                             f'{mean:.2f} ± {std:.2f}</title></rect>')
                lo, hi = max(0.0, mean - std), min(1.0, mean + std)
                cx = bx + bar_w * 0.45
                parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{top + plot_h * (1 - hi):.1f}" '
                             f'y2="{top + plot_h * (1 - lo):.1f}" stroke="black"/>')
    for s, name in enumerate(series_names):
        lx = 10 + s * (width - 20) / max(1, len(series_names))
        parts.append(f'<rect x="{lx:.1f}" y="{height + 4}" width="10" height="10" fill="{PALETTE[s % len(PALETTE)]}"/>'
                     f'<text x="{lx + 14:.1f}" y="{height + 13}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
