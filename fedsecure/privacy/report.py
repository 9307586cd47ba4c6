"""Audit reports: JSON for machines, a self-contained HTML page for people (ε over
releases per client as an inline SVG plot, and a table), text for the terminal."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict

from fedsecure.privacy.audit import LedgerAudit

_COLOURS = ("#1b6ca8", "#d1495b", "#00798c", "#edae49", "#66a182", "#8d5a97")


def to_json(audits: Sequence[LedgerAudit]) -> str:
    """Machine-readable verdicts."""
    return json.dumps({"ok": all(a.ok for a in audits),
                       "ledgers": [{**asdict(a), "ok": a.ok, "epsilon": a.epsilon} for a in audits]}, indent=2)


def to_text(audits: Sequence[LedgerAudit]) -> str:
    """One block per ledger: verdict, ε spent/budget, reasons."""
    lines = []
    for a in audits:
        lines.append(f"{'PASS' if a.ok else 'FAIL'} {a.client or '?'} ({a.path}): ε {a.epsilon:.4f} / {a.epsilon_budget:g}"
                     f" at δ={a.delta:g}, {len(a.releases)} releases, trained with {a.accountant or '?'}, "
                     f"recomputed with {a.independent_accountant or '-'}")
        lines += [f"  violation: {v}" for v in a.violations]
        lines += [f"  note: {n}" for n in a.notes]
    return "\n".join(lines)


def _plot(audits: Sequence[LedgerAudit], width: int = 640, height: int = 300) -> str:
    pad = 48
    series = [a for a in audits if a.releases]
    if not series:
        return "<p>No releases to plot.</p>"
    xmax = max(len(a.releases) for a in series)
    ymax = max([a.epsilon_budget for a in series] + [r.epsilon_recomputed for a in series for r in a.releases]) * 1.1

    def xy(i: int, eps: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * (i / max(1, xmax))
        return x, height - pad - (height - 2 * pad) * (eps / ymax)

    legend = 150  # a stacked legend at the right: end-of-line labels overlapped where lines meet
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + legend}" height="{height}" role="img" '
             f'aria-label="epsilon over releases per client">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>',
             f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle" font-size="12">release (round)</text>',
             f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle" '
             f'font-size="12">ε spent</text>',
             f'<text x="{pad - 6}" y="{pad + 4}" text-anchor="end" font-size="10">{ymax:.1f}</text>',
             f'<text x="{pad - 6}" y="{height - pad}" text-anchor="end" font-size="10">0</text>']
    parts += [f'<text x="{xy(i, 0.0)[0]:.1f}" y="{height - pad + 14}" text-anchor="middle" font-size="10">{i}</text>'
              for i in range(1, xmax + 1)]
    for k, a in enumerate(series):
        colour = _COLOURS[k % len(_COLOURS)]
        pts = [xy(0, 0.0)] + [xy(i + 1, r.epsilon_ledger) for i, r in enumerate(a.releases)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        _, by = xy(0, a.epsilon_budget)
        parts.append(f'<line x1="{pad}" y1="{by:.1f}" x2="{width - pad}" y2="{by:.1f}" stroke="{colour}" '
                     f'stroke-dasharray="4 4"/>')
        ly = pad + 16 * k
        parts.append(f'<rect x="{width - pad + 16}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{width - pad + 30}" y="{ly}" font-size="11">{html.escape(a.client)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _e(value: object) -> str:
    """Every value on the page is escaped, numbers included: a ledger is written by the
    party it audits, so nothing in it is trusted to be what its field says (OWASP XSS
    prevention rule 1: encode before inserting untrusted data into HTML)."""
    return html.escape(str(value), quote=True)


def to_html(audits: Sequence[LedgerAudit]) -> str:
    """A standalone page a person can read without the terminal."""
    verdict = "All ledgers pass" if all(a.ok for a in audits) else "Violations found"
    rows = []
    for a in audits:
        reasons = "<br>".join(html.escape(v) for v in a.violations) or "—"
        rows.append(f"<tr class='{'ok' if a.ok else 'bad'}'><td>{html.escape(a.client or a.path)}</td>"
                    f"<td>{'PASS' if a.ok else 'FAIL'}</td><td>{_e(f'{a.epsilon:.4f}')}</td><td>{_e(f'{a.epsilon_budget:g}')}</td>"
                    f"<td>{_e(f'{a.delta:g}')}</td><td>{len(a.releases)}</td><td>{_e(a.accountant)}</td>"
                    f"<td>{_e(a.independent_accountant)}</td><td>{reasons}</td></tr>")
    detail = []
    for a in audits:
        detail.append(f"<h3>{html.escape(a.client or a.path)}</h3><table><tr><th>seq</th><th>run</th><th>round</th>"
                      "<th>ε (ledger)</th><th>ε (recomputed)</th></tr>"
                      + "".join(f"<tr><td>{_e(r.seq)}</td><td>{_e(r.run_id)}</td><td>{_e(r.round)}</td>"
                                f"<td>{_e(f'{r.epsilon_ledger:.4f}')}</td><td>{_e(f'{r.epsilon_recomputed:.4f}')}</td></tr>"
                                for r in a.releases) + "</table>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fedsecure privacy audit</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.bad td{{background:#fde2e2}}
tr.ok td:nth-child(2){{color:#176b2c;font-weight:bold}}</style></head><body>
<h1>Privacy audit: {verdict}</h1>
<p>ε recomputed from each ledger's raw mechanism parameters with an accountant independent of
the one used in training; signatures, hash chain and server-recorded heads verified.</p>
<h2>ε over releases (dashed: budget)</h2>{_plot(audits)}
<h2>Summary</h2><table><tr><th>client</th><th>verdict</th><th>ε spent</th><th>ε budget</th><th>δ</th>
<th>releases</th><th>training accountant</th><th>audit accountant</th><th>violations</th></tr>{''.join(rows)}</table>
<h2>Releases</h2>{''.join(detail)}</body></html>"""
